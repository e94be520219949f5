//! How every Redis connection is made: `REDIS_URL`, and for a `rediss://` URL the
//! TLS files ([`RedisTls`]). The broker's publisher and subscriber (single Redis or
//! Redis Cluster), the registry and presence (which share the publisher), and
//! `herald-console`'s registry reader all build their clients here, so they cannot
//! disagree on what TLS means.
//!
//! TLS is redis-rs's own (rustls): `rediss://host:port` checks the server's
//! certificate against the system's trusted CAs, or against `HERALD_REDIS_CA_FILE`
//! alone when given, and the host name (or IP address) of the URL against the
//! certificate. `HERALD_REDIS_CERT_FILE` and `HERALD_REDIS_KEY_FILE` present a client
//! certificate, for a Redis that asks for one (`tls-auth-clients yes`). A Redis
//! Cluster over TLS is `rediss+cluster://h1:p1,h2:p2` (or several `rediss://` URLs);
//! the nodes it discovers are reached over TLS too, with the same files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use herald_shared::config as names;
use redis::cluster::ClusterClientBuilder;
use redis::{ClientTlsConfig, ConnectionAddr, IntoConnectionInfo, TlsCertificates};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The TLS files for a `rediss://` `REDIS_URL` (all optional). Given with a plain
/// `redis://` URL they are refused rather than ignored: the operator meant TLS.
#[derive(Debug, Clone, Default, Args)]
pub struct RedisTls {
    /// PEM file of the CAs to trust for `rediss://` instead of the system's (a
    /// private CA, as managed Redis services use).
    #[arg(long = "redis-ca-file", env = names::REDIS_CA_FILE, global = true)]
    pub ca_file: Option<PathBuf>,

    /// PEM client certificate (chain) for a Redis that requires one (mutual TLS);
    /// needs `--redis-key-file`.
    #[arg(long = "redis-cert-file", env = names::REDIS_CERT_FILE, global = true)]
    pub cert_file: Option<PathBuf>,

    /// PEM private key of the client certificate.
    #[arg(long = "redis-key-file", env = names::REDIS_KEY_FILE, global = true)]
    pub key_file: Option<PathBuf>,
}

/// A Redis URL and TLS settings that cannot make a client.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RedisTlsError(String);

impl RedisTls {
    /// A client for one Redis named by `url` (`redis://` or `rediss://`).
    pub fn client(&self, url: &str) -> Result<redis::Client, RedisTlsError> {
        let info = url
            .into_connection_info()
            .map_err(|e| RedisTlsError(format!("REDIS_URL {url:?}: {e}")))?;
        let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
        let made = match self.certificates(tls)? {
            None => redis::Client::open(info),
            Some(certs) => redis::Client::build_with_tls(info, certs),
        };
        made.map_err(|e| RedisTlsError(format!("Redis TLS: {e}")))
    }

    /// A Redis Cluster client builder for the seed node URLs `seeds` (all
    /// `redis://` or all `rediss://`); the caller adds its timeouts and builds.
    pub fn cluster_builder(&self, seeds: &[String]) -> Result<ClusterClientBuilder, RedisTlsError> {
        let mut tls = None;
        for seed in seeds {
            let info = seed
                .as_str()
                .into_connection_info()
                .map_err(|e| RedisTlsError(format!("REDIS_URL seed {seed:?}: {e}")))?;
            let this = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
            if tls.is_some_and(|t| t != this) {
                return Err(RedisTlsError(
                    "REDIS_URL mixes redis:// and rediss:// seed nodes: a Redis Cluster is \
                     all TLS or none"
                        .into(),
                ));
            }
            tls = Some(this);
        }
        let builder = ClusterClientBuilder::new(seeds.to_vec());
        // The builder takes TLS from the first seed's scheme; the files, when given.
        Ok(match self.certificates(tls.unwrap_or(false))? {
            None => builder,
            Some(certs) => builder.certs(certs),
        })
    }

