//! Marathon's REST routes (`/v2/...`, `/ping`), plus the request log, fault injection and
//! authentication that wrap them. Test controls live in `controls.rs`.

use base64::Engine as _;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde_json::{Map, Value, json};

use crate::Shared;
use crate::apps::{self, DeploymentReply, UpdateOptions};
use crate::errors::ApiError;
use crate::state::{FaultPlan, LoggedRequest, SimState};
use crate::validate::canonical_app_id;

type Params = Query<Vec<(String, String)>>;

pub fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/ping",
            get(|| async { ([(header::CONTENT_TYPE, "text/plain")], "pong") }),
        )
        .route("/v2/info", get(info))
        .route("/v2/leader", get(leader))
        .route("/v2/apps", get(list_apps).post(create_app))
        .route(
            "/v2/apps/{*path}",
            get(app_get)
                .put(app_put)
                .patch(app_patch)
                .delete(app_delete)
                .post(app_post),
        )
        .route("/v2/deployments", get(list_deployments))
        .route("/v2/deployments/{id}", delete(delete_deployment))
        .route("/v2/queue", get(queue))
        .route("/v2/events", get(crate::events::stream))
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            log_auth_and_faults,
        ))
        .with_state(shared)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn flag(params: &[(String, String)], name: &str, default: bool) -> bool {
    param(params, name).map_or(default, |v| v.eq_ignore_ascii_case("true"))
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, SimState> {
    // A panic while holding the lock must not wedge every later test request.
    shared
        .state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Logs the request, then checks credentials, then applies injected faults.
async fn log_auth_and_faults(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = to_bytes(body, 16 * 1024 * 1024).await else {
        return ApiError::message(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large").into_response();
    };
    let logged = LoggedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        body: String::from_utf8_lossy(&bytes).into_owned(),
        status: 0,
    };
    let fault = {
        let mut state = lock(&shared);
        if state.faults.remaining > 0 {
            state.faults.remaining -= 1;
            Some(state.faults.clone())
        } else if state.chaos.probability > 0.0 {
            let latency = state.chaos.max_latency.mul_f64(state.chaos.next_unit());
            let fails = state.chaos.next_unit() < state.chaos.probability;
            Some(FaultPlan {
                remaining: 0,
                status: fails.then_some(state.chaos.status),
                latency,
            })
        } else {
            None
        }
    };
    let response = answer(&shared, parts, bytes, fault, next).await;
    lock(&shared).request_log.push(LoggedRequest {
        status: response.status().as_u16(),
        ..logged
    });
    response
}

async fn answer(
    shared: &Shared,
    parts: axum::http::request::Parts,
    bytes: axum::body::Bytes,
    fault: Option<FaultPlan>,
    next: Next,
) -> Response {
    if !authorized(shared, &parts.headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"Mesosphere\"")],
            axum::Json(json!({ "message": "Invalid username or password." })),
        )
            .into_response();
    }
    if let Some(fault) = fault {
        if !fault.latency.is_zero() {
            tokio::time::sleep(fault.latency).await;
        }
        if let Some(code) = fault.status.and_then(|s| StatusCode::from_u16(s).ok()) {
            return ApiError::message(code, format!("Injected failure ({code})")).into_response();
        }
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let expected_basic = shared.config.basic_auth.as_ref().map(|(user, password)| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}").as_bytes())
        )
    });
    let expected_token = shared
        .config
        .dcos_token
        .as_ref()
        .map(|token| format!("token={token}"));
    if expected_basic.is_none() && expected_token.is_none() {
        return true;
    }
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    given.is_some_and(|given| {
        expected_basic.as_deref() == Some(given) || expected_token.as_deref() == Some(given)
    })
}

fn parse_object(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::malformed_json("error.expected.jsobject".into())),
        Err(e) => Err(ApiError::malformed_json(e.to_string())),
    }
}

fn deployment_response(status: StatusCode, reply: &DeploymentReply) -> Response {
    let mut response = (status, axum::Json(reply.body())).into_response();
    if let Ok(value) = HeaderValue::from_str(&reply.deployment_id) {
        response.headers_mut().insert("Marathon-Deployment-Id", value);
    }
    response
}

async fn info(State(shared): State<Arc<Shared>>) -> Response {
    let leader = shared.leader();
    axum::Json(json!({
        "name": "marathon",
        "version": shared.config.marathon_version,
        "buildref": "marathon-sim",
        "elected": true,
        "leader": leader,
        "frameworkId": shared.framework_id,
        "marathon_config": { "master": "zk://127.0.0.1:2181/mesos", "hostname": "127.0.0.1", "mesos_role": "*" },
        "zookeeper_config": { "zk": "zk://127.0.0.1:2181/marathon" },
        "http_config": { "http_port": shared.addr.port(), "https_port": 8443 },
    }))
    .into_response()
}

async fn leader(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(json!({ "leader": shared.leader() })).into_response()
}

fn embeds(params: &[(String, String)]) -> Vec<&str> {
    params
        .iter()
        .filter(|(k, _)| k == "embed")
        .map(|(_, v)| v.as_str())
        .collect()
}

