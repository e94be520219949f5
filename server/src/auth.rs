//! Who may do what: client JWTs (contract §2), the backend API key and the admin token.
//!
//! Clients prove their user id with an HS256 JWT; backends and operators present a
//! static bearer secret, compared in constant time so that response timing leaks
//! nothing about it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use herald_shared::{GroupName, UserId};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::secrets::Secrets;

/// Claims of a client token.
///
/// `aud` and `iss` are written when the node is configured with them, and checked
/// by `jsonwebtoken` from the token itself (where `aud` may also be a list), so they
/// are never read into this struct.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", skip_deserializing)]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", skip_deserializing)]
    pub iss: Option<String>,
}

/// The longest client token the node reads. A token is a user id, its groups and
/// a signature; anything longer is not one of the node's, and is refused before it
/// is decoded.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// A verified client: its user, the extra groups it may join, when its token expires.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: UserId,
    pub groups: Vec<GroupName>,
    /// Unix seconds; the session closes with 1008 at this moment.
    pub exp: u64,
}

impl Identity {
    /// Whether the token allows joining `group` (its own personal group always).
    pub fn may_join(&self, group: &GroupName) -> bool {
        group.personal_user() == Some(self.user.as_str()) || self.groups.contains(group)
    }
}

/// Why a client token was refused; the text is what the client reads in the 401 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "missing token: pass ?token=<jwt>, Authorization: Bearer <jwt>, or on a WebSocket the subprotocols herald and bearer.<jwt>"
    )]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("invalid token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid (nbf is in the future)")]
    NotYetValid,
    #[error("token is {0} bytes; the maximum is {MAX_TOKEN_BYTES}")]
    TooLarge(usize),
    #[error("invalid token claims: {0}")]
    BadClaims(String),
}

