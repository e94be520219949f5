//! Contract §7, Django Channels interop, against the real `channels` and
//! `channels_redis` packages from PyPI: a Python process configures Django's
//! `CHANNEL_LAYERS` and calls `async_to_sync(layer.group_send)(group, message)`, and
//! Herald clients in `group` receive `{"type":"event","group":group,"payload":message}`.
//!
//! Supported (what these tests exercise): the pub/sub layer,
//! `channels_redis.pubsub.RedisPubSubChannelLayer`. Its `group_send(g, m)` is exactly
//! `PUBLISH <prefix>__group__<g> <msgpack of m>`; a node subscribes to that channel
//! (prefix `HERALD_CHANNELS_PREFIX`, default `asgi`) while it has local members of
//! `g`, so a message reaches every node with members and nothing else.
//!
//! Not supported: the core layer, `channels_redis.core.RedisChannelLayer` (Django's
//! usual default), which keeps group members in Redis sorted sets and delivers
//! through per-process queues a reader must poll; and encrypted payloads
//! (`symmetric_encryption_keys`, Fernet), which Herald cannot read. Both limits are
//! documented in `server/src/broker/channels.rs`.
//!
//! The Python side runs in a virtual environment under the cargo target directory
//! (`target/herald-pyenv`), created and filled by `pip install` on first use; set
//! `HERALD_TEST_PYTHON` to use an existing interpreter that already has the packages.
//! A missing or failed install fails the tests with pip's output: they never skip.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use herald_shared::ServerFrame;
use serde_json::{Value, json};

use crate::cluster::{Cluster, REDIS, until_ready};
use crate::common::Client;

/// What `pip install` gets: the Django Channels stack at its 4.x major versions.
const PACKAGES: &[&str] = &["channels>=4,<5", "channels_redis>=4,<5", "msgpack"];

/// Imports that prove an interpreter is usable for these tests.
const PROBE: &str = "import django, channels, channels.layers, channels_redis.pubsub, msgpack";

/// The Django side. `argv`: channels prefix, then a JSON list of `[group, message]`
/// pairs, sent in order with one layer (so Redis sees the PUBLISHes in that order).
const DJANGO_SEND: &str = r#"
import json, sys
from importlib.metadata import version

import django
from django.conf import settings

prefix, sends = sys.argv[1], json.loads(sys.argv[2])
settings.configure(CHANNEL_LAYERS={
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [sys.argv[3]], "prefix": prefix},
    }
})
django.setup()

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer

layer = get_channel_layer()
assert isinstance(layer, RedisPubSubChannelLayer), type(layer)
for group, message in sends:
    async_to_sync(layer.group_send)(group, message)
print("sent", len(sends), "with",
      ", ".join(p + " " + version(p) for p in ("Django", "channels", "channels_redis", "msgpack")))
"#;

/// The Python interpreter to run Django with: `HERALD_TEST_PYTHON`, or the shared
/// virtual environment (created on first use). Panics with the reason otherwise.
async fn python() -> PathBuf {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    tokio::task::spawn_blocking(|| PYTHON.get_or_init(provide_python).clone())
        .await
        .expect("python set-up did not panic")
        .unwrap_or_else(|e| panic!("no Python with channels_redis for the Django tests:\n{e}"))
}

fn provide_python() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("HERALD_TEST_PYTHON") {
        let p = PathBuf::from(p);
        return match probe(&p) {
            Ok(()) => Ok(p),
            Err(e) => Err(format!(
                "HERALD_TEST_PYTHON={} cannot import the packages: {e}",
                p.display()
            )),
        };
    }
    let target = target_dir();
    std::fs::create_dir_all(&target).map_err(|e| format!("{}: {e}", target.display()))?;
    let venv = target.join("herald-pyenv");
    let python = venv.join("bin").join("python");
    // Another test process may be building it: one at a time.
    let _lock = FileLock::acquire(&target.join("herald-pyenv.lock"))?;
    if probe(&python).is_ok() {
        return Ok(python);
    }
    // Missing or half-built: start over.
    let _ = std::fs::remove_dir_all(&venv);
    run(std::process::Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv))?;
    let mut pip = std::process::Command::new(&python);
    pip.args(["-m", "pip", "install", "--disable-pip-version-check"])
        .args(PACKAGES);
    let installed = run(&mut pip)?;
    probe(&python).map_err(|e| format!("after pip install:\n{installed}\n{e}"))?;
    let _ = std::fs::write(venv.join("herald-installed.txt"), &installed);
    Ok(python)
}

/// `<workspace>/target`, or `CARGO_TARGET_DIR`.
fn target_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the server crate sits in the workspace")
        .to_path_buf();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => root.join(d),
        None => root.join("target"),
    }
}

/// Whether `python` can import everything the Django script needs.
fn probe(python: &Path) -> Result<(), String> {
    run(std::process::Command::new(python).args(["-c", PROBE])).map(|_| ())
}

