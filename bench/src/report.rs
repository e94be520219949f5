//! The report of a run: JSON for machines, one summary line for people, and the
//! merge of several shards' reports into one.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{Mode, Shard};
use crate::hist::{HistSummary, fmt_us};
use crate::procstat::ServerProc;
use crate::publisher::PublishStats;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `run`, `ramp` or `merge`.
    pub command: String,
    /// The shards this report covers (one, or all merged).
    pub shards: Vec<Shard>,
    pub nodes: Vec<String>,
    pub sources: Vec<String>,
    pub mode: Option<Mode>,
    /// The group of a broadcast run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// This shard only listened (another one published to the shared group).
    #[serde(default)]
    pub listen_only: bool,
    pub connections: ConnStats,
    /// First dial to `initial_state`, µs (refused attempts and their backoff included).
    pub initial_state_us: HistSummary,
    pub publish: PublishStats,
    pub delivery: Delivery,
    /// Publish (request built) to receive, µs.
    pub latency_us: HistSummary,
    /// Connections that a node closed (1012, 1013) and that came back elsewhere.
    #[serde(default)]
    pub reconnects: Reconnects,
    /// Failures by cause, connections and publishing alike.
    pub errors: BTreeMap<String, u64>,
    pub server: Vec<ServerProc>,
    /// The load generator's own processes (one per shard), sampled at the same
    /// moments: what the box spent on generating the load, beside the server.
    #[serde(default)]
    pub generator: Vec<ServerProc>,
    pub derived: Derived,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp: Option<RampResult>,
    /// The `--also-broadcast` phase: one event to a group of every connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<PhaseReport>,
}

/// One publishing phase besides the main one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseReport {
    pub publish: PublishStats,
    pub delivery: Delivery,
    /// Publish (request built) to receive, µs.
    pub latency_us: HistSummary,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnStats {
    pub attempted: u64,
    /// Reached `initial_state`.
    pub established: u64,
    pub failed: u64,
    /// From the first dial to the last `initial_state`.
    pub wall_s: f64,
    /// `established / wall_s`.
    pub rate_per_s: f64,
    /// Still open when the run stopped them.
    pub open_at_end: u64,
    /// Refused initial dials (1011, 1013, 503: "try again") dialed again on the same
    /// node; a connection refused three times counts three.
    #[serde(default)]
    pub retries: u64,
    /// Dialing stopped because MemAvailable fell below `--min-available-mib`.
    #[serde(default)]
    pub stopped_at_memory_floor: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Accepted messages times the open connections they target.
    pub expected: u64,
    /// Distinct messages received per connection.
    pub delivered: u64,
    /// `expected - delivered` (never negative).
    pub lost: u64,
    /// Receptions of a message already received on the same connection.
    pub duplicated: u64,
}

