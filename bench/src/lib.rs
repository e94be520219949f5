//! `herald-bench`: a load generator for Herald nodes.
//!
//! One process holds N WebSocket connections (spread over several local source
//! addresses and several nodes), publishes through the backend API at a fixed rate,
//! and reports what arrived, how fast, and what it cost the server.
//!
//! # Layout
//! - [`config`]: command line (clap): `run`, `ramp`, `merge`; users and shards.
//! - [`connections`]: dialing (bound source address), `initial_state`, the read loop
//!   that records latency, duplicates and errors.
//! - [`publisher`]: paced publishing (notification batches, user events, broadcasts).
//! - [`hist`]: HDR histograms shared by many tasks, summarised and serialised.
//! - [`memory`]: handing what the connect burst freed back to the OS.
//! - [`procstat`]: RSS and CPU of server processes from `/proc`.
//! - [`report`]: the JSON report, the summary line, and merging reports of shards.
//! - [`runner`]: the phases of a run and of a ramp.
//! - [`upgrade`]: the WebSocket handshake, leaving no handshake buffer behind.

pub mod config;
pub mod connections;
pub mod hist;
pub mod memory;
pub mod procstat;
pub mod publisher;
pub mod report;
pub mod runner;
pub mod upgrade;
