//! TLS to Redis and PostgreSQL (README "TLS to Redis and PostgreSQL"), against real
//! servers the tests start: a `redis-server` on a TLS port only (with and without
//! client certificates), a Redis Cluster over TLS, and a PostgreSQL cluster of the
//! test's own with `ssl = on`, all with certificates the test makes with openssl. A
//! wrong CA, a missing client certificate and a server without TLS each fail
//! start-up at once, saying which service and why.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_server::{Herald, ServerError, StoreError};
use serde_json::json;

use crate::cluster::until_ready;
use crate::common::{self, Storage, TestServer, start_on};

/// Runs `cmd`, failing with what to install when the tool is missing, and with its
/// output when it fails.
fn run(cmd: &mut Command, install: &str) -> String {
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{cmd:?}: not found; install {install} (.ci/run does)")
        }
        Err(e) => panic!("{cmd:?}: {e}"),
    };
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Certificates made by the openssl CLI: a CA (`ca.pem`), a server certificate it
/// signed for 127.0.0.1 and localhost (`server.pem`, `server.key`), a client
/// certificate it signed (`client.pem`, `client.key`), and an unrelated CA
/// (`other-ca.pem`). EC P-256 keys, valid two days.
pub struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    pub fn make() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let openssl = || {
            let mut c = Command::new("openssl");
            c.current_dir(d);
            c
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        for (ca, cn) in [("ca", "Herald test CA"), ("other-ca", "Unrelated test CA")] {
            run(
                openssl()
                    .args(["req", "-x509", "-new", "-nodes", "-days", "2"])
                    .args(ec)
                    .args([
                        "-keyout",
                        &format!("{ca}.key"),
                        "-out",
                        &format!("{ca}.pem"),
                    ])
                    .args(["-subj", &format!("/CN={cn}")])
                    .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                    .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
                "Debian's openssl package",
            );
        }
        // Both roles for each leaf: Redis nodes present the server certificate as
        // clients too, on the cluster bus.
        std::fs::write(
            d.join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n\
             basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        for (leaf, cn) in [("server", "localhost"), ("client", "herald")] {
            run(
                openssl()
                    .args(["req", "-new", "-nodes"])
                    .args(ec)
                    .args(["-keyout", &format!("{leaf}.key")])
                    .args([
                        "-out",
                        &format!("{leaf}.csr"),
                        "-subj",
                        &format!("/CN={cn}"),
                    ]),
                "Debian's openssl package",
            );
            run(
                openssl()
                    .args(["x509", "-req", "-in", &format!("{leaf}.csr")])
                    .args(["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"])
                    .args(["-days", "2", "-extfile", "leaf.ext"])
                    .args(["-out", &format!("{leaf}.pem")]),
                "Debian's openssl package",
            );
        }
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

/// A `redis-server` listening on a TLS port only, killed on drop.
pub struct TlsRedis {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    /// With `client_certs`, the server requires a client certificate its CA signed.
    pub fn start(certs: &Certs, client_certs: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", dir.path().to_str().unwrap()])
            .args(tls_server_args(certs, client_certs))
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Redis 7, built with TLS) on PATH");
        wait_for_port(port, "redis-server --tls-port");
        Self {
            port,
            child,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `redis-server` flags of a TLS server with the test's certificates.
pub fn tls_server_args(certs: &Certs, client_certs: bool) -> Vec<String> {
    vec![
        "--tls-cert-file".into(),
        certs.arg("server.pem"),
        "--tls-key-file".into(),
        certs.arg("server.key"),
        "--tls-ca-cert-file".into(),
        certs.arg("ca.pem"),
        "--tls-auth-clients".into(),
        if client_certs { "yes" } else { "no" }.into(),
    ]
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} on {port} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A PostgreSQL cluster of the test's own (initdb and pg_ctl, run as the
/// `postgres` user), on a free port, trusting 127.0.0.1: over TLS only when it has
/// certificates. Stopped and removed on drop, whatever the test did.
pub struct PgCluster {
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
}

/// The newest `/usr/lib/postgresql/<version>/bin` with `initdb`.
fn pg_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).expect(
        "initdb and pg_ctl in /usr/lib/postgresql/<version>/bin: install Debian's postgresql package",
    )
}

/// `program` run as the `postgres` user (initdb refuses root), or as ourselves
/// when we are not root.
fn as_postgres(program: &Path) -> Command {
    let root = run(Command::new("id").arg("-u"), "coreutils").trim() == "0";
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl PgCluster {
    pub fn start(certs: Option<&Certs>) -> Self {
        let bin = pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("herald-pgtls")
            .tempdir_in("/tmp")
            .unwrap();
        run(
            Command::new("chown").arg("postgres:").arg(dir.path()),
            "a postgres user (Debian's postgresql package)",
        );
        let data = dir.path().join("data");
        run(
            as_postgres(&bin.join("initdb")).arg("-D").arg(&data).args([
                "-A",
                "trust",
                "-U",
                "root",
                "-E",
                "UTF8",
                "--no-sync",
            ]),
            "Debian's postgresql package",
        );
        let hba = if let Some(certs) = certs {
            for f in ["server.pem", "server.key"] {
                std::fs::copy(certs.path(f), data.join(f)).unwrap();
            }
            run(
                Command::new("chown")
                    .arg("postgres:")
                    .arg(data.join("server.pem"))
                    .arg(data.join("server.key")),
                "coreutils",
            );
            run(
                Command::new("chmod")
                    .arg("600")
                    .arg(data.join("server.key")),
                "coreutils",
            );
            "hostssl all all 127.0.0.1/32 trust\n"
        } else {
            "host all all 127.0.0.1/32 trust\n"
        };
        std::fs::write(
            data.join("pg_hba.conf"),
            format!("local all all trust\n{hba}"),
        )
        .unwrap();
        let port = common::free_port();
        let ssl = if certs.is_some() {
            "-c ssl=on -c ssl_cert_file=server.pem -c ssl_key_file=server.key"
        } else {
            "-c ssl=off"
        };
        let cluster = Self { port, bin, dir };
        let opts = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c fsync=off {ssl}",
            cluster.dir.path().display()
        );
        let started = as_postgres(&cluster.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(cluster.dir.path().join("log"))
            .args(["-w", "-o", &opts, "start"])
            .output()
            .expect("pg_ctl");
        assert!(
            started.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&started.stderr),
            std::fs::read_to_string(cluster.dir.path().join("log")).unwrap_or_default()
        );
        cluster
    }

    /// A `DATABASE_URL` for the cluster's `postgres` database, with `query`
    /// (`?sslmode=...`).
    pub fn url(&self, query: &str) -> String {
        format!("postgres://root@127.0.0.1:{}/postgres{query}", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Storage on `url` with no database of the harness's own (the caller's cluster).
fn storage_at(url: String) -> Arc<Storage> {
    Arc::new(Storage {
        url,
        pg: None,
        dir: tempfile::tempdir().unwrap(),
    })
}

/// Starts a node expected to fail; returns its error, which must come within 20 s.
async fn start_fails(storage: &Storage, extra: &[&str]) -> ServerError {
    let cfg = common::config(storage, extra);
    match tokio::time::timeout(Duration::from_secs(20), Herald::start(cfg)).await {
        Ok(Ok(_)) => panic!("the node started"),
        Ok(Err(e)) => e,
        Err(_) => panic!("start-up neither failed nor succeeded within 20 s (still retrying?)"),
    }
}

/// Cluster-mode flags for a node on `redis_url` with `prefix`.
fn redis_args<'a>(redis_url: &'a str, prefix: &'a str, id: &'a str) -> Vec<&'a str> {
    vec![
        "--redis-url",
        redis_url,
        "--redis-prefix",
        prefix,
        "--channels-prefix",
        "",
        "--node-id",
        id,
    ]
}

/// A notification posted on `from` reaches user 42's connection on `to`, through Redis.
async fn delivered_across(from: &TestServer, to: &TestServer) {
    let (mut client, _) = to.connect("42").await;
    let sent = from.notify("42", json!({"over": "tls"})).await;
    let got = client.notifications(1).await;
    assert_eq!(got[0].id, sent.id);
}

fn prefix() -> String {
    format!("htls{:08x}", common::rand_u64() as u32)
}

/// Two nodes on a `rediss://` Redis that trusts them without client certificates,
/// checking its certificate against HERALD_REDIS_CA_FILE: a notification crosses
/// from one to the other through the TLS Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_deliver_through_a_tls_redis() {
    let certs = Certs::make();
    let redis = TlsRedis::start(&certs, false);
    let storage = Arc::new(Storage::new(common::Db::Postgres).await);
    let (url, prefix, ca) = (redis.url(), prefix(), certs.arg("ca.pem"));
    let mut nodes = Vec::new();
    for id in ["tls0", "tls1"] {
        let mut args = redis_args(&url, &prefix, id);
        args.extend(["--redis-ca-file", &ca]);
        nodes.push(start_on(storage.clone(), &args).await);
    }
    until_ready(&nodes).await;
    delivered_across(&nodes[0], &nodes[1]).await;
    // The registry (and presence) run on the same TLS connection.
    let status = nodes[0].admin_get("/admin/status").await;
    assert_eq!(status["redis"], "up", "{status}");
}

/// Start-up fails at once, naming Redis and TLS, when the certificate is not
/// trusted (an unrelated CA file, or the system's CAs), and TLS files with a plain
/// `redis://` URL are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_redis_certificate_is_refused() {
    let certs = Certs::make();
    let redis = TlsRedis::start(&certs, false);
    let storage = Storage::new(common::Db::Sqlite).await;
    let (url, prefix, other) = (redis.url(), prefix(), certs.arg("other-ca.pem"));
    let mut wrong_ca = redis_args(&url, &prefix, "n");
    wrong_ca.extend(["--redis-ca-file", &other]);
    let system_cas = redis_args(&url, &prefix, "n");
    for args in [wrong_ca, system_cas] {
        let e = start_fails(&storage, &args).await.to_string();
        assert!(
            e.contains("TLS with Redis failed") && e.contains("UnknownIssuer"),
            "{args:?}: {e}"
        );
    }
    // TLS files with a plain URL: refused, not ignored.
    let mut files_plain = redis_args(crate::cluster::REDIS, &prefix, "n");
    files_plain.extend(["--redis-ca-file", &other]);
    let e = start_fails(&storage, &files_plain).await.to_string();
    assert!(e.contains("must be rediss://"), "{e}");
}

