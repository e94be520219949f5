//! The real binary in a real terminal (tmux): it draws the fleet, `?` shows the
//! help, `q` quits and the shell gets its normal screen back.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn tmux(args: &[&str]) -> String {
    let o = Command::new("tmux")
        .args(args)
        .output()
        .expect("tmux is installed");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Polls the pane until `pred` holds (10 s at most); returns the last capture.
async fn until(session: &str, pred: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let pane = tmux(&["capture-pane", "-p", "-t", session]);
        if pred(&pane) || start.elapsed() > Duration::from_secs(10) {
            return pane;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Under tmux the console shows the node serving, `?` opens the help, `q` quits and
/// the terminal is restored (the marker printed before it is visible again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_under_tmux() {
    let n = start_node("tmux-node", 4096, true, &[]).await;
    let session = format!("herald-console-test-{}", std::process::id());
    let cmd = format!(
        "echo BEFORE-CONSOLE; {} --node {} --token {ADMIN_TOKEN} --prefix none; echo EXIT=$?",
        env!("CARGO_BIN_EXE_herald-console"),
        n.admin_url()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "120",
        "-y",
        "40",
        "sh",
        "-c",
        &format!("{cmd}; sleep 30"),
    ]);
    let pane = until(&session, |p| {
        p.contains("tmux-node") && p.contains("serving")
    })
    .await;
    assert!(
        pane.contains("tmux-node") && pane.contains("● serving"),
        "{pane}"
    );
    assert!(!pane.contains("BEFORE-CONSOLE"), "alternate screen: {pane}");

    tmux(&["send-keys", "-t", &session, "?"]);
    let pane = until(&session, |p| p.contains("drain selected node")).await;
    assert!(
        pane.contains("help") && pane.contains("drain selected node"),
        "{pane}"
    );

    tmux(&["send-keys", "-t", &session, "q"]);
    let pane = until(&session, |p| p.contains("EXIT=")).await;
    tmux(&["kill-session", "-t", &session]);
    assert!(
        pane.contains("BEFORE-CONSOLE") && pane.contains("EXIT=0"),
        "{pane}"
    );
    assert!(
        !pane.contains("NODE "),
        "the console's screen is gone: {pane}"
    );
    n.stop().await;
}
