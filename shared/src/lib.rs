//! Herald's wire contract as Rust types, shared by the server, the console and the
//! load generator.
//!
//! This crate owns *what goes on the wire*, never *how it gets there*: it has no
//! tokio, no sockets, no database. Keeping it small means a client (the bench, a
//! test, a future SDK) can speak Herald by depending on it alone.
//!
//! # Layout
//! - [`ids`]: user ids, group names and their validation rules (contract §1).
//! - [`frames`]: WebSocket frames in both directions and the notification object (§3).
//! - [`health`]: node state and dependency health, and the `/readyz` body (§5).
//! - [`admin`]: admin API bodies (§6).
//! - [`api`]: backend API bodies (§4).
//! - [`object`]: bodies and frames are JSON objects, never positional arrays.
//! - [`seconds`]: durations as JSON numbers of seconds.
//! - [`depth`]: how deeply a message or payload may nest.
//! - [`dropped`]: why a node dropped a message it read from Redis (a metric label).
//! - [`close`]: WebSocket close codes the node uses (§3).
//! - [`config`]: environment variable names and defaults (§8).

mod wire_enum;

pub mod admin;
pub mod api;
pub mod close;
pub mod config;
pub mod depth;
pub mod dropped;
pub mod frames;
pub mod health;
pub mod ids;
pub mod object;
pub mod seconds;

pub use frames::{ClientFrame, ErrorCode, Notification, ServerFrame};
pub use ids::{GroupName, IdError, UserId};
