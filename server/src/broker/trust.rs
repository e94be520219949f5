//! What a node trusts on Redis: its cluster's key, which signs its own messages,
//! and the checks every message it reads there must pass.
//!
//! Redis is shared (PROTOCOL.md 7.9 has Django publish into it), so whatever can
//! publish there could reach Herald's clients. Every message a node reads is
//! checked before its hub sees it: group messages by [`wire::decode`] (shape, size,
//! depth, user, signature) and then their notification id against what the store
//! has issued ([`IssuedIds::plausible`]); Django's by [`channels::decode`]; probes
//! and resync announcements by [`wire::decode_control`]. A message that fails is
//! dropped, counted in `herald_broker_dropped_total{reason}`, and logged at most
//! once per [`LOG_EVERY`] per reason, so a flood costs neither the log nor the
//! store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herald_shared::GroupName;
use herald_shared::dropped::DropReason;

use super::channels;
use super::signing::BrokerKey;
use super::wire::{self, Signature};
use crate::issued::{IssuedIds, Plausible};
use crate::metrics::Metrics;
use crate::outbox::{Delivery, unix_micros};

/// The most often one reason's drops are logged; the line says how many were not.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The longest body of a probe or resync announcement (a node id, a time).
pub const CONTROL_MAX: usize = 256;

pub struct Trust {
    key: Option<BrokerKey>,
    /// `HERALD_MAX_MESSAGE_BYTES`: a Django payload's bound; a frame's, with its
    /// envelope ([`wire::FRAME_ENVELOPE`]).
    max_message: usize,
    issued: Arc<IssuedIds>,
    metrics: Arc<Metrics>,
    /// Per reason ([`DropReason::ALL`] order), and one more for "signed, but this
    /// node has no key": when it was last logged (Unix µs), and drops since.
    logged: Vec<(AtomicU64, AtomicU64)>,
}

/// The `logged` slot of signed messages seen by a node without a key.
const SIGNED_WITHOUT_KEY: usize = DropReason::ALL.len();

