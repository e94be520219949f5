//! Configuration names and defaults (contract §8), shared so that the console, the
//! bench and the docs name settings exactly as the server reads them.

pub const LISTEN: &str = "HERALD_LISTEN";
pub const ADMIN_LISTEN: &str = "HERALD_ADMIN_LISTEN";
pub const NODE_ID: &str = "HERALD_NODE_ID";
pub const DATABASE_URL: &str = "DATABASE_URL";
pub const REDIS_URL: &str = "REDIS_URL";
/// PEM file of the CAs trusted for a `rediss://` `REDIS_URL` (default: the system's).
pub const REDIS_CA_FILE: &str = "HERALD_REDIS_CA_FILE";
/// PEM client certificate (chain) for mutual TLS to Redis; with [`REDIS_KEY_FILE`].
pub const REDIS_CERT_FILE: &str = "HERALD_REDIS_CERT_FILE";
/// PEM private key of [`REDIS_CERT_FILE`].
pub const REDIS_KEY_FILE: &str = "HERALD_REDIS_KEY_FILE";
pub const JWT_SECRET: &str = "HERALD_JWT_SECRET";
pub const JWT_AUDIENCE: &str = "HERALD_JWT_AUDIENCE";
pub const JWT_ISSUER: &str = "HERALD_JWT_ISSUER";
pub const API_KEY: &str = "HERALD_API_KEY";
pub const ADMIN_TOKEN: &str = "HERALD_ADMIN_TOKEN";
pub const DATA_DIR: &str = "HERALD_DATA_DIR";

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8000";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9091";
/// Where a single node keeps its SQLite file and generated secrets.
pub const DEFAULT_DATA_DIR: &str = "./herald-data";
/// Seconds a node waits for a request head (`HERALD_HEADER_TIMEOUT_S`), counted from
/// the accept or the end of the previous response: so also how long it keeps an idle
/// keep-alive connection before it closes it, without an answer.
pub const DEFAULT_HEADER_TIMEOUT_S: u64 = 10;
/// How long Herald's own HTTP clients (the load generator, the console) keep an idle
/// pooled connection to a node: well inside [`DEFAULT_HEADER_TIMEOUT_S`], so a request
/// never goes out on a connection the node is closing at that moment (it would fail
/// with no answer, and a `POST` cannot be sent again blindly).
pub const CLIENT_IDLE_TIMEOUT_S: u64 = DEFAULT_HEADER_TIMEOUT_S / 2;
/// The file in the data dir where a single node keeps the secrets it generated
/// (read by the console to find the admin token on the node's host).
pub const SECRETS_FILE: &str = "secrets.json";

/// The WebSocket endpoint.
pub const WS_PATH: &str = "/ws/notifications/";
/// The Server-Sent Events stream, for networks that block WebSockets.
pub const SSE_PATH: &str = "/sse/notifications/";
/// Client commands (`mark_read`, `mark_all_read`, `ping`) for SSE clients.
pub const SSE_COMMANDS_PATH: &str = "/sse/notifications/commands";
/// The live page, served with the client library.
pub const DEMO_PATH: &str = "/demo/";
/// Newest unread notifications sent in `initial_state`.
pub const INITIAL_STATE_LIMIT: i64 = 50;
/// Most notifications in one `missed` frame.
pub const MISSED_LIMIT: i64 = 1000;
/// Most bytes of notifications (their JSON, as in the frame) in one `initial_state`
/// or `missed` frame: a full frame of large messages would otherwise be many
/// megabytes, built and held by the node for every connection that opens.
pub const OPENING_MAX_BYTES: usize = 1024 * 1024;
