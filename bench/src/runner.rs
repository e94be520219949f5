//! The phases of a run: connect everything, hold, publish and settle, sample the
//! servers, stop. A ramp repeats the publish phase at rising rates on the same
//! connections.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Mode, Plan, RampArgs, RunArgs, Shard};
use crate::connections::{self, Counters, Dial, DialPlan, Target};
use crate::hist::HistSummary;
use crate::procstat::{self, ServerProc};
use crate::publisher::{PublishStats, Publisher};
use crate::report::{ConnStats, Delivery, PhaseReport, RampResult, RampStep, Reconnects, Report};

/// Sequence numbers of the `--also-broadcast` event start here, far above any of the
/// main phase's, so a connection never takes one message for the other.
const BROADCAST_SEQ: u64 = 1 << 40;

/// A node's socket address and `ws://host:port` prefix, from its base URL.
async fn resolve(node: &str) -> anyhow::Result<Target> {
    let url = reqwest::Url::parse(node).map_err(|e| anyhow::anyhow!("node URL {node}: {e}"))?;
    anyhow::ensure!(
        matches!(url.scheme(), "http" | "ws"),
        "node URL {node}: only http:// or ws:// (no TLS in the bench)"
    );
    let host = url
        .host_str()
        .ok_or_else(|| anyhow::anyhow!("node URL {node}: no host"))?
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("node URL {node}: host does not resolve"))?;
    Ok(Target {
        addr,
        ws_base: format!("ws://{host}:{port}"),
    })
}

/// Connections held open, and what connecting them measured.
pub struct Session {
    pub plan: Plan,
    pub counters: Arc<Counters>,
    /// Established connections per user of the plan.
    pub conns_per_user: Vec<u64>,
    pub stats: ConnStats,
    pub server: Vec<ServerProc>,
    /// This process, sampled with the servers.
    pub generator: ServerProc,
    stop: CancellationToken,
    /// The connection tasks: tracked, not joined one by one (a `JoinSet` entry is
    /// one more allocation per held connection).
    tasks: TaskTracker,
    quiet: bool,
}

