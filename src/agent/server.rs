//! The agent's HTTP(S) API: routes, bearer-token authentication and optional TLS. The accept
//! loop, its limits and timeouts are in [`listen`].

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{Query, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tracing::warn;

use super::{
    AgentError,
    api::{
        BatchResult, DeleteQuery, EnsureBatch, EnsureBatchResult, EnsureBody, ErrorBody, ErrorDetail,
        HEALTH_PATH, HOST_PATH, MAX_BATCH, USAGE_PATH, UsageRequest, VOLUMES_BATCH_PATH, VOLUMES_PATH,
        VolumeQuery,
    },
    ops::{Agent, DeleteStart, OpError},
};

mod listen;
mod transfers;

pub use listen::{Peer, ServeOptions};

/// Largest request body accepted (a seed is at most the agent's limit, 1 MiB by default).
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// At most one warning per this interval about requests without a valid token (with a count).
pub const UNAUTHORIZED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A bearer token. Compared in constant time; never printed.
#[derive(Clone)]
pub struct Token(Arc<[u8]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Shortest token accepted.
    pub const MIN_LEN: usize = 16;

    /// A token from a string (surrounding whitespace, e.g. a trailing newline, is ignored).
    pub fn new(token: &str) -> Result<Self, AgentError> {
        let t = token.trim();
        if t.len() < Self::MIN_LEN {
            return Err(AgentError::Config(format!(
                "the agent token must be at least {} characters; generate one with `openssl rand -hex 32`",
                Self::MIN_LEN
            )));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AgentError::Config(
                "the agent token may contain only printable ASCII without spaces".into(),
            ));
        }
        Ok(Self(Arc::from(t.as_bytes())))
    }

    /// The token's bytes (the key a transfer ticket for this agent is signed with).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Constant-time check of an `Authorization` header value.
    fn matches_header(&self, value: &[u8]) -> bool {
        let Some(presented) = value.strip_prefix(b"Bearer ") else {
            return false;
        };
        // ct_eq compares lengths first (the length of the token is not a secret worth hiding);
        // the contents are compared in constant time.
        bool::from(presented.ct_eq(&self.0))
    }
}

struct AppState {
    agent: Arc<Agent>,
    token: Token,
    unauthorized: RateLimited,
}

/// Counts events and lets one log line through per interval, so a flood of bad requests costs
/// one line every few seconds, not one each.
pub struct RateLimited {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimited {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// Records one event; returns how many happened since the last line when a line is due.
    pub fn hit(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.1 += 1;
        let due = s.0.is_none_or(|at| at.elapsed() >= self.interval);
        due.then(|| {
            let n = s.1;
            *s = (Some(Instant::now()), 0);
            n
        })
    }
}

fn error_response(status: StatusCode, code: &str, message: String) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.to_owned(),
            message,
        },
    };
    (status, Json(body)).into_response()
}

impl IntoResponse for OpError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        error_response(status, self.code(), self.to_string())
    }
}

async fn auth(State(st): State<Arc<AppState>>, headers: HeaderMap, req: Request, next: Next) -> Response {
    let ok = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| st.token.matches_header(v.as_bytes()));
    if !ok {
        if let Some(count) = st.unauthorized.hit() {
            let peer = req
                .extensions()
                .get::<Peer>()
                .map(|p| p.0.to_string())
                .unwrap_or_default();
            warn!(count, last_peer = %peer, last_method = %req.method(), last_path = %req.uri().path(),
                  "rejected {count} request(s) without a valid bearer token (at most one such line every {} s)",
                  UNAUTHORIZED_LOG_INTERVAL.as_secs());
        }
        let mut resp = error_response(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token: send `Authorization: Bearer <token>` with the agent's token"
                .into(),
        );
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"berth-agent\""),
        );
        return resp;
    }
    next.run(req).await
}

/// Runs a blocking filesystem operation off the async threads.
async fn blocking<T, F>(f: F) -> Result<T, Response>
where
    F: FnOnce() -> Result<T, OpError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(IntoResponse::into_response),
        Err(e) => Err(error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the operation failed unexpectedly ({e}); retry, and report it if it persists"),
        )),
    }
}

async fn host(State(st): State<Arc<AppState>>) -> Response {
    let agent = st.agent.clone();
    match blocking(move || agent.host_info()).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn ensure(
    State(st): State<Arc<AppState>>,
    body: Result<Json<EnsureBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return bad_request(e.body_text()),
    };
    let agent = st.agent.clone();
    match blocking(move || agent.ensure_checked(&body)).await {
        Ok(v) => {
            let status = if v.state.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(v)).into_response()
        }
        Err(r) => r,
    }
}

