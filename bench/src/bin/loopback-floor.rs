//! The machine's floor for a broadcast: what it costs this box to write one small
//! message to each of N loopback TCP connections and read it on the other side, with
//! no WebSocket, no JSON, no hub and no session in between.
//!
//! The writer (this process) accepts N connections from a reader (a child process: each
//! process here may open 20,000 files, and both ends of 19,500 connections would not
//! fit in one), then every `--interval-ms` stamps the time, and writes one `--size`-byte
//! message carrying that stamp to every connection from `--threads` plain threads
//! (blocking `write`, no runtime: nothing cheaper exists in user space). The reader
//! reads them on a tokio runtime, as the load generator does, and records stamp-to-
//! receive latency in an HDR histogram, the same measure as `herald-bench` takes of a
//! broadcast. `bench/scenarios/broadcast.sh` prints Herald's figure for the same N.
//!
//! ```sh
//! cargo build --release -p herald-bench && target/release/loopback-floor -c 19500
//! ```

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use herald_bench::connections::{bind_no_port, now_us};
use herald_bench::hist::{HistSummary, Recorder};
use herald_bench::procstat;
use tokio::io::AsyncReadExt;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Connections.
    #[arg(short = 'c', long, default_value_t = 19_500)]
    connections: usize,
    /// Messages per connection, one round every `--interval-ms`.
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Bytes per message (Herald's broadcast frame in the scenario is about 130).
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Writer threads (the node's runtime has one worker per core).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Address the writer listens on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:18200")]
    listen: SocketAddr,
    /// Source addresses the reader dials from, round robin.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.2,127.0.0.3,127.0.0.4"
    )]
    source: Vec<IpAddr>,
    /// Internal: run as the reader child.
    #[arg(long, hide = true)]
    reader: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Up to the hard limit: both ends of 19,500 connections need it (as herald-bench).
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    if args.reader {
        reader(args)
    } else {
        writer(args)
    }
}