impl Session {
    /// Dials every connection of this shard and waits until each reached
    /// `initial_state` or failed.
    pub async fn connect(args: &RunArgs) -> anyhow::Result<Self> {
        let plan = args.plan();
        let n = plan.conn_user.len();
        if let Ok(limit) = rlimit::increase_nofile_limit(u64::MAX)
            && (limit as usize) < n + 64
            && !args.quiet
        {
            eprintln!(
                "herald-bench: open-file limit {limit} is below {n} connections: split with --shard"
            );
        }
        let mut nodes = Vec::new();
        for node in args.nodes.iter().chain(&args.standby) {
            nodes.push(resolve(node).await?);
        }
        anyhow::ensure!(!args.nodes.is_empty(), "no --node given");
        anyhow::ensure!(
            args.mode != Mode::Broadcast || args.also_broadcast.is_none(),
            "--also-broadcast is for the notify and event modes"
        );
        let dialed = args.nodes.len();
        let group = if args.mode == Mode::Broadcast {
            Some(args.group_name())
        } else {
            args.also_broadcast.clone()
        };
        let dial_plan = Arc::new(DialPlan {
            nodes,
            sources: args.sources.clone(),
            users: plan.users.iter().map(|u| u.id.clone()).collect(),
            jwt_secret: args.jwt_secret.clone(),
            subscribe: group,
            timeout: Duration::from_secs_f64(args.connect_timeout),
            reconnect: args.reconnect,
        });

        let server: Vec<ServerProc> = args
            .server_pids
            .iter()
            .map(|&pid| ServerProc {
                pid,
                before: procstat::sample(pid),
                ..Default::default()
            })
            .collect();

        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
        let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
        let tasks = TaskTracker::new();
        // Sampled last before dialing, after the run's fixed allocations (the
        // histograms above are several MB), so the growth is what connections hold.
        let me = std::process::id();
        let generator = ServerProc {
            pid: me,
            before: procstat::sample(me),
            ..Default::default()
        };
        let started = Instant::now();
        let floor_hit = Arc::new(AtomicBool::new(false));
        let floor = (args.min_available_mib > 0).then(|| {
            tokio::spawn(memory_floor(
                args.min_available_mib * 1024,
                gate.clone(),
                floor_hit.clone(),
                args.quiet,
            ))
        });
        let pace =
            (args.connect_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.connect_rate));
        for (index, &user) in plan.conn_user.iter().enumerate() {
            if let Some(p) = pace
                && !gate.is_closed()
            {
                tokio::time::sleep_until((started + p * index as u32).into()).await;
            }
            let dial = Dial {
                index: index as u32,
                user: user as u32,
                first: (index % dialed) as u32,
                source: (!args.sources.is_empty()).then(|| (index % args.sources.len()) as u16),
                plan: dial_plan.clone(),
            };
            tasks.spawn(connections::run(
                dial,
                counters.clone(),
                gate.clone(),
                ready_tx.clone(),
                stop.clone(),
            ));
        }
        drop(ready_tx);
        let mut conns_per_user = vec![0u64; plan.users.len()];
        let (mut established, mut failed) = (0u64, 0u64);
        let mut last_report = Instant::now();
        while let Some(r) = ready_rx.recv().await {
            match r {
                Ok(u) => {
                    conns_per_user[u] += 1;
                    established += 1;
                }
                Err(_) => failed += 1,
            }
            if !args.quiet && last_report.elapsed() > Duration::from_secs(2) {
                last_report = Instant::now();
                eprintln!("herald-bench: {established} connected, {failed} failed of {n}");
            }
            if established + failed == n as u64 {
                break;
            }
        }
        let wall_s = started.elapsed().as_secs_f64();
        if let Some(f) = floor {
            f.abort();
        }
        crate::memory::release();
        Ok(Self {
            plan,
            counters,
            conns_per_user,
            stats: ConnStats {
                attempted: n as u64,
                established,
                failed,
                wall_s,
                rate_per_s: if wall_s > 0.0 {
                    established as f64 / wall_s
                } else {
                    0.0
                },
                open_at_end: 0,
                retries: 0,
                stopped_at_memory_floor: floor_hit.load(Ordering::Relaxed),
            },
            server,
            generator,
            stop,
            tasks,
            quiet: args.quiet,
        })
    }

    /// Waits at the run's barrier (`--barrier-dir`), if it has one.
    async fn barrier(&self, args: &RunArgs, name: &str) {
        if let Some(dir) = &args.barrier_dir {
            barrier(dir, name, args.shard, self.quiet).await;
        }
    }

    fn sample(&mut self, at: fn(&mut ServerProc) -> &mut Option<procstat::ProcSample>) {
        for p in self.server.iter_mut().chain([&mut self.generator]) {
            *at(p) = procstat::sample(p.pid);
        }
    }

    /// Closes every connection and waits (bounded) for their tasks.
    pub async fn stop(self) -> ConnStats {
        let mut stats = self.stats.clone();
        stats.open_at_end = self.counters.open.load(Ordering::Relaxed);
        stats.retries = self.counters.connect_retries.load(Ordering::Relaxed);
        self.stop.cancel();
        self.tasks.close();
        // Each task ends by itself once stopped (closing is bounded by 2 s, a dial in
        // flight by the connect timeout); one still running past this is dropped with
        // the runtime.
        if tokio::time::timeout(Duration::from_secs(10), self.tasks.wait())
            .await
            .is_err()
            && !self.quiet
        {
            eprintln!(
                "herald-bench: {} connections did not close in time",
                self.tasks.len()
            );
        }
        stats
    }
}

/// What one publishing phase delivered.
pub struct Phase {
    pub publish: PublishStats,
    pub delivery: Delivery,
    pub latency: HistSummary,
}

/// Publishes at `rate` for the run's duration, then waits up to `--settle` for the
/// expected deliveries.
pub async fn phase(args: &RunArgs, s: &Session, publisher: &Publisher, rate: f64) -> Phase {
    phase_for(args, s, publisher, rate, args.duration).await
}

