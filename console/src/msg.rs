//! Everything that can happen to the console, as one enum: keys, samples, failures,
//! discovery, and the results of actions. The event loop feeds these to
//! [`crate::app::App::update`].

use std::time::Instant;

use crossterm::event::KeyEvent;
use herald_shared::admin::{AdminStatus, ApplyReport, TuningReport};

use crate::discover::{RedisInfo, Target};
use crate::scrape::Metrics;

/// One poll of one node: its metrics and status, taken together.
#[derive(Debug, Clone)]
pub struct NodeSample {
    pub at: Instant,
    pub metrics: Metrics,
    pub status: AdminStatus,
}

/// An action an operator can take on a node (after confirming it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Drain { window_s: u64 },
    Undrain,
    ApplyTuning,
}

impl Action {
    pub fn verb(&self) -> String {
        match self {
            Action::Drain { window_s } => format!("drain (window {window_s} s)"),
            Action::Undrain => "undrain".into(),
            Action::ApplyTuning => "apply tuning".into(),
        }
    }
}

/// What an action came back with.
#[derive(Debug, Clone)]
pub enum ActionOutcome {
    Status(AdminStatus),
    Applied(ApplyReport),
}

#[derive(Debug, Clone)]
pub enum Msg {
    Key(KeyEvent),
    /// The terminal was resized (the next draw fits the new size).
    Resize,
    /// Once per interval: the cluster totals' history advances.
    Tick,
    /// The nodes to show now (registry plus `--node`), from discovery.
    Targets(Vec<Target>),
    /// A node answered both `/metrics` and `/admin/status`. Keyed by admin URL.
    Sample(String, Box<NodeSample>),
    /// A node did not answer (timeout, refused, bad answer).
    Down(String, String),
    Tuning(String, Result<TuningReport, String>),
    Redis(Result<RedisInfo, String>),
    /// An action ended; `Err` carries why it failed.
    Done(String, Action, Result<ActionOutcome, String>),
}
