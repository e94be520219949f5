//! Paced publishing through the backend API. Each message carries a [`Probe`]
//! (send time and a sequence number); a message counts as *expected* on every
//! connection it targets once the API accepted it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_shared::config::CLIENT_IDLE_TIMEOUT_S;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::{Mode, User};
use crate::connections::{Probe, now_us};

/// Messages falling due within one tick are published together.
const TICK: Duration = Duration::from_millis(5);

/// What one publishing phase did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PublishStats {
    pub mode: Option<Mode>,
    /// Target rate of this process, messages/s.
    pub rate: f64,
    pub duration_s: f64,
    /// Messages put into requests.
    pub messages: u64,
    /// Messages the API accepted (2xx).
    pub accepted: u64,
    pub requests: u64,
    pub requests_failed: u64,
    /// From the first request to the last answer.
    pub wall_s: f64,
    /// Accepted messages per second over `wall_s`.
    pub achieved_rate: f64,
}

/// Publishes for one process; sequence numbers keep counting across phases.
pub struct Publisher {
    client: reqwest::Client,
    /// Backend API base URLs; requests take turns.
    apis: Vec<String>,
    key: String,
    mode: Mode,
    users: Arc<Vec<User>>,
    group: String,
    batch: usize,
    gate: Arc<Semaphore>,
    seq: AtomicU64,
    /// Accepted messages per user of the plan (broadcast: index 0 holds them all).
    accepted: Arc<Vec<AtomicU64>>,
    errors: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Publisher {
    pub fn new(
        apis: Vec<String>,
        key: String,
        mode: Mode,
        users: Arc<Vec<User>>,
        group: String,
        batch: usize,
        concurrency: usize,
    ) -> Self {
        let accepted = Arc::new((0..users.len().max(1)).map(|_| AtomicU64::new(0)).collect());
        Self {
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(concurrency)
                .pool_idle_timeout(Duration::from_secs(CLIENT_IDLE_TIMEOUT_S))
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client"),
            apis,
            key,
            mode,
            users,
            group,
            batch: batch.clamp(1, herald_shared::api::BATCH_MAX),
            gate: Arc::new(Semaphore::new(concurrency.max(1))),
            seq: AtomicU64::new(0),
            accepted,
            errors: Arc::default(),
        }
    }

    /// Numbers this publisher's messages from `first` on: a second publisher of the
    /// same run (the `--also-broadcast` event) must not reuse the first one's numbers,
    /// or a connection that received both would count one as a duplicate.
    pub fn first_seq(self, first: u64) -> Self {
        self.seq.store(first, Ordering::Relaxed);
        self
    }

    /// How many messages `--once` sends: one per user, or one broadcast event.
    pub fn once_total(&self) -> u64 {
        match self.mode {
            Mode::Broadcast => 1,
            Mode::Notify | Mode::Event => self.users.len() as u64,
        }
    }

    /// Accepted messages so far, per user (broadcast: all in slot 0).
    pub fn accepted_per_user(&self) -> Vec<u64> {
        self.accepted
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect()
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().unwrap().clone()
    }

    /// Sends `total` messages at `rate` per second, then waits for every answer.
    pub async fn run(&self, rate: f64, total: u64) -> PublishStats {
        let mut stats = PublishStats {
            mode: Some(self.mode),
            rate,
            duration_s: if rate > 0.0 { total as f64 / rate } else { 0.0 },
            ..Default::default()
        };
        if rate <= 0.0 || self.users.is_empty() {
            return stats;
        }
        let per_request = match self.mode {
            Mode::Notify | Mode::Event => self.batch as u64,
            Mode::Broadcast => 1,
        };
        let start = Instant::now();
        let mut tasks: JoinSet<(u64, u64, bool)> = JoinSet::new();
        let mut sent = 0u64;
        let mut next_tick = start;
        while sent < total {
            let due = ((rate * start.elapsed().as_secs_f64()).ceil() as u64).min(total);
            if sent >= due {
                // Whatever falls due within a tick goes out together (in batches).
                next_tick += TICK;
                tokio::time::sleep_until(next_tick.max(Instant::now()).into()).await;
                continue;
            }
            let n = (due - sent).min(per_request);
            let permit = self.gate.clone().acquire_owned().await.expect("open");
            let first = self.seq.fetch_add(n, Ordering::Relaxed);
            let req = self.request(first, n);
            let targets: Vec<usize> = (first..first + n).map(|s| self.target(s)).collect();
            let accepted = self.accepted.clone();
            let errors = self.errors.clone();
            tasks.spawn(async move {
                let _permit = permit;
                let ok = match req.send().await {
                    Ok(r) if r.status().is_success() => true,
                    Ok(r) => {
                        let k = format!("publish_http_{}", r.status().as_u16());
                        *errors.lock().unwrap().entry(k).or_default() += 1;
                        false
                    }
                    Err(e) => {
                        let k = if e.is_timeout() {
                            "publish_timeout"
                        } else if e.is_connect() {
                            "publish_connect"
                        } else {
                            "publish_request"
                        };
                        // The kind is counted; the first few say what happened (a
                        // connection closed under the request, a reset, ...).
                        if FAILURES_TOLD.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("herald-bench: publish request failed ({k}): {}", causes(&e));
                        }
                        *errors.lock().unwrap().entry(k.into()).or_default() += 1;
                        false
                    }
                };
                if ok {
                    for t in &targets {
                        accepted[*t].fetch_add(1, Ordering::Relaxed);
                    }
                }
                (n, if ok { n } else { 0 }, ok)
            });
            sent += n;
            while let Some(r) = tasks.try_join_next() {
                tally(&mut stats, r);
            }
        }
        while let Some(r) = tasks.join_next().await {
            tally(&mut stats, r);
        }
        stats.wall_s = start.elapsed().as_secs_f64();
        if stats.wall_s > 0.0 {
            stats.achieved_rate = stats.accepted as f64 / stats.wall_s;
        }
        stats
    }

