//! A rolling upgrade of three real `herald-server` processes (cluster mode: one fresh
//! PostgreSQL database, one Redis prefix) under load, driven by the real
//! `herald-console rollout --exec`. Clients of several users sit on every node and
//! follow the protocol's resume rule (on close, reconnect to another node with
//! `after=<last id>`); a publisher posts steadily through whichever node is ready.
//! Every node must be restarted exactly once, and every client must end with every
//! notification of its user exactly once, in id order: none lost.
//!
//! The nodes are `common::fleet`'s; the rollout's command is
//! `sh <tmp>/{node}/restart.sh`.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use herald_console::client::AdminClient;
use herald_server::secrets::Secrets;
use herald_shared::api::NotificationList;
use herald_shared::health::NodeState;
use herald_shared::{Notification, ServerFrame, UserId};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use common::fleet::{Database, Fleet, NodeDir, REDIS, tag};
use common::{ADMIN_TOKEN, API_KEY, JWT_SECRET};

const USERS: [&str; 4] = ["501", "502", "503", "504"];
const PUBLISH_EVERY: Duration = Duration::from_millis(50);

/// What one client saw.
#[derive(Debug, Default)]
struct Seen {
    /// Notification ids in arrival order (`missed`, then live), duplicates kept.
    ids: Vec<i64>,
    /// Ids that arrived in `missed` frames.
    replayed: usize,
    /// The node of each `welcome`.
    nodes: Vec<String>,
    /// Each close: its code, or `none` when the stream ended without one.
    closes: Vec<String>,
}

/// A client of `user` following the resume rule: connect to `publics[first]`; on any
/// close or failed upgrade, move to the next node and reconnect with `after=<last>`.
async fn client(
    publics: Arc<Vec<String>>,
    first: usize,
    token: String,
    seen: Arc<Mutex<Seen>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut at = first;
    let mut last = 0i64;
    let mut jitter = first as u64;
    while !*stop.borrow() {
        let url = format!(
            "ws://{}/ws/notifications/?token={token}&after={last}",
            publics[at]
        );
        let conn = tokio::time::timeout(
            Duration::from_secs(3),
            tokio_tungstenite::connect_async(url),
        )
        .await;
        if let Ok(Ok((mut ws, _))) = conn {
            let close = loop {
                let m = tokio::select! {
                    m = ws.next() => m,
                    _ = stop.changed() => return,
                };
                let text = match m {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(c))) => {
                        break c.map_or("none".into(), |c| u16::from(c.code).to_string());
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => break "none".into(),
                };
                let frame: ServerFrame =
                    serde_json::from_str(text.as_str()).expect("a server frame");
                let mut s = seen.lock().unwrap();
                let mut take = |n: &Notification, s: &mut Seen| {
                    s.ids.push(n.id);
                    last = last.max(n.id);
                };
                match frame {
                    ServerFrame::Welcome { node, .. } => s.nodes.push(node),
                    ServerFrame::Missed { notifications, .. } => {
                        s.replayed += notifications.len();
                        for n in &notifications {
                            take(n, &mut s);
                        }
                    }
                    ServerFrame::Notification { notification } => take(&notification, &mut s),
                    // Unread ones, newest first: `missed` already holds what we lack.
                    _ => {}
                }
            };
            seen.lock().unwrap().closes.push(close);
        }
        // Another node, with a little jitter (protocol 3.10: 1012 → jitter, `after`).
        at = (at + 1) % publics.len();
        jitter = (jitter * 7 + 3) % 11;
        tokio::time::sleep(Duration::from_millis(40 + 20 * jitter)).await;
    }
}

/// What the publisher did.
#[derive(Debug, Default)]
struct Published {
    /// Ids the API answered 201 with, by user.
    confirmed: BTreeMap<String, Vec<i64>>,
    /// Posts whose outcome is unknown (transport error after sending).
    unknown: usize,
}

/// Every `PUBLISH_EVERY`, one notification to the next user, through the first node
/// (round robin) whose `/readyz` is 200.
async fn publisher(
    publics: Arc<Vec<String>>,
    log: Arc<Mutex<Published>>,
    stop: watch::Receiver<bool>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let probe = AdminClient::new(None, Duration::from_millis(300));
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut i = 0usize;
    while !*stop.borrow() {
        tick.tick().await;
        let user = USERS[i % USERS.len()];
        for k in 0..publics.len() {
            let p = &publics[(i + k) % publics.len()];
            if !probe.ready(p).await {
                continue;
            }
            let r = http
                .post(format!("http://{p}/api/v1/notifications"))
                .bearer_auth(API_KEY)
                .json(&serde_json::json!({"user": user, "message": {"seq": i}}))
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 201 => {
                    let n: Notification = r.json().await.unwrap();
                    log.lock()
                        .unwrap()
                        .confirmed
                        .entry(user.into())
                        .or_default()
                        .push(n.id);
                    break;
                }
                Ok(_) => continue,
                Err(_) => {
                    log.lock().unwrap().unknown += 1;
                    continue;
                }
            }
        }
        i += 1;
    }
}

/// Every stored notification of `user`, oldest first (the store is the truth).
async fn stored(public: &str, user: &str) -> Vec<i64> {
    let l: NotificationList = reqwest::Client::new()
        .get(format!(
            "http://{public}/api/v1/users/{user}/notifications?limit=1000"
        ))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ids: Vec<i64> = l.notifications.iter().map(|n| n.id).collect();
    ids.sort_unstable();
    ids
}

