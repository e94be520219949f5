//! The scriptable subcommands against real running nodes, through the same flag
//! parsing as the binary.

mod common;

use std::time::Duration;

use clap::Parser;
use common::*;
use herald_console::cli::{self, Args};
use herald_shared::health::NodeState;
use serde_json::Value;

/// A registry prefix of its own, so no other test's nodes show up.
fn prefix() -> String {
    use std::hash::{BuildHasher, RandomState};
    format!(
        "console-test-{:x}",
        RandomState::new().hash_one(std::time::SystemTime::now())
    )
}

/// Runs `herald-console <args>` in-process; returns its output or error.
async fn run(args: &[&str]) -> Result<String, String> {
    let p = prefix();
    let mut all = vec!["herald-console", "--token", ADMIN_TOKEN, "--prefix", &p];
    all.extend_from_slice(args);
    let a = Args::try_parse_from(all).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let r = cli::run(&a, a.cmd.as_ref().expect("a subcommand"), &mut out).await;
    let text = String::from_utf8(out).unwrap();
    r.map(|()| text.clone())
        .map_err(|e| format!("{e:#}\n{text}"))
}

/// `status --json` lists every node with its state, and a dead URL as unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json() {
    let a = start_node("s1", 4096, true, &[]).await;
    let b = start_node("s2", 128, false, &[]).await;
    let dead = dead_url().await;
    let (ua, ub) = (a.admin_url(), b.admin_url());
    let out = run(&[
        "status", "--json", "--node", &ua, "--node", &ub, "--node", &dead,
    ])
    .await
    .unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    let nodes = v.as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    let by = |id: &str| {
        nodes
            .iter()
            .find(|n| n["id"] == id)
            .unwrap_or_else(|| panic!("{id} in {out}"))
    };
    assert_eq!(by("s1")["state"], "serving");
    assert_eq!(by("s1")["status"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(by("s1")["tuning_short"], 0);
    assert!(by("s2")["tuning_short"].as_u64().unwrap() >= 1);
    let d = by(dead.trim_start_matches("http://"));
    assert_eq!(d["state"], "unreachable");
    assert!(d["error"].as_str().is_some());

    let table = run(&["status", "--node", &ua, "--node", &dead])
        .await
        .unwrap();
    assert!(
        table.contains("s1") && table.contains("serving") && table.contains("unreachable"),
        "{table}"
    );
    a.stop().await;
    b.stop().await;
}

/// `drain --wait` returns once the node is drained (its connection closed), and
/// `undrain` puts it back in service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_wait_then_undrain() {
    let n = start_node("d1", 4096, true, &[]).await;
    let mut ws = n.connect("u1").await;
    read_frames(&mut ws, 2).await;
    let url = n.admin_url();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        run(&["drain", &url, "--window", "1", "--wait"]),
    )
    .await
    .expect("drain --wait ends")
    .unwrap();
    assert!(out.contains("d1: drained after"), "{out}");
    let s = client().status(&url).await.unwrap();
    assert_eq!(s.state, NodeState::Drained);
    assert_eq!(s.connections, 0);

    let out = run(&["undrain", &url]).await.unwrap();
    assert!(out.contains("d1: serving"), "{out}");
    assert_eq!(
        client().status(&url).await.unwrap().state,
        NodeState::Serving
    );
    n.stop().await;
}

/// `tuning` prints the items and how many fall short; `tuning --apply` reports each
/// item, and fails loudly when an item cannot be applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tuning_report_and_apply() {
    let ok = start_node("t1", 4096, true, &[]).await;
    let short = start_node("t2", 128, false, &[]).await;
    let out = run(&["tuning", &ok.admin_url()]).await.unwrap();
    assert!(
        out.contains("net.core.somaxconn") && out.trim_end().ends_with("ok"),
        "{out}"
    );
    let out = run(&["tuning", &short.admin_url()]).await.unwrap();
    assert!(out.contains("SHORT") && out.contains("short"), "{out}");
    // The fake sysctl root lets somaxconn be written; nofile cannot pass the hard limit here.
    let err = run(&["tuning", &short.admin_url(), "--apply"])
        .await
        .unwrap_err();
    assert!(
        err.contains("net.core.somaxconn") && err.contains("failed"),
        "{err}"
    );
    let now = client().tuning(&short.admin_url()).await.unwrap();
    let item = now
        .items
        .iter()
        .find(|i| i.key == "net.core.somaxconn")
        .unwrap();
    assert!(item.ok, "{item:?}");
    ok.stop().await;
    short.stop().await;
}

/// With Redis, nodes are found in the registry and a NODE can be named by its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_ids() {
    let p = prefix();
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let n = start_node(
        "r1",
        4096,
        true,
        &["--redis-url", &redis, "--redis-prefix", &p],
    )
    .await;
    let a = Args::try_parse_from([
        "herald-console",
        "--token",
        ADMIN_TOKEN,
        "--redis",
        &redis,
        "--prefix",
        &p,
        "undrain",
        "r1",
    ])
    .unwrap();
    let mut out = Vec::new();
    // The first heartbeat may take a moment.
    let mut last = None;
    for _ in 0..40 {
        out.clear();
        match cli::run(&a, a.cmd.as_ref().unwrap(), &mut out).await {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) => last = Some(format!("{e:#}")),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, None, "r1 found in the registry");
    assert!(String::from_utf8(out).unwrap().contains("r1: serving"));
    let a = Args::try_parse_from([
        "herald-console",
        "--token",
        ADMIN_TOKEN,
        "--redis",
        &redis,
        "--prefix",
        &p,
        "status",
        "--json",
    ])
    .unwrap();
    let mut out = Vec::new();
    cli::run(&a, a.cmd.as_ref().unwrap(), &mut out)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v[0]["id"], "r1");
    assert_eq!(v[0]["admin"], n.admin_url());
    n.stop().await;
}

/// `status` given neither --node nor --redis finds the node on this host, as `main`
/// does before any subcommand: at `--local`, with the admin token from
/// `--data-dir`'s secrets.json (generated by the node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_finds_the_local_node_through_data_dir() {
    let cwd = tempfile::tempdir().unwrap();
    let n = start_local_node("here-1", cwd.path()).await;
    let data = cwd.path().join("herald-data");
    let local = n.admin.to_string();
    let mut a = Args::try_parse_from([
        "herald-console",
        "--local",
        &local,
        "--data-dir",
        data.to_str().unwrap(),
        "status",
        "--json",
    ])
    .unwrap();
    // What the environment might say is not what this test is about.
    (a.redis, a.token) = (None, None);
    let found = a
        .find_local()
        .await
        .unwrap()
        .expect("looked for the local node");
    assert_eq!(found.status.node, "here-1");
    assert_eq!(a.nodes, [format!("http://{local}")]);
    let mut out = Vec::new();
    cli::run(&a, a.cmd.as_ref().unwrap(), &mut out)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v[0]["id"], "here-1");
    assert_eq!(v[0]["state"], "serving");

    // A wrong token given wins over the file, and the refusal is reported.
    a.nodes.clear();
    a.token = Some("wrong".into());
    let err = a.find_local().await.unwrap_err().to_string();
    assert!(err.contains("with the token given: HTTP 401"), "{err}");
    n.stop().await;
}
