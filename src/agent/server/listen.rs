//! The agent's accept loop.
//!
//! - **A cap on connections** ([`ServeOptions::max_connections`]). A connection beyond it closes
//!   the oldest *idle* one (no request in flight: a TLS handshake, a keep-alive wait or a request
//!   still arriving); when every connection has a request in flight, it waits for one to end.
//!   Idle connections cannot starve a request, and the agent never runs out of fds.
//! - **Read deadlines.** A client has [`ServeOptions::header_timeout`] to finish its TLS
//!   handshake, to send a request's head (from connecting, or from the previous response: this
//!   also ends idle keep-alive connections), and to send the body.
//! - **A bounded shutdown.** When `shutdown` resolves, no new connection is accepted, idle ones
//!   are closed, requests in flight get [`ServeOptions::shutdown_timeout`] to finish, and then
//!   whatever is left is dropped.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Bytes;
use axum::{Router, body::Body, extract::Request, response::Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::{Notify, watch},
    task::JoinSet,
    time::Sleep,
};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use super::RateLimited;

/// Limits and timeouts of the server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Time to finish the TLS handshake, to send a request's head (from connecting or from the
    /// previous response, so it also closes idle keep-alive connections) and to send its body.
    pub header_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// After shutdown is asked for, how long requests in flight may still run.
    pub shutdown_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            max_connections: 128,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// The peer of a request (a request extension, for logs).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// One open connection.
struct Slot {
    /// Requests in flight.
    busy: usize,
    /// Asked to close (to make room for a new connection).
    evicted: bool,
    close: Arc<Notify>,
}

/// The open connections, oldest first (ids grow).
struct Table {
    next: u64,
    slots: BTreeMap<u64, Slot>,
}

struct Conns {
    table: Mutex<Table>,
    /// A connection ended.
    released: Notify,
    max: usize,
}

