//! The operations pack against real nodes: the Grafana dashboard (`ops/grafana/`)
//! and the alert rules (`ops/prometheus/`) use only names a node exports; every
//! family PROTOCOL.md 6.3 documents is in a fresh node's first scrape, and nothing
//! undocumented is; promtool accepts the exposition and the rules and passes the
//! rules' unit tests; and the binary's logs carry no escape codes in a file, or are
//! JSON lines with the node id.
//!
//! promtool (Debian's `prometheus` package) must be on `PATH`: `.ci/run` installs it,
//! and these tests fail, never skip, without it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{self, Db};

const BIN: &str = env!("CARGO_BIN_EXE_herald-server");

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("server/ is in the workspace")
        .to_owned()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Runs promtool with `args` in `dir`, feeding it `stdin`.
fn promtool(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be on PATH (Debian's prometheus package, which .ci/run installs)");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The names of the samples in an exposition (`herald_published_total`,
/// `herald_delivery_latency_seconds_bucket`, ...).
fn sample_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            l.split(|c: char| c == '{' || c.is_whitespace())
                .next()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// PromQL words that are not metric names: operators, and the aggregations (which
/// may stand before `by (...)` rather than their parentheses).
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
];

/// Words followed by a list of label names in parentheses.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Skips from `open` at `chars[i]` to just past its `close`, stepping over quoted
/// strings inside.
fn skip_to(chars: &[char], mut i: usize, close: char) -> usize {
    i += 1;
    while i < chars.len() && chars[i] != close {
        if matches!(chars[i], '"' | '\'' | '`') {
            i = skip_quoted(chars, i);
        } else {
            i += 1;
        }
    }
    i + 1
}

fn skip_quoted(chars: &[char], mut i: usize) -> usize {
    let q = chars[i];
    i += 1;
    while i < chars.len() && chars[i] != q {
        i += if chars[i] == '\\' { 2 } else { 1 };
    }
    i + 1
}

/// Every metric name a PromQL expression reads: identifiers that are not
/// functions, keywords, label names (in matchers or grouping lists), numbers,
/// durations or Grafana variables.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut grouping = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_quoted(&chars, i);
        } else if c == '{' {
            i = skip_to(&chars, i, '}');
        } else if c == '[' {
            i = skip_to(&chars, i, ']');
        } else if c == '(' && grouping {
            grouping = false;
            i = skip_to(&chars, i, ')');
        } else if c == '$' {
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || "_{}".contains(chars[i])) {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let lower = word.to_ascii_lowercase();
            if GROUPING.contains(&lower.as_str()) {
                grouping = true;
            } else if chars.get(j) == Some(&'(') || KEYWORDS.contains(&lower.as_str()) {
                // A function call or an operator.
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (instance, le) (rate(herald_delivery_latency_seconds_bucket{instance=~"$instance",le!="x"}[$__rate_interval]))) > 0.5"#
        ),
        ["herald_delivery_latency_seconds_bucket"]
    );
    assert_eq!(
        names(
            "herald_draining == 1 and on (instance, job) herald_drain_remaining == 0 and on(instance) herald_connections offset 5m > 1e3"
        ),
        [
            "herald_connections",
            "herald_drain_remaining",
            "herald_draining"
        ]
    );
    assert_eq!(
        names(r#"sum(rate(a_total[5m])) by (op) / ignoring(op) group_left(node) b{x="y}"}"#),
        ["a_total", "b"]
    );
}

/// Every `"expr"` in a JSON value, wherever it is nested.
fn exprs_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => exprs_in(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| exprs_in(v, out)),
        _ => {}
    }
}

/// A fresh node's first scrape.
async fn first_scrape() -> (common::TestServer, String) {
    let s = common::start(Db::Sqlite).await;
    let text = s.metrics_text().await;
    (s, text)
}