impl Delivery {
    /// What a phase counted: `expected` against the distinct messages `delivered`,
    /// and the `duplicated` receptions; `lost` is what is missing.
    pub fn counted(expected: u64, delivered: u64, duplicated: u64) -> Self {
        Self {
            expected,
            delivered,
            lost: expected.saturating_sub(delivered),
            duplicated,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reconnects {
    pub count: u64,
    /// Close received to `initial_state` on the next node, µs.
    pub time_us: HistSummary,
}

/// Costs derived from the server samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Derived {
    /// Server RSS growth from before connecting to connected, per established connection.
    pub rss_per_connection_bytes: Option<f64>,
    /// Server CPU from connected to after publishing, per 1000 deliveries.
    pub cpu_ms_per_1000_deliveries: Option<f64>,
    pub deliveries_per_cpu_s: Option<f64>,
    /// Server CPU from before to connected, per established connection.
    pub connect_cpu_us_per_connection: Option<f64>,
    /// Load generator CPU (all shards) while connecting, and while publishing and
    /// receiving, seconds.
    #[serde(default)]
    pub generator_connect_cpu_s: Option<f64>,
    #[serde(default)]
    pub generator_run_cpu_s: Option<f64>,
    /// Load generator RSS growth (all shards) from before dialing to connected, per
    /// established connection: what holding a connection costs the generator.
    #[serde(default)]
    pub generator_rss_per_connection_bytes: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RampResult {
    pub p99_limit_ms: f64,
    /// Highest rate whose step passed.
    pub best_rate: Option<f64>,
    pub steps: Vec<RampStep>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RampStep {
    pub rate: f64,
    pub achieved_rate: f64,
    pub delivery: Delivery,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub pass: bool,
    /// Why it failed, if it did.
    pub reason: Option<String>,
}

impl Report {
    /// Recomputes [`Derived`] from the server samples and the counts.
    pub fn derive(&mut self) {
        let total = |procs: &[ServerProc], f: &dyn Fn(&ServerProc) -> Option<f64>| -> Option<f64> {
            let v: Vec<f64> = procs.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| v.iter().sum())
        };
        let connect = |p: &ServerProc| Some(p.connected?.cpu_s - p.before?.cpu_s);
        let running = |p: &ServerProc| Some(p.after?.cpu_s - p.connected?.cpu_s);
        let sum = |f: &dyn Fn(&ServerProc) -> Option<f64>| total(&self.server, f);
        let growth = |p: &ServerProc| {
            Some((p.connected?.rss_kib as f64 - p.before?.rss_kib as f64) * 1024.0)
        };
        let rss = sum(&growth);
        let generator_rss = total(&self.generator, &growth);
        let connect_cpu = sum(&connect);
        let run_cpu = sum(&running);
        let est = self.connections.established as f64;
        let del = self.delivery.delivered as f64;
        self.derived = Derived {
            rss_per_connection_bytes: rss.filter(|_| est > 0.0).map(|r| r / est),
            connect_cpu_us_per_connection: connect_cpu.filter(|_| est > 0.0).map(|c| c * 1e6 / est),
            cpu_ms_per_1000_deliveries: run_cpu.filter(|_| del > 0.0).map(|c| c * 1e6 / del),
            deliveries_per_cpu_s: run_cpu.filter(|c| *c > 0.0 && del > 0.0).map(|c| del / c),
            generator_connect_cpu_s: total(&self.generator, &connect),
            generator_run_cpu_s: total(&self.generator, &running),
            generator_rss_per_connection_bytes: generator_rss
                .filter(|_| est > 0.0)
                .map(|r| r / est),
        };
    }

    /// One line with the figures that matter.
    pub fn summary(&self) -> String {
        let c = &self.connections;
        let d = &self.delivery;
        let l = &self.latency_us;
        let i = &self.initial_state_us;
        let errors: u64 = self.errors.values().sum();
        let mut s = format!(
            "herald-bench {} shards={} conns={}/{} retried={} connect={:.0}/s init_p50={} init_p99={} | sent={} accepted={} rate={:.0}/s | delivered={}/{} lost={} dup={} | lat p50={} p90={} p99={} p999={} max={} | errors={}",
            self.command,
            self.shards.len(),
            c.established,
            c.attempted,
            c.retries,
            c.rate_per_s,
            fmt_us(i.p50),
            fmt_us(i.p99),
            self.publish.messages,
            self.publish.accepted,
            self.publish.achieved_rate,
            d.delivered,
            d.expected,
            d.lost,
            d.duplicated,
            fmt_us(l.p50),
            fmt_us(l.p90),
            fmt_us(l.p99),
            fmt_us(l.p999),
            fmt_us(l.max),
            errors,
        );
        if self.reconnects.count > 0 {
            s += &format!(
                " | reconnects={} p50={} p99={} max={}",
                self.reconnects.count,
                fmt_us(self.reconnects.time_us.p50),
                fmt_us(self.reconnects.time_us.p99),
                fmt_us(self.reconnects.time_us.max)
            );
        }
        if let Some(r) = self.derived.rss_per_connection_bytes {
            s += &format!(" | server rss/conn={:.2}KiB", r / 1024.0);
        }
        if let Some(c) = self.derived.cpu_ms_per_1000_deliveries {
            s += &format!(" cpu/1000 deliveries={c:.2}ms");
        }
        if let (Some(c), Some(r)) = (
            self.derived.generator_connect_cpu_s,
            self.derived.generator_run_cpu_s,
        ) {
            s += &format!(" | generator cpu connect={c:.1}s run={r:.1}s");
        }
        if self.connections.stopped_at_memory_floor {
            s += " | dialing stopped at the memory floor";
        }
        if let Some(b) = &self.broadcast {
            let d = &b.delivery;
            s += &format!(
                " | broadcast accepted={} delivered={}/{} lost={} dup={} p50={} p99={} max={}",
                b.publish.accepted,
                d.delivered,
                d.expected,
                d.lost,
                d.duplicated,
                fmt_us(b.latency_us.p50),
                fmt_us(b.latency_us.p99),
                fmt_us(b.latency_us.max)
            );
        }
        if let Some(r) = self.derived.generator_rss_per_connection_bytes {
            s += &format!(" | bench rss/conn={:.2}KiB", r / 1024.0);
        }
        if let Some(r) = &self.ramp {
            match r.best_rate {
                Some(b) => s += &format!(" | ramp best={b:.0}/s at p99<{}ms", r.p99_limit_ms),
                None => s += &format!(" | ramp: no rate passed p99<{}ms", r.p99_limit_ms),
            }
        }
        s
    }
}

/// Writes the JSON (if asked) and prints the summary line.
pub fn emit(rep: &Report, json: Option<&Path>) -> anyhow::Result<()> {
    if let Some(p) = json {
        std::fs::write(p, serde_json::to_string_pretty(rep)? + "\n")
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    }
    println!("{}", rep.summary());
    Ok(())
}

/// The ramps of shards that stepped together: step i of the merge adds the shards'
/// rates and counts, and takes the worst p50/p99/max of any shard (the shards' step
/// histograms are not kept, so this is an upper bound); a step passes when it passed
/// on every shard, and the best rate is the last step of the passing prefix.
fn merge_ramps(reports: &[Report]) -> Option<RampResult> {
    let ramps: Vec<&RampResult> = reports.iter().filter_map(|r| r.ramp.as_ref()).collect();
    let first = ramps.first()?;
    let n = ramps.iter().map(|r| r.steps.len()).max().unwrap_or(0);
    let mut out = RampResult {
        p99_limit_ms: first.p99_limit_ms,
        ..Default::default()
    };
    for i in 0..n {
        let mut step = RampStep {
            pass: true,
            ..Default::default()
        };
        for r in &ramps {
            let Some(s) = r.steps.get(i) else {
                step.pass = false;
                step.reason
                    .get_or_insert_with(|| "a shard stopped earlier".into());
                continue;
            };
            step.rate += s.rate;
            step.achieved_rate += s.achieved_rate;
            step.delivery.expected += s.delivery.expected;
            step.delivery.delivered += s.delivery.delivered;
            step.delivery.lost += s.delivery.lost;
            step.delivery.duplicated += s.delivery.duplicated;
            step.p50_us = step.p50_us.max(s.p50_us);
            step.p99_us = step.p99_us.max(s.p99_us);
            step.max_us = step.max_us.max(s.max_us);
            if !s.pass {
                step.pass = false;
                if step.reason.is_none() {
                    step.reason = s.reason.clone();
                }
            }
        }
        if step.pass && out.steps.iter().all(|s| s.pass) {
            out.best_rate = Some(step.rate);
        }
        out.steps.push(step);
    }
    Some(out)
}

/// The `--also-broadcast` phases of shards that ran together: shard 0 published, so
/// every accepted event is expected on every connection of every shard.
fn merge_broadcasts(reports: &[Report], established: u64) -> anyhow::Result<Option<PhaseReport>> {
    let phases: Vec<&PhaseReport> = reports
        .iter()
        .filter_map(|r| r.broadcast.as_ref())
        .collect();
    if phases.is_empty() {
        return Ok(None);
    }
    let mut out = PhaseReport::default();
    for b in &phases {
        let p = &mut out.publish;
        p.mode = p.mode.or(b.publish.mode);
        p.rate += b.publish.rate;
        p.messages += b.publish.messages;
        p.accepted += b.publish.accepted;
        p.requests += b.publish.requests;
        p.requests_failed += b.publish.requests_failed;
        p.wall_s = p.wall_s.max(b.publish.wall_s);
        out.delivery.delivered += b.delivery.delivered;
        out.delivery.duplicated += b.delivery.duplicated;
    }
    out.delivery.expected = out.publish.accepted * established;
    out.delivery.lost = out.delivery.expected.saturating_sub(out.delivery.delivered);
    out.latency_us = HistSummary::merge(phases.iter().map(|b| &b.latency_us))?;
    Ok(Some(out))
}

/// Merges reports of shards that ran at the same time against the same nodes:
/// counts add up, histograms merge exactly, rates add up, wall times take the longest.
/// Server samples come from the first report that has any (give `--server-pid` to one
/// shard, ideally the last to finish connecting).
pub fn merge(reports: &[Report]) -> anyhow::Result<Report> {
    anyhow::ensure!(!reports.is_empty(), "nothing to merge");
    let first = &reports[0];
    let mut out = Report {
        command: "merge".into(),
        nodes: first.nodes.clone(),
        mode: first.mode,
        group: first.group.clone(),
        ..Default::default()
    };
    let mut sources = std::collections::BTreeSet::new();
    for r in reports {
        out.shards.extend(r.shards.iter().copied());
        sources.extend(r.sources.iter().cloned());
        let c = &mut out.connections;
        c.attempted += r.connections.attempted;
        c.established += r.connections.established;
        c.failed += r.connections.failed;
        c.open_at_end += r.connections.open_at_end;
        c.retries += r.connections.retries;
        c.stopped_at_memory_floor |= r.connections.stopped_at_memory_floor;
        c.wall_s = c.wall_s.max(r.connections.wall_s);
        let p = &mut out.publish;
        p.mode = p.mode.or(r.publish.mode);
        p.rate += r.publish.rate;
        p.duration_s = p.duration_s.max(r.publish.duration_s);
        p.messages += r.publish.messages;
        p.accepted += r.publish.accepted;
        p.requests += r.publish.requests;
        p.requests_failed += r.publish.requests_failed;
        p.wall_s = p.wall_s.max(r.publish.wall_s);
        p.achieved_rate += r.publish.achieved_rate;
        let d = &mut out.delivery;
        d.expected += r.delivery.expected;
        d.delivered += r.delivery.delivered;
        d.lost += r.delivery.lost;
        d.duplicated += r.delivery.duplicated;
        for (k, v) in &r.errors {
            *out.errors.entry(k.clone()).or_default() += v;
        }
        out.reconnects.count += r.reconnects.count;
        if out.server.is_empty() {
            out.server = r.server.clone();
        }
        out.generator.extend(r.generator.iter().cloned());
    }
    // One group shared by every shard (only some of which publish): every accepted
    // broadcast is expected on every connection of every shard.
    let shared_group = first.mode == Some(Mode::Broadcast)
        && first.group.is_some()
        && reports.iter().all(|r| r.group == first.group);
    if shared_group && reports.len() > 1 {
        let d = &mut out.delivery;
        d.expected = out.publish.accepted * out.connections.established;
        d.lost = d.expected.saturating_sub(d.delivered);
    }
    out.sources = sources.into_iter().collect();
    if out.connections.wall_s > 0.0 {
        out.connections.rate_per_s = out.connections.established as f64 / out.connections.wall_s;
    }
    out.initial_state_us = HistSummary::merge(reports.iter().map(|r| &r.initial_state_us))?;
    out.latency_us = HistSummary::merge(reports.iter().map(|r| &r.latency_us))?;
    out.ramp = merge_ramps(reports);
    out.broadcast = merge_broadcasts(reports, out.connections.established)?;
    out.reconnects.time_us = HistSummary::merge(reports.iter().map(|r| &r.reconnects.time_us))?;
    out.derive();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(rate: f64, p99_us: u64, pass: bool) -> RampStep {
        RampStep {
            rate,
            achieved_rate: rate,
            delivery: Delivery {
                expected: 10,
                delivered: 10,
                ..Default::default()
            },
            p99_us,
            pass,
            reason: (!pass).then(|| "p99".to_owned()),
            ..Default::default()
        }
    }

    fn ramp(steps: Vec<RampStep>) -> Report {
        Report {
            ramp: Some(RampResult {
                p99_limit_ms: 50.0,
                best_rate: None,
                steps,
            }),
            ..Default::default()
        }
    }

    fn broadcast_shard(established: u64, accepted: u64, delivered: u64) -> Report {
        Report {
            connections: ConnStats {
                established,
                ..Default::default()
            },
            broadcast: Some(PhaseReport {
                publish: PublishStats {
                    accepted,
                    ..Default::default()
                },
                delivery: Delivery {
                    delivered,
                    ..Default::default()
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn shard(before_kib: u64, connected_kib: u64, established: u64) -> Report {
        let at = |rss_kib| {
            Some(crate::procstat::ProcSample {
                rss_kib,
                cpu_s: 0.0,
            })
        };
        Report {
            connections: ConnStats {
                established,
                ..Default::default()
            },
            generator: vec![ServerProc {
                pid: 1,
                before: at(before_kib),
                connected: at(connected_kib),
                after: None,
            }],
            ..Default::default()
        }
    }

    /// The one shard that published decides what every shard's connections expect:
    /// a connection that missed the event shows as lost, wherever it was.
    #[test]
    fn broadcasts_merge_against_every_connection() {
        let m = merge(&[broadcast_shard(3, 1, 3), broadcast_shard(2, 0, 1)]).unwrap();
        let d = m.broadcast.unwrap().delivery;
        assert_eq!((d.expected, d.delivered, d.lost), (5, 4, 1));
        let none = merge(&[Report::default(), Report::default()]).unwrap();
        assert!(none.broadcast.is_none());
    }

    /// The generator's RSS per connection is every shard's growth over every shard's
    /// connections, in the JSON and the summary line.
    #[test]
    fn generator_rss_merges_over_shards() {
        let mut one = shard(10_000, 12_000, 1_000);
        one.derive();
        assert_eq!(
            one.derived.generator_rss_per_connection_bytes,
            Some(2.0 * 1024.0)
        );
        let m = merge(&[one, shard(10_000, 14_000, 1_000)]).unwrap();
        assert_eq!(
            m.derived.generator_rss_per_connection_bytes,
            Some(3.0 * 1024.0)
        );
        assert!(
            m.summary().contains(" bench rss/conn=3.00KiB"),
            "{}",
            m.summary()
        );
        let none = merge(&[shard(10_000, 12_000, 0)]).unwrap();
        assert_eq!(none.derived.generator_rss_per_connection_bytes, None);
    }

    /// Steps add up across shards, take the worst p99, and the best rate is the last
    /// step that passed on every shard.
    #[test]
    fn ramps_merge_step_by_step() {
        let a = ramp(vec![
            step(100.0, 1_000, true),
            step(150.0, 2_000, true),
            step(225.0, 60_000, false),
        ]);
        let b = ramp(vec![step(100.0, 3_000, true), step(150.0, 70_000, false)]);
        let m = merge(&[a, b]).unwrap().ramp.unwrap();
        assert_eq!(m.steps.len(), 3);
        assert_eq!(m.steps[0].rate, 200.0);
        assert_eq!(m.steps[0].p99_us, 3_000);
        assert_eq!(m.steps[0].delivery.delivered, 20);
        assert!(m.steps[0].pass);
        assert!(
            !m.steps[1].pass,
            "a step passes only when it passed on every shard"
        );
        assert_eq!(m.steps[1].p99_us, 70_000);
        assert!(
            !m.steps[2].pass,
            "a shard that stopped earlier fails the step"
        );
        assert_eq!(m.best_rate, Some(200.0));
    }
}