/// Runs a command to completion; its combined output, or an error that includes it.
fn run(cmd: &mut std::process::Command) -> Result<String, String> {
    let out = cmd
        .env_remove("DJANGO_SETTINGS_MODULE")
        .env_remove("PYTHONPATH")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{cmd:?} failed ({}):\n{text}", out.status))
    }
}

/// A lock file created with `create_new`, holding its owner's pid; a lock whose
/// owner is gone is taken over. Removed on drop.
struct FileLock(PathBuf);

impl FileLock {
    fn acquire(path: &Path) -> Result<Self, String> {
        use std::io::Write;
        let deadline = std::time::Instant::now() + Duration::from_secs(900);
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(mut f) => {
                    let _ = write!(f, "{}", std::process::id());
                    return Ok(Self(path.to_owned()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(path).unwrap_or_default();
                    let alive = owner
                        .trim()
                        .parse::<u32>()
                        .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                    // An empty file is an owner between create and write: wait.
                    if !owner.trim().is_empty() && !alive {
                        let _ = std::fs::remove_file(path);
                        continue;
                    }
                    if std::time::Instant::now() > deadline {
                        return Err(format!(
                            "{} still held by pid {owner:?} after 15 minutes",
                            path.display()
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the Django script: `group_send` each `(group, message)` in order through a
/// `RedisPubSubChannelLayer` with `prefix`; asserts it exits 0.
async fn django_group_send(prefix: &str, sends: &[(&str, Value)]) {
    django_group_send_via(REDIS, prefix, sends).await
}

/// [`django_group_send`] through the Redis at `url` (with its credentials).
async fn django_group_send_via(url: &str, prefix: &str, sends: &[(&str, Value)]) {
    let python = python().await;
    let sends: Vec<Value> = sends.iter().map(|(g, m)| json!([g, m])).collect();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(&python)
            .arg("-c")
            .arg(DJANGO_SEND)
            .arg(prefix)
            .arg(Value::from(sends).to_string())
            .arg(url)
            .env_remove("DJANGO_SETTINGS_MODULE")
            .env_remove("PYTHONPATH")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the Django script finishes within 60 s")
    .expect("the Django script starts");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "Django group_send failed ({}):\n{stdout}{stderr}",
        out.status
    );
    eprintln!("django: {}", stdout.trim());
}

/// The next text frame exactly as it went over the wire, as JSON.
async fn wire_frame(c: &mut Client) -> Value {
    c.frame_as().await
}

/// A Django `group_send` to `user_42` through the pub/sub layer reaches the user's
/// connections on every node exactly once, as an `event`, and no one else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_send_reaches_the_user_on_every_node() {
    // Install (if needed) before the nodes start, so set-up time is not test time.
    python().await;
    let c = Cluster::start(2).await;
    until_ready(&c.nodes).await;
    // Each connection's `initial_state` comes after its node subscribed to the
    // group's channels, so a publish from here on has a subscriber.
    let (mut a, _) = c.nodes[0].connect("42").await;
    let (mut b, _) = c.nodes[1].connect("42").await;
    let (mut other, _) = c.nodes[1].connect("43").await;

    let message = json!({"type": "notify", "text": "hi", "n": 1});
    django_group_send(&c.asgi, &[("user_42", message.clone())]).await;

    let expected = json!({"type": "event", "group": "user_42", "payload": message});
    assert_eq!(wire_frame(&mut a).await, expected);
    assert_eq!(wire_frame(&mut b).await, expected);
    other.silent_for(Duration::from_millis(500)).await;
    a.silent_for(Duration::from_millis(200)).await;
    b.silent_for(Duration::from_millis(200)).await;
}

/// A group the client subscribed to receives Django's `group_send` as events until
/// the client unsubscribes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_send_follows_subscriptions() {
    python().await;
    let c = Cluster::start(1).await;
    until_ready(&c.nodes).await;
    let (mut cl, _) = c.nodes[0].connect_with("7", &["org_5"], None).await;
    cl.send_json(json!({"type": "subscribe", "group": "org_5"}))
        .await;
    match cl.frame().await {
        ServerFrame::Subscribed { group } => assert_eq!(group, "org_5"),
        other => panic!("expected subscribed, got {other:?}"),
    }

    let deploy = json!({"type": "deploy", "version": "1.2.3", "ok": true});
    django_group_send(&c.asgi, &[("org_5", deploy.clone())]).await;
    assert_eq!(
        wire_frame(&mut cl).await,
        json!({"type": "event", "group": "org_5", "payload": deploy})
    );

    cl.send_json(json!({"type": "unsubscribe", "group": "org_5"}))
        .await;
    match cl.frame().await {
        ServerFrame::Unsubscribed { group } => assert_eq!(group, "org_5"),
        other => panic!("expected unsubscribed, got {other:?}"),
    }
    // Sent in order on one connection: the marker to the user's own group arriving
    // next proves the org_5 message before it was not delivered.
    let marker = json!({"type": "marker"});
    django_group_send(
        &c.asgi,
        &[
            ("org_5", json!({"type": "deploy", "version": "2"})),
            ("user_7", marker.clone()),
        ],
    )
    .await;
    assert_eq!(
        wire_frame(&mut cl).await,
        json!({"type": "event", "group": "user_7", "payload": marker})
    );
    cl.silent_for(Duration::from_millis(300)).await;
}

/// Messages a Django app sends under a channels prefix other than the node's are
/// not delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_channels_prefix_is_not_delivered() {
    python().await;
    let c = Cluster::start(1).await;
    until_ready(&c.nodes).await;
    let (mut cl, _) = c.nodes[0].connect("42").await;

    // Near misses of the node's prefix, and Herald's own key prefix. (Not the
    // default `asgi`: other tests' nodes may listen there.)
    for wrong in [
        format!("{}x", c.asgi),
        format!("x{}", c.asgi),
        c.prefix.clone(),
    ] {
        django_group_send(
            &wrong,
            &[("user_42", json!({"type": "notify", "from": wrong}))],
        )
        .await;
    }
    // The same group under the node's prefix arrives, and is the first thing to.
    let right = json!({"type": "notify", "from": "right"});
    django_group_send(&c.asgi, &[("user_42", right.clone())]).await;
    assert_eq!(
        wire_frame(&mut cl).await,
        json!({"type": "event", "group": "user_42", "payload": right})
    );
    cl.silent_for(Duration::from_millis(300)).await;
}

/// A `group_send` message nested past 64 levels (the message map is one) is not
/// delivered, as the API would refuse it as an event; one at 64 levels is. Sent in
/// order on one connection, the 64-level one arriving first proves the deeper one
/// before it was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_send_deeper_than_64_levels_is_dropped() {
    python().await;
    let c = Cluster::start(1).await;
    until_ready(&c.nodes).await;
    let (mut cl, _) = c.nodes[0].connect("42").await;
    // The map, plus `levels - 1` arrays inside it.
    let nested = |levels: usize| {
        let mut v = json!(1);
        for _ in 1..levels {
            v = json!([v]);
        }
        json!({"type": "deep", "v": v})
    };
    let (deep, ok) = (nested(65), nested(64));
    django_group_send(&c.asgi, &[("user_42", deep), ("user_42", ok.clone())]).await;
    assert_eq!(
        wire_frame(&mut cl).await,
        json!({"type": "event", "group": "user_42", "payload": ok})
    );
    cl.silent_for(Duration::from_millis(300)).await;
}

/// A Redis ACL user that may publish only on `<asgi>__group__*` (README, "A shared
/// Redis"), created for one test and deleted when dropped.
struct DjangoAclUser {
    name: String,
    password: String,
}

impl DjangoAclUser {
    async fn create(asgi: &str) -> Self {
        let tag = crate::common::rand_u64();
        let user = Self {
            name: format!("herald_test_django_{tag:016x}"),
            password: format!("pw{tag:016x}"),
        };
        // The README's rule, with the test's channels prefix.
        let rule = format!(
            "ACL SETUSER {} on >{} resetchannels &{asgi}__group__* -@all +publish +ping",
            user.name, user.password
        );
        let mut con = redis::Client::open(REDIS)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: () = redis::cmd("ACL")
            .arg(rule.split(' ').skip(1).collect::<Vec<_>>())
            .query_async(&mut con)
            .await
            .unwrap();
        user
    }

    fn url(&self) -> String {
        REDIS.replace(
            "redis://",
            &format!("redis://{}:{}@", self.name, self.password),
        )
    }
}

impl Drop for DjangoAclUser {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(mut con) = redis::Client::open(REDIS).and_then(|c| c.get_connection()) {
                let _: redis::RedisResult<()> =
                    redis::cmd("ACL").arg("DELUSER").arg(name).query(&mut con);
            }
        })
        .join();
    }
}

