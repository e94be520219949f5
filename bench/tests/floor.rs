//! `loopback-floor`, the raw TCP broadcast floor of bench/RESULTS.md, on a few
//! connections: every message written arrives and is counted once.

use std::process::Command;

#[test]
fn loopback_floor_reads_every_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_loopback-floor"))
        .args([
            "-c",
            "60",
            "--rounds",
            "3",
            "--interval-ms",
            "20",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--source", "127.0.0.2,127.0.0.3"])
        .output()
        .expect("loopback-floor runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("received 180/180 on 60 connections"),
        "{stdout}"
    );
    assert!(
        stdout.contains("loopback-floor writer: 180 writes"),
        "{stdout}"
    );
}

#[test]
fn loopback_floor_refuses_a_message_too_small_for_its_stamp() {
    let out = Command::new(env!("CARGO_BIN_EXE_loopback-floor"))
        .args(["-c", "1", "--size", "4", "--listen", "127.0.0.1:0"])
        .output()
        .expect("loopback-floor runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--size must hold"));
}
