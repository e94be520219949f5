//! Flags and subcommands. With no subcommand the console runs interactively
//! ([`crate::ui`]); the subcommands print and exit, for scripts, and share the
//! client, discovery and formatting code with the UI.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use herald_shared::admin::{AdminStatus, TuningReport};
use herald_shared::config as names;
use serde::Serialize;

use crate::client::AdminClient;
use crate::discover::{Sources, Target};
use crate::local;
use crate::msg::NodeSample;
use crate::state::NodeState;
use crate::view::fleet;

#[derive(Debug, Parser)]
#[command(
    name = "herald-console",
    version,
    about = "Watch and operate a Herald fleet"
)]
pub struct Args {
    /// Redis URL of the node registry.
    #[arg(long, env = "REDIS_URL", global = true)]
    pub redis: Option<String>,
    /// TLS files for a `rediss://` `--redis`, as the nodes take them.
    #[command(flatten)]
    pub redis_tls: herald_server::RedisTls,
    /// Registry key prefix (the nodes' HERALD_REDIS_PREFIX).
    #[arg(
        long,
        env = "HERALD_REDIS_PREFIX",
        default_value = "herald",
        global = true
    )]
    pub prefix: String,
    /// A node's admin URL (repeatable), for nodes not in (or without) Redis.
    #[arg(long = "node", global = true)]
    pub nodes: Vec<String>,
    /// Admin token.
    #[arg(
        long,
        env = "HERALD_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// With no --node and no --redis: the admin address of the node on this host.
    #[arg(long, env = names::ADMIN_LISTEN, default_value = names::DEFAULT_ADMIN_LISTEN, global = true)]
    pub local: SocketAddr,
    /// With no --token: the node data dir whose secrets.json holds the admin token.
    #[arg(long, env = names::DATA_DIR, default_value = names::DEFAULT_DATA_DIR, global = true)]
    pub data_dir: PathBuf,
    /// Polling interval (`1s`, `500ms`).
    #[arg(long, default_value = "1s", value_parser = parse_duration, global = true)]
    pub interval: Duration,
    /// Timeout of each admin request.
    #[arg(long, default_value = "900ms", value_parser = parse_duration, global = true)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
    /// Set by [`Args::find_local`]: the one node is this host's.
    #[arg(skip)]
    pub found_local: bool,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Every node's state and figures, once.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Drain a node (id or admin URL).
    Drain {
        node: String,
        /// Seconds over which to close its connections.
        #[arg(long, default_value_t = 30)]
        window: u64,
        /// Wait until the node is drained.
        #[arg(long)]
        wait: bool,
    },
    /// Put a drained node back in service.
    Undrain { node: String },
    /// A node's OS tuning report; `--apply` applies the profile.
    Tuning {
        node: String,
        #[arg(long)]
        apply: bool,
    },
    /// For each node in turn: drain, run the command, wait until back and ready,
    /// undrain. Stops at the first failure.
    Rollout {
        /// Shell command; `{node}` is replaced by the node id.
        #[arg(long)]
        exec: String,
        #[arg(long, default_value_t = 30)]
        window: u64,
        /// Longest wait for each step (drained, back, ready).
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        step_timeout: Duration,
    },
}

/// `1s`, `250ms`, `2m`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?}"))?;
    if v <= 0.0 {
        return Err("must be positive".into());
    }
    Ok(Duration::from_secs_f64(v * mul))
}

impl Args {
    pub fn client(&self) -> AdminClient {
        AdminClient::new(self.token.clone(), self.timeout)
    }
    pub fn sources(&self) -> Sources {
        Sources {
            redis: self.redis.clone(),
            redis_tls: self.redis_tls.clone(),
            prefix: self.prefix.clone(),
            nodes: self.nodes.clone(),
            local: self.found_local,
        }
    }

    /// With neither `--node` nor a registry, the node on this host ([`local`]): it
    /// becomes the one `--node`, with the token it accepted. Anything given wins, and
    /// then nothing is looked for (`Ok(None)`).
    pub async fn find_local(&mut self) -> Result<Option<local::Found>, local::NotFound> {
        if self.redis.is_some() || !self.nodes.is_empty() {
            return Ok(None);
        }
        let search = local::Search {
            admin: self.local,
            data_dir: self.data_dir.clone(),
            token: self.token.clone(),
        };
        let found = local::find(&search, self.timeout).await?;
        self.nodes.push(found.admin.clone());
        self.token.clone_from(&found.token);
        self.found_local = true;
        Ok(Some(found))
    }
}

/// One node in `status --json`.
#[derive(Debug, Serialize)]
pub struct NodeReport {
    pub admin: String,
    pub id: String,
    /// serving, draining, drained or unreachable.
    pub state: String,
    pub error: Option<String>,
    pub status: Option<AdminStatus>,
    pub queue_depth: Option<u64>,
    pub queue_capacity: Option<u64>,
    pub delivered_total: Option<f64>,
    pub slow_consumer_closes: Option<f64>,
    pub tuning_short: Option<usize>,
    pub tuning: Option<TuningReport>,
}

