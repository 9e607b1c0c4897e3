//! The controller's HTTP endpoints: `/metrics` (OpenMetrics), `/healthz` (the process serves),
//! `/readyz` (the controller is connected and, with leader election, knows its role).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};

use super::metrics::Metrics;

/// What the probes report.
#[derive(Default)]
pub struct Health {
    /// Set once the controller has started watching volumes (or is a standby replica).
    pub ready: AtomicBool,
    /// Whether this replica currently leads.
    pub leading: AtomicBool,
}

#[derive(Clone)]
struct ServerState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready_handler))
        .with_state(ServerState { metrics, health })
}

async fn metrics_handler(State(s): State<ServerState>) -> impl IntoResponse {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn ready_handler(State(s): State<ServerState>) -> impl IntoResponse {
    let role = if s.health.leading.load(Ordering::Relaxed) {
        "leader"
    } else {
        "standby"
    };
    if s.health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, format!("ok ({role})"))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting".to_owned())
    }
}
