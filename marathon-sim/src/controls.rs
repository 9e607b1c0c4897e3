//! Test controls under `/_sim/...`: never part of Marathon's API, never logged or faulted.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Shared;
use crate::state::{FaultPlan, SimState};
use crate::util::{iso_millis, now_millis};

pub fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/_sim/agents", get(agents))
        .route("/_sim/agents/{host}/down", post(agent_down))
        .route("/_sim/agents/{host}/up", post(agent_up))
        .route("/_sim/tasks/{task_id}/fail", post(fail_task_handler))
        .route("/_sim/faults", post(faults))
        .route("/_sim/requests", get(requests).delete(clear_requests))
        .route("/_sim/events/drop", post(drop_streams))
        .route("/_sim/events/outage", post(stream_outage))
        .route("/_sim/deployments", get(deployment_records))
        .with_state(shared)
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, SimState> {
    shared.state.lock().unwrap_or_else(|p| p.into_inner())
}

fn not_found(what: String) -> Response {
    (StatusCode::NOT_FOUND, axum::Json(json!({ "message": what }))).into_response()
}

async fn agents(State(shared): State<Arc<Shared>>) -> Response {
    let state = lock(&shared);
    let agents: Vec<Value> = state
        .agents
        .iter()
        .map(|a| {
            json!({
                "hostname": a.hostname, "id": a.id, "attributes": a.attributes, "diskMb": a.disk_mb, "up": a.up,
                "tasks": state.tasks.iter().filter(|t| t.host == a.hostname).map(|t| t.id.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    axum::Json(json!({ "agents": agents })).into_response()
}

/// Takes an agent down: its tasks are lost now and relaunched only where constraints allow.
pub fn set_agent_up(state: &mut SimState, host: &str, up: bool) -> bool {
    let Some(agent) = state.agents.iter_mut().find(|a| a.hostname == host) else {
        return false;
    };
    agent.up = up;
    if !up {
        let lost: Vec<String> = state
            .tasks
            .iter()
            .filter(|t| t.host == host)
            .map(|t| t.id.clone())
            .collect();
        for task_id in lost {
            state.remove_task(&task_id, "TASK_LOST", "Unreachable", "Agent removed");
        }
    }
    true
}

async fn agent_down(State(shared): State<Arc<Shared>>, Path(host): Path<String>) -> Response {
    if set_agent_up(&mut lock(&shared), &host, false) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found(format!("no agent {host}"))
    }
}

async fn agent_up(State(shared): State<Arc<Shared>>, Path(host): Path<String>) -> Response {
    if set_agent_up(&mut lock(&shared), &host, true) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found(format!("no agent {host}"))
    }
}

#[derive(Deserialize)]
struct FailBody {
    message: String,
}

/// Fails a task with a message; Marathon records it as the app's `lastTaskFailure`.
pub fn fail_task(state: &mut SimState, task_id: &str, message: &str) -> bool {
    let Some(task) = state.remove_task(task_id, "TASK_FAILED", "Failed", message) else {
        return false;
    };
    let failure = json!({
        "appId": task.app_id, "host": task.host, "message": message, "state": "TASK_FAILED",
        "taskId": task.id, "timestamp": iso_millis(now_millis()), "version": task.version, "slaveId": task.agent_id,
    });
    if let Some(app) = state.apps.get_mut(&task.app_id) {
        app.last_task_failure = Some(failure);
    }
    true
}

async fn fail_task_handler(
    State(shared): State<Arc<Shared>>,
    Path(task_id): Path<String>,
    axum::Json(body): axum::Json<FailBody>,
) -> Response {
    if fail_task(&mut lock(&shared), &task_id, &body.message) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found(format!("no task {task_id}"))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FaultBody {
    count: usize,
    status: Option<u16>,
    #[serde(default)]
    latency_ms: u64,
}

async fn faults(State(shared): State<Arc<Shared>>, axum::Json(body): axum::Json<FaultBody>) -> Response {
    lock(&shared).faults = FaultPlan {
        remaining: body.count,
        status: body.status,
        latency: Duration::from_millis(body.latency_ms),
    };
    StatusCode::NO_CONTENT.into_response()
}

async fn requests(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(json!({ "requests": lock(&shared).request_log })).into_response()
}

async fn clear_requests(State(shared): State<Arc<Shared>>) -> Response {
    lock(&shared).request_log.clear();
    StatusCode::NO_CONTENT.into_response()
}

async fn drop_streams(State(shared): State<Arc<Shared>>) -> Response {
    lock(&shared).stream_generation.send_modify(|g| *g += 1);
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct Outage {
    seconds: f64,
}

/// Ends open event streams and refuses new ones for a while (see `SimHandle::event_stream_outage`).
async fn stream_outage(State(shared): State<Arc<Shared>>, axum::Json(o): axum::Json<Outage>) -> Response {
    let mut state = lock(&shared);
    state.events_refused_until =
        Some(std::time::Instant::now() + Duration::from_secs_f64(o.seconds.max(0.0)));
    state.stream_generation.send_modify(|g| *g += 1);
    StatusCode::NO_CONTENT.into_response()
}

async fn deployment_records(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(json!({ "deployments": lock(&shared).history })).into_response()
}
