//! The admin API (contract §6) over HTTP: every call has a short timeout, so a dead
//! or slow node costs at most that long and never blocks anyone else.
//!
//! Shared by the poller (the UI) and the subcommands; it does not retry (callers
//! decide: the poller polls again next interval, `--wait` loops).

use std::time::Duration;

use herald_shared::admin::{AdminStatus, ApplyReport, DrainRequest, TuningReport};
use herald_shared::config::CLIENT_IDLE_TIMEOUT_S;
use herald_shared::seconds::Seconds;
use serde::de::DeserializeOwned;

use crate::scrape::{self, Metrics};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Http(String),
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("{0}")]
    Scrape(#[from] scrape::ScrapeError),
}

impl From<reqwest::Error> for ClientError {
    fn from(e: reqwest::Error) -> Self {
        // reqwest's Display hides the cause ("error sending request"); show it.
        let mut s = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(c) = src {
            s = format!("{s}: {c}");
            src = c.source();
        }
        if e.is_timeout() {
            s = "timed out".into();
        }
        ClientError::Http(s)
    }
}

/// A handle on the admin API of any node: cheap to clone (one connection pool).
#[derive(Debug, Clone)]
pub struct AdminClient {
    http: reqwest::Client,
    token: Option<String>,
}

/// `127.0.0.1:9090` → `http://127.0.0.1:9090`; trailing `/` removed.
pub fn base_url(addr: &str) -> String {
    let a = addr.trim_end_matches('/');
    if a.starts_with("http://") || a.starts_with("https://") {
        a.to_owned()
    } else {
        format!("http://{a}")
    }
}

impl AdminClient {
    /// `timeout` bounds each whole request (connect, send, read).
    pub fn new(token: Option<String>, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(CLIENT_IDLE_TIMEOUT_S))
            .build()
            .expect("a plain HTTP client builds");
        Self { http, token }
    }

    fn req(&self, m: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        let r = self.http.request(m, url);
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        r: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let resp = r.send().await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(ClientError::Status {
                status: status.as_u16(),
                body: body.chars().take(200).collect(),
            });
        }
        Ok(resp.json().await?)
    }

    pub async fn metrics(&self, admin: &str) -> Result<Metrics, ClientError> {
        let r = self
            .req(reqwest::Method::GET, format!("{}/metrics", base_url(admin)))
            .send()
            .await?;
        if !r.status().is_success() {
            return Err(ClientError::Status {
                status: r.status().as_u16(),
                body: String::new(),
            });
        }
        Ok(scrape::parse(&r.text().await?)?)
    }

    pub async fn status(&self, admin: &str) -> Result<AdminStatus, ClientError> {
        self.send(self.req(
            reqwest::Method::GET,
            format!("{}/admin/status", base_url(admin)),
        ))
        .await
    }

    pub async fn drain(&self, admin: &str, window_s: u64) -> Result<AdminStatus, ClientError> {
        let r = self
            .req(
                reqwest::Method::POST,
                format!("{}/admin/drain", base_url(admin)),
            )
            .json(&DrainRequest {
                window_s: Seconds::from_secs(window_s),
            });
        self.send(r).await
    }

    pub async fn undrain(&self, admin: &str) -> Result<AdminStatus, ClientError> {
        self.send(self.req(
            reqwest::Method::POST,
            format!("{}/admin/undrain", base_url(admin)),
        ))
        .await
    }

    pub async fn tuning(&self, admin: &str) -> Result<TuningReport, ClientError> {
        self.send(self.req(
            reqwest::Method::GET,
            format!("{}/admin/tuning", base_url(admin)),
        ))
        .await
    }

    pub async fn apply_tuning(&self, admin: &str) -> Result<ApplyReport, ClientError> {
        self.send(self.req(
            reqwest::Method::POST,
            format!("{}/admin/tuning/apply", base_url(admin)),
        ))
        .await
    }

    /// `GET /readyz` on a node's public address: true on 200.
    pub async fn ready(&self, public: &str) -> bool {
        match self
            .http
            .get(format!("{}/readyz", base_url(public)))
            .send()
            .await
        {
            Ok(r) => r.status().is_success(),
            Err(_) => false,
        }
    }
}
