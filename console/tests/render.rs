//! Screen tests: console state built from real nodes' answers, drawn on ratatui's
//! TestBackend, checked by the text on the screen.

mod common;

use std::time::Duration;

use common::*;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use herald_console::app::{App, Effect, Mode, Screen};
use herald_console::msg::{Action, Msg};

fn key(c: KeyCode) -> Msg {
    Msg::Key(KeyEvent::new(c, KeyModifiers::NONE))
}

fn app() -> App {
    App::new(Duration::from_secs(1), "test".into())
}

fn row<'a>(screen: &'a str, id: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.contains(id))
        .unwrap_or_else(|| panic!("no row for {id}:\n{screen}"))
}

/// A serving node with a connection and deliveries shows its figures, a delivery
/// rate and latency from the interval's bucket deltas, and tuning ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_node_row() {
    let n = start_node("alpha", 4096, true, &[]).await;
    let mut ws = n.connect("u1").await;
    read_frames(&mut ws, 2).await;
    let mut app = app();
    let admin = n.admin_url();
    poll_into(&mut app, &admin).await;
    for _ in 0..5 {
        n.notify("u1").await;
    }
    read_frames(&mut ws, 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    poll_into(&mut app, &admin).await;
    tuning_into(&mut app, &admin).await;
    app.update(Msg::Tick);

    let node = &app.fleet.nodes[&admin];
    assert!(node.delivered_per_s().unwrap() > 0.0);
    assert!(
        node.latency(0.99).is_some(),
        "p99 from this interval's deliveries"
    );
    let s = screen(&app, 120, 30);
    let r = row(&s, "alpha");
    assert!(r.contains("● serving"), "{r}");
    assert!(
        r.contains(&format!("1/{}", node.last().unwrap().status.capacity)),
        "{r}"
    );
    assert!(r.contains(" ok"), "{r}");
    assert!(r.contains("ms") || r.contains("µs"), "latency shown: {r}");
    assert!(s.contains("TOTAL") && s.contains("1/1 nodes"), "{s}");
    assert!(s.contains("connections 1"), "sparkline title: {s}");
    n.stop().await;
}

/// A draining node shows as draining, and its detail shows the drain's progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_node_with_progress() {
    let n = start_node("beta", 4096, true, &[]).await;
    let mut a = n.connect("u1").await;
    let mut b = n.connect("u2").await;
    read_frames(&mut a, 2).await;
    read_frames(&mut b, 2).await;
    let admin = n.admin_url();
    let mut app = app();
    poll_into(&mut app, &admin).await;
    // Two connections over 60 s: the first closes at once, the second at 30 s.
    client().drain(&admin, 60).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    poll_into(&mut app, &admin).await;
    let s = screen(&app, 120, 30);
    assert!(row(&s, "beta").contains("◐ draining"), "{s}");
    app.update(key(KeyCode::Enter));
    assert_eq!(app.screen, Screen::Detail);
    let s = screen(&app, 120, 30);
    assert!(s.contains("drain: 1/2 closed, 1 left"), "{s}");
    n.stop().await;
}

/// A node nobody answers for shows as unreachable, next to a live one, and the
/// totals count only the live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_node() {
    let n = start_node("gamma", 4096, true, &[]).await;
    let dead = dead_url().await;
    let mut app = app();
    poll_into(&mut app, &n.admin_url()).await;
    poll_into(&mut app, &dead).await;
    let s = screen(&app, 120, 30);
    let r = row(&s, dead.trim_start_matches("http://"));
    assert!(r.contains("✗ unreachable"), "{r}");
    assert!(row(&s, "gamma").contains("serving"), "{s}");
    assert!(s.contains("1/2 nodes"), "{s}");
    // No actions on an unreachable node: select it (sorted by id, it is first).
    app.selected = app
        .rows()
        .iter()
        .position(|r| r.target.admin == dead)
        .unwrap();
    assert!(app.update(key(KeyCode::Char('d'))).is_empty());
    assert_eq!(app.mode, Mode::Normal);
    n.stop().await;
}

