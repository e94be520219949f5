//! The console's model and its one transition function, Elm style:
//! [`App::update`] takes a [`Msg`] and returns the side effects to perform
//! ([`Effect`]s); it never performs I/O itself, so it runs the same in tests.

use std::collections::VecDeque;
use std::time::Duration;

use crate::input;
use crate::msg::{Action, ActionOutcome, Msg};
use crate::state::{Fleet, Health, NodeState};

/// What the event loop must do for the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Perform a confirmed action on the node at this admin URL.
    Act { admin: String, action: Action },
    /// Fetch this node's tuning report now.
    FetchTuning(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    Fleet,
    Detail,
}

/// What the keyboard is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Typing a filter.
    Filter,
    /// Typing a drain window (seconds) for the node at this admin URL.
    DrainWindow {
        admin: String,
        input: String,
    },
    /// Waiting for y/n.
    Confirm {
        admin: String,
        action: Action,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Id,
    State,
    Connections,
    Delivered,
    P99,
}

impl Sort {
    pub fn next(self) -> Self {
        match self {
            Sort::Id => Sort::State,
            Sort::State => Sort::Connections,
            Sort::Connections => Sort::Delivered,
            Sort::Delivered => Sort::P99,
            Sort::P99 => Sort::Id,
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Sort::Id => "id",
            Sort::State => "state",
            Sort::Connections => "conns",
            Sort::Delivered => "deliv/s",
            Sort::P99 => "p99",
        }
    }
}

/// Default drain window offered by the prompt.
pub const DEFAULT_WINDOW_S: u64 = 30;
/// Results kept for the log line(s).
const LOG: usize = 20;

#[derive(Debug, Clone)]
pub struct App {
    pub fleet: Fleet,
    pub screen: Screen,
    pub mode: Mode,
    /// Index into [`App::rows`].
    pub selected: usize,
    pub sort: Sort,
    pub filter: String,
    pub help: bool,
    /// Action results, newest last.
    pub log: VecDeque<String>,
    pub quit: bool,
    pub interval: Duration,
    /// Where nodes come from, for the header.
    pub source: String,
}

impl App {
    pub fn new(interval: Duration, source: String) -> Self {
        Self {
            fleet: Fleet::default(),
            screen: Screen::Fleet,
            mode: Mode::Normal,
            selected: 0,
            sort: Sort::Id,
            filter: String::new(),
            help: false,
            log: VecDeque::new(),
            quit: false,
            interval,
            source,
        }
    }

    /// The nodes shown, filtered and sorted.
    pub fn rows(&self) -> Vec<&NodeState> {
        let f = self.filter.to_lowercase();
        let mut rows: Vec<&NodeState> = self
            .fleet
            .nodes
            .values()
            .filter(|n| {
                f.is_empty()
                    || n.id().to_lowercase().contains(&f)
                    || n.health().label().contains(&f)
                    || n.last().is_some_and(|s| s.status.version.contains(&f))
            })
            .collect();
        let conns = |n: &NodeState| n.last().map_or(0, |s| s.status.connections);
        match self.sort {
            Sort::Id => rows.sort_by(|a, b| a.id().cmp(b.id())),
            Sort::State => rows.sort_by_key(|n| (n.health(), n.id().to_owned())),
            Sort::Connections => rows.sort_by_key(|n| std::cmp::Reverse(conns(n))),
            Sort::Delivered => rows.sort_by(|a, b| {
                b.delivered_per_s()
                    .unwrap_or(0.0)
                    .total_cmp(&a.delivered_per_s().unwrap_or(0.0))
            }),
            Sort::P99 => rows.sort_by(|a, b| {
                b.latency(0.99)
                    .unwrap_or(0.0)
                    .total_cmp(&a.latency(0.99).unwrap_or(0.0))
            }),
        }
        rows
    }

    pub fn selected_node(&self) -> Option<&NodeState> {
        let rows = self.rows();
        rows.get(self.selected.min(rows.len().saturating_sub(1)))
            .copied()
    }

    fn note(&mut self, line: String) {
        if self.log.len() == LOG {
            self.log.pop_front();
        }
        self.log.push_back(line);
    }

