//! The node on this host, for a console started with neither `--node` nor a registry:
//! an operator who has just logged into a node's host should not have to look up its
//! admin address and token.
//!
//! The console tries the admin address a single node listens on by default
//! (`HERALD_ADMIN_LISTEN`, `127.0.0.1:9091`) and, when no token was given, the admin
//! token the node generated into `<data dir>/secrets.json` (`./herald-data` by
//! default, as for the node). When that does not reach a node it says what it tried
//! and why each part failed, rather than only which flags exist.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use herald_shared::admin::AdminStatus;
use serde::Deserialize;

use crate::client::{AdminClient, base_url};

/// The part of the node's `secrets.json` the console needs. The node writes it
/// (herald-server's `secrets` module); the other secrets are not read.
#[derive(Deserialize)]
struct SecretsFile {
    admin_token: String,
}

/// Where to look, from the console's flags.
#[derive(Debug, Clone)]
pub struct Search {
    /// The node's admin listener (`--local`): an unspecified address (`0.0.0.0`,
    /// `[::]`) is dialled on loopback.
    pub admin: SocketAddr,
    /// The node's data dir (`--data-dir`), read only when `token` is `None`.
    pub data_dir: PathBuf,
    /// The admin token given (`--token`, `HERALD_ADMIN_TOKEN`), if any.
    pub token: Option<String>,
}

/// The local node, answering.
#[derive(Debug, Clone)]
pub struct Found {
    /// Its admin base URL, for `--node`.
    pub admin: String,
    /// The token it accepted.
    pub token: Option<String>,
    /// Its status, as it answered.
    pub status: AdminStatus,
}

/// Nothing usable was found: what was tried, one line each.
#[derive(Debug, thiserror::Error)]
#[error(
    "no nodes to watch: none given, and no node found on this host.\nTried:\n{}\n\
     Give --node ADMIN_URL or --redis URL (or REDIS_URL), and --token (or HERALD_ADMIN_TOKEN).",
    .tried.iter().map(|t| format!("  - {t}")).collect::<Vec<_>>().join("\n")
)]
pub struct NotFound {
    pub tried: Vec<String>,
}

/// The admin URL to dial for a listener bound to `addr`.
pub fn admin_url(addr: SocketAddr) -> String {
    let mut dial = addr;
    if dial.ip().is_unspecified() {
        dial.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    base_url(&dial.to_string())
}

/// The admin token in `<data_dir>/secrets.json`.
pub fn token_in(data_dir: &Path) -> Result<String, String> {
    let path = data_dir.join(herald_shared::config::SECRETS_FILE);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: SecretsFile = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not a node's secrets file ({e})", path.display()))?;
    Ok(file.admin_token)
}

/// Looks for the node on this host: reads the token if none was given, then asks
/// the node for its status with it, each request within `timeout`.
pub async fn find(search: &Search, timeout: std::time::Duration) -> Result<Found, NotFound> {
    let mut tried = Vec::new();
    let secrets = search.data_dir.join(herald_shared::config::SECRETS_FILE);
    let token = match &search.token {
        Some(t) => Some(t.clone()),
        None => match token_in(&search.data_dir) {
            Ok(t) => Some(t),
            Err(why) => {
                tried.push(format!(
                    "the admin token in {} (--data-dir, HERALD_DATA_DIR): {why}",
                    secrets.display()
                ));
                None
            }
        },
    };
    let admin = admin_url(search.admin);
    let client = AdminClient::new(token.clone(), timeout);
    match client.status(&admin).await {
        Ok(status) => Ok(Found {
            admin,
            token,
            status,
        }),
        Err(e) => {
            let given = match (&search.token, &token) {
                (Some(_), _) => " with the token given",
                (None, Some(_)) => " with the token from the secrets file",
                (None, None) => " without a token",
            };
            tried.insert(
                0,
                format!("the local node at {admin} (--local, HERALD_ADMIN_LISTEN){given}: {e}"),
            );
            Err(NotFound { tried })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listener_is_dialled_on_loopback() {
        let url = |a: &str| admin_url(a.parse().unwrap());
        assert_eq!(url("0.0.0.0:9091"), "http://127.0.0.1:9091");
        assert_eq!(url("[::]:9091"), "http://[::1]:9091");
        assert_eq!(url("10.0.0.7:9191"), "http://10.0.0.7:9191");
    }

    #[test]
    fn the_token_comes_from_the_secrets_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = token_in(dir.path()).unwrap_err();
        assert!(
            err.contains("secrets.json") && err.contains("No such file"),
            "{err}"
        );
        std::fs::write(dir.path().join("secrets.json"), "{}").unwrap();
        let err = token_in(dir.path()).unwrap_err();
        assert!(err.contains("not a node's secrets file"), "{err}");
        std::fs::write(
            dir.path().join("secrets.json"),
            r#"{"jwt_secret":"j","api_key":"a","admin_token":"t0k"}"#,
        )
        .unwrap();
        assert_eq!(token_in(dir.path()).unwrap(), "t0k");
    }

    #[test]
    fn not_found_lists_what_was_tried() {
        let e = NotFound {
            tried: vec!["one".into(), "two".into()],
        };
        let text = e.to_string();
        assert!(text.contains("Tried:\n  - one\n  - two\n"), "{text}");
        assert!(text.contains("--node ADMIN_URL"), "{text}");
    }
}