/// [`phase`] for `duration` seconds.
async fn phase_for(
    args: &RunArgs,
    s: &Session,
    publisher: &Publisher,
    rate: f64,
    duration: f64,
) -> Phase {
    if args.listens_only() {
        return listen(args, s).await;
    }
    let c = &s.counters;
    let _ = c.latency.take();
    let acc0 = publisher.accepted_per_user();
    let del0 = c.delivered.load(Ordering::Relaxed);
    let dup0 = c.duplicated.load(Ordering::Relaxed);
    let total = if args.once {
        publisher.once_total()
    } else {
        (rate * duration).round() as u64
    };
    let publish = publisher.run(rate, total).await;
    let acc1 = publisher.accepted_per_user();
    let expected: u64 = if args.mode == Mode::Broadcast {
        (acc1[0] - acc0[0]) * s.stats.established
    } else {
        acc1.iter()
            .zip(&acc0)
            .zip(&s.conns_per_user)
            .map(|((a1, a0), k)| (a1 - a0) * k)
            .sum()
    };
    let settle = Instant::now();
    while c.delivered.load(Ordering::Relaxed) - del0 < expected
        && settle.elapsed().as_secs_f64() < args.settle
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered = c.delivered.load(Ordering::Relaxed) - del0;
    Phase {
        publish,
        delivery: Delivery::counted(
            expected,
            delivered,
            c.duplicated.load(Ordering::Relaxed) - dup0,
        ),
        latency: HistSummary::of(&c.latency.take()),
    }
}

/// A listening shard's phase: it cannot know when the publishing shard starts or
/// what it will send, so it listens until `--duration` has passed since the first
/// message and then nothing new arrived for `--settle` (at least two publishing
/// intervals); if nothing arrives within `--duration` + `--settle`, it gives up.
/// What was expected is known only to the merge (the publishing shard's accepted
/// count times every shard's connections).
///
/// It counts from the moment its connections were up (the publisher may have
/// started during this shard's hold).
async fn listen(args: &RunArgs, s: &Session) -> Phase {
    let c = &s.counters;
    let started = Instant::now();
    let duration = Duration::from_secs_f64(args.duration);
    let quiet = Duration::from_secs_f64(args.settle.max(if args.rate > 0.0 {
        2.0 / args.rate
    } else {
        0.0
    }));
    let (mut seen, mut first, mut last_change) = (0, None, started);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = Instant::now();
        let d = c.delivered.load(Ordering::Relaxed);
        if d > seen {
            seen = d;
            last_change = now;
            first.get_or_insert(now);
        }
        let done = match first {
            None => now >= started + duration + quiet,
            Some(t) => now >= t + duration && now - last_change >= quiet,
        };
        if done {
            break;
        }
    }
    Phase {
        publish: PublishStats {
            mode: Some(args.mode),
            duration_s: args.duration,
            ..Default::default()
        },
        delivery: Delivery {
            expected: 0,
            delivered: seen,
            lost: 0,
            duplicated: c.duplicated.load(Ordering::Relaxed),
        },
        latency: HistSummary::of(&c.latency.take()),
    }
}

/// The `--also-broadcast` phase: shard 0 publishes one event to `group`, which every
/// connection of every shard subscribed to; each shard then waits (up to `--settle`)
/// for it on each of its connections. Only shard 0 knows whether the event was
/// accepted, so only it states what was expected; `merge` states it for all.
///
/// Each shard takes its counters before it reaches the `published` barrier: shard 0
/// may publish before another shard's next look at the barrier, and what arrives in
/// between belongs to this phase.
async fn broadcast_phase(args: &RunArgs, s: &Session, group: &str) -> (PhaseReport, Publisher) {
    let c = &s.counters;
    let _ = c.latency.take();
    let del0 = c.delivered.load(Ordering::Relaxed);
    let dup0 = c.duplicated.load(Ordering::Relaxed);
    s.barrier(args, "published").await;
    let publisher = Publisher::new(
        args.api_bases(),
        args.api_key.clone(),
        Mode::Broadcast,
        Arc::new(s.plan.users.clone()),
        group.to_owned(),
        1,
        1,
    )
    .first_seq(BROADCAST_SEQ);
    let publish = if args.shard.index == 0 {
        publisher.run(1.0, 1).await
    } else {
        PublishStats {
            mode: Some(Mode::Broadcast),
            ..Default::default()
        }
    };
    let wanted = s.stats.established;
    let settle = Instant::now();
    while c.delivered.load(Ordering::Relaxed) - del0 < wanted
        && settle.elapsed().as_secs_f64() < args.settle
        && (args.shard.index != 0 || publish.accepted > 0)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered = c.delivered.load(Ordering::Relaxed) - del0;
    let expected = if args.shard.index == 0 {
        publish.accepted * wanted
    } else {
        0
    };
    let report = PhaseReport {
        publish,
        delivery: Delivery::counted(
            expected,
            delivered,
            c.duplicated.load(Ordering::Relaxed) - dup0,
        ),
        latency_us: HistSummary::of(&c.latency.take()),
    };
    (report, publisher)
}