impl Trust {
    pub fn new(
        key: Option<BrokerKey>,
        max_message: usize,
        issued: Arc<IssuedIds>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            key,
            max_message,
            issued,
            metrics,
            logged: (0..=DropReason::ALL.len())
                .map(|_| (AtomicU64::new(0), AtomicU64::new(0)))
                .collect(),
        }
    }

    /// The key this node signs with, if the cluster has one.
    pub fn key(&self) -> Option<&BrokerKey> {
        self.key.as_ref()
    }

    /// A message on a group channel of Herald's, checked ([`wire::decode`]) and its
    /// notification id checked against the store's ([`IssuedIds::plausible`]); a
    /// verified signature vouches for the id, which then raises the cache instead.
    pub async fn group_message(
        &self,
        channel: &str,
        payload: &[u8],
    ) -> Result<Arc<Delivery>, DropReason> {
        let max_frame = self.max_message + wire::FRAME_ENVELOPE;
        let decoded = wire::decode(
            payload,
            channel,
            max_frame,
            self.key.as_ref(),
            unix_micros(),
        )?;
        if decoded.signed == Signature::Unchecked {
            self.log(SIGNED_WITHOUT_KEY, || {
                tracing::warn!(channel, "messages signed with HERALD_BROKER_KEY arrive, but this node has no key: give every node the same HERALD_BROKER_KEY, or it cannot tell a forgery")
            });
        }
        let id = decoded.delivery.notification.as_ref().map(|n| n.id);
        match (decoded.signed, id) {
            (_, None) => {}
            (Signature::Verified, Some(id)) => self.issued.raise(id),
            (_, Some(id)) => {
                if self.issued.plausible(id).await == Plausible::No {
                    return Err(DropReason::ImplausibleId);
                }
            }
        }
        Ok(decoded.delivery)
    }

    /// A channels_redis group message ([`channels::decode`]), with the API's limits.
    pub fn django_message(
        &self,
        asgi_prefix: &str,
        channel: &str,
        payload: &[u8],
    ) -> Result<(GroupName, Arc<Delivery>), DropReason> {
        channels::decode(asgi_prefix, channel, payload, self.max_message)
    }

    /// The body of a probe or resync announcement ([`wire::decode_control`]).
    pub fn control<'a>(&self, channel: &str, payload: &'a [u8]) -> Result<&'a str, DropReason> {
        wire::decode_control(payload, channel, CONTROL_MAX, self.key.as_ref())
    }

    /// Counts a dropped message and logs it, at most once per [`LOG_EVERY`] per
    /// reason.
    pub fn dropped(&self, reason: DropReason, channel: &str) {
        self.metrics.broker_dropped(reason, 1);
        let slot = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("listed");
        self.log(slot, || {
            let hint = match reason {
                DropReason::Unsigned => "every node of the cluster needs the same HERALD_BROKER_KEY: a node without it, or a publisher that is not a Herald node, sent this",
                DropReason::BadSignature => "a node with another HERALD_BROKER_KEY, or a forgery",
                DropReason::Stale => "a signed message replayed, or a node whose clock is off by more than a minute",
                _ => "not what a Herald node or Django sends",
            };
            tracing::warn!(channel, %reason, "message read from Redis dropped: {hint}");
        });
    }

    /// Runs `log` unless slot `slot` logged within [`LOG_EVERY`]; the line after a
    /// quiet spell says how many it did not log.
    fn log(&self, slot: usize, log: impl FnOnce()) {
        let (last, quiet) = &self.logged[slot];
        let now = unix_micros();
        let then = last.load(Ordering::Relaxed);
        if now.saturating_sub(then) < LOG_EVERY.as_micros() as u64
            || last
                .compare_exchange(then, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            quiet.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let skipped = quiet.swap(0, Ordering::Relaxed);
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "(and {skipped} more like the next line since it was last logged)"
            );
        }
        log();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_shared::UserId;

    fn trust(key: Option<&str>) -> (Trust, Arc<Metrics>, Arc<AtomicU64>) {
        let metrics = Arc::new(Metrics::new());
        let queries = Arc::new(AtomicU64::new(0));
        let issued = Arc::new(IssuedIds::fixed(100, queries.clone()));
        let key = key.map(|k| BrokerKey::new(k).unwrap());
        (
            Trust::new(key, 1024, issued, metrics.clone()),
            metrics,
            queries,
        )
    }

    fn note(id: i64) -> Arc<Delivery> {
        Delivery::notification(
            r#"{"type":"notification"}"#.into(),
            id,
            &UserId::parse("42").unwrap(),
        )
    }

    const CH: &str = "h:g:user_42";

    #[tokio::test]
    async fn forged_ids_are_dropped_and_real_ones_pass() {
        let (t, _, queries) = trust(None);
        assert!(
            t.group_message(CH, &wire::encode(&note(100), CH, None))
                .await
                .is_ok()
        );
        let forged = wire::encode(&note(i64::MAX), CH, None);
        for _ in 0..100 {
            assert_eq!(
                t.group_message(CH, &forged).await.unwrap_err(),
                DropReason::ImplausibleId
            );
        }
        assert!(
            queries.load(Ordering::Relaxed) <= 1,
            "a query per forged id"
        );
    }

    #[tokio::test]
    async fn a_signed_id_is_vouched_for_without_a_query() {
        const K: &str = "0123456789abcdef0123456789abcdef";
        let (t, _, queries) = trust(Some(K));
        let key = BrokerKey::new(K).unwrap();
        let far = 1_000_000_000;
        assert!(
            t.group_message(CH, &wire::encode(&note(far), CH, Some(&key)))
                .await
                .is_ok()
        );
        assert_eq!(queries.load(Ordering::Relaxed), 0);
        let unsigned = wire::encode(&note(5), CH, None);
        assert_eq!(
            t.group_message(CH, &unsigned).await.unwrap_err(),
            DropReason::Unsigned
        );
    }

    #[test]
    fn drops_are_counted_by_reason() {
        let (t, metrics, _) = trust(None);
        for _ in 0..3 {
            t.dropped(DropReason::Malformed, CH);
        }
        t.dropped(DropReason::TooDeep, CH);
        let text = metrics.encode();
        assert!(
            text.contains(r#"herald_broker_dropped_total{reason="malformed"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"herald_broker_dropped_total{reason="too_deep"} 1"#),
            "{text}"
        );
        let (_, quiet) = &t.logged[0];
        assert_eq!(
            quiet.load(Ordering::Relaxed),
            2,
            "logged once, two held back"
        );
    }
}
