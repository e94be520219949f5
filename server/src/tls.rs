//! TLS to the services a node depends on, Redis and PostgreSQL, through the
//! libraries' own rustls support (redis-rs and sqlx): the crypto provider they
//! use, and how a TLS refusal is told apart from a service that is unreachable.
//!
//! The difference matters at start-up. A node retries an unreachable Redis or
//! PostgreSQL until it comes up; a certificate that is not trusted, a client
//! certificate the service refuses, or a service that answers TLS with something
//! else will not fix itself, so start-up fails at once and says which service, and
//! why. (A plain Redis behind `rediss://` refuses nothing: it waits for the end of a
//! command line. Start-up asks it in plain text instead:
//! `redis_client::speaks_plain_redis`.)

use std::error::Error;
use std::io;
use std::sync::Arc;

/// Makes ring the process's rustls crypto provider, unless one is installed.
///
/// redis-rs builds its rustls configuration with the process default provider. It
/// is found by itself while ring is the only provider built in, but a host that
/// embeds Herald may also build in aws-lc-rs (rustls's default), and rustls then
/// panics instead of choosing. A provider the host installed is left alone.
pub(crate) fn install_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may win the race: either provider is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Why TLS was refused, when `err` (or an error inside it) is a TLS protocol
/// error: an untrusted or mismatched certificate, an alert from the server (a
/// client certificate refused or missing), or a peer that does not speak TLS.
/// `None` for anything else, such as a refused or reset connection.
///
/// redis-rs and sqlx hand the rustls error on inside an `io::Error` (the one the
/// TLS stream returned), which `source()` does not reach: `io::Error::source` skips
/// the error it wraps, and redis-rs holds its own behind an `Arc`. So the chain is
/// walked through both by hand.
pub(crate) fn refusal(err: &(dyn Error + 'static)) -> Option<String> {
    if let Some(r) = err.downcast_ref::<rustls::Error>() {
        return Some(r.to_string());
    }
    if let Some(a) = err.downcast_ref::<Arc<dyn Error + Send + Sync>>() {
        return refusal(&**a);
    }
    if let Some(inner) = err.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
        return refusal(inner);
    }
    err.source().and_then(refusal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rustls_error_is_found_inside_the_wrappers_redis_and_sqlx_use() {
        let rustls_err =
            || rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io_err = || io::Error::new(io::ErrorKind::InvalidData, rustls_err());
        // redis-rs: an io::Error behind an Arc.
        let redis_like: Arc<dyn Error + Send + Sync> = Arc::new(io_err());
        let redis_err: redis::RedisError = io_err().into();
        // sqlx: the io::Error as the source of its own error.
        let sqlx_err = sqlx::Error::Io(io_err());
        for e in [&redis_like as &(dyn Error + 'static), &redis_err, &sqlx_err] {
            let why = refusal(e).expect("a TLS refusal");
            assert!(why.contains("UnknownIssuer"), "{why}");
        }
        let reset = io::Error::new(io::ErrorKind::ConnectionReset, "reset by peer");
        assert_eq!(refusal(&reset), None);
        assert_eq!(refusal(&sqlx::Error::Io(reset)), None);
    }
}