/// `herald-console rollout --exec '<restart by pidfile>'` over three real nodes under
/// load restarts each node once and loses no notification: each client ends with all
/// of its user's notifications, exactly once, in id order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_under_load_loses_nothing() {
    let started = Instant::now();
    let tag = tag();
    let db = Database::create(&tag);
    let fleet = Fleet::start(&db, &tag, 3, 4);
    fleet.until_ready(Duration::from_secs(30)).await;
    let first_pids: Vec<u32> = fleet.nodes.iter().map(NodeDir::pid).collect();

    // Clients: every user on every node.
    let publics = Arc::new(
        fleet
            .nodes
            .iter()
            .map(|n| n.public.clone())
            .collect::<Vec<_>>(),
    );
    let secrets = Secrets {
        jwt_secret: JWT_SECRET.into(),
        api_key: API_KEY.into(),
        admin_token: ADMIN_TOKEN.into(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut clients = Vec::new();
    for user in USERS {
        let token = secrets.client_token(
            &herald_server::Config::defaults(),
            &UserId::parse(user).unwrap(),
            &[],
            Duration::from_secs(3600),
        );
        for first in 0..publics.len() {
            let seen = Arc::new(Mutex::new(Seen::default()));
            let task = tokio::spawn(client(
                publics.clone(),
                first,
                token.clone(),
                seen.clone(),
                stop_rx.clone(),
            ));
            clients.push((user, first, seen, task));
        }
    }
    // All connected (one welcome each) before the load starts.
    let t0 = Instant::now();
    while clients.iter().any(|c| c.2.lock().unwrap().nodes.is_empty()) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "clients never connected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (pub_stop_tx, pub_stop_rx) = watch::channel(false);
    let published = Arc::new(Mutex::new(Published::default()));
    let pub_task = tokio::spawn(publisher(publics.clone(), published.clone(), pub_stop_rx));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The rollout, through the real binary.
    let rollout_start = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_herald-console"))
            .args([
                "--redis",
                REDIS,
                "--prefix",
                &fleet.prefix,
                "--token",
                ADMIN_TOKEN,
                "rollout",
                "--exec",
                &fleet.exec(),
                "--window",
                "2",
                "--step-timeout",
                "30s",
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("rollout did not end in 60 s\n{}", fleet.logs()))
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("rollout took {:?}:\n{text}", rollout_start.elapsed());
    assert!(
        out.status.success() && text.contains("rollout done"),
        "rollout failed: {text}\n{}",
        fleet.logs()
    );

    // A little more load on the upgraded fleet, then stop publishing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    pub_stop_tx.send(true).unwrap();
    pub_task.await.unwrap();

    // Each node was restarted exactly once and serves again, as a new process.
    let admin = AdminClient::new(Some(ADMIN_TOKEN.into()), Duration::from_secs(2));
    for (n, old) in fleet.nodes.iter().zip(&first_pids) {
        assert_eq!(n.restarts(), vec![*old], "{} restarted once", n.id);
        assert_ne!(n.pid(), *old, "{} runs a new process", n.id);
        let s = admin.status(&n.admin).await.unwrap();
        assert_eq!(s.node, n.id);
        assert_eq!(s.state, NodeState::Serving, "{s:?}");
        assert!(!s.version.is_empty());
        assert!(
            Duration::from_secs(s.uptime_s) <= rollout_start.elapsed(),
            "{} up since before the rollout: {s:?}",
            n.id
        );
    }

    // Every client gets every stored notification of its user: wait for the tail.
    let mut truth = BTreeMap::new();
    for user in USERS {
        truth.insert(user, stored(&publics[0], user).await);
    }
    let t0 = Instant::now();
    loop {
        let behind = clients
            .iter()
            .filter(|(u, _, s, _)| s.lock().unwrap().ids.len() < truth[u].len())
            .count();
        if behind == 0 || t0.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Anything extra (a duplicate) would arrive now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_tx.send(true).unwrap();
    for c in &mut clients {
        (&mut c.3).await.unwrap();
    }

    let published = published.lock().unwrap();
    let total: usize = truth.values().map(Vec::len).sum();
    let confirmed: usize = published.confirmed.values().map(Vec::len).sum();
    assert!(
        confirmed >= 100,
        "steady load: only {confirmed} notifications published"
    );
    assert!(
        total <= confirmed + published.unknown,
        "the store holds {total}, more than were posted"
    );
    let mut replayed = 0;
    let mut closes_1012 = 0;
    for (user, first, seen, _) in &clients {
        let s = seen.lock().unwrap();
        let want = &truth[user];
        for id in &published.confirmed[*user] {
            assert!(want.contains(id), "confirmed {id} not in the store");
        }
        assert_eq!(
            &s.ids, want,
            "client of {user} first on node {first} (nodes {:?}, closes {:?}): \
             not every notification exactly once in id order",
            s.nodes, s.closes
        );
        // Each client was moved at least once (its first node drained), only by 1012.
        assert!(!s.closes.is_empty(), "client of {user} never moved");
        assert!(
            s.closes.iter().all(|c| c == "1012"),
            "client of {user} closed otherwise: {:?}",
            s.closes
        );
        assert!(s.nodes.len() > 1);
        replayed += s.replayed;
        closes_1012 += s.closes.len();
    }
    eprintln!(
        "{confirmed} notifications to {} users ({} unknown posts), {} clients, \
         {closes_1012} closes 1012, {replayed} replayed in missed, in {:?}",
        USERS.len(),
        published.unknown,
        clients.len(),
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(90));
}