async fn sample(client: &AdminClient, t: Target) -> NodeState {
    let (s, tuning) = tokio::join!(
        crate::poller::fetch_sample(client, &t.admin),
        client.tuning(&t.admin)
    );
    let mut n = NodeState::new(t);
    match s {
        Ok(s) => n.push(s),
        Err(e) => n.down = Some(e),
    }
    n.tuning = Some(tuning.map_err(|e| e.to_string()));
    n
}

fn report(n: &NodeState) -> NodeReport {
    let s: Option<&NodeSample> = n.last().filter(|_| n.down.is_none());
    NodeReport {
        admin: n.target.admin.clone(),
        id: n.id().to_owned(),
        state: n.health().label().to_owned(),
        error: n.down.clone(),
        status: s.map(|s| s.status.clone()),
        queue_depth: s.map(|s| s.metrics.queue_depth),
        queue_capacity: s.map(|s| s.metrics.queue_capacity),
        delivered_total: s.map(|s| s.metrics.delivered),
        slow_consumer_closes: s.map(|s| s.metrics.slow_closes),
        tuning_short: n.tuning_short(),
        tuning: n.tuning.as_ref().and_then(|t| t.as_ref().ok().cloned()),
    }
}

/// Runs a subcommand, printing to `out`.
pub async fn run(args: &Args, cmd: &Cmd, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let client = args.client();
    let sources = args.sources();
    match cmd {
        Cmd::Status { json } => {
            let targets = sources.targets().await.context("finding nodes")?;
            if targets.is_empty() {
                bail!("no nodes: give --redis or --node (or run where a node is, see --local)");
            }
            let nodes =
                futures_util::future::join_all(targets.into_iter().map(|t| sample(&client, t)))
                    .await;
            if *json {
                let r: Vec<NodeReport> = nodes.iter().map(report).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
            } else {
                writeln!(
                    out,
                    "{:<14} {:<11} {:<9} {:>13} {:>11} {:>5} {:>11} {:>8}",
                    "NODE", "STATE", "VERSION", "CONNS/CAP", "QUEUE/CAP", "SLOW", "FD", "TUNING"
                )?;
                for n in &nodes {
                    let c = fleet::cells(n);
                    writeln!(
                        out,
                        "{:<14} {:<11} {:<9} {:>13} {:>11} {:>5} {:>11} {:>8}",
                        c[0], c[1], c[2], c[3], c[7], c[8], c[9], c[10]
                    )?;
                    if let Some(e) = &n.down {
                        writeln!(out, "  ✗ {e}")?;
                    }
                }
            }
        }
        Cmd::Drain { node, window, wait } => {
            let t = sources.resolve(node, &client).await?;
            let s = client
                .drain(&t.admin, *window)
                .await
                .with_context(|| format!("draining {node}"))?;
            writeln!(
                out,
                "{}: {} ({} connections, window {window} s)",
                s.node, s.state, s.connections
            )?;
            if *wait {
                let limit = Duration::from_secs(window + 60);
                crate::rollout::wait_drained(&client, &t.admin, limit, out).await?;
            }
        }
        Cmd::Undrain { node } => {
            let t = sources.resolve(node, &client).await?;
            let s = client
                .undrain(&t.admin)
                .await
                .with_context(|| format!("undraining {node}"))?;
            writeln!(out, "{}: {}", s.node, s.state)?;
        }
        Cmd::Tuning { node, apply } => {
            let t = sources.resolve(node, &client).await?;
            if *apply {
                let r = client.apply_tuning(&t.admin).await?;
                writeln!(out, "profile {}", r.profile)?;
                for i in &r.items {
                    writeln!(out, "{:<32} {:<8} {}", i.key, i.result, i.detail)?;
                }
                if r.items
                    .iter()
                    .any(|i| i.result == herald_shared::admin::ApplyResult::Failed)
                {
                    bail!("some items failed to apply");
                }
            } else {
                let r = client.tuning(&t.admin).await?;
                writeln!(out, "profile {}", r.profile)?;
                writeln!(out, "{:<32} {:<18} {:<18} OK", "KEY", "WANT", "HAVE")?;
                for i in &r.items {
                    let ok = if i.ok { "ok" } else { "SHORT" };
                    writeln!(
                        out,
                        "{:<32} {:<18} {:<18} {ok}",
                        i.key,
                        format!("{} {}", i.op, i.want),
                        i.have
                    )?;
                }
                writeln!(out, "{}", crate::view::fmt::tuning(Some(r.short().count())))?;
            }
        }
        Cmd::Rollout {
            exec,
            window,
            step_timeout,
        } => {
            crate::rollout::rollout(&client, &sources, exec, *window, *step_timeout, out).await?;
        }
    }
    Ok(())
}