/// A host below the tuning profile shows "N short" in the fleet and its short items
/// in the node detail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tuning_shortfalls() {
    // The shipped profile wants somaxconn >= 65535 (and more); this host has 128.
    let n = start_node("delta", 128, false, &[]).await;
    let admin = n.admin_url();
    let mut app = app();
    poll_into(&mut app, &admin).await;
    tuning_into(&mut app, &admin).await;
    let short = app.fleet.nodes[&admin].tuning_short().unwrap();
    assert!(short >= 1);
    let s = screen(&app, 120, 30);
    assert!(row(&s, "delta").contains(&format!("{short} short")), "{s}");
    app.update(key(KeyCode::Enter));
    let s = screen(&app, 140, 30);
    let line = row(&s, "net.core.somaxconn");
    assert!(
        line.contains("128") && line.contains("SHORT") && line.contains(">= 65535"),
        "{line}"
    );
    n.stop().await;
}

/// `?` shows the help; `d` asks for a window, Enter asks to confirm, `y` yields the
/// drain effect, whose real result lands in the action log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_and_confirmed_drain() {
    let n = start_node("eps", 4096, true, &[]).await;
    let admin = n.admin_url();
    let mut app = app();
    poll_into(&mut app, &admin).await;
    app.update(key(KeyCode::Char('?')));
    let s = screen(&app, 120, 30);
    assert!(
        s.contains("help") && s.contains("drain selected node"),
        "{s}"
    );
    app.update(key(KeyCode::Char('?')));
    assert!(!app.help);

    app.update(key(KeyCode::Char('d')));
    app.update(key(KeyCode::Backspace));
    app.update(key(KeyCode::Backspace));
    app.update(key(KeyCode::Char('5')));
    assert!(screen(&app, 120, 30).contains("drain window (s): 5"));
    app.update(key(KeyCode::Enter));
    let s = screen(&app, 120, 30);
    assert!(s.contains("drain (window 5 s) node eps?"), "{s}");
    let fx = app.update(key(KeyCode::Char('y')));
    let action = Action::Drain { window_s: 5 };
    assert_eq!(
        fx,
        vec![Effect::Act {
            admin: admin.clone(),
            action: action.clone()
        }]
    );
    let r = herald_console::poller::perform(&client(), &admin, &action).await;
    app.update(Msg::Done(admin.clone(), action, r));
    let s = screen(&app, 120, 30);
    assert!(s.contains("✓ eps: drain (window 5 s) → drain"), "{s}");

    // `n` cancels a confirmation.
    app.update(key(KeyCode::Char('u')));
    assert!(matches!(app.mode, Mode::Confirm { .. }));
    assert!(app.update(key(KeyCode::Char('n'))).is_empty());
    assert_eq!(app.mode, Mode::Normal);
    n.stop().await;
}

/// Sorting and filtering change the rows shown; a small terminal still draws.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sort_filter_and_resize() {
    let a = start_node("node-a", 4096, true, &[]).await;
    let b = start_node("node-b", 4096, true, &[]).await;
    let mut ws = b.connect("u1").await;
    read_frames(&mut ws, 2).await;
    let mut app = app();
    poll_into(&mut app, &a.admin_url()).await;
    poll_into(&mut app, &b.admin_url()).await;
    let ids = |app: &App| {
        app.rows()
            .iter()
            .map(|n| n.id().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&app), ["node-a", "node-b"]);
    app.update(key(KeyCode::Char('s')));
    app.update(key(KeyCode::Char('s')));
    assert_eq!(
        ids(&app),
        ["node-b", "node-a"],
        "by connections, most first"
    );
    app.update(key(KeyCode::Char('/')));
    for c in "-a".chars() {
        app.update(key(KeyCode::Char(c)));
    }
    app.update(key(KeyCode::Enter));
    assert_eq!(ids(&app), ["node-a"]);
    let s = screen(&app, 120, 30);
    assert!(s.contains("filter: -a") && !s.contains("node-b"), "{s}");
    app.update(Msg::Resize);
    let _ = screen(&app, 40, 12);
    a.stop().await;
    b.stop().await;
}