impl Conns {
    fn new(max: usize) -> Self {
        Self {
            table: Mutex::new(Table {
                next: 0,
                slots: BTreeMap::new(),
            }),
            released: Notify::new(),
            max: max.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a new connection, or `None` when all are taken.
    fn register(&self) -> Option<(u64, Arc<Notify>)> {
        let mut t = self.lock();
        if t.slots.len() >= self.max {
            return None;
        }
        let id = t.next;
        t.next += 1;
        let close = Arc::new(Notify::new());
        t.slots.insert(
            id,
            Slot {
                busy: 0,
                evicted: false,
                close: close.clone(),
            },
        );
        Some((id, close))
    }

    /// Asks the oldest connection without a request in flight to close; false when there is none.
    fn evict_oldest_idle(&self) -> bool {
        let mut t = self.lock();
        match t.slots.values_mut().find(|s| s.busy == 0 && !s.evicted) {
            Some(s) => {
                s.evicted = true;
                s.close.notify_one();
                true
            }
            None => false,
        }
    }

    fn release(&self, id: u64) {
        self.lock().slots.remove(&id);
        self.released.notify_one();
    }

    fn set_busy(&self, id: u64, up: bool) {
        if let Some(s) = self.lock().slots.get_mut(&id) {
            if up {
                s.busy += 1;
            } else {
                s.busy = s.busy.saturating_sub(1);
            }
        }
    }
}

/// Frees a connection's slot when its task ends, however it ends.
struct SlotGuard {
    conns: Arc<Conns>,
    id: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.conns.release(self.id);
    }
}

/// Marks a connection busy while a request is in flight.
struct BusyGuard {
    conns: Arc<Conns>,
    id: u64,
}

impl BusyGuard {
    fn new(conns: &Arc<Conns>, id: u64) -> Self {
        conns.set_busy(id, true);
        Self {
            conns: conns.clone(),
            id,
        }
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.conns.set_busy(self.id, false);
    }
}

/// Everything a connection task needs.
#[derive(Clone)]
struct Shared {
    router: Router,
    tls: Option<TlsAcceptor>,
    options: ServeOptions,
    conns: Arc<Conns>,
    stop: watch::Receiver<bool>,
}

pub(super) async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Shared {
        router,
        tls: tls.map(TlsAcceptor::from),
        conns: Arc::new(Conns::new(options.max_connections)),
        options: options.clone(),
        stop: stop_rx,
    };
    let full = RateLimited::new(Duration::from_secs(10));
    let accept_failed = RateLimited::new(Duration::from_secs(10));
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    'accept: loop {
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    if let Some(count) = accept_failed.hit() {
                        warn!(error = %e, count, "accepting a connection failed");
                    }
                    // Out of fds (or another transient failure): make room and breathe.
                    shared.conns.evict_oldest_idle();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (id, close) = loop {
            if let Some(slot) = shared.conns.register() {
                break slot;
            }
            let released = shared.conns.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if !shared.conns.evict_oldest_idle()
                && let Some(count) = full.hit()
            {
                warn!(
                    max = options.max_connections,
                    count,
                    "every connection has a request in flight: new connections wait (raise --max-connections if this persists)"
                );
            }
            tokio::select! {
                () = released => {}
                () = &mut shutdown => break 'accept,
            }
        };
        tasks.spawn(connection(stream, peer, id, close, shared.clone()));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let open = tasks.len();
    if open > 0 {
        info!(open, "waiting for open connections to finish");
    }
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(options.shutdown_timeout, drain)
        .await
        .is_err()
    {
        warn!(
            open = tasks.len(),
            "connections still open {} s after shutdown began: closing them",
            options.shutdown_timeout.as_secs()
        );
        tasks.abort_all();
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    id: u64,
    close: Arc<Notify>,
    shared: Shared,
) {
    let _slot = SlotGuard {
        conns: shared.conns.clone(),
        id,
    };
    let mut stop = shared.stop.clone();
    match shared.tls.clone() {
        None => http(stream, peer, id, &close, &mut stop, &shared).await,
        Some(acceptor) => {
            let handshake = tokio::time::timeout(shared.options.header_timeout, acceptor.accept(stream));
            let tls = tokio::select! {
                r = handshake => match r {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return debug!(peer = %peer, error = %e, "TLS handshake failed"),
                    Err(_) => return debug!(peer = %peer, "TLS handshake timed out"),
                },
                () = close.notified() => return,
                _ = stop.wait_for(|s| *s) => return,
            };
            http(tls, peer, id, &close, &mut stop, &shared).await;
        }
    }
}

/// Serves HTTP/1.1 on one connection until it ends, is evicted, or shutdown ends it.
async fn http<I>(
    io: I,
    peer: SocketAddr,
    id: u64,
    close: &Notify,
    stop: &mut watch::Receiver<bool>,
    shared: &Shared,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let router = shared.router.clone();
    let conns = shared.conns.clone();
    let body_timeout = shared.options.header_timeout;
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let router = router.clone();
        let busy = BusyGuard::new(&conns, id);
        async move {
            let _busy = busy;
            let (mut parts, body) = req.into_parts();
            parts.extensions.insert(Peer(peer));
            // A transfer stream may take hours: its deadline is for each piece, not the whole.
            let stream =
                parts.method == hyper::Method::POST && parts.uri.path() == crate::agent::api::INCOMING_PATH;
            let body = Body::new(DeadlineBody::new(body, body_timeout, stream));
            let resp: Response = match router.oneshot(Request::from_parts(parts, body)).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.options.header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(peer = %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = close.notified() => {
                debug!(peer = %peer, "closed an idle connection to make room for a new one");
                return;
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// A request body that fails when it has not fully arrived by a deadline.
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
    /// Restart the deadline whenever a piece arrives (an idle timeout).
    idle: Option<Duration>,
}

impl DeadlineBody {
    fn new(inner: Incoming, timeout: Duration, idle: bool) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            idle: idle.then_some(timeout),
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if let Some(idle) = this.idle {
                this.deadline.as_mut().reset(tokio::time::Instant::now() + idle);
            }
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err("the request body did not arrive in time".into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