/// Verifies and issues tokens; compares bearer secrets.
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    audience: Option<String>,
    issuer: Option<String>,
    api_key: Vec<u8>,
    admin_token: Vec<u8>,
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Auth {
    /// Checks tokens signed with the secrets' JWT secret, for the audience and issuer
    /// `cfg` names (each checked only when set).
    pub fn new(secrets: &Secrets, cfg: &Config) -> Self {
        // HS256 only: a token naming another algorithm (`none`, HS384, RS256) is not
        // one this node issued, whatever its signature.
        let mut validation = Validation::new(Algorithm::HS256);
        // An expired token is expired: no grace period a stolen token could use. The
        // same (none) for `nbf`: a token is valid from that second on.
        validation.leeway = 0;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        let set = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
        let (audience, issuer) = (set(&cfg.jwt_audience), set(&cfg.jwt_issuer));
        match &audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            // Unset: a token may carry any `aud` (an identity provider's), unchecked.
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Self {
            encoding: EncodingKey::from_secret(secrets.jwt_secret.expose().as_bytes()),
            decoding: DecodingKey::from_secret(secrets.jwt_secret.expose().as_bytes()),
            validation,
            audience,
            issuer,
            api_key: secrets.api_key.expose().as_bytes().to_vec(),
            admin_token: secrets.admin_token.expose().as_bytes().to_vec(),
        }
    }

    /// Verifies a client token and validates the names it carries.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge(token.len()));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidAudience => {
                    AuthError::BadClaims("`aud` is not this node's audience".into())
                }
                ErrorKind::InvalidIssuer => {
                    AuthError::BadClaims("`iss` is not this node's issuer".into())
                }
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::MissingRequiredClaim(c) => {
                    AuthError::BadClaims(format!("missing `{c}`"))
                }
                // The header is JSON but not a header jsonwebtoken reads: almost
                // always an `alg` it does not know (`none`).
                ErrorKind::Json(_) if jsonwebtoken::decode_header(token).is_err() => {
                    AuthError::BadClaims("algorithm must be HS256".into())
                }
                ErrorKind::Json(e) => AuthError::BadClaims(e.to_string()),
                ErrorKind::InvalidAlgorithm => {
                    AuthError::BadClaims("algorithm must be HS256".into())
                }
                _ => AuthError::Malformed,
            })?;
        let c = data.claims;
        let user = UserId::parse(c.sub).map_err(|e| AuthError::BadClaims(format!("sub {e}")))?;
        let groups = c
            .groups
            .unwrap_or_default()
            .into_iter()
            .map(|g| GroupName::parse(g).map_err(|e| AuthError::BadClaims(format!("group {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Identity {
            user,
            groups,
            exp: c.exp,
        })
    }

    /// Issues a client token valid for `ttl_s` seconds.
    pub fn issue(&self, user: &UserId, groups: &[GroupName], ttl_s: u64) -> String {
        let claims = Claims {
            sub: user.to_string(),
            exp: now_unix() + ttl_s,
            groups: (!groups.is_empty()).then(|| groups.iter().map(|g| g.to_string()).collect()),
            aud: self.audience.clone(),
            iss: self.issuer.clone(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 encoding of plain claims cannot fail")
    }

    /// Whether the request carries the backend API key.
    pub fn is_api_key(&self, headers: &HeaderMap) -> bool {
        bearer(headers).is_some_and(|b| ct_eq(b.as_bytes(), &self.api_key))
    }

    /// Whether `presented` is the admin token.
    pub fn is_admin_token(&self, presented: &str) -> bool {
        ct_eq(presented.as_bytes(), &self.admin_token)
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    // Length is not secret (all generated secrets have the same length); contents are.
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// The `Authorization: Bearer <x>` value, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

// Here, beside the signing it uses: `secrets` only resolves values, and knows
// nothing of tokens.
impl Secrets {
    /// A client token for `user` (who may also join `groups`), valid for `ttl`
    /// (whole seconds), signed with [`Secrets::jwt_secret`] and carrying `cfg`'s
    /// audience and issuer when set: what `herald-server token` prints, and what a
    /// node with these secrets and that configuration accepts.
    ///
    /// ```
    /// use herald_server::Config;
    /// use herald_server::secrets::Secrets;
    /// use herald_shared::{GroupName, UserId};
    ///
    /// let secrets = Secrets {
    ///     jwt_secret: "a secret of at least thirty-two bytes".into(),
    ///     api_key: "key".into(),
    ///     admin_token: "admin".into(),
    /// };
    /// let user = UserId::parse("42").unwrap();
    /// let groups = [GroupName::parse("org_5").unwrap()];
    /// let ttl = std::time::Duration::from_secs(60);
    /// let token = secrets.client_token(&Config::defaults(), &user, &groups, ttl);
    /// assert_eq!(token.split('.').count(), 3, "a JWT");
    /// ```
    pub fn client_token(
        &self,
        cfg: &Config,
        user: &UserId,
        groups: &[GroupName],
        ttl: Duration,
    ) -> String {
        Auth::new(self, cfg).issue(user, groups, ttl.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(secret: &str) -> Auth {
        auth_with(secret, &[])
    }

    fn auth_with(secret: &str, flags: &[&str]) -> Auth {
        let secrets = Secrets {
            jwt_secret: secret.into(),
            api_key: "api".into(),
            admin_token: "adm".into(),
        };
        Auth::new(&secrets, &Config::from_args(flags.iter().copied()).unwrap())
    }

    fn sign(secret: &str, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn issued_tokens_verify() {
        let a = auth("s");
        let user = UserId::parse("42").unwrap();
        let org = GroupName::parse("org_5").unwrap();
        let id = a
            .verify(&a.issue(&user, std::slice::from_ref(&org), 60))
            .unwrap();
        assert_eq!(id.user, user);
        assert!(id.may_join(&org));
        assert!(id.may_join(&user.group()));
        assert!(!id.may_join(&GroupName::parse("user_43").unwrap()));
        assert!(!id.may_join(&GroupName::parse("broadcast").unwrap()));
    }

    #[test]
    fn refusals_say_why() {
        let a = auth("s");
        let exp = now_unix() + 60;
        assert_eq!(a.verify("nonsense").unwrap_err(), AuthError::Malformed);
        let t = sign("other", &serde_json::json!({"sub": "42", "exp": exp}));
        assert_eq!(a.verify(&t).unwrap_err(), AuthError::BadSignature);
        let t = sign(
            "s",
            &serde_json::json!({"sub": "42", "exp": now_unix() - 1}),
        );
        assert_eq!(a.verify(&t).unwrap_err(), AuthError::Expired);
        let t = sign("s", &serde_json::json!({"sub": "42"}));
        assert!(matches!(a.verify(&t).unwrap_err(), AuthError::BadClaims(_)));
        let t = sign("s", &serde_json::json!({"exp": exp}));
        assert!(matches!(a.verify(&t).unwrap_err(), AuthError::BadClaims(_)));
        let t = sign("s", &serde_json::json!({"sub": "no spaces", "exp": exp}));
        assert!(matches!(a.verify(&t).unwrap_err(), AuthError::BadClaims(_)));
        let t = sign(
            "s",
            &serde_json::json!({"sub": "42", "exp": exp, "groups": ["a/b"]}),
        );
        assert!(matches!(a.verify(&t).unwrap_err(), AuthError::BadClaims(_)));
    }

    /// A token with any header and claims, and a signature that is not checked
    /// before the header is.
    fn forged(header: &str, claims: &serde_json::Value) -> String {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        format!(
            "{}.{}.{}",
            b64(header.as_bytes()),
            b64(claims.to_string().as_bytes()),
            b64(b"sig")
        )
    }

    #[test]
    fn algorithms_other_than_hs256_are_refused() {
        let a = auth("s");
        let claims = serde_json::json!({"sub": "42", "exp": now_unix() + 60});
        for alg in ["none", "HS384", "HS512", "RS256", "ES256", "EdDSA"] {
            let t = forged(&format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#), &claims);
            assert_eq!(
                a.verify(&t).unwrap_err(),
                AuthError::BadClaims("algorithm must be HS256".into()),
                "{alg}"
            );
        }
        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &claims,
            &EncodingKey::from_secret(b"s"),
        )
        .unwrap();
        assert_eq!(
            a.verify(&hs384).unwrap_err(),
            AuthError::BadClaims("algorithm must be HS256".into())
        );
    }

    #[test]
    fn nbf_aud_iss_and_size() {
        let a = auth("s");
        let now = now_unix();
        let t = sign(
            "s",
            &serde_json::json!({"sub": "42", "exp": now + 60, "nbf": now + 30}),
        );
        assert_eq!(a.verify(&t).unwrap_err(), AuthError::NotYetValid);
        let t = sign(
            "s",
            &serde_json::json!({"sub": "42", "exp": now + 60, "nbf": now}),
        );
        assert!(a.verify(&t).is_ok(), "valid from its nbf second on");
        // Unset audience and issuer: carried, not checked.
        let t = sign(
            "s",
            &serde_json::json!({"sub": "42", "exp": now + 60, "aud": ["x", "y"], "iss": "z"}),
        );
        assert!(a.verify(&t).is_ok());

        let a = auth_with("s", &["--jwt-audience", "herald", "--jwt-issuer", "idp"]);
        let ok = serde_json::json!({"sub": "42", "exp": now + 60, "aud": "herald", "iss": "idp"});
        assert!(a.verify(&sign("s", &ok)).is_ok());
        let mut list = ok.clone();
        list["aud"] = serde_json::json!(["other", "herald"]);
        assert!(
            a.verify(&sign("s", &list)).is_ok(),
            "one of a list of audiences"
        );
        for (field, value, why) in [
            ("aud", Some("other"), "`aud` is not this node's audience"),
            ("iss", Some("other"), "`iss` is not this node's issuer"),
            ("aud", None, "missing `aud`"),
            ("iss", None, "missing `iss`"),
        ] {
            let mut c = ok.clone();
            match value {
                Some(v) => c[field] = serde_json::json!(v),
                None => {
                    c.as_object_mut().unwrap().remove(field);
                }
            }
            assert_eq!(
                a.verify(&sign("s", &c)).unwrap_err(),
                AuthError::BadClaims(why.into())
            );
        }
        // What the node issues carries both.
        let user = UserId::parse("42").unwrap();
        assert!(a.verify(&a.issue(&user, &[], 60)).is_ok());

        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            a.verify(&huge).unwrap_err(),
            AuthError::TooLarge(MAX_TOKEN_BYTES + 1)
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any text as a token: refused with a reason (never a panic); over the
        /// size limit, refused for its size before anything else.
        #[test]
        fn any_text_is_refused_with_a_reason(
            t in proptest::prop_oneof![
                ".{0,64}",
                "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,40}",
                "[a.]{8190,8200}",
            ]
        ) {
            let e = auth("s").verify(&t).unwrap_err();
            if t.len() > MAX_TOKEN_BYTES {
                proptest::prop_assert_eq!(e, AuthError::TooLarge(t.len()));
            } else {
                proptest::prop_assert!(!e.to_string().is_empty());
            }
        }

        /// Any claims, correctly signed: accepted only with a valid `sub`, a future
        /// `exp`, and valid `groups`; refused with a reason otherwise.
        #[test]
        fn signed_claims_are_checked(
            sub in proptest::option::of(".{0,8}"),
            exp_in in proptest::option::of(proptest::prop_oneof![-100i64..-1, 2i64..100]),
            groups in proptest::option::of(proptest::collection::vec(".{0,6}", 0..3)),
        ) {
            let mut c = serde_json::Map::new();
            if let Some(s) = &sub { c.insert("sub".into(), s.clone().into()); }
            if let Some(e) = exp_in { c.insert("exp".into(), (now_unix() as i64 + e).into()); }
            if let Some(g) = &groups { c.insert("groups".into(), g.clone().into()); }
            let valid = sub.as_deref().is_some_and(|s| UserId::parse(s).is_ok())
                && exp_in.is_some_and(|e| e > 0)
                && groups.iter().flatten().all(|g| GroupName::parse(g.as_str()).is_ok());
            let r = auth("s").verify(&sign("s", &serde_json::Value::Object(c)));
            proptest::prop_assert_eq!(r.is_ok(), valid, "{:?}", r.err());
        }
    }

    #[test]
    fn bearer_secrets_compare_exactly() {
        let a = auth("s");
        let mut h = HeaderMap::new();
        assert!(!a.is_api_key(&h));
        h.insert("authorization", "Bearer api".parse().unwrap());
        assert!(a.is_api_key(&h));
        h.insert("authorization", "Bearer apx".parse().unwrap());
        assert!(!a.is_api_key(&h));
        h.insert("authorization", "Basic api".parse().unwrap());
        assert!(!a.is_api_key(&h));
        assert!(a.is_admin_token("adm"));
        assert!(!a.is_admin_token("ad"));
    }
}
