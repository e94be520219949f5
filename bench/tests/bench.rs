//! The load generator against a real node started in this process, with small N.

mod common;

use std::collections::HashSet;

use common::{Cluster, Node};
use herald_bench::report::{self, Report};
use herald_bench::runner;

fn assert_clean(rep: &Report) {
    assert!(rep.errors.is_empty(), "errors: {:?}", rep.errors);
    assert_eq!(rep.delivery.lost, 0, "{rep:#?}");
    assert_eq!(rep.delivery.duplicated, 0, "{rep:#?}");
    assert_eq!(rep.delivery.delivered, rep.delivery.expected, "{rep:#?}");
}

/// Fifty connections over two source addresses receive all 200 batched
/// notifications exactly once, with latency and time to initial_state recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_run_delivers_everything_once() {
    let node = Node::start().await;
    let pid = std::process::id().to_string();
    let args = node.run_args(&[
        "-c",
        "50",
        "--source",
        "127.0.0.2,127.0.0.3",
        "--rate",
        "400",
        "--duration",
        "0.5",
        "--batch",
        "20",
        "--server-pid",
        &pid,
    ]);
    let rep = runner::run(&args).await.unwrap();
    assert_clean(&rep);
    assert_eq!(rep.connections.attempted, 50);
    assert_eq!(rep.connections.established, 50);
    assert_eq!(rep.connections.failed, 0);
    assert_eq!(rep.connections.open_at_end, 50);
    assert!(rep.connections.rate_per_s > 0.0);
    assert_eq!(rep.initial_state_us.count, 50);
    assert_eq!(rep.publish.messages, 200);
    assert_eq!(rep.publish.accepted, 200);
    // One connection per user: each notification is expected once.
    assert_eq!(rep.delivery.expected, 200);
    assert_eq!(rep.latency_us.count, 200);
    assert!(rep.latency_us.p50 > 0 && rep.latency_us.max >= rep.latency_us.p99);
    assert!(rep.latency_us.histogram().unwrap().len() == 200);
    // The node runs in this process, so its samples exist and costs are derived.
    assert_eq!(rep.server.len(), 1);
    assert!(rep.server[0].before.is_some() && rep.server[0].after.is_some());
    assert!(rep.derived.rss_per_connection_bytes.is_some());
    assert!(rep.derived.cpu_ms_per_1000_deliveries.is_some());
    assert!(rep.summary().contains("delivered=200/200 lost=0 dup=0"));
}

/// Events to personal groups reach every connection of the user: two connections
/// per user double what is expected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_events_reach_every_connection_of_the_user() {
    let node = Node::start().await;
    let args = node.run_args(&[
        "-c",
        "20",
        "--users",
        "10",
        "--mode",
        "event",
        "--rate",
        "200",
        "--duration",
        "0.25",
    ]);
    let rep = runner::run(&args).await.unwrap();
    assert_clean(&rep);
    assert_eq!(rep.publish.accepted, 50);
    assert_eq!(rep.delivery.expected, 100);
    assert_eq!(rep.latency_us.count, 100);
}

/// At a rate that puts several user events in one tick, they go out as event
/// batches: fewer requests than events, every event delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_events_go_out_in_batches() {
    let node = Node::start().await;
    let args = node.run_args(&[
        "-c",
        "20",
        "--mode",
        "event",
        "--rate",
        "4000",
        "--duration",
        "0.25",
        "--batch",
        "50",
    ]);
    let rep = runner::run(&args).await.unwrap();
    assert_clean(&rep);
    assert_eq!(rep.publish.accepted, 1000);
    assert!(
        rep.publish.requests < 500,
        "{} requests for 1000 events",
        rep.publish.requests
    );
    assert_eq!(rep.delivery.expected, 1000);
    assert_eq!(rep.latency_us.count, 1000);
}

/// A broadcast group event reaches all subscribed connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_all_connections() {
    let node = Node::start().await;
    let args = node.run_args(&[
        "-c",
        "30",
        "--mode",
        "broadcast",
        "--rate",
        "40",
        "--duration",
        "0.25",
    ]);
    let rep = runner::run(&args).await.unwrap();
    assert_clean(&rep);
    assert_eq!(rep.publish.accepted, 10);
    assert_eq!(rep.delivery.expected, 300);
}

