//! Contract §7 on a Redis Cluster: a real local 3-master cluster started from the
//! machine's `redis-server`, three Herald nodes on it (`redis+cluster://` URL) and
//! one PostgreSQL: fan-out with sharded pub/sub, group channels spread over the
//! shards, the registry and presence through hash-tagged keys.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use herald_shared::ServerFrame;
use herald_shared::health::NodeState;
use serde_json::{Value, json};

use crate::cluster::{Cluster, until_ready};
use crate::common::{self, API_KEY, TestServer};

/// A 3-master Redis Cluster of the test's own on free ports, killed on drop.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    children: Vec<std::process::Child>,
    _dir: tempfile::TempDir,
    /// Set when the cluster speaks TLS only (clients, cluster bus): the CA file
    /// clients trust.
    ca: Option<PathBuf>,
}

/// How a test cluster speaks TLS: its servers' flags, `redis-cli`'s, and the CA file.
struct ClusterTls {
    server: Vec<String>,
    cli: Vec<String>,
    ca: PathBuf,
}

impl RedisCluster {
    async fn start() -> Self {
        tokio::task::spawn_blocking(|| Self::start_blocking(None))
            .await
            .unwrap()
    }

    /// A cluster on TLS ports only, its bus over TLS too, with `certs`' server
    /// certificate and CA (no client certificates required).
    pub async fn start_tls(certs: &crate::tls::Certs) -> Self {
        let tls = ClusterTls {
            server: [
                crate::tls::tls_server_args(certs, false),
                ["--tls-cluster", "yes", "--tls-replication", "yes"]
                    .map(String::from)
                    .to_vec(),
            ]
            .concat(),
            cli: vec![
                "--tls".into(),
                "--cacert".into(),
                certs.arg("ca.pem"),
                "--cert".into(),
                certs.arg("server.pem"),
                "--key".into(),
                certs.arg("server.key"),
            ],
            ca: certs.path("ca.pem"),
        };
        tokio::task::spawn_blocking(|| Self::start_blocking(Some(tls)))
            .await
            .unwrap()
    }