fn writer(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.size >= 12,
        "--size must hold the 8-byte stamp and the round"
    );
    let listener = TcpListener::bind(args.listen)?;
    // std listens with a backlog of 128: a burst of connects overflows it, and the
    // kernel then drops handshakes the reader already counts as done. Listening again
    // on the same socket only raises the backlog (clamped by somaxconn), as the node's
    // listener does.
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid listening socket.
        anyhow::ensure!(
            unsafe { libc::listen(listener.as_raw_fd(), 65535) } == 0,
            "listen"
        );
    }
    let sources: Vec<String> = args.source.iter().map(ToString::to_string).collect();
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--reader")
        .args([
            "-c",
            &args.connections.to_string(),
            "--rounds",
            &args.rounds.to_string(),
        ])
        .args([
            "--interval-ms",
            &args.interval_ms.to_string(),
            "--size",
            &args.size.to_string(),
        ])
        .args([
            "--listen",
            &listener.local_addr()?.to_string(),
            "--source",
            &sources.join(","),
        ])
        .stdout(Stdio::inherit())
        .spawn()?;
    // Non-blocking accept, so a reader that dies or stalls ends the run instead of
    // hanging it.
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sockets = Vec::with_capacity(args.connections);
    while sockets.len() < args.connections {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                s.set_nodelay(true)?;
                sockets.push(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(status) = child.try_wait()? {
                    anyhow::bail!(
                        "the reader exited ({status}) after {} connections",
                        sockets.len()
                    );
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "only {} connections in 60 s",
                    sockets.len()
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let me = std::process::id();
    let before = procstat::sample(me);
    let mut longest = Duration::ZERO;
    for round in 0..args.rounds {
        std::thread::sleep(Duration::from_millis(args.interval_ms));
        let mut msg = vec![b'.'; args.size];
        msg[..8].copy_from_slice(&now_us().to_le_bytes());
        msg[8..12].copy_from_slice(&round.to_le_bytes());
        let started = Instant::now();
        let chunk = sockets.len().div_ceil(args.threads);
        std::thread::scope(|scope| {
            for part in sockets.chunks_mut(chunk) {
                let msg = &msg;
                scope.spawn(move || {
                    for s in part {
                        s.write_all(msg).expect("loopback write");
                    }
                });
            }
        });
        longest = longest.max(started.elapsed());
    }
    let after = procstat::sample(me);
    let status = child.wait()?;
    let writes = args.connections as f64 * f64::from(args.rounds);
    if let (Some(b), Some(a)) = (before, after) {
        println!(
            "loopback-floor writer: {} writes, longest round {:.1} ms, cpu {:.2} µs/write",
            writes,
            longest.as_secs_f64() * 1e3,
            (a.cpu_s - b.cpu_s) * 1e6 / writes
        );
    }
    anyhow::ensure!(status.success(), "the reader failed: {status}");
    Ok(())
}

fn reader(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let rec = Arc::new(Recorder::new());
        let received = Arc::new(AtomicU64::new(0));
        let connected = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(256));
        let mut tasks = Vec::with_capacity(args.connections);
        for i in 0..args.connections {
            let src = args.source[i % args.source.len()];
            let (rec, received, gate) = (rec.clone(), received.clone(), gate.clone());
            let connected = connected.clone();
            let (addr, size, rounds) = (args.listen, args.size, args.rounds);
            tasks.push(tokio::spawn(async move {
                let permit = gate.acquire_owned().await?;
                let socket = tokio::net::TcpSocket::new_v4()?;
                bind_no_port(&socket);
                socket.bind(SocketAddr::new(src, 0))?;
                let mut s = socket.connect(addr).await.inspect_err(|e| {
                    // The first few failures say why; the count is in the summary.
                    static SHOWN: AtomicU64 = AtomicU64::new(0);
                    if SHOWN.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("loopback-floor reader: connect from {src}: {e}");
                    }
                })?;
                drop(permit);
                connected.fetch_add(1, Ordering::Relaxed);
                let mut buf = vec![0u8; size];
                for _ in 0..rounds {
                    s.read_exact(&mut buf).await?;
                    let stamp = u64::from_le_bytes(buf[..8].try_into().unwrap());
                    rec.record(i, now_us().saturating_sub(stamp));
                    received.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            }));
        }
        // CPU from the moment every connection is open: the reads alone.
        let me = std::process::id();
        let all_open = async {
            while connected.load(Ordering::Relaxed) < args.connections as u64 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let open = tokio::time::timeout(Duration::from_secs(60), all_open).await.is_ok();
        let before = procstat::sample(me);
        let deadline = Duration::from_millis(args.interval_ms * u64::from(args.rounds) + 60_000);
        let all = async {
            let mut failed = 0u64;
            for t in tasks {
                if !matches!(t.await, Ok(Ok(()))) {
                    failed += 1;
                }
            }
            failed
        };
        let failed = if open { tokio::time::timeout(deadline, all).await.ok() } else { None };
        let timed_out = failed.is_none();
        let failed = failed.unwrap_or(0);
        let after = procstat::sample(me);
        let lat = HistSummary::of(&rec.take());
        let expected = args.connections as u64 * u64::from(args.rounds);
        let got = received.load(Ordering::Relaxed);
        let cpu = match (before, after) {
            (Some(b), Some(a)) => (a.cpu_s - b.cpu_s) * 1e6 / got.max(1) as f64,
            _ => f64::NAN,
        };
        println!(
            "loopback-floor reader: received {got}/{expected} on {} connections, latency ms p50 {:.1} p90 {:.1} p99 {:.1} p999 {:.1} max {:.1}, cpu {cpu:.2} µs/read",
            args.connections,
            lat.p50 as f64 / 1e3,
            lat.p90 as f64 / 1e3,
            lat.p99 as f64 / 1e3,
            lat.p999 as f64 / 1e3,
            lat.max as f64 / 1e3,
        );
        anyhow::ensure!(!timed_out && failed == 0 && got == expected, "lost messages or connections");
        Ok(())
    })
}