/// The dashboard is a standard Grafana dashboard that picks its Prometheus with a
/// datasource variable, covers what an operator watches, and every metric name in
/// every query and variable is one a running node exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_use_only_exported_metrics() {
    let (s, exposition) = first_scrape().await;
    let exported = sample_names(&exposition);
    let dash: Value = serde_json::from_str(&read("ops/grafana/herald.json"))
        .expect("ops/grafana/herald.json is JSON");

    assert!(
        dash["title"].is_string() && dash["uid"].is_string(),
        "{dash:#}"
    );
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 30);
    let vars = dash["templating"]["list"].as_array().unwrap();
    let ds = vars
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(ds["query"], "prometheus");
    let ds_ref =
        json!({"type": "prometheus", "uid": format!("${{{}}}", ds["name"].as_str().unwrap())});
    let panels = dash["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate id {p}");
        assert!(
            p["gridPos"]["w"].is_u64() && p["gridPos"]["h"].is_u64(),
            "{p}"
        );
        if p["type"] != "row" {
            assert_eq!(p["datasource"], ds_ref, "{}", p["title"]);
            for t in p["targets"].as_array().unwrap() {
                assert_eq!(t["datasource"], ds_ref, "{}", p["title"]);
            }
        }
    }

    let mut exprs = Vec::new();
    exprs_in(&dash["panels"], &mut exprs);
    for v in vars {
        if let Some(def) = v["definition"].as_str() {
            // label_values(metric, label)
            let inner = def
                .strip_prefix("label_values(")
                .and_then(|r| r.split(',').next())
                .unwrap_or_else(|| panic!("unexpected variable query {def}"));
            exprs.push(inner.to_owned());
        }
    }
    assert!(exprs.len() >= 20, "{exprs:?}");
    let mut used = BTreeSet::new();
    for e in &exprs {
        let names = metric_names(e);
        assert!(!names.is_empty(), "no metric in {e}");
        for n in names {
            assert!(
                exported.contains(&n),
                "{n} (in {e}) is not exported:\n{exposition}"
            );
            used.insert(n);
        }
    }
    // What the issue asks the dashboard to show.
    for n in [
        "herald_connections",
        "herald_connection_capacity",
        "websocket_connections_total",
        "herald_disconnects_total",
        "herald_messages_delivered_total",
        "herald_delivery_latency_seconds_bucket",
        "herald_queue_depth",
        "herald_slow_consumer_disconnects_total",
        "herald_resumes_total",
        "herald_resume_replayed_total",
        "herald_store_errors_total",
        "herald_store_latency_seconds_bucket",
        "herald_broker_errors_total",
        "herald_fd_open",
        "herald_fd_limit",
        "herald_drain_remaining",
    ] {
        assert!(used.contains(n), "the dashboard does not show {n}");
    }
    s.stop().await.unwrap();
}

const RULES: &str = "ops/prometheus/herald-alerts.yml";
const RULE_TESTS: &str = "ops/prometheus/tests/herald-alerts.test.yml";

/// The alert names and expressions of the rules file. Every rule is written as
/// `- alert: Name` and a one-line `expr:`; promtool's rule count (in
/// `promtool_checks_the_alert_rules`) proves none was missed.
fn alerts() -> Vec<(String, String)> {
    let text = read(RULES);
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert:") {
            out.push((name.trim().to_owned(), String::new()));
        } else if let Some(expr) = line.strip_prefix("expr:") {
            let last = out.last_mut().expect("expr after its alert");
            assert!(last.1.is_empty(), "two exprs for {}", last.0);
            last.1 = expr.trim().to_owned();
        }
    }
    for (name, expr) in &out {
        assert!(
            !expr.is_empty() && !expr.starts_with('|'),
            "{name}: one-line expr"
        );
    }
    out
}

/// The names promtool's rules check counts, every alert's summary, and what
/// `promtool check rules` says.
#[test]
fn promtool_checks_the_alert_rules() {
    let alerts = alerts();
    assert!(alerts.len() >= 10, "{alerts:?}");
    let o = promtool(&root(), &["check", "rules", RULES], None);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "every rule is an alert read here: {}",
        text(&o)
    );
}

/// `promtool test rules` passes, and every alert has a test that expects it to fire.
#[test]
fn promtool_unit_tests_cover_every_alert() {
    let tests = read(RULE_TESTS);
    for (name, _) in alerts() {
        let fires = tests
            .split("alertname: ")
            .skip(1)
            .any(|t| t.starts_with(&format!("{name}\n")) && t.contains("exp_labels"));
        assert!(fires, "no test expects {name} to fire");
    }
    let dir = root().join("ops/prometheus/tests");
    let o = promtool(&dir, &["test", "rules", "herald-alerts.test.yml"], None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("SUCCESS"),
        "{}",
        text(&o)
    );
}

/// Every alert expression reads only metrics a running node exports, and `up`,
/// which Prometheus itself records for each scrape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_use_only_exported_metrics() {
    let (s, exposition) = first_scrape().await;
    let exported = sample_names(&exposition);
    for (name, expr) in alerts() {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{name}: {expr}");
        for n in names {
            assert!(
                n == "up" || exported.contains(&n),
                "{name} reads {n}, which the node does not export"
            );
        }
    }
    s.stop().await.unwrap();
}

/// The metric names of PROTOCOL.md 6.3's table, without their labels.
fn documented_metrics() -> Vec<String> {
    let doc = read("docs/PROTOCOL.md");
    let section = doc
        .split("### 6.3 Metrics")
        .nth(1)
        .expect("PROTOCOL.md has 6.3")
        .split("\n## ")
        .next()
        .unwrap();
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .map(|l| l.split(['`', '{']).next().unwrap().to_owned())
        .collect()
}

