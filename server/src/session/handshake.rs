//! The first frames of a connection: `welcome`, `initial_state`, and `missed` when
//! resuming, and the seam between them and live frames.
//!
//! The connection joined its user's group before the upgrade, so live notifications
//! may already be queued while the store is read. The [`Seam`] remembers which ids
//! the snapshot already carried and drops their live copies, until the first live
//! notification newer than the snapshot proves (per-user publishes arrive in id
//! order) that no repeat can follow.

use std::collections::HashSet;

use herald_shared::ServerFrame;
use herald_shared::config::{INITIAL_STATE_LIMIT, MISSED_LIMIT};

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
    sent: HashSet<i64>,
    newest: i64,
}

impl Seam {
    pub fn new(ids: impl IntoIterator<Item = i64>) -> Self {
        let sent: HashSet<i64> = ids.into_iter().collect();
        let newest = sent.iter().copied().max().unwrap_or(0);
        Self { sent, newest }
    }

    /// Adds ids sent outside the live stream (a catch-up) to the filter.
    pub fn extend(&mut self, ids: impl IntoIterator<Item = i64>) {
        for id in ids {
            self.newest = self.newest.max(id);
            self.sent.insert(id);
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
            if !self.sent.is_empty() {
                self.sent = HashSet::new();
            }
            return true;
        }
        !self.sent.contains(&id)
    }
}

/// Reads what a connecting user is owed: unread snapshot, and the missed replay.
pub async fn opening(
    node: &Node,
    user: &UserId,
    after: Option<i64>,
) -> Result<Opening, StoreError> {
    let unread = node.store.unread(user, INITIAL_STATE_LIMIT).await?;
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
        let mut missed = node.store.after(user, after, MISSED_LIMIT + 1).await?;
        let truncated = missed.len() as i64 > MISSED_LIMIT;
        missed.truncate(MISSED_LIMIT as usize);
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

#[cfg(test)]
mod tests {
    use super::*;

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
