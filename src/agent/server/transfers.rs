//! Routes of identity, manifests and transfers. All but `POST /v1/incoming` need the bearer
//! token; that one needs a transfer ticket instead (`Authorization: Berth-Ticket <ticket>`).

use std::sync::Arc;

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures::StreamExt;
use tracing::warn;

use super::{AppState, QueryResult, UNAUTHORIZED_LOG_INTERVAL, bad_request, blocking, error_response};
use crate::agent::{
    api::{
        CommitRequest, INCOMING_PATH, IncomingQuery, MANIFEST_PATH, RELEASE_PATH, ReleaseRequest,
        TICKET_SCHEME, TRANSFERS_PATH, TransferRequest,
    },
    ops::OpError,
};

type JsonResult<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;
type IncomingResult = Result<Query<IncomingQuery>, axum::extract::rejection::QueryRejection>;

/// The routes behind the bearer token.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(MANIFEST_PATH, get(manifest))
        .route(RELEASE_PATH, post(release))
        .route(TRANSFERS_PATH, post(start))
        .route(&format!("{TRANSFERS_PATH}/{{id}}"), get(status).delete(cancel))
        .route(&format!("{INCOMING_PATH}/{{id}}"), get(incoming).delete(discard))
        .route(&format!("{INCOMING_PATH}/{{id}}/commit"), post(commit))
}

/// `POST /v1/incoming`, checked by its ticket, without a body limit.
pub(super) fn ticket_routes(st: Arc<AppState>) -> Router {
    Router::new()
        .route(INCOMING_PATH, post(receive))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(st)
}

fn json<T: serde::Serialize>(r: Result<T, Response>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn manifest(State(st): State<Arc<AppState>>, q: QueryResult) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad_request(e.body_text()),
    };
    let agent = st.agent.clone();
    json(blocking(move || agent.manifest(&q)).await)
}

async fn release(State(st): State<Arc<AppState>>, body: JsonResult<ReleaseRequest>) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return bad_request(e.body_text()),
    };
    let agent = st.agent.clone();
    json(blocking(move || agent.release(&req)).await)
}

async fn start(State(st): State<Arc<AppState>>, body: JsonResult<TransferRequest>) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return bad_request(e.body_text()),
    };
    let agent = st.agent.clone();
    // Checking the source's identity reads the disk: off the async threads.
    match tokio::task::spawn_blocking({
        let handle = tokio::runtime::Handle::current();
        move || {
            let _g = handle.enter();
            agent.start_transfer(req)
        }
    })
    .await
    {
        Ok(Ok(s)) => (StatusCode::ACCEPTED, Json(s)).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{e}; retry"),
        ),
    }
}

fn unknown_transfer(id: &str) -> Response {
    OpError::NotFound(format!("transfer {id}")).into_response()
}

async fn status(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match st.agent.transfer_status(&id) {
        Some(s) => Json(s).into_response(),
        None => unknown_transfer(&id),
    }
}

async fn cancel(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match st.agent.cancel_transfer(&id) {
        Some(s) => Json(s).into_response(),
        None => unknown_transfer(&id),
    }
}

async fn incoming(State(st): State<Arc<AppState>>, Path(id): Path<String>, q: IncomingResult) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad_request(e.body_text()),
    };
    let agent = st.agent.clone();
    json(blocking(move || agent.incoming_status(&id, &q)).await)
}

async fn discard(State(st): State<Arc<AppState>>, Path(id): Path<String>, q: IncomingResult) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad_request(e.body_text()),
    };
    let agent = st.agent.clone();
    json(blocking(move || agent.discard_incoming(&id, &q)).await)
}

async fn commit(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: JsonResult<CommitRequest>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return bad_request(e.body_text()),
    };
    let agent = st.agent.clone();
    json(blocking(move || agent.commit(&id, &req)).await)
}

/// Reads a request body handed over chunk by chunk from the async side.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.cur = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

fn ticket_refused(st: &AppState, e: OpError) -> Response {
    if let Some(count) = st.unauthorized.hit() {
        warn!(count, error = %e,
              "refused {count} transfer stream(s) without a valid ticket (at most one such line every {} s)",
              UNAUTHORIZED_LOG_INTERVAL.as_secs());
    }
    e.into_response()
}

async fn receive(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let ticket = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix(TICKET_SCHEME))
        .and_then(|v| v.strip_prefix(' '));
    let Some(ticket) = ticket else {
        return ticket_refused(
            &st,
            crate::agent::transfer::TransferError::Ticket(format!(
                "a transfer stream needs `Authorization: {TICKET_SCHEME} <ticket>` with a ticket from the controller"
            ))
            .into(),
        );
    };
    let claims = match st.agent.accept_ticket(st.token.bytes(), ticket) {
        Ok(c) => c,
        Err(e) => return ticket_refused(&st, e),
    };
    let guard = match st.agent.begin_receive(&claims) {
        Ok(g) => g,
        Err(e) => return e.into_response(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let agent = st.agent.clone();
    let job = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader {
            rx,
            cur: Bytes::new(),
        };
        let r = agent.receive(&claims, reader, &guard);
        drop(guard);
        r
    });
    let mut data = body.into_data_stream();
    while let Some(chunk) = data.next().await {
        match chunk {
            Ok(b) => {
                if tx.send(b).await.is_err() {
                    break; // the receiver stopped (refused the stream)
                }
            }
            Err(_) => break, // the source went away: the reader sees a truncated stream
        }
    }
    drop(tx);
    match job.await {
        Ok(Ok(result)) => Json(result).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{e}; retry"),
        ),
    }
}