/// A plain Redis (the one on 6379) behind a `rediss://` URL, or a `rediss+cluster://`
/// one, ends start-up within a few seconds, saying that it has no TLS, instead of
/// being retried as a Redis that does not answer: it keeps the handshake waiting
/// for the end of a command line, and answers a plain-text `PING`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_redis_behind_rediss_is_refused_at_once() {
    let storage = Storage::new(common::Db::Sqlite).await;
    let prefix = prefix();
    for (url, what) in [
        ("rediss://127.0.0.1:6379", "Redis"),
        ("rediss+cluster://127.0.0.1:6379", "Redis Cluster"),
    ] {
        let started = Instant::now();
        let e = start_fails(&storage, &redis_args(url, &prefix, "n"))
            .await
            .to_string();
        let took = started.elapsed();
        assert!(
            e.contains(&format!("TLS with {what} failed"))
                && e.contains("127.0.0.1:6379 answers plain-text Redis commands: it has no TLS")
                && e.contains("check the rediss:// host and port"),
            "{url}: {e}"
        );
        // Before the first attempt's own 5 s limit: nothing was retried.
        assert!(
            took < Duration::from_secs(4),
            "{url}: refused after {took:?}"
        );
    }
}

/// A Redis that requires client certificates (`tls-auth-clients yes`): a node with
/// HERALD_REDIS_CERT_FILE and HERALD_REDIS_KEY_FILE delivers through it; one
/// without is refused at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_to_redis_needs_the_client_certificate() {
    let certs = Certs::make();
    let redis = TlsRedis::start(&certs, true);
    let storage = Arc::new(Storage::new(common::Db::Postgres).await);
    let (url, prefix) = (redis.url(), prefix());
    let (ca, cert, key) = (
        certs.arg("ca.pem"),
        certs.arg("client.pem"),
        certs.arg("client.key"),
    );
    let mut without = redis_args(&url, &prefix, "n");
    without.extend(["--redis-ca-file", &ca]);
    let e = start_fails(&storage, &without).await.to_string();
    assert!(e.contains("TLS with Redis failed"), "{e}");

    let mut with = without.clone();
    with.extend(["--redis-cert-file", &cert, "--redis-key-file", &key]);
    let node = start_on(storage.clone(), &with).await;
    until_ready(std::slice::from_ref(&node)).await;
    delivered_across(&node, &node).await;
}

