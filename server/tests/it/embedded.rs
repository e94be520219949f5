//! `server/examples/embedded.rs` end to end: an axum app with routes of its own that
//! mounts [`Herald`], served on a real listener, a real WebSocket client, and the
//! app's own handler publishing in-process; then Herald's own refusals.

use std::time::Duration;

use herald_server::{Config, Herald, PublishError};
use herald_shared::ServerFrame;
use serde_json::{Value, json};

use crate::common::{self, Client};

#[path = "../../examples/embedded.rs"]
mod example;

async fn start_herald(dir: &tempfile::TempDir) -> Herald {
    let mut config = Config::defaults();
    config.data_dir = dir.path().into();
    config.shutdown_drain_s = 1;
    Herald::start(config).await.expect("herald starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_app_notifies_a_connected_client_from_its_own_handler() {
    let dir = tempfile::tempdir().unwrap();
    let herald = start_herald(&dir).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = example::app(herald.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let http = common::api();

    // The app's own route hands out a token; Herald's WebSocket on the same listener
    // takes it.
    let token = http
        .get(format!("http://{addr}/me/herald-token?user=42"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut c = Client::connect(&format!("ws://{addr}/ws/notifications/?token={token}"))
        .await
        .expect("upgrade through the host app");
    assert!(matches!(c.frame().await, ServerFrame::Welcome { .. }));
    assert!(matches!(c.frame().await, ServerFrame::InitialState { .. }));

    // The app's handler publishes in-process; the client receives it.
    let r = http
        .post(format!("http://{addr}/orders/7/ship"))
        .json(&json!({"customer": "42"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let shipped: Value = r.json().await.unwrap();
    let n = c.notifications(1).await.remove(0);
    assert_eq!(json!(n.id), shipped["notification"]);
    assert_eq!(
        serde_json::to_value(&n.message).unwrap(),
        json!({"text": "order 7 shipped", "order": 7})
    );
    assert_eq!(herald.presence("42").await.unwrap(), 1);

    // An in-process event reaches it too; history lists the notification.
    herald
        .event("user_42", &json!({"typing": true}))
        .await
        .unwrap();
    match c.frame().await {
        ServerFrame::Event { group, .. } => assert_eq!(group, "user_42"),
        f => panic!("expected the event, got {f:?}"),
    }
    assert_eq!(herald.history("42", 5).await.unwrap()[0].id, n.id);

    // The app's routes and Herald's API live side by side: the API still wants its key.
    let r = http
        .post(format!("http://{addr}/api/v1/notifications"))
        .json(&json!({"user": "42", "message": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The host's shutdown path drains Herald: the client is told 1012.
    let stopping = tokio::spawn({
        let herald = herald.clone();
        async move { herald.shutdown().await }
    });
    assert_eq!(c.close_code().await, 1012);
    tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .expect("shutdown returns")
        .unwrap();
    server.abort();
}

/// In-process calls get the HTTP API's checks, as errors that say what is wrong, and
/// write nothing when they refuse.
#[tokio::test]
async fn in_process_calls_refuse_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let herald = start_herald(&dir).await;
    let big = "x".repeat(20_000);
    let cases: Vec<(&str, Result<(), PublishError>)> = vec![
        ("user id", herald.notify("not a user!", &1).await.map(drop)),
        (
            "maximum is 16384",
            herald.notify("42", &big).await.map(drop),
        ),
        ("group name", herald.event("bad group!", &1).await),
        ("1 to 1000", herald.notify_batch(Vec::new()).await.map(drop)),
        ("limit must be", herald.history("42", 0).await.map(drop)),
        (
            "group name",
            herald
                .token("42", &["no!"], Duration::from_secs(1))
                .map(drop),
        ),
    ];
    for (text, result) in cases {
        match result {
            Err(PublishError::Invalid(why)) => {
                assert!(why.contains(text), "{why:?} lacks {text:?}")
            }
            other => panic!("expected Invalid({text}), got {other:?}"),
        }
    }
    assert!(
        herald.history("42", 10).await.unwrap().is_empty(),
        "nothing written"
    );
    herald.shutdown().await;
}
