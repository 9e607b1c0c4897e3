//! The controller's client for one agent.
//!
//! Errors keep apart what the controller must never confuse: an agent that could not be reached
//! (or did not answer in time) says nothing about the data, so the controller must wait and retry
//! and never treat it as "gone"; an agent that *answered* with a 4xx rejected the request for a
//! reason the user must fix (the message says how); a 5xx is a host-side failure worth retrying.

use std::time::Duration;

use reqwest::{Certificate, StatusCode};
use serde::de::DeserializeOwned;
use thiserror::Error;

mod migration;

use super::api::{
    BatchResult, DeleteResult, EnsureBatch, EnsureBatchResult, EnsureBody, EnsureVolumeRequest,
    EnsuredVolume, ErrorBody, HOST_PATH, HostInfo, USAGE_PATH, UsageRequest, UsageResponse,
    VOLUMES_BATCH_PATH, VOLUMES_PATH, VolumeQuery, VolumeState, VolumeUsage,
};

/// Client settings.
#[derive(Debug, Clone)]
pub struct AgentClientOptions {
    /// PEM bundle of the CA(s) that signed the agents' certificates. When set, only these roots
    /// are trusted (not the system's).
    pub ca_pem: Option<Vec<u8>>,
    /// Whole-request timeout (a delete of a big tree can take a while).
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for AgentClientOptions {
    fn default() -> Self {
        Self {
            ca_pem: None,
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// What went wrong talking to an agent.
///
/// `Display` is safe to show a tenant (volume status, events): it names no agent URL. For logs,
/// [`AgentClientError::url`] gives the agent's address and [`AgentClientError::log_message`]
/// both.
#[derive(Debug, Error)]
pub enum AgentClientError {
    /// No answer: connection refused, DNS, TLS handshake, timeout, connection reset. Says nothing
    /// about the host's data: wait and retry, never delete or re-place because of it.
    #[error("the host's berth agent is unreachable ({reason}); the host's data is unaffected, retry later")]
    Unreachable {
        url: String,
        reason: String,
        #[source]
        source: reqwest::Error,
    },
    /// The agent refused the request (4xx): the request or the data on the host must change.
    #[error("agent refused the request ({status} {code}): {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// The agent answered 5xx: it failed on the host; retry with back-off.
    #[error("agent failed ({status} {code}): {message}")]
    AgentFailed {
        status: u16,
        code: String,
        message: String,
    },
    /// The agent answered 2xx with a body this client does not understand (version skew?).
    #[error(
        "the host's berth agent sent an unexpected response: {reason}; check that agent and controller versions match"
    )]
    InvalidResponse { url: String, reason: String },
    /// The client could not be built (bad URL or CA bundle).
    #[error("agent client configuration: {0}")]
    Config(String),
}

impl AgentClientError {
    /// True when the agent gave no answer (the only case where the outcome is unknown).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, AgentClientError::Unreachable { .. })
    }

    /// True when the agent answered and refused (4xx).
    pub fn is_rejected(&self) -> bool {
        matches!(self, AgentClientError::Rejected { .. })
    }

    /// True when a retry may succeed without any change (unreachable, 5xx, a 409 caused by a
    /// concurrent change, or a delete still running).
    pub fn is_retryable(&self) -> bool {
        match self {
            AgentClientError::Unreachable { .. } | AgentClientError::AgentFailed { .. } => true,
            AgentClientError::Rejected { code, .. } => {
                code == "concurrent_change" || code == "delete_in_progress"
            }
            _ => false,
        }
    }

    /// True when the agent is still deleting the path (`409 delete_in_progress`): the data is
    /// not gone yet; a later DELETE returns the result. The message says how far it got.
    pub fn is_delete_in_progress(&self) -> bool {
        self.code() == Some("delete_in_progress")
    }

    /// The agent's address, when the error is about one (for logs, not for tenants).
    pub fn url(&self) -> Option<&str> {
        match self {
            AgentClientError::Unreachable { url, .. } | AgentClientError::InvalidResponse { url, .. } => {
                Some(url)
            }
            _ => None,
        }
    }

    /// The message with the agent's address, for logs.
    pub fn log_message(&self) -> String {
        match self.url() {
            Some(url) => format!("{self} [agent {url}]"),
            None => self.to_string(),
        }
    }

    /// The error for an answer with this status, code and message (as one volume of a batch is
    /// answered).
    pub fn from_answer(status: u16, code: String, message: String) -> Self {
        if (400..500).contains(&status) {
            AgentClientError::Rejected {
                status,
                code,
                message,
            }
        } else {
            AgentClientError::AgentFailed {
                status,
                code,
                message,
            }
        }
    }

    /// The agent's error code (`type_mismatch`, `unauthorized`, ...), when it answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            AgentClientError::Rejected { code, .. } | AgentClientError::AgentFailed { code, .. } => {
                Some(code)
            }
            _ => None,
        }
    }
}