/// With one group shared by two shards, shard 0 alone publishes (at the whole rate),
/// shard 1 listens, and the merge expects every broadcast on every connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_broadcast_group_is_published_once_and_merged() {
    let node = Node::start().await;
    let shard = |i: &str| {
        node.run_args(&[
            "-c",
            "40",
            "--shard",
            i,
            "--mode",
            "broadcast",
            "--group",
            "everyone",
            "--rate",
            "8",
            "--duration",
            "1",
            "--hold",
            "0.5",
            "--settle",
            "1",
        ])
    };
    let (a, b) = (shard("0/2"), shard("1/2"));
    assert!(!a.listens_only() && b.listens_only());
    let (ra, rb) = tokio::join!(runner::run(&a), runner::run(&b));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.publish.accepted, 8, "shard 0 publishes the whole rate");
    assert_eq!(rb.publish.accepted, 0, "shard 1 only listens");
    assert!(rb.listen_only);
    assert_eq!(rb.delivery.delivered, 8 * 20, "{rb:#?}");
    let merged = report::merge(&[ra, rb]).unwrap();
    assert_clean(&merged);
    assert_eq!(merged.delivery.expected, 8 * 40);
    assert_eq!(merged.latency_us.count, 8 * 40);
}

/// Connections drained off one node come back on the standby node with `after`:
/// the notifications published while they moved arrive in `missed`, so nothing is
/// lost or duplicated, and every reconnect is counted and timed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_connections_reconnect_elsewhere_without_loss() {
    let cluster = Cluster::start(2).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let b_url = b.url();
    let args = a.run_args(&[
        "-c",
        "20",
        "--standby",
        &b_url,
        "--api-url",
        &b_url,
        "--reconnect",
        "--rate",
        "100",
        "--duration",
        "2",
        "--batch",
        "5",
        "--settle",
        "5",
    ]);
    let drain = async {
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
        a.drain(0).await;
    };
    let (rep, ()) = tokio::join!(runner::run(&args), drain);
    let rep = rep.unwrap();
    assert_clean(&rep);
    assert_eq!(rep.connections.established, 20);
    assert_eq!(
        rep.connections.open_at_end, 20,
        "every connection came back"
    );
    assert_eq!(rep.reconnects.count, 20, "{rep:#?}");
    assert_eq!(rep.reconnects.time_us.count, 20);
    assert_eq!(rep.delivery.expected, 200);
    assert!(rep.summary().contains("reconnects=20"));
}

/// Shards split the users so that together they cover each exactly once.
#[tokio::test]
async fn shards_cover_all_users_exactly_once() {
    let node = Node::start().await;
    let mut names = HashSet::new();
    let mut globals = Vec::new();
    let mut conns = 0;
    for i in 0..3 {
        let shard = format!("{i}/3");
        let plan = node
            .run_args(&["-c", "100", "--users", "50", "--shard", &shard])
            .plan();
        conns += plan.conn_user.len();
        for u in plan.users {
            assert!(names.insert(u.id.clone()), "{} twice", u.id);
            globals.push(u.global);
        }
    }
    globals.sort();
    assert_eq!(globals, (0..50).collect::<Vec<_>>());
    assert_eq!(names.len(), 50);
    assert_eq!(conns, 100);
}

/// Two shards run at once against one node; merging their reports sums the
/// counts and the histograms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_shards_sum_their_counts() {
    let node = Node::start().await;
    let a = node.run_args(&[
        "-c",
        "30",
        "--shard",
        "0/2",
        "--rate",
        "200",
        "--duration",
        "0.3",
    ]);
    let b = node.run_args(&[
        "-c",
        "30",
        "--shard",
        "1/2",
        "--rate",
        "200",
        "--duration",
        "0.3",
    ]);
    let (ra, rb) = tokio::join!(runner::run(&a), runner::run(&b));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_clean(&ra);
    assert_clean(&rb);
    assert_eq!(ra.connections.established + rb.connections.established, 30);
    // Each shard publishes half the rate.
    assert_eq!(ra.publish.accepted, 30);
    // Through JSON, as the merge subcommand reads them.
    let back: Vec<Report> = [&ra, &rb]
        .iter()
        .map(|r| serde_json::from_str(&serde_json::to_string(r).unwrap()).unwrap())
        .collect();
    let m = report::merge(&back).unwrap();
    assert_eq!(m.shards.len(), 2);
    assert_eq!(m.connections.established, 30);
    assert_eq!(m.publish.accepted, 60);
    assert_eq!(m.delivery.expected, 60);
    assert_eq!(m.delivery.delivered, 60);
    assert_eq!(m.latency_us.count, 60);
    assert_eq!(m.initial_state_us.count, 30);
    assert_eq!(m.latency_us.max, ra.latency_us.max.max(rb.latency_us.max));
}

/// A node that refuses upgrades with 503 (drained) and then serves again: every
/// connection is dialed again on it after a backoff and gets in, each refusal counted
/// as a retry, and time to `initial_state` runs from the first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_first_dials_are_retried_on_the_same_node() {
    let node = Node::start().await;
    node.drain(0).await;
    let args = node.run_args(&[
        "-c",
        "10",
        "--connect-timeout",
        "20",
        "--rate",
        "100",
        "--duration",
        "0.1",
    ]);
    let undrain = async {
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        node.undrain().await;
    };
    let (rep, ()) = tokio::join!(runner::run(&args), undrain);
    let rep = rep.unwrap();
    assert_clean(&rep);
    assert_eq!(rep.connections.established, 10);
    assert_eq!(rep.connections.failed, 0);
    // Refused at once, then at least every ~100 ms until the undrain at 800 ms.
    assert!(
        rep.connections.retries >= 10 * 3,
        "{} retries",
        rep.connections.retries
    );
    assert!(
        rep.initial_state_us.p50 >= 700_000,
        "from the first attempt: {:?}",
        rep.initial_state_us
    );
    assert!(
        rep.summary()
            .contains(&format!("retried={} ", rep.connections.retries)),
        "{}",
        rep.summary()
    );
}