/// README, "A shared Redis": a Django client limited by an ACL to the
/// `<asgi>__group__*` channels reaches Herald's clients with `group_send`, and
/// Redis refuses it every one of Herald's own channels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_django_acl_user_publishes_to_groups_only() {
    python().await;
    let c = Cluster::start(1).await;
    until_ready(&c.nodes).await;
    let user = DjangoAclUser::create(&c.asgi).await;
    let (mut cl, _) = c.nodes[0].connect("42").await;
    let message = json!({"type": "notify", "via": "acl user"});
    django_group_send_via(&user.url(), &c.asgi, &[("user_42", message.clone())]).await;
    assert_eq!(
        wire_frame(&mut cl).await,
        json!({"type": "event", "group": "user_42", "payload": message})
    );
    let mut con = redis::Client::open(user.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for channel in [
        format!("{}:g:user_42", c.prefix),
        format!("{}:resync", c.prefix),
        format!("{}:probe:node0", c.prefix),
    ] {
        let refused = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg("{\"t\":1}\n{}")
            .query_async::<i64>(&mut con)
            .await
            .expect_err("the ACL user published on Herald's channel");
        assert!(
            refused.to_string().to_lowercase().contains("noperm"),
            "{channel}: {refused}"
        );
    }
    cl.silent_for(Duration::from_millis(300)).await;
}