    fn start_blocking(tls: Option<ClusterTls>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Self {
            ports: Vec::new(),
            children: Vec::new(),
            _dir: dir,
            ca: tls.as_ref().map(|t| t.ca.clone()),
        };
        for _ in 0..3 {
            let (port, bus) = (common::free_port(), common::free_port());
            let conf = c._dir.path().join(format!("nodes-{port}.conf"));
            let listen: Vec<String> = match &tls {
                None => vec!["--port".into(), port.to_string()],
                Some(t) => [
                    vec![
                        "--port".into(),
                        "0".into(),
                        "--tls-port".into(),
                        port.to_string(),
                    ],
                    t.server.clone(),
                ]
                .concat(),
            };
            let child = std::process::Command::new("redis-server")
                .args(listen)
                .args([
                    "--cluster-port",
                    &bus.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    conf.to_str().unwrap(),
                    "--dir",
                    c._dir.path().to_str().unwrap(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server on PATH");
            c.children.push(child);
            c.ports.push(port);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for &p in &c.ports {
            while std::net::TcpStream::connect(("127.0.0.1", p)).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "redis-server on {p} did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let mut create = std::process::Command::new("redis-cli");
        if let Some(t) = &tls {
            create.args(&t.cli);
        }
        create.arg("--cluster").arg("create");
        for p in &c.ports {
            create.arg(format!("127.0.0.1:{p}"));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli on PATH");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Every master must see the whole cluster and every slot served.
        for &p in &c.ports {
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut c.master(p))
                    .unwrap();
                if info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && info.contains("cluster_known_nodes:3")
                {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline + Duration::from_secs(20),
                    "cluster never became ok on {p}: {info}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        c
    }

    /// The `REDIS_URL` the Herald nodes get.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let scheme = if self.ca.is_some() { "rediss" } else { "redis" };
        format!("{scheme}+cluster://{}", hosts.join(","))
    }

    /// A connection to one master (over TLS when the cluster speaks it).
    fn master(&self, port: u16) -> redis::Connection {
        let tls = herald_server::RedisTls {
            ca_file: self.ca.clone(),
            ..Default::default()
        };
        let scheme = if self.ca.is_some() { "rediss" } else { "redis" };
        tls.client(&format!("{scheme}://127.0.0.1:{port}"))
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// The port of the master serving `key`'s slot.
    fn owner(&self, key: &str) -> u16 {
        let mut con = self.master(self.ports[0]);
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut con)
            .unwrap();
        // CLUSTER SLOTS: [[start, end, [host, port, id], ...], ...]
        let ranges: Vec<(i64, i64, (String, i64))> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query::<Vec<redis::Value>>(&mut con)
            .unwrap()
            .into_iter()
            .map(|r| {
                let redis::Value::Array(items) = r else {
                    panic!("bad CLUSTER SLOTS entry {r:?}")
                };
                let start: i64 = redis::from_redis_value(items[0].clone()).unwrap();
                let end: i64 = redis::from_redis_value(items[1].clone()).unwrap();
                let redis::Value::Array(master) = items[2].clone() else {
                    panic!("bad CLUSTER SLOTS master {:?}", items[2])
                };
                let host: String = redis::from_redis_value(master[0].clone()).unwrap();
                let port: i64 = redis::from_redis_value(master[1].clone()).unwrap();
                (start, end, (host, port))
            })
            .collect();
        let (_, _, (_, port)) = ranges
            .into_iter()
            .find(|(s, e, _)| (*s..=*e).contains(&slot))
            .expect("every slot is served");
        port as u16
    }

    /// The sharded channels matching `pattern` each master has subscribers for.
    fn shard_channels(&self, pattern: &str) -> BTreeMap<u16, Vec<String>> {
        self.ports
            .iter()
            .map(|&p| {
                let mut v: Vec<String> = redis::cmd("PUBSUB")
                    .arg("SHARDCHANNELS")
                    .arg(pattern)
                    .query(&mut self.master(p))
                    .unwrap();
                v.sort();
                (p, v)
            })
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn event(s: &TestServer, group: &str, payload: Value) {
    let r = common::api()
        .post(s.http(&format!("/api/v1/groups/{group}/events")))
        .bearer_auth(API_KEY)
        .json(&json!({"payload": payload}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

/// Waits (up to 10 s) until `check` holds for what the masters report.
async fn until_shards(
    redis: &RedisCluster,
    pattern: &str,
    what: &str,
    check: impl Fn(&BTreeMap<u16, Vec<String>>) -> bool,
) -> BTreeMap<u16, Vec<String>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = redis.shard_channels(pattern);
        if check(&now) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: masters report {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// On a Redis Cluster, a notification published on any node reaches the user's
/// connections on every node exactly once, in id order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_every_node_once_on_a_redis_cluster() {
    let redis = RedisCluster::start().await;
    let c = Cluster::start_on_redis(3, &redis.url()).await;
    until_ready(&c.nodes).await;
    // Every node runs the Redis Cluster broker: a connection's personal group is
    // a sharded channel (SSUBSCRIBE) at the master serving its slot.
    let mut probes = Vec::new();
    for (i, s) in c.nodes.iter().enumerate() {
        probes.push(s.connect(&format!("probe{i}")).await.0);
    }
    let want: Vec<String> = (0..c.nodes.len())
        .map(|i| format!("{}:g:user_probe{i}", c.prefix))
        .collect();
    until_shards(
        &redis,
        &format!("{}:g:user_probe*", c.prefix),
        "each node's probe on a sharded channel",
        |now| {
            let mut all: Vec<String> = now.values().flatten().cloned().collect();
            all.sort();
            all == want
        },
    )
    .await;
    drop(probes);
    crate::cluster::assert_fan_out_once(&c).await;
}

/// Group events cross nodes through sharded channels spread over the three masters:
/// each master carries the subscriptions of the groups whose slot it serves, a node
/// subscribes on its first member and unsubscribes after its last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_events_cross_nodes_on_sharded_channels() {
    let redis = RedisCluster::start().await;
    let c = Cluster::start_on_redis(3, &redis.url()).await;
    until_ready(&c.nodes).await;
    // One group per master, chosen by the slot of its channel.
    let mut by_master: BTreeMap<u16, String> = BTreeMap::new();
    for i in 0.. {
        let g = format!("org_{i}");
        by_master
            .entry(redis.owner(&format!("{}:g:{g}", c.prefix)))
            .or_insert(g);
        if by_master.len() == 3 {
            break;
        }
    }
    let groups: Vec<&str> = by_master.values().map(String::as_str).collect();
    let mut subs = Vec::new();
    for s in &c.nodes[1..] {
        let (mut cl, _) = s.connect_with("7", &groups, None).await;
        for g in &groups {
            cl.send_json(json!({"type": "subscribe", "group": g})).await;
            assert!(matches!(cl.frame().await, ServerFrame::Subscribed { .. }));
        }
        subs.push(cl);
    }
    // Each master has exactly its own group's channel (PUBSUB SHARDCHANNELS).
    let pattern = format!("{}:g:org_*", c.prefix);
    until_shards(
        &redis,
        &pattern,
        "channels spread over the masters",
        |now| {
            by_master
                .iter()
                .all(|(p, g)| now[p] == vec![format!("{}:g:{g}", c.prefix)])
        },
    )
    .await;
    for (i, g) in groups.iter().enumerate() {
        event(&c.nodes[i % 3], g, json!({"deploy": i})).await;
        for cl in &mut subs {
            assert_eq!(
                cl.raw().await,
                json!({"type": "event", "group": g, "payload": {"deploy": i}})
            );
        }
    }
    // After unsubscribing on one node, only the other still gets events.
    subs[0]
        .send_json(json!({"type": "unsubscribe", "group": groups[0]}))
        .await;
    assert!(matches!(
        subs[0].frame().await,
        ServerFrame::Unsubscribed { .. }
    ));
    event(&c.nodes[0], groups[0], json!(2)).await;
    assert_eq!(subs[1].raw().await["payload"], 2);
    subs[0].silent_for(Duration::from_millis(300)).await;
    // Once no node has members left, every master drops the channels (SUNSUBSCRIBE).
    drop(subs);
    until_shards(&redis, &pattern, "channels unsubscribed", |now| {
        now.values().all(Vec::is_empty)
    })
    .await;
}

/// On a Redis Cluster the registry lists the live nodes (hash-tagged keys in one
/// slot), a stopped node leaves it, and presence sums the user's connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_and_presence_work_on_a_redis_cluster() {
    let redis = RedisCluster::start().await;
    let mut c = Cluster::start_on_redis(3, &redis.url()).await;
    let seeds: Vec<String> = redis
        .ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect();
    let mut con = redis::cluster::ClusterClient::new(seeds)
        .unwrap()
        .get_async_connection()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let nodes = loop {
        let nodes = herald_server::list_nodes(&mut con, &c.prefix)
            .await
            .unwrap();
        if nodes.len() == 3 || tokio::time::Instant::now() > deadline {
            break nodes;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, vec!["node0", "node1", "node2"]);
    assert_eq!(nodes[2].public, c.nodes[2].public.to_string());
    assert_eq!(nodes[2].state, NodeState::Serving);

    let (_a, _) = c.nodes[0].connect("42").await;
    let (_b, _) = c.nodes[1].connect("42").await;
    let (_d, _) = c.nodes[2].connect("42").await;
    loop {
        let p: Value = common::api()
            .get(c.nodes[0].http("/api/v1/users/42/presence"))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if p["connections"] == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence never reached 3: {p}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let stopped = c.nodes.remove(1);
    drop(_b);
    stopped.stop().await.unwrap();
    let ids: Vec<String> = herald_server::list_nodes(&mut con, &c.prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(ids, vec!["node0", "node2"]);
}

/// Every client connection of the cluster's masters killed mid-stream: the nodes
/// reconnect, resubscribe and resync, and the client gets every stored notification
/// exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_cluster_connections_lose_nothing_stored() {
    let redis = RedisCluster::start().await;
    let c = Cluster::start_on_redis(2, &redis.url()).await;
    until_ready(&c.nodes).await;
    let (mut client, _) = c.nodes[1].connect("42").await;
    let resyncs = c.nodes[1].metric("herald_broker_resyncs_total", &[]).await;
    let mut sent = Vec::new();
    for i in 0..10 {
        sent.push(c.nodes[0].notify("42", json!(i)).await.id);
    }
    let got: Vec<i64> = client
        .notifications(10)
        .await
        .iter()
        .map(|n| n.id)
        .collect();

    for &p in &redis.ports {
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .query(&mut redis.master(p))
            .unwrap();
    }
    for i in 10..20 {
        sent.push(c.nodes[0].notify("42", json!(i)).await.id);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while c.nodes[1].metric("herald_broker_resyncs_total", &[]).await <= resyncs {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the subscriber resubscribed and announced a resync"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until_ready(&c.nodes).await;
    for i in 20..30 {
        sent.push(c.nodes[0].notify("42", json!(i)).await.id);
    }
    crate::cluster::receive_all(&mut client, got, &sent).await;
}

/// A group's slot moved to another master: the node follows its sharded channel
/// there (Redis drops the subscription with an unrequested `sunsubscribe`) and the
/// group's events keep arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_slot_takes_its_subscription_along() {
    let redis = RedisCluster::start().await;
    let c = Cluster::start_on_redis(2, &redis.url()).await;
    until_ready(&c.nodes).await;
    let (group, channel) = ("org_9", format!("{}:g:org_9", c.prefix));
    let (mut cl, _) = c.nodes[1].connect_with("7", &[group], None).await;
    cl.send_json(json!({"type": "subscribe", "group": group}))
        .await;
    assert!(matches!(cl.frame().await, ServerFrame::Subscribed { .. }));
    let from = redis.owner(&channel);
    let to = *redis.ports.iter().find(|p| **p != from).unwrap();
    until_shards(&redis, &channel, "subscribed at the owner", |now| {
        now[&from] == vec![channel.clone()]
    })
    .await;

    // Move the (keyless) slot by hand, as `redis-cli --cluster reshard` would.
    let id = |p: u16| -> String {
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut redis.master(p))
            .unwrap()
    };
    let (from_id, to_id) = (id(from), id(to));
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(&channel)
        .query(&mut redis.master(from))
        .unwrap();
    let setslot = |p: u16, args: &[&str]| {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(args)
            .query(&mut redis.master(p))
            .unwrap();
    };
    setslot(to, &["IMPORTING", &from_id]);
    setslot(from, &["MIGRATING", &to_id]);
    for &p in &redis.ports {
        setslot(p, &["NODE", &to_id]);
    }
    assert_eq!(redis.owner(&channel), to);

    until_shards(
        &redis,
        &channel,
        "the subscription followed the slot",
        |now| now[&to] == vec![channel.clone()] && now[&from].is_empty(),
    )
    .await;
    until_ready(&c.nodes).await;
    event(&c.nodes[0], group, json!("after the move")).await;
    assert_eq!(cl.raw().await["payload"], "after the move");
}
