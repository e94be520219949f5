//! The network side of the UI: one task per node polling `/metrics` and
//! `/admin/status` concurrently every interval, a discovery task reading the Redis
//! registry (and INFO) every few seconds, and one-shot tasks for actions. All of them
//! only send [`Msg`]s on a small bounded channel; nothing here touches the screen.
//!
//! A node that times out or refuses is reported as [`Msg::Down`] and polled again
//! next interval: the per-request timeout (see [`AdminClient::new`]) is the backoff
//! bound, so one dead node costs its own task a timeout and nobody else anything.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::client::AdminClient;
use crate::discover::{self, Sources, Target};
use crate::msg::{Action, ActionOutcome, Msg, NodeSample};

/// How often the registry and Redis INFO are read.
pub const DISCOVER_EVERY: Duration = Duration::from_secs(3);
/// The tuning report changes rarely: fetched every this many polls (and on demand).
const TUNING_EVERY: u32 = 30;

/// Polls `/metrics` and `/admin/status` at once; both must answer.
pub async fn fetch_sample(client: &AdminClient, admin: &str) -> Result<NodeSample, String> {
    let (m, s) = tokio::join!(client.metrics(admin), client.status(admin));
    Ok(NodeSample {
        at: Instant::now(),
        metrics: m.map_err(|e| format!("metrics: {e}"))?,
        status: s.map_err(|e| format!("status: {e}"))?,
    })
}

/// Performs a confirmed action.
pub async fn perform(
    client: &AdminClient,
    admin: &str,
    action: &Action,
) -> Result<ActionOutcome, String> {
    let r = match action {
        Action::Drain { window_s } => client
            .drain(admin, *window_s)
            .await
            .map(ActionOutcome::Status),
        Action::Undrain => client.undrain(admin).await.map(ActionOutcome::Status),
        Action::ApplyTuning => client.apply_tuning(admin).await.map(ActionOutcome::Applied),
    };
    r.map_err(|e| e.to_string())
}

/// Polls one node until the receiver is gone (or the task is aborted).
async fn poll_node(client: AdminClient, admin: String, interval: Duration, tx: mpsc::Sender<Msg>) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut n = 0u32;
    loop {
        tick.tick().await;
        let msg = match fetch_sample(&client, &admin).await {
            Ok(s) => Msg::Sample(admin.clone(), Box::new(s)),
            Err(e) => Msg::Down(admin.clone(), e),
        };
        let up = matches!(msg, Msg::Sample(..));
        if tx.send(msg).await.is_err() {
            return;
        }
        if up && n.is_multiple_of(TUNING_EVERY) {
            let r = client.tuning(&admin).await.map_err(|e| e.to_string());
            if tx.send(Msg::Tuning(admin.clone(), r)).await.is_err() {
                return;
            }
        }
        n = n.wrapping_add(1);
    }
}

/// Discovery plus one poller per node; returns the supervising task. Aborting it (or
/// dropping the receiver) stops every poller too.
pub fn spawn(
    client: AdminClient,
    sources: Sources,
    interval: Duration,
    tx: mpsc::Sender<Msg>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut pollers = Pollers(HashMap::new());
        let mut con = None;
        let mut tick = tokio::time::interval(DISCOVER_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut stopped = false;
        while !stopped {
            tick.tick().await;
            let mut targets: Vec<Target> = Vec::new();
            let mut redis_ok = true;
            if let Some(url) = &sources.redis {
                if con.is_none() {
                    con = discover::connect(url, &sources.redis_tls)
                        .await
                        .map_err(|e| redis_err(&tx, e))
                        .ok();
                }
                if let Some(c) = con.as_mut() {
                    match discover::registry(c, &sources.prefix).await {
                        Ok(list) => targets.extend(list.iter().map(Target::from_info)),
                        Err(e) => {
                            redis_ok = false;
                            redis_err(&tx, e);
                        }
                    }
                    let info = discover::info(c).await.map_err(|e| e.to_string());
                    redis_ok &= info.is_ok();
                    stopped |= tx.send(Msg::Redis(info)).await.is_err();
                } else {
                    redis_ok = false;
                }
                if !redis_ok {
                    con = None;
                    // Keep polling what we had: a Redis outage is not a node outage.
                    targets.extend(pollers.0.keys().map(|a| Target::from_url(a)));
                }
            }
            for n in &sources.nodes {
                let t = Target::from_url(n);
                if !targets.iter().any(|o| o.admin == t.admin) {
                    targets.push(t);
                }
            }
            pollers.0.retain(|admin, h| {
                let keep = targets.iter().any(|t| &t.admin == admin);
                if !keep {
                    h.abort();
                }
                keep
            });
            for t in &targets {
                pollers.0.entry(t.admin.clone()).or_insert_with(|| {
                    tokio::spawn(poll_node(
                        client.clone(),
                        t.admin.clone(),
                        interval,
                        tx.clone(),
                    ))
                });
            }
            stopped |= tx.send(Msg::Targets(targets)).await.is_err();
        }
    })
}

/// The per-node pollers; dropping it (the supervisor ended or was aborted) stops them.
struct Pollers(HashMap<String, JoinHandle<()>>);

impl Drop for Pollers {
    fn drop(&mut self) {
        for h in self.0.values() {
            h.abort();
        }
    }
}

fn redis_err(tx: &mpsc::Sender<Msg>, e: discover::DiscoverError) {
    // try_send: discovery must not wait behind a full channel to report an error.
    let _ = tx.try_send(Msg::Redis(Err(e.to_string())));
}
