//! Contract §6: metrics that parse and move, the tuning profile against the real
//! host and a stand-in /proc/sys, and the audit log.

use std::collections::HashMap;

use sha2::Digest;
use std::path::Path;

use herald_shared::admin::{ApplyReport, ApplyResult, AuditLog, TuningReport};
use serde_json::{Value, json};

use crate::both_stores;
use crate::common::{self, ADMIN_TOKEN, Db, TestServer, start, start_with};

both_stores!(audit_log_records_every_admin_action);

/// Scrapes `/metrics` and parses it with prometheus-parse: name -> summed value.
async fn scrape_metrics(s: &TestServer) -> (prometheus_parse::Scrape, HashMap<String, f64>) {
    let text = s.metrics_text().await;
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics parse");
    let mut values = HashMap::new();
    for sample in &scrape.samples {
        let v = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref buckets) => {
                buckets.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            _ => continue,
        };
        *values.entry(sample.metric.clone()).or_insert(0.0) += v;
    }
    (scrape, values)
}

/// Every metric the contract names is present, typed, and moves with traffic.
#[tokio::test]
async fn required_metrics_parse_and_move() {
    let s = start(Db::Sqlite).await;
    let (scrape, before) = scrape_metrics(&s).await;
    for name in [
        "websocket_connections_total",
        "herald_connections",
        "herald_messages_delivered_total",
        "herald_slow_consumer_disconnects_total",
        "herald_queue_depth",
        "herald_queue_capacity",
        "herald_draining",
        "herald_fd_open",
        "herald_fd_limit",
    ] {
        assert!(before.contains_key(name), "missing {name}");
    }
    for hist in [
        "websocket_message_duration_seconds",
        "herald_delivery_latency_seconds",
    ] {
        let typed = scrape
            .samples
            .iter()
            .any(|s| s.metric == hist && matches!(s.value, prometheus_parse::Value::Histogram(_)));
        assert!(typed, "{hist} is not a histogram");
    }
    assert_eq!(before["herald_queue_capacity"], 1500.0);
    assert_eq!(before["herald_draining"], 0.0);
    // The node reports the runtime it runs on: here the test's, one thread.
    assert_eq!(before["herald_worker_threads"], 1.0);
    assert!(
        before["herald_fd_open"] > 0.0 && before["herald_fd_limit"] >= before["herald_fd_open"]
    );

    let (mut c, _) = s.connect("42").await;
    for i in 0..5 {
        s.notify("42", json!(i)).await;
    }
    c.notifications(5).await;
    c.send_json(json!({"type": "ping"})).await;
    c.frame().await;
    let (_, after) = scrape_metrics(&s).await;
    assert_eq!(
        after["websocket_connections_total"],
        before["websocket_connections_total"] + 1.0
    );
    assert_eq!(after["herald_connections"], 1.0);
    assert_eq!(after["herald_messages_delivered_total"], 5.0);
    assert_eq!(
        after["herald_delivery_latency_seconds"], 5.0,
        "5 observations"
    );
    assert_eq!(after["websocket_message_duration_seconds"], 1.0);
    assert_eq!(after["herald_published_total"], 5.0);
    assert_eq!(after["herald_connections_by_state"], 1.0);
    assert!(
        after["herald_store_latency_seconds"] > 0.0,
        "store operations observed"
    );

    // Draining shows in herald_draining and disconnects by code.
    common::api()
        .post(s.admin_url("/admin/drain"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"window_s": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(c.close_code().await, 1012);
    let (scrape, after) = scrape_metrics(&s).await;
    assert_eq!(after["herald_draining"], 1.0);
    let closed_1012 = scrape.samples.iter().any(|x| {
        x.metric == "herald_disconnects_total"
            && x.labels.get("code") == Some("1012")
            && matches!(x.value, prometheus_parse::Value::Counter(v) if v == 1.0)
    });
    assert!(closed_1012, "disconnects by code");
}

/// `/metrics` can be made to require the admin token.
#[tokio::test]
async fn metrics_token_can_be_required() {
    let s = start_with(Db::Sqlite, &["--metrics-require-token"]).await;
    let r = common::api()
        .get(s.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = common::api()
        .get(s.admin_url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("herald_connections"));
}

async fn tuning(s: &TestServer) -> TuningReport {
    serde_json::from_value(s.admin_get("/admin/tuning").await).unwrap()
}

async fn apply(s: &TestServer) -> ApplyReport {
    let r = common::api()
        .post(s.admin_url("/admin/tuning/apply"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn soft_nofile() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap().0
}

/// `GET /admin/tuning?key=` reports one item; a key that is not a sysctl name
/// (`.etc.shadow` would be `/etc/shadow` under `Path::join`) is 400 with the reason,
/// a sysctl the profile does not hold 404.
#[tokio::test]
async fn tuning_keys_must_be_sysctl_names() {
    let s = start(Db::Sqlite).await;
    let one = s.admin_get("/admin/tuning?key=fs.file-max").await;
    let items = one["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{one}");
    assert_eq!(items[0]["key"], "fs.file-max");
    for bad in [
        ".etc.shadow",
        "..%2Fetc%2Fshadow",
        "net..core",
        "net.core.",
        "NET.core",
    ] {
        let r = common::api()
            .get(s.admin_url(&format!("/admin/tuning?key={bad}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let body: serde_json::Value = r.json().await.unwrap();
        let why = body["error"].as_str().unwrap();
        assert!(why.contains("is not a sysctl name"), "{bad}: {why}");
    }
    let r = common::api()
        .get(s.admin_url("/admin/tuning?key=kernel.hostname"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// The shipped profile is compared with this host's real /proc/sys and this
/// process's open-file limit.
#[tokio::test]
async fn tuning_reads_the_real_host() {
    let s = start(Db::Sqlite).await;
    let report = tuning(&s).await;
    assert_eq!(report.profile, "herald-100k");
    for key in [
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.ipv4.ip_local_port_range",
        "fs.file-max",
        "nofile",
    ] {
        let item = report
            .items
            .iter()
            .find(|i| i.key == key)
            .unwrap_or_else(|| panic!("no {key}"));
        let real = if key == "nofile" {
            soft_nofile().to_string()
        } else {
            let raw = std::fs::read_to_string(Path::new("/proc/sys").join(key.replace('.', "/")))
                .unwrap();
            raw.split_whitespace().collect::<Vec<_>>().join(" ")
        };
        assert_eq!(item.have, real, "{key}");
    }
    let somax = report
        .items
        .iter()
        .find(|i| i.key == "net.core.somaxconn")
        .unwrap();
    let have: u64 = somax.have.parse().unwrap();
    assert_eq!(somax.ok, have >= 65535);
    assert_eq!((somax.want.as_str(), somax.op.as_str()), ("65535", ">="));
}

/// Applying a profile whose targets are the host's current values changes nothing
/// and reports every item `already`.
#[tokio::test]
async fn apply_with_current_values_is_already() {
    let dir = tempfile::tempdir().unwrap();
    let mut profile = String::from("profile = current\n");
    for key in [
        "net.core.somaxconn",
        "net.ipv4.ip_local_port_range",
        "fs.file-max",
    ] {
        let raw =
            std::fs::read_to_string(Path::new("/proc/sys").join(key.replace('.', "/"))).unwrap();
        profile += &format!(
            "{key} = {}\n",
            raw.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
    profile += &format!("nofile >= {}\n", soft_nofile());
    let path = dir.path().join("profile.conf");
    std::fs::write(&path, profile).unwrap();
    let s = start_with(Db::Sqlite, &["--tuning-profile", path.to_str().unwrap()]).await;
    assert!(tuning(&s).await.items.iter().all(|i| i.ok));
    let report = apply(&s).await;
    assert_eq!(report.items.len(), 4);
    for item in &report.items {
        assert_eq!(item.result, ApplyResult::Already, "{item:?}");
    }
}

/// Against a stand-in /proc/sys: a low value is applied and read back, a missing key
/// and a read-only file fail with their reason, and a hard limit below the wanted
/// open-file limit fails after raising the soft limit as far as it goes.
#[tokio::test]
async fn apply_reports_applied_and_failed_items() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("net/core")).unwrap();
    std::fs::write(root.path().join("net/core/somaxconn"), "4096\n").unwrap();
    std::fs::create_dir_all(root.path().join("fs")).unwrap();
    // A real read-only sysctl (mode 0444: even root may not write it).
    std::os::unix::fs::symlink("/proc/sys/fs/file-nr", root.path().join("fs/file-nr")).unwrap();
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    let profile = format!(
        "profile = stand-in\nnet.core.somaxconn >= 65535\nnet.ipv4.not_a_key = 1\nfs.file-nr = 1 2 3\nnofile >= {}\n",
        hard + 1
    );
    let path = root.path().join("profile.conf");
    std::fs::write(&path, profile).unwrap();
    let s = start_with(
        Db::Sqlite,
        &[
            "--tuning-profile",
            path.to_str().unwrap(),
            "--sysctl-root",
            root.path().to_str().unwrap(),
        ],
    )
    .await;
    let before = tuning(&s).await;
    assert!(before.items.iter().all(|i| !i.ok), "{before:?}");

    let report = apply(&s).await;
    let by_key: HashMap<&str, _> = report.items.iter().map(|i| (i.key.as_str(), i)).collect();
    assert_eq!(by_key["net.core.somaxconn"].result, ApplyResult::Applied);
    assert_eq!(
        std::fs::read_to_string(root.path().join("net/core/somaxconn"))
            .unwrap()
            .trim(),
        "65535"
    );
    assert_eq!(by_key["net.ipv4.not_a_key"].result, ApplyResult::Failed);
    assert!(by_key["net.ipv4.not_a_key"].detail.contains("no such key"));
    assert_eq!(by_key["fs.file-nr"].result, ApplyResult::Failed);
    assert!(
        by_key["fs.file-nr"].detail.contains("permission denied"),
        "{:?}",
        by_key["fs.file-nr"]
    );
    let nofile = by_key["nofile"];
    assert_eq!(nofile.result, ApplyResult::Failed);
    assert!(nofile.detail.contains("hard limit"), "{nofile:?}");
    assert_eq!(
        soft_nofile(),
        hard,
        "soft limit raised as far as the hard limit allows"
    );

    let after = tuning(&s).await;
    assert!(
        after
            .items
            .iter()
            .find(|i| i.key == "net.core.somaxconn")
            .unwrap()
            .ok
    );
    // The node's capacity follows the raised limit.
    let status: Value = s.admin_get("/admin/status").await;
    assert_eq!(status["fd_limit"], hard);
}

/// Drain, undrain, tuning apply and refused attempts each leave an audit row with
/// the action, its arguments, its result and the caller's token fingerprint.
async fn audit_log_records_every_admin_action(db: Db) {
    let s = start(db).await;
    let post = |path: &str, body: Value, token: &str| {
        common::api()
            .post(s.admin_url(path))
            .bearer_auth(token.to_owned())
            .json(&body)
            .send()
    };
    assert_eq!(
        post("/admin/drain", json!({"window_s": 1}), ADMIN_TOKEN)
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(
        post("/admin/undrain", json!({}), ADMIN_TOKEN)
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        post("/admin/drain", json!({"window_s": "soon"}), ADMIN_TOKEN)
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        post("/admin/drain", json!({"window_s": 1}), "stolen")
            .await
            .unwrap()
            .status(),
        401
    );
    let log: AuditLog = serde_json::from_value(s.admin_get("/admin/audit?limit=10").await).unwrap();
    let actions: Vec<&str> = log.entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        vec!["auth_failed", "drain", "undrain", "drain"],
        "newest first"
    );
    // PROTOCOL 6.2: the first 8 hex digits of the token's SHA-256.
    let fp: String = sha2::Sha256::digest(ADMIN_TOKEN.as_bytes())[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let drain = &log.entries[3];
    assert_eq!(drain.args, json!({"window_s": 1}));
    assert_eq!(drain.result["state"], "draining");
    assert!(
        drain
            .caller
            .starts_with(&format!("token:{fp} from 127.0.0.1:")),
        "{}",
        drain.caller
    );
    assert!(drain.at.ends_with('Z'));
    assert_eq!(drain.node, s.node_id());
    assert!(
        log.entries[1].result["error"].is_string(),
        "refused drain records why"
    );
    assert!(
        !log.entries[0].caller.contains(&fp),
        "a wrong token is not the admin's"
    );
    assert_eq!(log.entries[0].args["path"], "/admin/drain");
}

/// A drain window is a JSON number of seconds, fractions allowed (`5.0`, `0.5`);
/// a negative, non-numeric, absurd or over-3600 window gets 400 naming the range,
/// and the node keeps serving.
#[tokio::test]
async fn drain_windows_are_seconds_with_fractions() {
    let s = start(Db::Sqlite).await;
    let drain = |body: Value| {
        let req = common::api()
            .post(s.admin_url("/admin/drain"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    for bad in [
        json!(-1),
        json!(-0.5),
        json!(3600.5),
        json!(1e300),
        json!(u64::MAX),
        json!("5"),
        json!(null),
    ] {
        let (status, body) = drain(json!({ "window_s": bad })).await;
        assert_eq!(status, 400, "{bad}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains("window_s must be at most 3600")
                || error.contains("expected a number of seconds from 0 to"),
            "{bad}: {error}"
        );
        assert_eq!(
            s.admin_get("/admin/status").await["state"],
            "serving",
            "{bad}"
        );
    }
    let (status, body) = drain(json!({"window_s": 5.0})).await;
    assert_eq!(
        (status, &body["state"]),
        (202, &json!("draining")),
        "{body}"
    );
    let undrain = common::api()
        .post(s.admin_url("/admin/undrain"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(undrain.status(), 200);

    // A fractional window paces the drain: of two connections, the second closes
    // half the window (0.2 s) after the first.
    let (mut a, _) = s.connect("a").await;
    let (mut b, _) = s.connect("b").await;
    let started = std::time::Instant::now();
    let (status, _) = drain(json!({"window_s": 0.4})).await;
    assert_eq!(status, 202);
    let (ca, cb) = tokio::join!(a.close_code(), b.close_code());
    assert_eq!((ca, cb), (1012, 1012));
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(180) && took < std::time::Duration::from_secs(2),
        "{took:?}"
    );
    let log: AuditLog = serde_json::from_value(s.admin_get("/admin/audit?limit=1").await).unwrap();
    assert_eq!(log.entries[0].args, json!({"window_s": 0.4}));
}
