//! WebSocket close codes the node uses (contract §3), with the reason each implies
//! for a client's reconnect logic.

/// Normal closure: the client asked to leave, or the node is shutting down for good.
pub const NORMAL: u16 = 1000;
/// A binary frame arrived: Herald speaks JSON text only.
pub const UNSUPPORTED_DATA: u16 = 1003;
/// Policy violation: sustained frame-rate abuse, or the token expired while connected.
pub const POLICY: u16 = 1008;
/// A text frame exceeded the configured maximum.
pub const TOO_BIG: u16 = 1009;
/// The node failed internally; reconnect with `after`.
pub const INTERNAL: u16 = 1011;
/// Draining ("service restart"): reconnect with jitter to another node, passing `after`.
pub const SERVICE_RESTART: u16 = 1012;
/// Slow consumer ("try again later"): the outbound queue overflowed or aged past its
/// expiry; reconnect with `after`, nothing stored is lost.
pub const TRY_AGAIN_LATER: u16 = 1013;
