//! The first frames of a connection: `welcome`, `initial_state`, and `missed` when
//! resuming, and the seam between them and live frames.
//!
//! The connection joined its user's group before the upgrade, so live notifications
//! may already be queued while the store is read. The [`Seam`] remembers which ids
//! the snapshot already carried and drops their live copies, until the first live
//! notification newer than the snapshot proves (per-user publishes arrive in id
//! order) that no repeat can follow.

use std::collections::HashSet;

use herald_shared::config::{INITIAL_STATE_LIMIT, MISSED_LIMIT, OPENING_MAX_BYTES};
use herald_shared::{Notification, ServerFrame};

use crate::node::Node;
use crate::store::StoreError;
use herald_shared::UserId;

/// The frames to send first, in order, and the seam they leave.
pub struct Opening {
    pub frames: Vec<ServerFrame>,
    pub seam: Seam,
    pub replayed: usize,
}

/// Ids sent by the snapshot, that live copies must not repeat.
#[derive(Debug, Default)]
pub struct Seam {
    /// Boxed, and only while it holds ids: every session keeps a seam, and most are
    /// empty for the connection's whole life.
    #[expect(
        clippy::box_collection,
        reason = "one pointer in every session instead of an empty set's 48 bytes"
    )]
    sent: Option<Box<HashSet<i64>>>,
    newest: i64,
}

impl Seam {
    pub fn new(ids: impl IntoIterator<Item = i64>) -> Self {
        let mut seam = Self::default();
        seam.extend(ids);
        seam
    }

    /// Adds ids sent outside the live stream (a catch-up) to the filter.
    pub fn extend(&mut self, ids: impl IntoIterator<Item = i64>) {
        for id in ids {
            self.newest = self.newest.max(id);
            self.sent.get_or_insert_default().insert(id);
        }
    }

    /// Records that the client has (or does not need) everything up to `id`, without
    /// filtering any live copy: only ids actually sent are filtered.
    pub fn seen_up_to(&mut self, id: i64) {
        self.newest = self.newest.max(id);
    }

    /// The newest id the client has been sent or had at connect time.
    pub fn newest(&self) -> i64 {
        self.newest
    }

    /// Whether a live notification with `id` should be sent (false: already sent).
    pub fn admit(&mut self, id: i64) -> bool {
        if id > self.newest {
            // Everything after this is newer still: the seam is closed.
            self.newest = id;
            self.sent = None;
            return true;
        }
        !self.sent.as_ref().is_some_and(|s| s.contains(&id))
    }
}

/// Reads what a connecting user is owed: unread snapshot, and the missed replay.
pub async fn opening(
    node: &Node,
    user: &UserId,
    after: Option<i64>,
) -> Result<Opening, StoreError> {
    let mut unread = node.store.unread(user, INITIAL_STATE_LIMIT).await?;
    // The newest that fit; `unread_count` still counts them all.
    let fit = within_budget(
        &unread.newest,
        INITIAL_STATE_LIMIT as usize,
        OPENING_MAX_BYTES,
    );
    unread.newest.truncate(fit);
    // Everything up to here existed at connect time (or precedes `after`): a later
    // catch-up starts beyond it, never replaying what the client already had.
    let baseline = unread.newest_id.max(after.unwrap_or(0));
    let mut ids: Vec<i64> = unread.newest.iter().map(|n| n.id).collect();
    let mut frames = vec![ServerFrame::InitialState {
        unread_count: unread.unread_count,
        notifications: unread.newest,
    }];
    let mut replayed = 0;
    if let Some(after) = after {
        let mut missed = node.catch_ups.after(user, after, MISSED_LIMIT + 1).await?;
        let fetched = missed.len();
        missed.truncate(within_budget(
            &missed,
            MISSED_LIMIT as usize,
            OPENING_MAX_BYTES,
        ));
        let truncated = missed.len() < fetched;
        ids.extend(missed.iter().map(|n| n.id));
        replayed = missed.len();
        frames.push(ServerFrame::Missed {
            notifications: missed,
            truncated,
        });
    }
    let mut seam = Seam::new(ids);
    seam.seen_up_to(baseline);
    Ok(Opening {
        frames,
        seam,
        replayed,
    })
}

/// How many of `ns`, from the first, fit in one frame: at most `count`, and no more
/// than `bytes` of their JSON, but always the first one, so a client resuming from
/// the id of the last one it got always moves on, even past a notification larger
/// than the budget.
pub(super) fn within_budget(ns: &[Notification], count: usize, bytes: usize) -> usize {
    let mut total = 0;
    for (i, n) in ns.iter().take(count).enumerate() {
        // The notification's JSON, and the comma before it.
        total += json_len(n) + 1;
        if total > bytes && i > 0 {
            return i;
        }
    }
    ns.len().min(count)
}

/// The length of `n`'s JSON, counted as it is written, without building it.
fn json_len(n: &Notification) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    serde_json::to_writer(&mut c, n).expect("notifications always serialise");
    c.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(id: i64, text_len: usize) -> Notification {
        let message =
            serde_json::value::RawValue::from_string(format!("\"{}\"", "x".repeat(text_len)))
                .unwrap();
        Notification {
            id,
            user: "42".into(),
            message: herald_shared::frames::RawJson(message),
            created_at: "2026-11-25T19:21:08.123Z".into(),
            read: false,
        }
    }

    #[test]
    fn json_len_is_the_encoded_length() {
        let n = note(7, 100);
        assert_eq!(json_len(&n), serde_json::to_string(&n).unwrap().len());
    }

    #[test]
    fn the_budget_caps_by_count_and_by_bytes_but_keeps_one() {
        let small: Vec<_> = (1..=10).map(|i| note(i, 10)).collect();
        assert_eq!(within_budget(&small, 4, 1 << 20), 4, "count cap");
        assert_eq!(within_budget(&small, 100, 1 << 20), 10, "everything fits");
        let one = json_len(&small[0]) + 1;
        assert_eq!(within_budget(&small, 100, 3 * one), 3, "exactly three fit");
        assert_eq!(within_budget(&small, 100, 3 * one - 1), 2);
        let big = [note(1, 5000), note(2, 10)];
        assert_eq!(within_budget(&big, 100, 1000), 1, "the first always goes");
        assert_eq!(within_budget(&[], 100, 1000), 0);
    }

    #[test]
    fn seam_drops_repeats_until_a_newer_id() {
        let mut s = Seam::new([10, 12, 15]);
        assert!(!s.admit(12));
        assert!(s.admit(11), "not in the snapshot (read, or beyond the 50)");
        assert!(!s.admit(15));
        assert!(s.admit(16));
        assert!(s.admit(12), "after the seam closed nothing is filtered");
    }

    #[test]
    fn empty_seam_admits_everything() {
        let mut s = Seam::new([]);
        assert!(s.admit(1));
    }
}
