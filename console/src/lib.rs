//! herald-console: the operators' terminal console of a Herald fleet, and the
//! scriptable subcommands (status, drain, undrain, tuning, rollout) built on the
//! same code.
//!
//! It speaks only the admin API (contract §6) and reads the Redis node registry;
//! it never needs SSH. The split follows tokio-console: the network lives in
//! tasks that send [`msg::Msg`]s, the model is updated by one pure function, and
//! the view draws the model; the UI never awaits HTTP.
//!
//! # Layout
//! - [`cli`]: flags and subcommands (clap); what `main` dispatches to.
//! - [`client`]: the admin API over HTTP, each call with a short timeout.
//! - [`discover`]: the Redis registry, node resolution (`id` or admin URL), Redis INFO.
//! - [`local`]: with no flags, the node on this host and its data dir's admin token.
//! - [`scrape`]: Prometheus text → [`scrape::Metrics`].
//! - [`poller`]: one task per node polling `/metrics` and `/admin/status`.
//! - [`msg`], [`app`]: the Elm-style model: `App::update(Msg) -> Vec<Effect>`, no I/O.
//! - [`state`]: per-node sample history; rates and quantiles from deltas.
//! - [`view`]: fleet table, node detail, help; [`input`]: key predicates.
//! - [`term`]: terminal setup/restore (also on panic); [`ui`]: the event loop.

pub mod app;
pub mod cli;
pub mod client;
pub mod discover;
pub mod input;
pub mod local;
pub mod msg;
pub mod poller;
pub mod rollout;
pub mod scrape;
pub mod state;
pub mod term;
pub mod ui;
pub mod view;