    pub fn update(&mut self, msg: Msg) -> Vec<Effect> {
        match msg {
            Msg::Key(k) if !input::should_ignore(&k) => return self.key(k),
            Msg::Key(_) | Msg::Resize => {}
            Msg::Tick => self.fleet.tick(),
            Msg::Targets(t) => {
                let new: Vec<String> = t
                    .iter()
                    .filter(|t| !self.fleet.nodes.contains_key(&t.admin))
                    .map(|t| t.admin.clone())
                    .collect();
                self.fleet.set_targets(t);
                return new.into_iter().map(Effect::FetchTuning).collect();
            }
            Msg::Sample(admin, s) => self.fleet.node_mut(&admin).push(*s),
            Msg::Down(admin, why) => self.fleet.node_mut(&admin).down = Some(why),
            Msg::Tuning(admin, r) => self.fleet.node_mut(&admin).tuning = Some(r),
            Msg::Redis(r) => self.fleet.redis = Some(r),
            Msg::Done(admin, action, r) => {
                let id = self.fleet.node_mut(&admin).id().to_owned();
                let line = match &r {
                    Err(e) => format!("✗ {id}: {} failed: {e}", action.verb()),
                    Ok(ActionOutcome::Status(s)) => format!(
                        "✓ {id}: {} → {} ({} connections)",
                        action.verb(),
                        s.state,
                        s.connections
                    ),
                    Ok(ActionOutcome::Applied(rep)) => {
                        let failed = rep
                            .items
                            .iter()
                            .filter(|i| i.result == herald_shared::admin::ApplyResult::Failed)
                            .count();
                        format!(
                            "{} {id}: apply tuning: {} items, {failed} failed",
                            if failed == 0 { "✓" } else { "✗" },
                            rep.items.len()
                        )
                    }
                };
                self.note(line);
                if action == Action::ApplyTuning {
                    return vec![Effect::FetchTuning(admin)];
                }
            }
        }
        Vec::new()
    }

    fn key(&mut self, k: crossterm::event::KeyEvent) -> Vec<Effect> {
        match std::mem::replace(&mut self.mode, Mode::Normal) {
            Mode::Filter => {
                if input::is_enter(&k) {
                } else if input::is_back(&k) {
                    self.filter.clear();
                } else if input::is_backspace(&k) {
                    self.filter.pop();
                    self.mode = Mode::Filter;
                } else if let Some(c) = input::typed(&k) {
                    self.filter.push(c);
                    self.selected = 0;
                    self.mode = Mode::Filter;
                } else {
                    self.mode = Mode::Filter;
                }
                Vec::new()
            }
            Mode::DrainWindow { admin, mut input } => {
                if input::is_enter(&k) {
                    let window_s = input.parse().unwrap_or(DEFAULT_WINDOW_S);
                    self.mode = Mode::Confirm {
                        admin,
                        action: Action::Drain { window_s },
                    };
                } else if input::is_back(&k) {
                } else {
                    if input::is_backspace(&k) {
                        input.pop();
                    } else if let Some(c) = input::typed(&k).filter(char::is_ascii_digit) {
                        input.push(c);
                    }
                    self.mode = Mode::DrainWindow { admin, input };
                }
                Vec::new()
            }
            Mode::Confirm { admin, action } => {
                if input::is_yes(&k) {
                    let id = self.fleet.node_mut(&admin).id().to_owned();
                    self.note(format!("… {id}: {} requested", action.verb()));
                    vec![Effect::Act { admin, action }]
                } else if input::is_no(&k) {
                    Vec::new()
                } else {
                    self.mode = Mode::Confirm { admin, action };
                    Vec::new()
                }
            }
            Mode::Normal => self.normal_key(k),
        }
    }

    fn normal_key(&mut self, k: crossterm::event::KeyEvent) -> Vec<Effect> {
        if input::is_quit(&k) {
            self.quit = true;
        } else if input::is_help(&k) {
            self.help = !self.help;
        } else if input::is_back(&k) {
            if self.help {
                self.help = false;
            } else {
                self.screen = Screen::Fleet;
            }
        } else if input::is_up(&k) {
            self.selected = self.selected.saturating_sub(1);
        } else if input::is_down(&k) {
            self.selected = (self.selected + 1).min(self.rows().len().saturating_sub(1));
        } else if input::is_sort(&k) {
            self.sort = self.sort.next();
        } else if input::is_filter(&k) {
            self.mode = Mode::Filter;
        } else if let Some(node) = self.selected_node() {
            let admin = node.target.admin.clone();
            let reachable = node.health() != Health::Unreachable;
            if input::is_enter(&k) {
                self.screen = Screen::Detail;
                return vec![Effect::FetchTuning(admin)];
            } else if input::is_drain(&k) && reachable {
                self.mode = Mode::DrainWindow {
                    admin,
                    input: DEFAULT_WINDOW_S.to_string(),
                };
            } else if input::is_undrain(&k) && reachable {
                self.mode = Mode::Confirm {
                    admin,
                    action: Action::Undrain,
                };
            } else if input::is_apply_tuning(&k) && reachable {
                self.mode = Mode::Confirm {
                    admin,
                    action: Action::ApplyTuning,
                };
            }
        }
        Vec::new()
    }
}