/// A node on a PostgreSQL that requires TLS, with `sslmode=verify-full` and the
/// test's CA as `sslrootcert`: it stores and delivers, over TLS connections (as
/// the server's `pg_stat_ssl` shows). The unrelated CA is refused at start-up,
/// naming PostgreSQL and TLS, as a configuration error (not retried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_verify_full_with_a_root_certificate() {
    let certs = Certs::make();
    let pg = tokio::task::block_in_place(|| PgCluster::start(Some(&certs)));

    let wrong = storage_at(pg.url(&format!(
        "?sslmode=verify-full&sslrootcert={}",
        certs.arg("other-ca.pem")
    )));
    match start_fails(&wrong, &[]).await {
        ServerError::Store(StoreError::Db(why)) => {
            assert!(
                why.contains("PostgreSQL TLS (sslmode=verify-full)")
                    && why.contains("UnknownIssuer"),
                "{why}"
            );
        }
        other => panic!("expected a store configuration error, got {other:?}"),
    }

    let storage = storage_at(pg.url(&format!(
        "?sslmode=verify-full&sslrootcert={}",
        certs.arg("ca.pem")
    )));
    let node = start_on(storage, &[]).await;
    delivered_across(&node, &node).await;
    let admin = sqlx::PgPool::connect(&pg.url(&format!(
        "?sslmode=verify-full&sslrootcert={}",
        certs.arg("ca.pem")
    )))
    .await
    .unwrap();
    let (herald, over_tls): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'herald'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert!(
        herald > 0 && over_tls == herald,
        "{over_tls} of {herald} over TLS"
    );
    admin.close().await;
    node.stop().await.unwrap();
}

