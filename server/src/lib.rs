//! Herald node: real-time notifications over WebSocket, with a backend API to publish
//! them and an admin plane to run the node.
//!
//! # The path of a notification
//!
//! `api` (HTTP POST, API key) → `publish` (per-user order lock) → `store` (commit,
//! id assigned) → `broker` (one serialised frame per publish) → `hub` (group → local
//! connections) → `outbox` (bounded per-connection queue) → `session` (batched write
//! to the socket).
//!
//! # Embedding
//!
//! [`Herald`] runs a node inside a Rust service: its routes merge into the host's
//! axum router, and the host publishes in-process (see [`Herald`] and
//! `server/examples/embedded.rs`).
//!
//! # Public surface
//!
//! - [`Herald`] (with [`PublishError`]): a node inside a Rust service, or on its own
//!   listeners with [`Herald::serve`].
//! - [`run`] (with [`ServerError`] and [`check_admin_bind`]): what the
//!   `herald-server` binary runs.
//! - [`Config`] and the [`config`] module's [`Cli`](config::Cli) and
//!   [`Command`](config::Command): every setting, as flags and environment variables.
//! - [`logging`]: the `herald-server` binary's subscriber (`HERALD_LOG_FORMAT`).
//! - [`secrets`]: the node's three secrets, given or generated, and client tokens
//!   signed with them ([`secrets::Secrets::client_token`]).
//! - [`list_nodes`] (with [`NodeInfo`]): the cluster's node registry, for ops tools.
//! - [`StoreError`]: why the store refused (inside [`ServerError`]).
//! - [`RedisTls`] (with [`RedisTlsError`]): the TLS files of a `rediss://` Redis, and
//!   the one way a Redis client is made from them (the node's, and ops tools').
//!
//! Everything else is the node's inside and private to the crate.
//!
//! # Layout
//! - `server`: builds a node, serves both listeners, stops it in order (under `Herald` and [`run`]).
//! - [`config`]: flags and environment (clap). [`secrets`]: generated or given secrets.
//!   [`logging`]: the binary's log lines (text or JSON).
//! - `auth`: client JWTs, API key, admin token.
//! - `api`: backend routes, health, errors. `upgrade`: the WebSocket handshake and connect seam.
//! - `session`: one task per connection: opening frames, client commands, deliveries.
//! - `sse`: the same connection as a Server-Sent Events stream. `demo`: the live page.
//! - `publish`: store-then-broker, in per-user id order. `catch_up`: sessions' reads of
//!   what they missed, one query for many. `combine`: the group-commit queue both share.
//! - `broker`: the `Broker` trait; in-process and Redis brokers; Django interop.
//! - `cluster`: cluster mode's Redis state: registry, presence, key names. `presence`: connections per user.
//! - `hub`: local routing index. `outbox`: per-connection queue and slow-consumer policy.
//! - `store`: the `Store` trait, SQLite and PostgreSQL.
//! - `redis_client`: every Redis client, from `REDIS_URL` and the TLS files. `tls`: the
//!   rustls provider, and a TLS refusal told apart from an unreachable service.
//! - `lifecycle`: serving/draining/drained and the paced drain. `tasks`: how background tasks start and stop.
//! - `admin`: metrics, status, drain, tuning, audit. `metrics`: the registry.
//! - `tuning`: the OS tuning profile against the host. `limits`: fd budget.
//! - `lock`: std mutexes that a panicking holder does not poison for everyone after it.

#![deny(missing_docs)]

pub(crate) mod accept;
pub(crate) mod admin;
pub(crate) mod api;
pub(crate) mod auth;
pub(crate) mod broker;
pub(crate) mod bucket;
pub(crate) mod catch_up;
pub(crate) mod client_writes;
pub(crate) mod cluster;
pub(crate) mod combine;
pub mod config;
pub(crate) mod demo;
pub(crate) mod heap;
pub(crate) mod herald;
pub(crate) mod hub;
pub(crate) mod issued;
pub(crate) mod lifecycle;
pub(crate) mod limits;
pub(crate) mod lock;
pub mod logging;
pub(crate) mod metrics;
pub(crate) mod node;
pub(crate) mod outbox;
pub(crate) mod presence;
pub(crate) mod publish;
pub(crate) mod redis_client;
pub(crate) mod registration;
pub(crate) mod routes;
pub mod secret;
pub mod secrets;
pub(crate) mod server;
pub(crate) mod session;
pub(crate) mod sse;
pub(crate) mod store;
pub(crate) mod tasks;
pub(crate) mod tls;
pub(crate) mod tuning;
pub(crate) mod upgrade;

pub use cluster::registry::list as list_nodes;
pub use config::Config;
pub use herald::{Herald, PublishError, run};
pub use herald_shared::admin::NodeInfo;
pub use redis_client::{RedisTls, RedisTlsError};
pub use server::{ServerError, check_admin_bind};
pub use store::StoreError;