fn app_list(state: &SimState, params: &[(String, String)], group: Option<&str>) -> Response {
    let embed = embeds(params);
    let with_tasks = embed.contains(&"apps.tasks");
    let with_failure = embed.contains(&"apps.lastTaskFailure");
    let id_filter = param(params, "id").map(str::to_lowercase);
    let apps: Vec<Value> = state
        .apps
        .iter()
        .filter(|(id, _)| group.is_none_or(|g| id.starts_with(&format!("{}/", g.trim_end_matches('/')))))
        .filter(|(id, _)| id_filter.as_deref().is_none_or(|f| id.to_lowercase().contains(f)))
        .map(|(_, app)| state.app_info(app, with_tasks, with_failure))
        .collect();
    axum::Json(json!({ "apps": apps })).into_response()
}

async fn list_apps(State(shared): State<Arc<Shared>>, Query(params): Params) -> Response {
    app_list(&lock(&shared), &params, None)
}

async fn create_app(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let result = parse_object(&body).and_then(|body| apps::create_app(&mut lock(&shared), &body));
    match result {
        Ok((app, deployment_id)) => {
            let location = format!(
                "{}/v2/apps{}",
                shared.url(),
                app["id"].as_str().unwrap_or_default()
            );
            let mut response = (StatusCode::CREATED, axum::Json(app)).into_response();
            for (name, value) in [("Location", location), ("Marathon-Deployment-Id", deployment_id)] {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    response.headers_mut().insert(name, value);
                }
            }
            response
        }
        Err(e) => e.into_response(),
    }
}

/// What an `/v2/apps/{*path}` URL addresses.
enum AppPath {
    Group(String),
    App(String),
    Tasks(String),
    Task(String, String),
    Restart(String),
    Versions(String),
    Version(String, String),
}

fn parse_app_path(path: &str) -> AppPath {
    let path = path.trim_end_matches('/');
    if let Some(group) = path.strip_suffix("/*").or_else(|| (path == "*").then_some("")) {
        return AppPath::Group(format!("/{}", group.trim_start_matches('/')));
    }
    let segments: Vec<&str> = path.split('/').collect();
    let n = segments.len();
    let join = |k: usize| format!("/{}", segments[..k].join("/"));
    match segments.as_slice() {
        [.., "tasks"] if n > 1 => AppPath::Tasks(join(n - 1)),
        [.., "tasks", task] if n > 2 => AppPath::Task(join(n - 2), task.to_string()),
        [.., "restart"] if n > 1 => AppPath::Restart(join(n - 1)),
        [.., "versions"] if n > 1 => AppPath::Versions(join(n - 1)),
        [.., "versions", version] if n > 2 => AppPath::Version(join(n - 2), version.to_string()),
        _ => AppPath::App(join(n)),
    }
}

fn not_allowed() -> Response {
    ApiError::message(StatusCode::METHOD_NOT_ALLOWED, "HTTP 405 Method Not Allowed").into_response()
}