/// Writes `<dir>/<name>-<shard>` and waits until every shard of the run has written
/// its own (at most ten minutes: a shard that died must not hold the others forever).
async fn barrier(dir: &Path, name: &str, shard: Shard, quiet: bool) {
    let mine = dir.join(format!("{name}-{}", shard.index));
    if let Err(e) = std::fs::write(&mine, b"") {
        eprintln!("herald-bench: barrier {}: {e}", mine.display());
        return;
    }
    let started = Instant::now();
    let prefix = format!("{name}-");
    loop {
        let here = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    .count()
            })
            .unwrap_or(0);
        if here >= shard.count {
            return;
        }
        if started.elapsed() > Duration::from_secs(600) {
            if !quiet {
                eprintln!(
                    "herald-bench: barrier {name}: {here} of {} shards after 600 s; going on",
                    shard.count
                );
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Closes the dial gate once the box's MemAvailable falls below `floor_kib`: the
/// connections still waiting for it fail as `not_dialed`.
async fn memory_floor(floor_kib: u64, gate: Arc<Semaphore>, hit: Arc<AtomicBool>, quiet: bool) {
    loop {
        if let Some(avail) = procstat::mem_available_kib()
            && avail < floor_kib
        {
            hit.store(true, Ordering::Relaxed);
            gate.close();
            if !quiet {
                eprintln!(
                    "herald-bench: MemAvailable {} MiB is below the floor of {} MiB: dialing stopped",
                    avail / 1024,
                    floor_kib / 1024
                );
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn publisher(args: &RunArgs, s: &Session) -> Publisher {
    Publisher::new(
        args.api_bases(),
        args.api_key.clone(),
        args.mode,
        Arc::new(s.plan.users.clone()),
        args.group_name(),
        args.batch,
        args.publish_concurrency,
    )
}

fn base_report(command: &str, args: &RunArgs) -> Report {
    Report {
        command: command.into(),
        shards: vec![args.shard],
        nodes: args.nodes.clone(),
        sources: args.sources.iter().map(|s| s.to_string()).collect(),
        mode: Some(args.mode),
        group: (args.mode == Mode::Broadcast).then(|| args.group_name()),
        listen_only: args.listens_only(),
        ..Default::default()
    }
}

async fn hold(args: &RunArgs, s: &mut Session) {
    if args.hold > 0.0 {
        if !args.quiet {
            eprintln!(
                "herald-bench: holding {} connections for {}s",
                s.stats.established, args.hold
            );
        }
        tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    }
    s.sample(|p| &mut p.connected);
}

async fn finish(mut rep: Report, mut s: Session, publisher: Option<&Publisher>) -> Report {
    s.sample(|p| &mut p.after);
    rep.server = s.server.clone();
    rep.generator = vec![s.generator.clone()];
    rep.initial_state_us = HistSummary::of(&s.counters.initial_state.take());
    rep.reconnects = Reconnects {
        count: s.counters.reconnects.load(Ordering::Relaxed),
        time_us: HistSummary::of(&s.counters.reconnect_time.take()),
    };
    let counters = s.counters.clone();
    rep.connections = s.stop().await;
    // Added to what earlier phases (the `--also-broadcast` publisher) put there.
    for (k, v) in counters.errors() {
        *rep.errors.entry(k).or_default() += v;
    }
    if let Some(p) = publisher {
        for (k, v) in p.errors() {
            *rep.errors.entry(k).or_default() += v;
        }
    }
    rep.derive();
    rep
}

/// `herald-bench run`.
pub async fn run(args: &RunArgs) -> anyhow::Result<Report> {
    let mut s = Session::connect(args).await?;
    s.barrier(args, "connected").await;
    hold(args, &mut s).await;
    let mut rep = base_report("run", args);
    let publisher = publisher(args, &s);
    if args.rate > 0.0 {
        let p = phase(args, &s, &publisher, args.shard_rate()).await;
        rep.publish = p.publish;
        rep.delivery = p.delivery;
        rep.latency_us = p.latency;
    }
    if let Some(group) = &args.also_broadcast {
        let (b, p) = broadcast_phase(args, &s, group).await;
        rep.broadcast = Some(b);
        for (k, v) in p.errors() {
            *rep.errors.entry(k).or_default() += v;
        }
    }
    Ok(finish(rep, s, Some(&publisher)).await)
}

/// `herald-bench ramp`: each step publishes for `--duration` at a rate `--factor`
/// above the last; stops at the first step whose p99 reaches the limit, that loses
/// messages, or that the publisher cannot drive (under 90% of the rate achieved).
pub async fn ramp(args: &RampArgs) -> anyhow::Result<Report> {
    let run = &args.run;
    let mut s = Session::connect(run).await?;
    s.barrier(run, "connected").await;
    hold(run, &mut s).await;
    let mut rep = base_report("ramp", run);
    let publisher = publisher(run, &s);
    let mut result = RampResult {
        p99_limit_ms: args.p99_limit_ms,
        ..Default::default()
    };
    // `rate` is this shard's part; the start and maximum are totals over all shards.
    let shards = run.shard.count as f64;
    let mut rate = args.start_rate / shards;
    if args.warmup > 0.0 && !run.listens_only() {
        let w = phase_for(run, &s, &publisher, rate, args.warmup).await;
        if !run.quiet {
            eprintln!(
                "herald-bench ramp: warm-up at {rate:.0}/s, not counted: p99 {}",
                crate::hist::fmt_us(w.latency.p99)
            );
        }
        // Server CPU per delivery counts the steps only.
        s.sample(|p| &mut p.connected);
    }
    let mut best: Option<Phase> = None;
    while rate * shards <= args.max_rate * (1.0 + 1e-9) {
        let p = phase(run, &s, &publisher, rate).await;
        let reason = if p.latency.p99 as f64 >= args.p99_limit_ms * 1000.0 {
            Some(format!("p99 {}", crate::hist::fmt_us(p.latency.p99)))
        } else if p.delivery.lost > 0 {
            Some(format!("{} lost", p.delivery.lost))
        } else if p.publish.requests_failed > 0 {
            Some(format!(
                "{} publish requests failed",
                p.publish.requests_failed
            ))
        } else if p.publish.achieved_rate < 0.9 * rate {
            Some(format!(
                "publisher reached only {:.0}/s",
                p.publish.achieved_rate
            ))
        } else {
            None
        };
        if !run.quiet {
            eprintln!(
                "herald-bench ramp: {rate:.0}/s → p99 {} delivered {}/{} {}",
                crate::hist::fmt_us(p.latency.p99),
                p.delivery.delivered,
                p.delivery.expected,
                reason.as_deref().unwrap_or("pass")
            );
        }
        rep.delivery.expected += p.delivery.expected;
        rep.delivery.delivered += p.delivery.delivered;
        rep.delivery.lost += p.delivery.lost;
        rep.delivery.duplicated += p.delivery.duplicated;
        result.steps.push(RampStep {
            rate,
            achieved_rate: p.publish.achieved_rate,
            delivery: p.delivery.clone(),
            p50_us: p.latency.p50,
            p99_us: p.latency.p99,
            max_us: p.latency.max,
            pass: reason.is_none(),
            reason: reason.clone(),
        });
        if reason.is_some() {
            break;
        }
        result.best_rate = Some(rate * shards);
        best = Some(p);
        rate *= args.factor.max(1.01);
    }
    if let Some(b) = best {
        rep.publish = b.publish;
        rep.latency_us = b.latency;
    }
    rep.ramp = Some(result);
    Ok(finish(rep, s, Some(&publisher)).await)
}
