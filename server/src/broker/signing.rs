//! HMAC-SHA256 over Herald's own messages on Redis, with the key every node of a
//! cluster shares (`HERALD_BROKER_KEY`).
//!
//! Whatever can publish on Redis can publish on Herald's channels; checks of shape,
//! size and ids limit what a forged message can do, but only a signature tells a
//! Herald node's message from anyone else's. The MAC covers the channel too, so a
//! signed message replayed onto another group's channel (another user's) does not
//! verify.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The shortest key accepted, as for the JWT secret: as long as the hash.
pub const MIN_KEY_BYTES: usize = 32;

/// Hex digits of a tag.
pub const TAG_HEX: usize = 64;

/// The cluster's shared key, ready to sign and verify.
#[derive(Clone)]
pub struct BrokerKey(Hmac<Sha256>);

impl std::fmt::Debug for BrokerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerKey(..)")
    }
}

impl BrokerKey {
    /// The key from `HERALD_BROKER_KEY`; at least [`MIN_KEY_BYTES`] bytes.
    pub fn new(secret: &str) -> Result<Self, String> {
        if secret.len() < MIN_KEY_BYTES {
            return Err(format!(
                "HERALD_BROKER_KEY is {} bytes; it must be at least {MIN_KEY_BYTES} (e.g. `openssl rand -hex 32`)",
                secret.len()
            ));
        }
        Ok(Self(
            Hmac::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length"),
        ))
    }

    fn mac(&self, channel: &str, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        mac.update(channel.as_bytes());
        for p in parts {
            mac.update(b"\n");
            mac.update(p);
        }
        mac
    }

    /// The tag of `parts` sent on `channel`, as [`TAG_HEX`] lowercase hex digits.
    pub fn sign(&self, channel: &str, parts: &[&[u8]]) -> String {
        let tag = self.mac(channel, parts).finalize().into_bytes();
        let mut hex = String::with_capacity(TAG_HEX);
        for b in tag {
            hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            hex.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        hex
    }

    /// Whether `tag` (hex) is the tag of `parts` on `channel`; compared in constant
    /// time.
    pub fn verify(&self, channel: &str, parts: &[&[u8]], tag: &str) -> bool {
        let Some(tag) = unhex(tag) else { return false };
        self.mac(channel, parts).verify_slice(&tag).is_ok()
    }
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != TAG_HEX {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_tag_verifies_only_for_its_key_channel_and_bytes() {
        let k = BrokerKey::new(K).unwrap();
        let tag = k.sign("h:g:user_42", &[b"{\"t\":1}", b"{}"]);
        assert_eq!(tag.len(), TAG_HEX);
        assert!(k.verify("h:g:user_42", &[b"{\"t\":1}", b"{}"], &tag));
        assert!(
            !k.verify("h:g:user_43", &[b"{\"t\":1}", b"{}"], &tag),
            "another channel"
        );
        assert!(
            !k.verify("h:g:user_42", &[b"{\"t\":2}", b"{}"], &tag),
            "another header"
        );
        assert!(
            !k.verify("h:g:user_42", &[b"{\"t\":1}", b"{ }"], &tag),
            "another frame"
        );
        let other = BrokerKey::new(&K.replace('0', "x")).unwrap();
        assert!(
            !other.verify("h:g:user_42", &[b"{\"t\":1}", b"{}"], &tag),
            "another key"
        );
        assert!(!k.verify("h:g:user_42", &[b"{\"t\":1}", b"{}"], &tag[1..]));
        assert!(!k.verify("h:g:user_42", &[b"{\"t\":1}", b"{}"], &"zz".repeat(32)));
    }

    #[test]
    fn a_short_key_is_refused() {
        let err = BrokerKey::new(&K[1..]).unwrap_err();
        assert!(
            err.contains("HERALD_BROKER_KEY is 31 bytes; it must be at least 32"),
            "{err}"
        );
    }
}
