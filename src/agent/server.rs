//! The agent's HTTP(S) API: routes, bearer-token authentication and optional TLS.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Query, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, put},
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use subtle::ConstantTimeEq;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tracing::{debug, warn};

use super::{
    AgentError,
    api::{EnsureVolumeRequest, ErrorBody, ErrorDetail, HEALTH_PATH, HOST_PATH, VOLUMES_PATH, VolumeQuery},
    ops::{Agent, OpError},
};

/// Largest request body accepted (a seed is at most the agent's limit, 1 MiB by default).
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// A TLS handshake slower than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
        warn!(method = %req.method(), path = %req.uri().path(), "rejected a request without a valid bearer token");
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
    body: Result<Json<EnsureVolumeRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return bad_request(e.body_text()),
    };
    let agent = st.agent.clone();
    match blocking(move || agent.ensure(&req)).await {
        Ok(v) => {
            let status = if v.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(v)).into_response()
        }
        Err(r) => r,
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

async fn delete(State(st): State<Arc<AppState>>, q: QueryResult) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad_request(e.body_text()),
    };
    let agent = st.agent.clone();
    match blocking(move || agent.delete(&q)).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

/// The agent's routes. Everything but `/healthz` requires the bearer token.
pub fn router(agent: Arc<Agent>, token: Token) -> Router {
    let st = Arc::new(AppState { agent, token });
    let api = Router::new()
        .route(HOST_PATH, get(host))
        .route(VOLUMES_PATH, put(ensure).get(inspect).delete(delete))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .route_layer(middleware::from_fn_with_state(st.clone(), auth))
        .with_state(st);
    Router::new()
        .route(HEALTH_PATH, get(|| async { "ok" }))
        .merge(api)
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

/// A listener that hands axum TLS streams. Handshakes run in their own tasks (with a timeout),
/// so one slow or hostile client cannot stall accepting others.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, rx) = mpsc::channel(128);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    r = tcp.accept() => r,
                    // The server stopped (listener dropped): stop accepting and free the port.
                    () = tx.closed() => break,
                };
                let (stream, addr) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => debug!(peer = %addr, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(peer = %addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Serves the API on `listener` (TLS when `tls` is set) until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    match tls {
        Some(cfg) => {
            let l = TlsListener::new(listener, cfg).map_err(AgentError::Serve)?;
            axum::serve(l, router)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(AgentError::Serve)
        }
        None => axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(AgentError::Serve),
    }
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
}