async fn ensure_batch(
    State(st): State<Arc<AppState>>,
    body: Result<Json<EnsureBatch>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(batch) = match body {
        Ok(b) => b,
        Err(e) => return bad_request(e.body_text()),
    };
    if batch.volumes.len() > MAX_BATCH {
        return bad_request(format!(
            "a batch holds at most {MAX_BATCH} volumes, this one {}",
            batch.volumes.len()
        ));
    }
    let agent = st.agent.clone();
    let results = tokio::task::spawn_blocking(move || {
        batch
            .volumes
            .iter()
            .map(|body| match agent.ensure_checked(body) {
                Ok(v) => BatchResult::Ok(Box::new(v)),
                Err(e) => BatchResult::Error {
                    status: e.status(),
                    error: ErrorDetail {
                        code: e.code().to_owned(),
                        message: e.to_string(),
                    },
                },
            })
            .collect::<Vec<_>>()
    })
    .await;
    match results {
        Ok(results) => Json(EnsureBatchResult { results }).into_response(),
        Err(e) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the operation failed unexpectedly ({e}); retry, and report it if it persists"),
        ),
    }
}

fn bad_request(why: String) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        format!("{why}; see docs/agent.md for the request format"),
    )
}

type QueryResult = Result<Query<VolumeQuery>, axum::extract::rejection::QueryRejection>;

async fn inspect(State(st): State<Arc<AppState>>, q: QueryResult) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad_request(e.body_text()),
    };
    let agent = st.agent.clone();
    match blocking(move || agent.inspect(&q)).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn usage(
    State(st): State<Arc<AppState>>,
    body: Result<Json<UsageRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return bad_request(e.body_text()),
    };
    let agent = st.agent.clone();
    match blocking(move || agent.usage(&req)).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn delete(
    State(st): State<Arc<AppState>>,
    q: Result<Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad_request(e.body_text()),
    };
    // The walk runs on a thread of its own; this request waits for it a while, then answers
    // `delete_in_progress` and the walk goes on (its result waits for the next DELETE).
    let result = match st.agent.start_delete_checked(&q) {
        Ok(DeleteStart::Done(result)) => result,
        Ok(DeleteStart::Pending(mut pending)) => {
            let _ = tokio::time::timeout(st.agent.config().delete_wait, pending.finished()).await;
            st.agent.collect_delete(&pending)
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The agent's routes. Everything but `/healthz` requires the bearer token.
pub fn router(agent: Arc<Agent>, token: Token) -> Router {
    let st = Arc::new(AppState {
        agent,
        token,
        unauthorized: RateLimited::new(UNAUTHORIZED_LOG_INTERVAL),
    });
    let api = Router::new()
        .route(HOST_PATH, get(host))
        .route(VOLUMES_PATH, put(ensure).get(inspect).delete(delete))
        .route(VOLUMES_BATCH_PATH, put(ensure_batch))
        .route(USAGE_PATH, post(usage))
        .merge(transfers::routes())
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .route_layer(middleware::from_fn_with_state(st.clone(), auth))
        .with_state(st.clone());
    Router::new()
        .route(HEALTH_PATH, get(|| async { "ok" }))
        .merge(api)
        .merge(transfers::ticket_routes(st))
        .fallback(|| async {
            error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see docs/agent.md".into(),
            )
        })
}

/// Loads a PEM certificate chain and private key into a rustls server config (ring provider).
pub fn load_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, AgentError> {
    let bad = |what: &str, p: &Path, e: String| AgentError::Config(format!("{what} {}: {e}", p.display()));
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("cannot read the TLS certificate", cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("cannot parse the TLS certificate", cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad("no certificate found in", cert, "expected PEM".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| bad("cannot read the TLS private key", key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::Config(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            AgentError::Config(format!(
                "TLS certificate and key do not match or are unusable: {e}"
            ))
        })?;
    // The server speaks HTTP/1.1 only (keep-alive); never advertise h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves the API on `listener` (TLS when `tls` is set) with the default [`ServeOptions`] until
/// `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    serve_with(listener, router, tls, ServeOptions::default(), shutdown).await
}

/// Serves the API on `listener` until `shutdown` resolves, then stops accepting, lets requests
/// in flight finish for at most [`ServeOptions::shutdown_timeout`], and returns.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    listen::serve(listener, router, tls, options, shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_rules_and_header_matching() {
        assert!(Token::new("short").is_err());
        assert!(Token::new("has a space in the middle!").is_err());
        let t = Token::new("0123456789abcdef0123\n").unwrap();
        assert!(t.matches_header(b"Bearer 0123456789abcdef0123"));
        assert!(!t.matches_header(b"Bearer 0123456789abcdef012"));
        assert!(!t.matches_header(b"Bearer 0123456789abcdef01234"));
        assert!(!t.matches_header(b"bearer 0123456789abcdef0123"));
        assert!(!t.matches_header(b"Basic 0123456789abcdef0123"));
        assert!(!t.matches_header(b"0123456789abcdef0123"));
        assert!(
            !format!("{t:?}").contains("0123"),
            "the token must not be printed"
        );
    }

    #[test]
    fn rate_limited_lets_one_line_through_per_interval_with_a_count() {
        let r = RateLimited::new(Duration::from_millis(200));
        assert_eq!(r.hit(), Some(1), "the first event is logged at once");
        for _ in 0..49 {
            assert_eq!(r.hit(), None);
        }
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(r.hit(), Some(50), "the next line counts the suppressed events");
        assert_eq!(r.hit(), None);
    }
}