async fn app_get(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<String>,
    Query(params): Params,
) -> Response {
    let state = lock(&shared);
    let found = |id: &str| -> Result<(String, &crate::state::AppRecord), ApiError> {
        let id = canonical_app_id(id).map_err(|_| ApiError::app_not_found(id))?;
        let app = state.apps.get(&id).ok_or_else(|| ApiError::app_not_found(&id))?;
        Ok((id, app))
    };
    let result = match parse_app_path(&path) {
        AppPath::Group(group) => return app_list(&state, &params, Some(&group)),
        // The single-app GET always embeds counts, tasks, lastTaskFailure and deployments.
        AppPath::App(id) => found(&id).map(|(_, app)| json!({ "app": state.app_info(app, true, true) })),
        AppPath::Tasks(id) => found(&id).map(|(id, _)| {
            json!({ "tasks": state.alive_tasks(&id).map(|t| t.to_json()).collect::<Vec<_>>() })
        }),
        AppPath::Versions(id) => found(&id).map(|(_, app)| {
            json!({ "versions": app.versions.iter().rev().map(|v| v["version"].clone()).collect::<Vec<_>>() })
        }),
        AppPath::Version(id, version) => found(&id).and_then(|(id, app)| {
            app.versions
                .iter()
                .find(|v| v.get("version").and_then(Value::as_str) == Some(version.as_str()))
                .map(|v| Value::Object(v.clone()))
                .ok_or_else(|| ApiError::message(StatusCode::NOT_FOUND, format!("App '{id}' in version '{version}' does not exist")))
        }),
        AppPath::Task(..) | AppPath::Restart(_) => return not_allowed(),
    };
    match result {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn app_put(state: State<Arc<Shared>>, path: Path<String>, params: Params, body: Bytes) -> Response {
    app_update(state, path, params, body, Method::PUT).await
}

async fn app_patch(state: State<Arc<Shared>>, path: Path<String>, params: Params, body: Bytes) -> Response {
    app_update(state, path, params, body, Method::PATCH).await
}

async fn app_update(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<String>,
    Query(params): Params,
    body: Bytes,
    method: Method,
) -> Response {
    let AppPath::App(id) = parse_app_path(&path) else {
        return not_allowed();
    };
    let options = UpdateOptions {
        force: flag(&params, "force", false),
        partial: method == Method::PATCH || flag(&params, "partialUpdate", true),
        may_create: method == Method::PUT,
    };
    let result =
        parse_object(&body).and_then(|body| apps::update_app(&mut lock(&shared), &id, &body, options));
    match result {
        Ok(reply) if reply.created => deployment_response(StatusCode::CREATED, &reply),
        Ok(reply) => deployment_response(StatusCode::OK, &reply),
        Err(e) => e.into_response(),
    }
}

async fn app_delete(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<String>,
    Query(params): Params,
) -> Response {
    let mut state = lock(&shared);
    let force = flag(&params, "force", false);
    let host = param(&params, "host");
    let scale = flag(&params, "scale", false);
    let result = match parse_app_path(&path) {
        // Deleting an app defaults to force=true.
        AppPath::App(id) => apps::delete_app(&mut state, &id, flag(&params, "force", true))
            .map(|r| deployment_response(StatusCode::OK, &r)),
        AppPath::Tasks(id) => {
            apps::kill_tasks(&mut state, &id, None, host, scale, force).map(|b| axum::Json(b).into_response())
        }
        AppPath::Task(id, task) => apps::kill_tasks(&mut state, &id, Some(&task), host, scale, force)
            .map(|b| axum::Json(b).into_response()),
        _ => return not_allowed(),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn app_post(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<String>,
    Query(params): Params,
) -> Response {
    let AppPath::Restart(id) = parse_app_path(&path) else {
        return not_allowed();
    };
    match apps::restart_app(&mut lock(&shared), &id, flag(&params, "force", false)) {
        Ok(reply) => deployment_response(StatusCode::OK, &reply),
        Err(e) => e.into_response(),
    }
}

async fn list_deployments(State(shared): State<Arc<Shared>>) -> Response {
    let state = lock(&shared);
    axum::Json(Value::Array(
        state.deployments.iter().map(|d| d.to_json()).collect(),
    ))
    .into_response()
}

async fn delete_deployment(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    match apps::delete_deployment(&mut lock(&shared), &id, flag(&params, "force", false)) {
        Ok(Some(reply)) => deployment_response(StatusCode::OK, &reply),
        Ok(None) => StatusCode::ACCEPTED.into_response(),
        Err(e) => e.into_response(),
    }
}

/// Apps with launches waiting for a matching offer, with a reject summary in Marathon's order.
async fn queue(State(shared): State<Arc<Shared>>) -> Response {
    let state = lock(&shared);
    let entries: Vec<Value> = state
        .apps
        .values()
        .filter(|app| app.launch_queue.waiting > 0)
        .map(|app| {
            let q = &app.launch_queue;
            let processed = q.offers_processed;
            let after_constraint = processed - q.declined_constraint.min(processed);
            let summary = json!([
                { "reason": "UnfulfilledRole", "declined": 0, "processed": processed },
                { "reason": "UnfulfilledConstraint", "declined": q.declined_constraint, "processed": processed },
                { "reason": "NoCorrespondingReservationFound", "declined": 0, "processed": after_constraint },
                { "reason": "AgentMaintenance", "declined": 0, "processed": after_constraint },
                { "reason": "InsufficientCpus", "declined": 0, "processed": after_constraint },
                { "reason": "InsufficientMemory", "declined": 0, "processed": after_constraint },
                { "reason": "InsufficientDisk", "declined": q.declined_disk, "processed": after_constraint },
                { "reason": "InsufficientGpus", "declined": 0, "processed": after_constraint - q.declined_disk.min(after_constraint) },
                { "reason": "InsufficientPorts", "declined": 0, "processed": after_constraint - q.declined_disk.min(after_constraint) },
            ]);
            json!({
                "app": Value::Object(app.definition.clone()),
                "count": q.waiting,
                "delay": { "timeLeftSeconds": 0, "overdue": true },
                "since": q.since,
                "processedOffersSummary": {
                    "processedOffersCount": processed,
                    "unusedOffersCount": processed,
                    "lastUnusedOfferAt": q.last_unused_offer_at,
                    "lastUsedOfferAt": Value::Null,
                    "rejectSummaryLastOffers": summary,
                },
            })
        })
        .collect();
    axum::Json(json!({ "queue": entries })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_paths_are_split_into_sub_resources() {
        assert!(matches!(parse_app_path("prod/web"), AppPath::App(id) if id == "/prod/web"));
        assert!(matches!(parse_app_path("prod/*"), AppPath::Group(g) if g == "/prod"));
        assert!(matches!(parse_app_path("prod/web/tasks"), AppPath::Tasks(id) if id == "/prod/web"));
        assert!(
            matches!(parse_app_path("prod/web/tasks/t1"), AppPath::Task(id, t) if id == "/prod/web" && t == "t1")
        );
        assert!(matches!(parse_app_path("prod/web/restart"), AppPath::Restart(id) if id == "/prod/web"));
    }
}