/// The sample names a documented metric stands for: a histogram's `_bucket`,
/// `_sum` and `_count`, or the name itself.
fn family_of(sample: &str, documented: &[String]) -> Option<String> {
    documented
        .iter()
        .find(|d| {
            sample == d.as_str()
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| sample.strip_suffix(suffix) == Some(d.as_str()))
        })
        .cloned()
}

/// A fresh, idle node's first scrape has every family PROTOCOL.md documents, each
/// labelled family with a series (at zero) for each of its known label values, and
/// no family the documentation does not list; promtool finds nothing to lint in it,
/// nor in a scrape after traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_scrape_has_every_documented_family_and_promtool_accepts_it() {
    let (s, exposition) = first_scrape().await;
    let documented = documented_metrics();
    assert!(documented.len() >= 30, "{documented:?}");
    let samples = sample_names(&exposition);
    for d in &documented {
        assert!(
            samples
                .iter()
                .any(|n| family_of(n, &documented).as_ref() == Some(d)),
            "{d} is documented but not in the first scrape:\n{exposition}"
        );
    }
    for n in &samples {
        assert!(
            family_of(n, &documented).is_some(),
            "{n} is exported but not documented in PROTOCOL.md 6.3"
        );
    }

    // Every known label value, at zero, before anything happened.
    let zero = |name: &str, label: &str, values: &[&str]| {
        for v in values {
            let line = format!("{name}{{{label}=\"{v}\"}} 0");
            assert!(
                exposition.lines().any(|l| l == line),
                "{line} not in the first scrape:\n{exposition}"
            );
        }
    };
    zero("herald_published_total", "kind", &["notification", "event"]);
    zero("herald_broker_errors_total", "op", &["publish"]);
    zero(
        "herald_upgrades_refused_total",
        "code",
        &["400", "401", "403", "429", "503"],
    );
    let codes: Vec<String> = (1000..=1015)
        .map(|c: u16| c.to_string())
        .chain(["3xxx", "4xxx", "other"].map(String::from))
        .collect();
    zero(
        "herald_disconnects_total",
        "code",
        &codes.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    zero("herald_connections_by_state", "state", &["opening", "open"]);
    zero("herald_redis_health", "state", &["up", "down"]);
    // The store's operations, as PROTOCOL.md lists them.
    let doc = read("docs/PROTOCOL.md");
    let ops_line = doc
        .split("The store's `op` values are ")
        .nth(1)
        .expect("PROTOCOL.md lists the store's op values");
    let ops: Vec<&str> = ops_line
        .split('.')
        .next()
        .unwrap()
        .split('`')
        .skip(1)
        .step_by(2)
        .collect();
    assert!(ops.len() >= 10, "{ops:?}");
    zero("herald_store_errors_total", "op", &ops);
    for op in &ops {
        let count = format!("herald_store_latency_seconds_count{{op=\"{op}\"}}");
        assert!(
            exposition.lines().any(|l| l.starts_with(&count)),
            "{count} not in the first scrape"
        );
    }
    assert!(
        exposition
            .lines()
            .any(|l| l.starts_with("herald_build_info{")
                && l.contains(&format!("node=\"{}\"", s.node_id()))
                && l.ends_with(" 1")),
        "{exposition}"
    );
    // A single node is ready, its store up and Redis off.
    for line in [
        "herald_ready 1",
        "herald_store_up 1",
        "herald_redis_health{state=\"off\"} 1",
        "herald_drain_remaining 0",
    ] {
        assert!(
            exposition.lines().any(|l| l == line),
            "{line}:\n{exposition}"
        );
    }

    let o = promtool(&root(), &["check", "metrics"], Some(&exposition));
    assert!(o.status.success() && o.stdout.is_empty(), "{}", text(&o));

    // After traffic: a session, a notification, a refusal, a close.
    let (mut c, _) = s.connect("42").await;
    s.notify("42", json!("hi")).await;
    c.notifications(1).await;
    drop(c);
    let refused = common::api()
        .get(s.http("/ws/notifications/?token=bad"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let after = s.metrics_text().await;
    assert_eq!(
        common::metric_in(&after, "herald_upgrades_refused_total", &[("code", "401")]),
        1.0
    );
    assert_eq!(
        common::metric_in(
            &after,
            "herald_published_total",
            &[("kind", "notification")]
        ),
        1.0
    );
    let o = promtool(&root(), &["check", "metrics"], Some(&after));
    assert!(o.status.success() && o.stdout.is_empty(), "{}", text(&o));
    s.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------

/// `herald-server` in a fresh directory (its data dir), with `env`, stderr to `log`,
/// on free ports, and a tuning profile the host falls short of (so it logs a
/// warning with fields); stopped with SIGTERM once ready. Returns its exit status.
async fn run_node_logging_to(log: &Path, env: &[(&str, &str)]) -> std::process::ExitStatus {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys");
    std::fs::create_dir_all(sys.join("net/core")).unwrap();
    std::fs::write(sys.join("net/core/somaxconn"), "128\n").unwrap();
    let profile = dir.path().join("profile.conf");
    std::fs::write(&profile, "profile = short\nnet.core.somaxconn >= 4096\n").unwrap();
    let (public, admin) = (common::free_addr(), common::free_addr());
    let mut cmd = tokio::process::Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("HERALD_") || k == "DATABASE_URL" || k == "REDIS_URL" || k == "NO_COLOR" {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(dir.path())
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .env("RUST_LOG", "info,sqlx=warn")
        .env("HERALD_LISTEN", public.to_string())
        .env("HERALD_ADMIN_LISTEN", admin.to_string())
        .env("HERALD_SYSCTL_ROOT", &sys)
        .env("HERALD_TUNING_PROFILE", &profile)
        .env("HERALD_SHUTDOWN_DRAIN_S", "0")
        .envs(env.iter().copied());
    let mut child = cmd.spawn().expect("herald-server starts");
    let ready = common::ready_or_exited(
        public,
        || child.try_wait().unwrap(),
        Duration::from_secs(60),
        || std::fs::read_to_string(log).unwrap_or_default(),
    )
    .await;
    if let Err(status) = ready {
        return status;
    }
    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap()
}

/// With stderr redirected to a file (not a terminal), the text logs carry no
/// escape codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_in_a_file_have_no_escape_codes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let st = run_node_logging_to(&log, &[]).await;
    let bytes = std::fs::read(&log).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(st.success(), "{st}\n{text}");
    assert!(
        text.contains("node ready") && text.contains("WARN"),
        "{text}"
    );
    assert!(!bytes.contains(&0x1b), "escape codes in a file:\n{text:?}");
}

/// `HERALD_LOG_FORMAT=json`: every line is one JSON object with the node id, level,
/// target, message and the event's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_objects_with_node_level_target_message_and_fields() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let st = run_node_logging_to(
        &log,
        &[
            ("HERALD_LOG_FORMAT", "json"),
            ("HERALD_NODE_ID", "json-node-1"),
        ],
    )
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(st.success(), "{st}\n{text}");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert!(lines.len() >= 3, "{text}");
    for l in &lines {
        assert_eq!(l["node"], "json-node-1", "{l}");
        for key in ["timestamp", "level", "target", "message"] {
            assert!(l[key].is_string(), "{key} in {l}");
        }
    }
    let ready = lines
        .iter()
        .find(|l| l["message"] == "node ready")
        .unwrap_or_else(|| panic!("node ready in {text}"));
    assert_eq!(ready["level"], "INFO");
    assert_eq!(ready["store"], "sqlite");
    assert!(ready["capacity"].is_u64(), "{ready}");
    let short = lines
        .iter()
        .find(|l| l["message"] == "falls short of the tuning profile")
        .unwrap_or_else(|| panic!("the tuning warning in {text}"));
    assert_eq!(short["level"], "WARN");
    assert_eq!(short["key"], "net.core.somaxconn");
    assert_eq!(short["have"], "128");
    assert!(!text.contains('\u{1b}'));
}

/// `HERALD_WORKER_THREADS` sets how many tokio workers the binary runs, and the node
/// says how many it has; without it, one per core.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_the_worker_threads_it_is_given() {
    let cores = std::thread::available_parallelism().unwrap().get() as u64;
    for (env, want) in [(Some("3"), 3), (None, cores)] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr.log");
        let mut vars = vec![("HERALD_LOG_FORMAT", "json")];
        vars.extend(env.map(|n| ("HERALD_WORKER_THREADS", n)));
        let st = run_node_logging_to(&log, &vars).await;
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(st.success(), "{st}\n{text}");
        let ready: Value = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["message"] == "node ready")
            .unwrap_or_else(|| panic!("node ready in {text}"));
        assert_eq!(ready["workers"], want, "{env:?}: {ready}");
    }
}

/// A worker count of 0 (or past 1024) stops start-up with a message naming the
/// setting and its range.
#[test]
fn a_worker_thread_count_out_of_range_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["0", "1025", "two"] {
        let o = Command::new(BIN)
            .current_dir(dir.path())
            .env("HERALD_WORKER_THREADS", bad)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{bad}: {err}");
        assert!(
            err.contains(&format!(
                "invalid value '{bad}' for '--worker-threads <WORKER_THREADS>'"
            )),
            "{bad}: {err}"
        );
    }
}

/// An unknown `HERALD_LOG_FORMAT` stops start-up with a message naming the setting
/// and the values it takes.
#[test]
fn an_unknown_log_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(BIN)
        .current_dir(dir.path())
        .env("HERALD_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("HERALD_LOG_FORMAT must be `text` or `json` (got \"xml\")"),
        "{err}"
    );
}