/// `sslrootcert` is trusted besides the system's CAs, not instead of them: sqlx
/// starts its root store from the system's and adds the file (README, TLS to
/// PostgreSQL). Setting `SSL_CERT_FILE` to the `sslrootcert` file makes that file the
/// only trust. The system's store is stood in for by `SSL_CERT_FILE` itself
/// (rustls-native-certs reads it instead of the platform's), in a `herald-server`
/// process of its own, so neither the host's store nor this process's environment
/// changes: with the server's CA as the "system" CA and an unrelated `sslrootcert`
/// the node starts; with `SSL_CERT_FILE` the unrelated file too, it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sslrootcert_adds_to_the_system_cas() {
    const BIN: &str = env!("CARGO_BIN_EXE_herald-server");
    let certs = Certs::make();
    let pg = tokio::task::block_in_place(|| PgCluster::start(Some(&certs)));
    let url = pg.url(&format!(
        "?sslmode=verify-full&sslrootcert={}",
        certs.arg("other-ca.pem")
    ));
    // Whether a node whose system CAs are `system` starts (its /readyz is 200), or
    // else what it said when it stopped.
    let start = |system: String| {
        let url = url.clone();
        async move {
            let dir = tempfile::tempdir().unwrap();
            let public = common::free_addr();
            let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();
            let mut child = Command::new(BIN)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("SSL_CERT_FILE", system)
                .env("DATABASE_URL", url)
                .env("HERALD_DATA_DIR", dir.path())
                .env("HERALD_LISTEN", public.to_string())
                .env("HERALD_ADMIN_LISTEN", common::free_addr().to_string())
                .env("HERALD_JWT_SECRET", common::JWT_SECRET)
                .env("HERALD_API_KEY", common::API_KEY)
                .env("HERALD_ADMIN_TOKEN", common::ADMIN_TOKEN)
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("herald-server starts");
            let stderr = || std::fs::read_to_string(dir.path().join("stderr")).unwrap();
            let outcome = common::ready_or_exited(
                public,
                || child.try_wait().unwrap(),
                Duration::from_secs(30),
                stderr,
            )
            .await
            .map_err(|_| stderr());
            let _ = child.kill();
            let _ = child.wait();
            outcome
        }
    };
    start(certs.arg("ca.pem"))
        .await
        .expect("a server certificate from a system CA passes, whatever sslrootcert says");
    let refused = start(certs.arg("other-ca.pem"))
        .await
        .expect_err("with SSL_CERT_FILE the sslrootcert file, only that CA is trusted");
    assert!(
        refused.contains("PostgreSQL TLS (sslmode=verify-full)")
            && refused.contains("UnknownIssuer"),
        "{refused}"
    );
}

/// `sslmode=require` against a PostgreSQL without TLS fails start-up at once,
/// naming PostgreSQL and TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_require_against_a_server_without_tls_fails() {
    let pg = tokio::task::block_in_place(|| PgCluster::start(None));
    let storage = storage_at(pg.url("?sslmode=require"));
    match start_fails(&storage, &[]).await {
        ServerError::Store(StoreError::Db(why)) => assert!(
            why.contains("PostgreSQL TLS (sslmode=require)")
                && why.contains("server does not support TLS"),
            "{why}"
        ),
        other => panic!("expected a store configuration error, got {other:?}"),
    }
}

/// A Redis Cluster over TLS (`rediss+cluster://`, its bus on TLS too): two nodes
/// on it, trusting the test's CA, deliver across through the sharded channels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_deliver_through_a_tls_redis_cluster() {
    let certs = Certs::make();
    let redis = crate::redis_cluster::RedisCluster::start_tls(&certs).await;
    let storage = Arc::new(Storage::new(common::Db::Postgres).await);
    let (url, prefix, ca) = (redis.url(), prefix(), certs.arg("ca.pem"));
    assert!(url.starts_with("rediss+cluster://"), "{url}");
    let mut nodes = Vec::new();
    for id in ["tlsc0", "tlsc1"] {
        let mut args = redis_args(&url, &prefix, id);
        args.extend(["--redis-ca-file", &ca]);
        nodes.push(start_on(storage.clone(), &args).await);
    }
    until_ready(&nodes).await;
    delivered_across(&nodes[0], &nodes[1]).await;
    delivered_across(&nodes[1], &nodes[0]).await;
    // Without the CA, start-up fails at once.
    let e = start_fails(&storage, &redis_args(&url, &prefix, "n"))
        .await
        .to_string();
    assert!(e.contains("TLS with Redis Cluster failed"), "{e}");
}
