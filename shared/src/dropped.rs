//! Why a node dropped a message it read from Redis: the `reason` label of
//! `herald_broker_dropped_total` (PROTOCOL.md 6.3, 7.3).
//!
//! Redis is shared (Django publishes into it, and so can anything else with its
//! password), so a node treats what it reads there as input, not as frames: a
//! message that fails a check is dropped and counted under one of these reasons.
//! One enum, so the node's label, the docs and the tests that read the metric name
//! the same reasons.

use crate::wire_enum::wire_enum;

wire_enum! {
    /// Why a message read from Redis was not delivered.
    pub enum DropReason {
        /// Not Herald's format: no header line, a header that does not read, a user
        /// that is not a valid id, a frame that is not UTF-8 or not a JSON object; a
        /// Django message that is not one msgpack map of JSON values; a probe or
        /// resync announcement that is not what a node sends.
        Malformed = "malformed",
        /// Larger than `HERALD_MAX_MESSAGE_BYTES` allows (plus the frame's envelope).
        Oversized = "oversized",
        /// Nests deeper than the API accepts (64 levels).
        TooDeep = "too_deep",
        /// A notification id no store issued: not positive, or beyond what the
        /// store has issued (checked against the node's cache, and the store).
        ImplausibleId = "implausible_id",
        /// No signature, on a node with `HERALD_BROKER_KEY`.
        Unsigned = "unsigned",
        /// A signature that does not verify with this node's `HERALD_BROKER_KEY`.
        BadSignature = "bad_signature",
        /// Signed, but accepted more than the replay window from now.
        Stale = "stale",
        /// A resync request folded into the one already due: a node resyncs at most
        /// about once a second, however many requests arrive.
        ResyncCoalesced = "resync_coalesced",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_snake_case_and_distinct() {
        let names: std::collections::HashSet<_> =
            DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), DropReason::ALL.len());
        for n in names {
            assert!(
                n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{n}"
            );
        }
    }
}
