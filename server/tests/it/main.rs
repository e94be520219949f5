//! Integration tests: the real server on loopback, real WebSocket and HTTP clients,
//! SQLite in a temporary directory and PostgreSQL in a database created per test.
//!
//! One test binary (this one) keeps link times down; each module covers one part of
//! the contract in `docs/PROTOCOL.md`.

mod common;

mod admin;
mod api;
mod bad_input;
mod catch_up;
mod cluster;
mod combine;
mod commands;
mod connect;
mod django;
mod embedded;
mod failover;
mod hostile_broker;
mod lifecycle;
mod listener;
mod nginx;
mod ops;
mod order;
mod redis_cluster;
mod seam;
mod sse;
mod startup;
mod tls;
mod tokens;
