//! `herald-server`: parses flags, binds the listeners, prints how to use a fresh
//! single node, and runs until SIGTERM or Ctrl-C.

use anyhow::Context;
use clap::Parser;
use herald_server::config::{Cli, Command, Config};
use herald_server::{logging, secrets};
use herald_shared::{GroupName, UserId};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    // Chosen here, not by the node, so the first log line already carries it.
    let node = cli.config.resolve_node_id().to_owned();
    logging::init(cli.config.log_format, &node);
    match cli.command {
        Some(Command::Token { user, groups, ttl }) => print_token(&cli.config, &user, &groups, ttl),
        Some(Command::Serve) | None => serve(cli.config).await,
    }
}

fn print_token(cfg: &Config, user: &str, groups: &[String], ttl: u64) -> anyhow::Result<()> {
    let resolved = secrets::resolve(cfg).context("resolving the JWT secret")?;
    let user = UserId::parse(user).map_err(|e| anyhow::anyhow!("--user {e}"))?;
    let groups = groups
        .iter()
        .filter(|g| !g.is_empty())
        .map(|g| GroupName::parse(g.as_str()).map_err(|e| anyhow::anyhow!("--groups {g:?}: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ttl = std::time::Duration::from_secs(ttl);
    println!(
        "{}",
        resolved.secrets.client_token(cfg, &user, &groups, ttl)
    );
    Ok(())
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let public =
        bind(cfg.listen).with_context(|| format!("binding public listener {}", cfg.listen))?;
    let admin = TcpListener::bind(cfg.admin_listen)
        .await
        .with_context(|| format!("binding admin listener {}", cfg.admin_listen))?;
    herald_server::check_admin_bind(&cfg, admin.local_addr()?)?;
    let resolved = secrets::resolve(&cfg).context("resolving secrets")?;
    if let Some(path) = &resolved.generated_in {
        print_banner(&cfg, &resolved.secrets, path);
    }
    herald_server::run(cfg, public, admin, shutdown_signal()).await?;
    Ok(())
}

/// Binds the public listener with a deep accept queue. tokio's default backlog of
/// 1024 overflows when thousands of clients reconnect at once (measured: a third of
/// 1,000 simultaneous connects dropped and retried after 1 s); the kernel clamps
/// the request to `net.core.somaxconn`, which the tuning profile raises.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(65_535)
}

/// What a first-time user needs to try the node at once.
fn print_banner(cfg: &Config, s: &secrets::Secrets, path: &std::path::Path) {
    let day = std::time::Duration::from_secs(24 * 3600);
    let token = s.client_token(cfg, &UserId::parse("42").expect("valid"), &[], day);
    let http = format!("http://{}", cfg.listen);
    let ws = format!("ws://{}", cfg.listen);
    // The token rides in the URL fragment, which the browser never sends to a server.
    let page = if cfg.demo_enabled() {
        format!(
            "\nOpen the live page as user 42, then publish below and watch it arrive:\n  {http}/demo/#token={token}\n"
        )
    } else {
        String::new()
    };
    println!(
        "\nHerald single node (secrets kept in {path})\n\
         \n  API key:      {api}\n  Admin token:  {admin}\n  Client token: {token}   (user 42, 24 h)\n\
         \nConnect as user 42 (any WebSocket client, e.g. websocat):\n  websocat '{ws}/ws/notifications/?token={token}'\n\
         \nPublish to user 42:\n  curl -s -X POST {http}/api/v1/notifications -H 'Authorization: Bearer {api}' \\\n       -H 'Content-Type: application/json' -d '{{\"user\":\"42\",\"message\":{{\"text\":\"hello\"}}}}'\n\
         \nMore tokens: herald-server token --user <id> [--groups org_5] [--ttl 3600]\n{page}",
        path = path.display(),
        api = s.api_key,
        admin = s.admin_token,
    );
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed at once (not when the
/// future is first polled), so a signal during start-up is not fatal.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            _ => std::future::pending().await,
        }
    }
}