/// Refused connections are counted by cause, not hidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_counted_by_cause() {
    let node = Node::start().await;
    let mut args = node.run_args(&["-c", "5"]);
    args.jwt_secret = "wrong".into();
    let rep = runner::run(&args).await.unwrap();
    assert_eq!(rep.connections.established, 0);
    assert_eq!(rep.connections.failed, 5);
    assert_eq!(rep.connections.retries, 0, "a bad token is not retried");
    assert_eq!(
        rep.errors.get("handshake_http_401"),
        Some(&5),
        "{:?}",
        rep.errors
    );
}

/// The ramp raises the rate step by step and reports the highest passing one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramp_reports_steps_and_best_rate() {
    let node = Node::start().await;
    let args = node.ramp_args(&[
        "-c",
        "10",
        "--duration",
        "0.2",
        "--start-rate",
        "100",
        "--factor",
        "2",
        "--max-rate",
        "400",
        "--p99-limit-ms",
        "5000",
    ]);
    let rep = runner::ramp(&args).await.unwrap();
    let ramp = rep.ramp.as_ref().unwrap();
    assert_eq!(ramp.steps.len(), 3, "{ramp:#?}");
    assert!(ramp.steps.iter().all(|s| s.pass), "{ramp:#?}");
    assert_eq!(ramp.best_rate, Some(400.0));
    assert_eq!(rep.delivery.lost, 0);
}

/// A warm-up publishes before the first step without counting: the steps and their
/// expected counts are those of a ramp without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramp_warmup_is_not_counted() {
    let node = Node::start().await;
    let args = node.ramp_args(&[
        "-c",
        "10",
        "--duration",
        "0.2",
        "--start-rate",
        "100",
        "--factor",
        "2",
        "--max-rate",
        "200",
        "--p99-limit-ms",
        "5000",
        "--warmup",
        "0.3",
    ]);
    let rep = runner::ramp(&args).await.unwrap();
    let ramp = rep.ramp.as_ref().unwrap();
    assert_eq!(ramp.steps.len(), 2, "{ramp:#?}");
    assert_eq!(ramp.steps[0].delivery.expected, 20, "{ramp:#?}");
    assert_eq!(ramp.steps[1].delivery.expected, 40, "{ramp:#?}");
    assert_eq!(rep.delivery.expected, 60);
    assert_eq!(rep.delivery.lost, 0);
    assert_eq!(rep.publish.accepted, 40, "the best step's publishing");
}

/// The binary writes a JSON report and merges reports from files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_writes_and_merges_json() {
    let node = Node::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_herald-bench");
    let mut files = Vec::new();
    let mut told = String::new();
    for i in 0..2 {
        let out = dir.path().join(format!("s{i}.json"));
        let shard = format!("{i}/2");
        let st = tokio::process::Command::new(bin)
            .args([
                "run",
                "--node",
                &node.url(),
                "--jwt-secret",
                common::JWT_SECRET,
                "--api-key",
                "k",
            ])
            .args([
                "-c",
                "8",
                "--shard",
                &shard,
                "--rate",
                "100",
                "--duration",
                "0.2",
            ])
            .arg("--json")
            .arg(&out)
            .output()
            .await
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        let line = String::from_utf8_lossy(&st.stdout);
        assert!(line.starts_with("herald-bench run"), "{line}");
        assert!(line.contains(" | bench rss/conn="), "{line}");
        told.push_str(&line);
        told.push_str(&String::from_utf8_lossy(&st.stderr));
        files.push(out);
    }
    let merged = dir.path().join("m.json");
    let st = tokio::process::Command::new(bin)
        .arg("merge")
        .args(&files)
        .arg("--json")
        .arg(&merged)
        .output()
        .await
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let m: Report = serde_json::from_str(&std::fs::read_to_string(&merged).unwrap()).unwrap();
    assert_eq!(m.connections.established, 8);
    assert_eq!(m.delivery.expected, 20, "what the shards said:\n{told}");
    assert_eq!(m.delivery.delivered, 20);
    assert_eq!(m.latency_us.count, 20);
    assert_eq!(m.generator.len(), 2, "each shard's generator samples");
    assert!(m.derived.generator_rss_per_connection_bytes.is_some());
    assert!(String::from_utf8_lossy(&st.stdout).contains(" | bench rss/conn="));
}
