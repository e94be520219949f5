//! The node's three secrets: JWT signing secret, backend API key, admin token.
//!
//! Given ones win. On a single node a missing secret is generated once and kept in
//! `<data dir>/secrets.json` (mode 0600) so that tokens survive restarts; in cluster
//! mode every node must share the same values, so nothing is generated and a missing
//! secret is an error at start-up.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// The three secrets a node (and every node of a cluster) holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Secrets {
    /// Signs and verifies client tokens (HS256): `HERALD_JWT_SECRET`.
    pub jwt_secret: String,
    /// The backend API's bearer key: `HERALD_API_KEY`.
    pub api_key: String,
    /// The admin plane's bearer token: `HERALD_ADMIN_TOKEN`.
    pub admin_token: String,
}

/// Where the secrets came from, so start-up can print what the operator needs.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The values the node uses.
    pub secrets: Secrets,
    /// The file generated values are kept in, when any value was generated.
    pub generated_in: Option<PathBuf>,
}

/// Why the secrets could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// Cluster mode and this secret (its environment variable's name) is not given:
    /// nodes of a cluster cannot each generate their own.
    #[error("cluster mode (REDIS_URL set) needs {0}: every node must share it")]
    MissingInCluster(&'static str),
    /// The JWT secret is shorter than [`MIN_JWT_SECRET_BYTES`].
    #[error(
        "HERALD_JWT_SECRET is {0} bytes; it must be at least {MIN_JWT_SECRET_BYTES} \
         (e.g. `openssl rand -hex 32`)"
    )]
    JwtSecretTooShort(usize),
    /// The secrets file could not be read or written.
    #[error("secrets file {path}: {source}")]
    Io {
        /// `<data dir>/secrets.json`.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// The secrets file is not the JSON this module writes.
    #[error("secrets file {path} is not valid: {source}")]
    Corrupt {
        /// `<data dir>/secrets.json`.
        path: PathBuf,
        /// What the JSON parser said.
        source: serde_json::Error,
    },
}

/// The shortest JWT secret a node accepts. HS256 is as strong as its key, and a
/// short one can be found by trying candidates offline against a single token; RFC
/// 7518 (3.2) asks for a key at least as long as the hash: 32 bytes. Generated
/// secrets are 48.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Resolves the secrets for `cfg`: given values, else the data dir's, else new ones
/// (kept in `<data dir>/secrets.json`; never in cluster mode). The node does the same
/// at start, so a tool calling this with the node's config gets the node's secrets.
pub fn resolve(cfg: &Config) -> Result<Resolved, SecretsError> {
    let resolved = resolve_any(cfg)?;
    let len = resolved.secrets.jwt_secret.len();
    if len < MIN_JWT_SECRET_BYTES {
        return Err(SecretsError::JwtSecretTooShort(len));
    }
    Ok(resolved)
}

fn resolve_any(cfg: &Config) -> Result<Resolved, SecretsError> {
    let given = (
        cfg.jwt_secret.clone().filter(|s| !s.is_empty()),
        cfg.api_key.clone().filter(|s| !s.is_empty()),
        cfg.admin_token.clone().filter(|s| !s.is_empty()),
    );
    if let (Some(j), Some(a), Some(t)) = &given {
        return Ok(Resolved {
            secrets: Secrets {
                jwt_secret: j.clone(),
                api_key: a.clone(),
                admin_token: t.clone(),
            },
            generated_in: None,
        });
    }
    if cfg.cluster_mode() {
        let missing = if given.0.is_none() {
            "HERALD_JWT_SECRET"
        } else if given.1.is_none() {
            "HERALD_API_KEY"
        } else {
            "HERALD_ADMIN_TOKEN"
        };
        return Err(SecretsError::MissingInCluster(missing));
    }
    let path = cfg.data_dir.join(herald_shared::config::SECRETS_FILE);
    let stored = load_or_create(&path)?;
    Ok(Resolved {
        secrets: Secrets {
            jwt_secret: given.0.unwrap_or(stored.jwt_secret),
            api_key: given.1.unwrap_or(stored.api_key),
            admin_token: given.2.unwrap_or(stored.admin_token),
        },
        generated_in: Some(path),
    })
}

fn load_or_create(path: &Path) -> Result<Secrets, SecretsError> {
    let io = |source| SecretsError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| SecretsError::Corrupt {
            path: path.to_owned(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let secrets = Secrets {
                jwt_secret: random_token(),
                api_key: random_token(),
                admin_token: random_token(),
            };
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            match opts.open(path) {
                Ok(mut f) => {
                    let json = serde_json::to_vec_pretty(&secrets).expect("plain data");
                    f.write_all(&json).map_err(io)?;
                    Ok(secrets)
                }
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create(path),
                Err(e) => Err(io(e)),
            }
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> Config {
        Config::from_args(args.iter().copied()).unwrap()
    }

    #[test]
    fn generated_once_then_reused() {
        let dir = std::env::temp_dir().join(format!("herald-secrets-{}", random_token()));
        let c = cfg(&["--data-dir", dir.to_str().unwrap()]);
        let a = resolve(&c).unwrap();
        let b = resolve(&c).unwrap();
        assert_eq!(a.secrets, b.secrets);
        assert_eq!(a.secrets.api_key.len(), 48);
        assert_ne!(a.secrets.api_key, a.secrets.jwt_secret);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn cluster_mode_refuses_to_generate() {
        let c = cfg(&["--redis-url", "redis://127.0.0.1", "--jwt-secret", LONG]);
        let err = resolve(&c).unwrap_err();
        assert!(err.to_string().contains("HERALD_API_KEY"), "{err}");
    }

    const LONG: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn given_values_win() {
        let c = cfg(&["--jwt-secret", LONG, "--api-key", "a", "--admin-token", "t"]);
        let r = resolve(&c).unwrap();
        assert_eq!(r.secrets.api_key, "a");
        assert!(r.generated_in.is_none());
    }

    #[test]
    fn a_short_jwt_secret_is_refused() {
        let short = &LONG[1..];
        let c = cfg(&[
            "--jwt-secret",
            short,
            "--api-key",
            "a",
            "--admin-token",
            "t",
        ]);
        let err = resolve(&c).unwrap_err().to_string();
        assert!(
            err.contains("HERALD_JWT_SECRET is 31 bytes; it must be at least 32"),
            "{err}"
        );
        // Also when the other two come from the secrets file.
        let dir = std::env::temp_dir().join(format!("herald-secrets-{}", random_token()));
        let c = cfg(&["--data-dir", dir.to_str().unwrap(), "--jwt-secret", short]);
        assert!(matches!(
            resolve(&c),
            Err(SecretsError::JwtSecretTooShort(31))
        ));
        std::fs::remove_dir_all(dir).ok();
    }
}