/// A typed client for one agent's API. Its `Debug` never shows the token.
#[derive(Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("base", &self.base)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl AgentClient {
    /// `base_url` like `https://node-3:8443`; `token` is the agents' bearer token.
    pub fn new(base_url: &str, token: &str, options: &AgentClientOptions) -> Result<Self, AgentClientError> {
        crate::tls::install_crypto_provider();
        let url = reqwest::Url::parse(base_url)
            .map_err(|e| AgentClientError::Config(format!("agent URL {base_url:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(AgentClientError::Config(format!(
                "agent URL {base_url:?} must start with http:// or https://"
            )));
        }
        let builder = || {
            reqwest::Client::builder()
                .timeout(options.timeout)
                .connect_timeout(options.connect_timeout)
                // Agents close keep-alive connections idle for 10 s; never reuse one that old.
                .pool_idle_timeout(Duration::from_secs(5))
        };
        let mut roots = None;
        if let Some(pem) = &options.ca_pem {
            let certs = Certificate::from_pem_bundle(pem)
                .map_err(|e| AgentClientError::Config(format!("CA bundle: {e}")))?;
            if certs.is_empty() {
                return Err(AgentClientError::Config("CA bundle holds no certificate".into()));
            }
            roots = Some(certs);
        }
        let http = crate::tls::http_client(builder, roots)
            .map_err(|e| AgentClientError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            token: token.trim().to_owned(),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /v1/host`.
    pub async fn host_info(&self) -> Result<HostInfo, AgentClientError> {
        let req = self.http.get(self.url(HOST_PATH));
        self.send(req).await?.ok_or_else(|| self.not_found(HOST_PATH))
    }

    /// `PUT /v1/volumes` (idempotent: safe to retry after [`AgentClientError::Unreachable`]).
    pub async fn ensure_volume(&self, req: &EnsureVolumeRequest) -> Result<VolumeState, AgentClientError> {
        let r = self.http.put(self.url(VOLUMES_PATH)).json(req);
        self.send(r).await?.ok_or_else(|| self.not_found(VOLUMES_PATH))
    }

    /// `PUT /v1/volumes/batch`: many ensures in one request (at most `api::MAX_BATCH`); one
    /// result per volume, in order.
    pub async fn ensure_batch(&self, volumes: &[EnsureBody]) -> Result<Vec<BatchResult>, AgentClientError> {
        let body = EnsureBatch {
            volumes: volumes.to_vec(),
        };
        let r = self.http.put(self.url(VOLUMES_BATCH_PATH)).json(&body);
        let answer: EnsureBatchResult = self
            .send(r)
            .await?
            .ok_or_else(|| self.not_found(VOLUMES_BATCH_PATH))?;
        if answer.results.len() != volumes.len() {
            return Err(AgentClientError::InvalidResponse {
                url: self.url(VOLUMES_BATCH_PATH),
                reason: format!("{} results for {} volumes", answer.results.len(), volumes.len()),
            });
        }
        Ok(answer.results)
    }

    /// `PUT /v1/volumes` with a capacity: the volume's state and its limit. Without
    /// `capacity_bytes` a limit berth set earlier is lifted. Agents older than capacities refuse
    /// the field (`400 invalid_request`).
    pub async fn ensure_volume_with_capacity(
        &self,
        req: &EnsureBody,
    ) -> Result<EnsuredVolume, AgentClientError> {
        let r = self.http.put(self.url(VOLUMES_PATH)).json(req);
        self.send(r).await?.ok_or_else(|| self.not_found(VOLUMES_PATH))
    }

    /// `POST /v1/usage`: the usage of many volumes of this host in one call, in the order asked
    /// (at most [`crate::agent::ops::MAX_USAGE_BATCH`]). Agents older than it answer
    /// `404 not_found`.
    pub async fn usage(&self, volumes: &[VolumeQuery]) -> Result<UsageResponse, AgentClientError> {
        let body = UsageRequest {
            volumes: volumes.to_vec(),
        };
        let r = self.http.post(self.url(USAGE_PATH)).json(&body);
        self.send(r).await?.ok_or_else(|| self.not_found(USAGE_PATH))
    }

    /// `GET /v1/volumes`; `Ok(None)` when the volume does not exist on the host.
    pub async fn inspect(
        &self,
        tenant: &str,
        host_path: &str,
    ) -> Result<Option<VolumeUsage>, AgentClientError> {
        let r = self
            .http
            .get(self.url(VOLUMES_PATH))
            .query(&query(tenant, host_path));
        self.send(r).await
    }

    /// `DELETE /v1/volumes` (recursive; `existed: false` when nothing was there). A big tree may
    /// take longer than the agent waits: the answer is then `Rejected` with code
    /// `delete_in_progress` ([`AgentClientError::is_delete_in_progress`]); call again later, and
    /// the call after the walk finished returns its result.
    pub async fn delete(&self, tenant: &str, host_path: &str) -> Result<DeleteResult, AgentClientError> {
        let r = self
            .http
            .delete(self.url(VOLUMES_PATH))
            .query(&query(tenant, host_path));
        self.send(r).await?.ok_or_else(|| self.not_found(VOLUMES_PATH))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn not_found(&self, path: &str) -> AgentClientError {
        AgentClientError::InvalidResponse {
            url: self.url(path),
            reason: "404 for an endpoint every agent serves".into(),
        }
    }

    /// Sends with the token; `Ok(None)` for a 404 with code `not_found`.
    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<Option<T>, AgentClientError> {
        let unreachable = |e: reqwest::Error| AgentClientError::Unreachable {
            url: self.base.clone(),
            reason: describe(&e),
            source: e,
        };
        let resp = req.bearer_auth(&self.token).send().await.map_err(unreachable)?;
        let status = resp.status();
        let url = resp.url().to_string();
        let bytes = resp.bytes().await.map_err(unreachable)?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| AgentClientError::InvalidResponse {
                    url,
                    reason: e.to_string(),
                });
        }
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(b) => (b.error.code, b.error.message),
            Err(_) => (
                "unknown".to_owned(),
                String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
            ),
        };
        if status == StatusCode::NOT_FOUND && code == "not_found" && url.contains(VOLUMES_PATH) {
            return Ok(None);
        }
        Err(if status.is_client_error() {
            AgentClientError::Rejected {
                status: status.as_u16(),
                code,
                message,
            }
        } else {
            AgentClientError::AgentFailed {
                status: status.as_u16(),
                code,
                message,
            }
        })
    }
}

fn query(tenant: &str, host_path: &str) -> VolumeQuery {
    VolumeQuery {
        tenant: tenant.to_owned(),
        host_path: host_path.to_owned(),
    }
}

fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut s = kind.to_owned();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_token() {
        let c = AgentClient::new(
            "http://127.0.0.1:1",
            "secret-token-0123456789abcdef",
            &AgentClientOptions::default(),
        )
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("secret-token"), "{shown}");
        assert!(
            shown.contains("<redacted>") && shown.contains("127.0.0.1:1"),
            "{shown}"
        );
    }
}
