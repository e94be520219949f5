//! Rolling upgrades over the admin API: for each node in turn, drain and wait until
//! drained, run the operator's command (`sh -c`, `{node}` → the node id), wait until
//! a new process of the node answers and reports its version, undrain, wait until ready
//! (`/readyz` 200 on its public address, or `serving` in its status), then the next.
//! The first failure stops the rollout and names the node and the step.

use std::io::Write;
use std::time::{Duration, Instant};

use herald_shared::health::NodeState;

use crate::client::AdminClient;
use crate::discover::{Sources, Target};

/// How often the waits poll.
const POLL: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
#[error("rollout stopped at node {node}, step {step}: {why}")]
pub struct RolloutError {
    pub node: String,
    pub step: &'static str,
    pub why: String,
}

/// Polls a node's status until it is `drained`, printing progress as it changes.
pub async fn wait_drained(
    client: &AdminClient,
    admin: &str,
    limit: Duration,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last = None;
    loop {
        match client.status(admin).await {
            Ok(s) if s.state == NodeState::Drained => {
                writeln!(
                    out,
                    "{}: drained after {:.1} s",
                    s.node,
                    start.elapsed().as_secs_f64()
                )?;
                return Ok(());
            }
            Ok(s) if s.state == NodeState::Serving => {
                anyhow::bail!("{} is serving again (undrained by someone?)", s.node)
            }
            Ok(s) => {
                if last != Some(s.drain_remaining) {
                    writeln!(
                        out,
                        "{}: draining, {} connections left",
                        s.node, s.drain_remaining
                    )?;
                    last = Some(s.drain_remaining);
                }
            }
            Err(e) => writeln!(out, "{admin}: {e} (retrying)")?,
        }
        if start.elapsed() > limit {
            anyhow::bail!("not drained within {limit:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The node's current target: re-read from the registry by id (it may come back on
/// new addresses), else as it was.
async fn refresh(sources: &Sources, client: &AdminClient, t: &Target) -> Target {
    match &t.id {
        Some(id) if sources.redis.is_some() => sources
            .resolve(id, client)
            .await
            .unwrap_or_else(|_| t.clone()),
        _ => t.clone(),
    }
}

pub async fn rollout(
    client: &AdminClient,
    sources: &Sources,
    exec: &str,
    window_s: u64,
    step: Duration,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let mut targets = sources.targets().await?;
    // Ids for --node targets come from their status.
    for t in targets.iter_mut().filter(|t| t.id.is_none()) {
        let s = client.status(&t.admin).await.map_err(|e| RolloutError {
            node: t.admin.clone(),
            step: "status",
            why: e.to_string(),
        })?;
        t.id = Some(s.node);
    }
    targets.sort_by(|a, b| a.id.cmp(&b.id));
    anyhow::ensure!(!targets.is_empty(), "no nodes: give --redis or --node");
    writeln!(out, "rollout over {} nodes", targets.len())?;
    for (i, t) in targets.iter().enumerate() {
        let id = t.id.clone().unwrap_or_default();
        let fail = |step: &'static str, why: String| RolloutError {
            node: id.clone(),
            step,
            why,
        };
        writeln!(
            out,
            "[{}/{}] {id}: draining (window {window_s} s)",
            i + 1,
            targets.len()
        )?;
        client
            .drain(&t.admin, window_s)
            .await
            .map_err(|e| fail("drain", e.to_string()))?;
        wait_drained(client, &t.admin, step + Duration::from_secs(window_s), out)
            .await
            .map_err(|e| fail("wait drained", e.to_string()))?;
        let cmd = exec.replace("{node}", &id);
        writeln!(out, "{id}: running {cmd}")?;
        let exec_started = Instant::now();
        let st = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .status()
            .await
            .map_err(|e| fail("exec", e.to_string()))?;
        if !st.success() {
            return Err(fail("exec", format!("command exited with {st}")).into());
        }
        // Back: a NEW process answers (it serves, or started after the command
        // began; the old one, drained, must not be taken for it) and reports a version.
        let start = Instant::now();
        let (target, version) = loop {
            let cur = refresh(sources, client, t).await;
            if let Ok(s) = client.status(&cur.admin).await
                && !s.version.is_empty()
                && (s.state == NodeState::Serving || s.uptime_s <= exec_started.elapsed().as_secs())
            {
                break (cur, s.version);
            }
            if start.elapsed() > step {
                return Err(fail("wait back", format!("no status within {step:?}")).into());
            }
            tokio::time::sleep(POLL).await;
        };
        writeln!(out, "{id}: back, version {version}")?;
        client
            .undrain(&target.admin)
            .await
            .map_err(|e| fail("undrain", e.to_string()))?;
        let start = Instant::now();
        loop {
            let ready = match &target.public {
                Some(p) => client.ready(p).await,
                None => client
                    .status(&target.admin)
                    .await
                    .is_ok_and(|s| s.state == NodeState::Serving),
            };
            if ready {
                break;
            }
            if start.elapsed() > step {
                return Err(fail("wait ready", format!("not ready within {step:?}")).into());
            }
            tokio::time::sleep(POLL).await;
        }
        writeln!(out, "{id}: serving, ready")?;
    }
    writeln!(out, "rollout done")?;
    Ok(())
}
