//! Client frames and their replies (contract §3): ping, mark_read, mark_all_read,
//! subscribe, unsubscribe.
//!
//! Each handler returns the one reply frame to send; none closes the connection
//! (bad input gets an `error` frame and the connection stays open).

use herald_shared::{ClientFrame, ErrorCode, GroupName, ServerFrame};

use crate::auth::Identity;
use crate::client_writes::Refused;
use crate::node::Node;
use crate::registration::Registration;
use crate::store::StoreError;

/// Most ids one `mark_read` may carry.
pub const MARK_READ_MAX: usize = 1000;
/// Most groups one connection may be in, its own included.
pub const GROUPS_MAX: usize = 100;

pub fn error(code: ErrorCode, message: impl Into<String>) -> ServerFrame {
    ServerFrame::Error {
        code,
        message: message.into(),
    }
}

/// The answer to a client write that [`ClientWrites`] refused: nothing was written.
///
/// [`ClientWrites`]: crate::client_writes::ClientWrites
fn refused(node: &Node, why: Refused) -> ServerFrame {
    node.metrics.client_writes_refused.inc();
    error(
        ErrorCode::RateLimited,
        match why {
            Refused::User => "too many writes for this user; slow down",
            Refused::Busy => "the store is busy; try again shortly",
        },
    )
}

fn store_error(op: &'static str, e: StoreError) -> ServerFrame {
    tracing::warn!(error = %e, op, "store failed during a client command");
    error(ErrorCode::Internal, "the store is unavailable; try again")
}

/// Handles one parsed client frame.
pub async fn handle(
    node: &Node,
    ident: &Identity,
    reg: &mut Registration,
    frame: ClientFrame,
) -> ServerFrame {
    match frame {
        ClientFrame::Subscribe { group } => subscribe(ident, reg, group).await,
        ClientFrame::Unsubscribe { group } => unsubscribe(ident, reg, group),
        other => handle_stateless(node, ident, other)
            .await
            .expect("only group frames need the connection"),
    }
}

/// Handles a frame that needs only the user, not its connection (what an SSE
/// client posts); `None` for `subscribe` and `unsubscribe`, which need one.
pub async fn handle_stateless(
    node: &Node,
    ident: &Identity,
    frame: ClientFrame,
) -> Option<ServerFrame> {
    Some(match frame {
        ClientFrame::Subscribe { .. } | ClientFrame::Unsubscribe { .. } => return None,
        ClientFrame::Ping => ServerFrame::Pong,
        ClientFrame::MarkRead { ids } => {
            if ids.len() > MARK_READ_MAX {
                return Some(error(
                    ErrorCode::BadRequest,
                    format!("mark_read takes at most {MARK_READ_MAX} ids"),
                ));
            }
            let _slot = match node.client_writes.admit(&ident.user).await {
                Ok(slot) => slot,
                Err(why) => return Some(refused(node, why)),
            };
            match node.store.mark_read(&ident.user, &ids).await {
                Ok((ids, unread_count)) => ServerFrame::MarkedRead {
                    ids: Some(ids),
                    all: false,
                    unread_count,
                },
                Err(e) => store_error("mark_read", e),
            }
        }
        ClientFrame::MarkAllRead => {
            let _slot = match node.client_writes.admit(&ident.user).await {
                Ok(slot) => slot,
                Err(why) => return Some(refused(node, why)),
            };
            match node.store.mark_all_read(&ident.user).await {
                Ok(unread_count) => ServerFrame::MarkedRead {
                    ids: None,
                    all: true,
                    unread_count,
                },
                Err(e) => store_error("mark_all_read", e),
            }
        }
    })
}

async fn subscribe(ident: &Identity, reg: &mut Registration, group: String) -> ServerFrame {
    let group = match GroupName::parse(group) {
        Ok(g) => g,
        Err(e) => return error(ErrorCode::BadRequest, format!("group name {e}")),
    };
    if !ident.may_join(&group) {
        return error(
            ErrorCode::Forbidden,
            format!("token does not allow group {group}"),
        );
    }
    if !reg.groups.contains(&group) && reg.groups.len() >= GROUPS_MAX {
        return error(
            ErrorCode::BadRequest,
            format!("at most {GROUPS_MAX} groups per connection"),
        );
    }
    match reg.join(group.clone()).await {
        Ok(()) => ServerFrame::Subscribed {
            group: group.into_string(),
        },
        Err(e) => error(ErrorCode::Internal, format!("subscribe failed: {e}")),
    }
}

fn unsubscribe(ident: &Identity, reg: &mut Registration, group: String) -> ServerFrame {
    let group = match GroupName::parse(group) {
        Ok(g) => g,
        Err(e) => return error(ErrorCode::BadRequest, format!("group name {e}")),
    };
    if group == ident.user.group() {
        return error(
            ErrorCode::BadRequest,
            "a connection always stays in its own user group",
        );
    }
    reg.leave(&group);
    ServerFrame::Unsubscribed {
        group: group.into_string(),
    }
}