    /// The certificates to give redis-rs, read now so that a missing or unreadable
    /// file fails start-up with its name; `None` when the URL is plain or no file
    /// is set (redis-rs then trusts the system's CAs).
    fn certificates(&self, tls: bool) -> Result<Option<TlsCertificates>, RedisTlsError> {
        let any = self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some();
        if !tls {
            if any {
                return Err(RedisTlsError(format!(
                    "{}, {} and {} apply to TLS: REDIS_URL must be rediss:// \
                     (or rediss+cluster://)",
                    names::REDIS_CA_FILE,
                    names::REDIS_CERT_FILE,
                    names::REDIS_KEY_FILE
                )));
            }
            return Ok(None);
        }
        crate::tls::install_provider();
        if !any {
            return Ok(None);
        }
        let client_tls = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some(ClientTlsConfig {
                client_cert: read(names::REDIS_CERT_FILE, cert)?,
                client_key: read(names::REDIS_KEY_FILE, key)?,
            }),
            (None, None) => None,
            _ => {
                return Err(RedisTlsError(format!(
                    "{} and {} go together (a client certificate and its key)",
                    names::REDIS_CERT_FILE,
                    names::REDIS_KEY_FILE
                )));
            }
        };
        let root_cert = match &self.ca_file {
            Some(ca) => Some(read(names::REDIS_CA_FILE, ca)?),
            None => None,
        };
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

/// The host and port of `client`'s Redis when it is reached over TLS (`rediss://`),
/// for [`speaks_plain_redis`].
pub(crate) fn tls_addr(client: &redis::Client) -> Option<(String, u16)> {
    match client.get_connection_info().addr() {
        ConnectionAddr::TcpTls { host, port, .. } => Some((host.clone(), *port)),
        _ => None,
    }
}

/// How long [`speaks_plain_redis`] waits for the connection and for the answer.
const PLAIN_CHECK_LIMIT: Duration = Duration::from_secs(1);

/// Whether `host:port` answers a plain-text `PING` as Redis does: a RESP simple
/// string or error line (`+PONG`, `-NOAUTH ...`).
///
/// A plain Redis behind a `rediss://` URL does not refuse the TLS handshake: it
/// reads the ClientHello as the start of an inline command and waits for its end
/// of line, so the handshake only times out, like a Redis that is down. Asked in
/// plain text, it answers at once, and that tells the two apart. A TLS server takes
/// the `PING` for a broken record and alerts or hangs up, which is not an answer.
pub(crate) async fn speaks_plain_redis(host: &str, port: u16) -> bool {
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut line = Vec::new();
        let mut buf = [0u8; 256];
        while !line.ends_with(b"\r\n") && line.len() < 4096 {
            match stream.read(&mut buf).await.ok()? {
                0 => break,
                n => line.extend_from_slice(&buf[..n]),
            }
        }
        Some(line)
    };
    match tokio::time::timeout(PLAIN_CHECK_LIMIT, ask).await {
        Ok(Some(line)) => matches!(line.first(), Some(b'+' | b'-')) && line.ends_with(b"\r\n"),
        _ => false,
    }
}

fn read(setting: &str, path: &Path) -> Result<Vec<u8>, RedisTlsError> {
    std::fs::read(path).map_err(|e| RedisTlsError(format!("{setting} {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(ca: Option<&str>, cert: Option<&str>, key: Option<&str>) -> RedisTls {
        RedisTls {
            ca_file: ca.map(PathBuf::from),
            cert_file: cert.map(PathBuf::from),
            key_file: key.map(PathBuf::from),
        }
    }

    #[test]
    fn tls_files_with_a_plain_url_are_refused() {
        let e = tls(Some("/ca.pem"), None, None)
            .client("redis://127.0.0.1:6379")
            .unwrap_err();
        assert!(e.to_string().contains("must be rediss://"), "{e}");
        let seeds = ["redis://127.0.0.1:7000".to_owned()];
        let e = tls(Some("/ca.pem"), None, None)
            .cluster_builder(&seeds)
            .unwrap_err();
        assert!(e.to_string().contains("must be rediss://"), "{e}");
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_files_must_exist() {
        let e = tls(None, Some("/cert.pem"), None)
            .client("rediss://127.0.0.1:6379")
            .unwrap_err();
        assert!(e.to_string().contains("go together"), "{e}");
        let e = tls(Some("/nonexistent/ca.pem"), None, None)
            .client("rediss://127.0.0.1:6379")
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("HERALD_REDIS_CA_FILE /nonexistent/ca.pem:"),
            "{e}"
        );
    }

    #[test]
    fn seeds_are_all_tls_or_none_and_plain_urls_need_no_files() {
        let seeds = [
            "rediss://127.0.0.1:7000".to_owned(),
            "redis://127.0.0.1:7001".to_owned(),
        ];
        let e = RedisTls::default().cluster_builder(&seeds).unwrap_err();
        assert!(e.to_string().contains("mixes"), "{e}");
        assert!(RedisTls::default().client("redis://127.0.0.1:6379").is_ok());
        assert!(
            RedisTls::default()
                .client("rediss://127.0.0.1:6379")
                .is_ok()
        );
    }
}