    /// Index of the user message `seq` goes to (round-robin; broadcast: slot 0).
    fn target(&self, seq: u64) -> usize {
        match self.mode {
            Mode::Broadcast => 0,
            _ => (seq % self.users.len() as u64) as usize,
        }
    }

    fn request(&self, first: u64, n: u64) -> reqwest::RequestBuilder {
        let sent_us = now_us();
        let probe = |seq| serde_json::to_string(&Probe { sent_us, seq }).expect("probe");
        let (path, body) = match self.mode {
            Mode::Notify if n == 1 => {
                let user = &self.users[self.target(first)].id;
                (
                    "/api/v1/notifications".to_owned(),
                    format!(
                        r#"{{"user":{},"message":{}}}"#,
                        json_str(user),
                        probe(first)
                    ),
                )
            }
            Mode::Notify => {
                let items: Vec<String> = (first..first + n)
                    .map(|s| {
                        let user = &self.users[self.target(s)].id;
                        format!(r#"{{"user":{},"message":{}}}"#, json_str(user), probe(s))
                    })
                    .collect();
                (
                    "/api/v1/notifications/batch".to_owned(),
                    format!(r#"{{"notifications":[{}]}}"#, items.join(",")),
                )
            }
            Mode::Event if n == 1 => (
                format!(
                    "/api/v1/groups/user_{}/events",
                    self.users[self.target(first)].id
                ),
                format!(r#"{{"payload":{}}}"#, probe(first)),
            ),
            Mode::Event => {
                let items: Vec<String> = (first..first + n)
                    .map(|s| {
                        let group = format!("user_{}", self.users[self.target(s)].id);
                        format!(r#"{{"group":{},"payload":{}}}"#, json_str(&group), probe(s))
                    })
                    .collect();
                (
                    "/api/v1/events/batch".to_owned(),
                    format!(r#"{{"events":[{}]}}"#, items.join(",")),
                )
            }
            Mode::Broadcast => (
                format!("/api/v1/groups/{}/events", self.group),
                format!(r#"{{"payload":{}}}"#, probe(first)),
            ),
        };
        let api = &self.apis[(first % self.apis.len() as u64) as usize];
        self.client
            .post(format!("{api}{path}"))
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .body(body)
    }
}

fn tally(stats: &mut PublishStats, r: Result<(u64, u64, bool), tokio::task::JoinError>) {
    if let Ok((n, acc, ok)) = r {
        stats.messages += n;
        stats.accepted += acc;
        stats.requests += 1;
        if !ok {
            stats.requests_failed += 1;
        }
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("string")
}

/// Failed publish requests told on stderr so far (at most five are).
static FAILURES_TOLD: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// An error and its sources, `: `-joined: reqwest's own text names only the request.
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::causes;

    #[test]
    fn causes_name_the_error_and_what_caused_it() {
        #[derive(Debug)]
        struct Wrap(std::io::Error);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("request failed")
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Wrap(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection closed before message completed",
        ));
        assert_eq!(
            causes(&e),
            "request failed: connection closed before message completed"
        );
    }
}
