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
//! axum router, and the host publishes in-process (see the [`herald`] module and
//! `server/examples/embedded.rs`).
//!
//! # Layout
//! - [`server`]: `run`/`serve`: builds a [`node::Node`] and serves both listeners; ordered shutdown.
//! - [`config`]: flags and environment (clap). [`secrets`]: generated or given secrets.
//! - [`auth`]: client JWTs, API key, admin token.
//! - [`api`]: backend routes, health, errors. [`upgrade`]: the WebSocket handshake and connect seam.
//! - [`session`]: one task per connection: opening frames, client commands, deliveries.
//! - [`sse`]: the same connection as a Server-Sent Events stream. [`demo`]: the live page.
//! - [`publish`]: store-then-broker, in per-user id order.
//! - [`broker`]: the `Broker` trait; in-process and Redis brokers; Django interop.
//! - [`cluster`]: cluster mode's Redis state: registry, presence, key names. [`presence`]: connections per user.
//! - [`hub`]: local routing index. [`outbox`]: per-connection queue and slow-consumer policy.
//! - [`store`]: the `Store` trait, SQLite and PostgreSQL.
//! - [`lifecycle`]: serving/draining/drained and the paced drain. [`tasks`]: how background tasks start and stop.
//! - [`admin`]: metrics, status, drain, tuning, audit. [`metrics`]: the registry.
//! - [`tuning`]: the OS tuning profile against the host. [`limits`]: fd budget.
//! - `lock`: std mutexes that a panicking holder does not poison for everyone after it.

pub mod admin;
pub mod api;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod herald;
pub mod hub;
pub mod lifecycle;
pub mod limits;
mod lock;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod presence;
pub mod publish;
pub mod registration;
pub mod routes;
pub mod secrets;
pub mod server;
pub mod session;
pub mod sse;
pub mod store;
pub mod tasks;
pub mod tuning;
pub mod upgrade;

pub use config::Config;
pub use herald::{Herald, PublishError};
pub use server::{ServerError, build, run, serve};
