//! App operations with Marathon's rules: create, partial/full update, rollback, restart,
//! delete, task kills, deployment rollback. Each returns Marathon's reply or error body.

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use crate::definition::{Change, classify_change, dedup_constraints, definition_fields, with_defaults};
use crate::errors::{ApiError, Detail};
use crate::state::{AppRecord, DeploymentKind, DeploymentOutcome, SimState};
use crate::validate::{canonical_app_id, check_operator_case, check_semantics, check_shape};

/// The result of a change: `{deploymentId, version}`.
#[derive(Debug, Clone)]
pub struct DeploymentReply {
    pub deployment_id: String,
    pub version: String,
    pub created: bool,
}

impl DeploymentReply {
    pub fn body(&self) -> Value {
        json!({ "deploymentId": self.deployment_id, "version": self.version })
    }
}

fn validate(definition: &Map<String, Value>) -> Result<(), ApiError> {
    check_shape(definition)?;
    check_semantics(definition)?;
    check_operator_case(definition)
}

/// Rejects a change to a locked app, or with `force` cancels the deployments holding the lock.
fn check_lock(state: &mut SimState, app_id: &str, force: bool) -> Result<(), ApiError> {
    let holding = state.deployments_of(app_id);
    if holding.is_empty() {
        return Ok(());
    }
    if !force {
        return Err(ApiError::locked(&holding));
    }
    for id in holding {
        state.cancel_deployment(&id, DeploymentOutcome::Canceled);
    }
    Ok(())
}

fn post_event(state: &SimState, uri: &str, definition: &Map<String, Value>) {
    state.emit(
        "api_post_event",
        json!({ "clientIp": "127.0.0.1", "uri": uri, "appDefinition": definition }),
    );
}

/// `POST /v2/apps`: returns the created app's info and the deployment id.
pub fn create_app(state: &mut SimState, body: &Map<String, Value>) -> Result<(Value, String), ApiError> {
    let raw_id = body.get("id").and_then(Value::as_str).unwrap_or_default();
    let id = canonical_app_id(raw_id)?;
    let mut definition = definition_fields(body);
    definition.insert("id".into(), json!(id));
    validate(&definition)?;
    if state.apps.contains_key(&id) {
        return Err(ApiError::app_exists(&id));
    }
    let reply = insert_new_app(state, &id, definition, "/v2/apps");
    let app = &state.apps[&id];
    Ok((state.app_info(app, true, true), reply.deployment_id))
}

fn insert_new_app(
    state: &mut SimState,
    id: &str,
    definition: Map<String, Value>,
    uri: &str,
) -> DeploymentReply {
    let mut definition = with_defaults(definition);
    let version = state.clock.next();
    definition.insert("version".into(), json!(version));
    definition.insert(
        "versionInfo".into(),
        json!({ "lastScalingAt": version, "lastConfigChangeAt": version }),
    );
    post_event(state, uri, &definition);
    state.apps.insert(
        id.to_string(),
        AppRecord {
            versions: vec![definition.clone()],
            definition,
            last_task_failure: None,
            launch_queue: Default::default(),
            delay_until: None,
        },
    );
    let (deployment_id, version) = state.new_deployment(id, DeploymentKind::StartApplication, None);
    DeploymentReply {
        deployment_id,
        version,
        created: true,
    }
}

/// Options of `PUT`/`PATCH /v2/apps/{id}`.
#[derive(Debug, Clone, Copy)]
pub struct UpdateOptions {
    pub force: bool,
    pub partial: bool,
    /// PUT creates unknown apps; PATCH never does.
    pub may_create: bool,
}

pub fn update_app(
    state: &mut SimState,
    url_id: &str,
    body: &Map<String, Value>,
    options: UpdateOptions,
) -> Result<DeploymentReply, ApiError> {
    let id = canonical_app_id(url_id)?;
    let uri = format!("/v2/apps{id}");
    if options.partial && body.contains_key("version") && body.keys().any(|k| k != "id" && k != "version") {
        return Err(ApiError::invalid(vec![Detail::new(
            "/",
            "The 'version' field may only be combined with the 'id' field.",
        )]));
    }
    let Some(current) = state.apps.get(&id).map(|a| a.definition.clone()) else {
        if !options.may_create {
            return Err(ApiError::app_not_found(&id));
        }
        // An unknown app is created from the body as a full definition.
        let mut definition = definition_fields(body);
        definition.insert("id".into(), json!(id));
        validate(&definition)?;
        return Ok(insert_new_app(state, &id, definition, &uri));
    };
    let mut desired = if options.partial {
        if let Some(version) = body.get("version").and_then(Value::as_str) {
            rollback_target(state, &id, version)?
        } else {
            let mut merged = current.clone();
            // Each top-level field present replaces the old one whole; no deep merge.
            for (key, value) in definition_fields(body) {
                merged.insert(key, value);
            }
            merged
        }
    } else {
        with_defaults(definition_fields(body))
    };
    desired.insert("id".into(), json!(id));
    dedup_constraints(&mut desired);
    validate(&desired)?;
    check_lock(state, &id, options.force)?;
    post_event(state, &uri, &desired);
    Ok(apply_definition(state, &id, current, desired))
}

/// Stores `desired` as the app's definition and starts the matching deployment.
fn apply_definition(
    state: &mut SimState,
    id: &str,
    current: Map<String, Value>,
    mut desired: Map<String, Value>,
) -> DeploymentReply {
    let change = classify_change(&current, &desired);
    if change == Change::None {
        // A plan without steps: a deployment id, and nothing about the app changes.
        let (deployment_id, version) = state.new_deployment(id, DeploymentKind::NoOp, Some(current));
        crate::deploy::finish(state, &deployment_id);
        return DeploymentReply {
            deployment_id,
            version,
            created: false,
        };
    }
    let version = state.clock.next();
    let mut info = current.get("versionInfo").cloned().unwrap_or_else(|| json!({}));
    info["lastScalingAt"] = json!(version);
    if change == Change::Config {
        info["lastConfigChangeAt"] = json!(version);
    }
    desired.insert("version".into(), json!(version));
    desired.insert("versionInfo".into(), info);
    let has_tasks = state.alive_tasks(id).next().is_some();
    let kind = match change {
        Change::Config if has_tasks => DeploymentKind::RestartApplication,
        _ => DeploymentKind::ScaleApplication,
    };
    if let Some(app) = state.apps.get_mut(id) {
        app.definition = desired.clone();
        app.versions.push(desired);
    }
    let (deployment_id, version) = state.new_deployment(id, kind, Some(current));
    DeploymentReply {
        deployment_id,
        version,
        created: false,
    }
}

fn rollback_target(state: &SimState, id: &str, version: &str) -> Result<Map<String, Value>, ApiError> {
    state
        .apps
        .get(id)
        .and_then(|app| {
            app.versions
                .iter()
                .find(|v| v.get("version").and_then(Value::as_str) == Some(version))
        })
        .cloned()
        .ok_or_else(|| {
            ApiError::message(
                StatusCode::NOT_FOUND,
                format!("App '{id}' in version '{version}' does not exist"),
            )
        })
}

/// `POST /v2/apps/{id}/restart`: a new version (and `lastConfigChangeAt`, as on master since
/// MARATHON-8771) so every task is replaced.
pub fn restart_app(state: &mut SimState, url_id: &str, force: bool) -> Result<DeploymentReply, ApiError> {
    let id = canonical_app_id(url_id)?;
    let Some(current) = state.apps.get(&id).map(|a| a.definition.clone()) else {
        return Err(ApiError::app_not_found(&id));
    };
    check_lock(state, &id, force)?;
    let version = state.clock.next();
    let mut desired = current.clone();
    let mut info = current.get("versionInfo").cloned().unwrap_or_else(|| json!({}));
    info["lastConfigChangeAt"] = json!(version);
    desired.insert("version".into(), json!(version));
    desired.insert("versionInfo".into(), info);
    if let Some(app) = state.apps.get_mut(&id) {
        app.definition = desired.clone();
        app.versions.push(desired);
    }
    let (deployment_id, version) =
        state.new_deployment(&id, DeploymentKind::RestartApplication, Some(current));
    Ok(DeploymentReply {
        deployment_id,
        version,
        created: false,
    })
}

/// `DELETE /v2/apps/{id}` (`force` defaults to true there).
pub fn delete_app(state: &mut SimState, url_id: &str, force: bool) -> Result<DeploymentReply, ApiError> {
    let id = canonical_app_id(url_id)?;
    if !state.apps.contains_key(&id) {
        return Err(ApiError::app_not_found(&id));
    }
    check_lock(state, &id, force)?;
    remove_app(state, &id);
    let (deployment_id, version) = state.new_deployment(&id, DeploymentKind::StopApplication, None);
    Ok(DeploymentReply {
        deployment_id,
        version,
        created: false,
    })
}

fn remove_app(state: &mut SimState, id: &str) {
    let task_ids: Vec<String> = state.alive_tasks(id).map(|t| t.id.clone()).collect();
    for task_id in task_ids {
        state.remove_task(
            &task_id,
            "TASK_KILLED",
            "Killed",
            "Killed because app was deleted",
        );
    }
    state.apps.remove(id);
    state.emit("app_terminated_event", json!({ "appId": id }));
}

/// `DELETE /v2/deployments/{id}`: `force=true` only cancels (202); otherwise a new deployment
/// reverts the app to its previous definition (200).
pub fn delete_deployment(
    state: &mut SimState,
    deployment_id: &str,
    force: bool,
) -> Result<Option<DeploymentReply>, ApiError> {
    let Some(deployment) = state.deployments.iter().find(|d| d.id == deployment_id).cloned() else {
        return Err(ApiError::message(
            StatusCode::NOT_FOUND,
            format!("DeploymentPlan {deployment_id} does not exist"),
        ));
    };
    if force {
        state.cancel_deployment(deployment_id, DeploymentOutcome::Canceled);
        return Ok(None);
    }
    state.cancel_deployment(deployment_id, DeploymentOutcome::RolledBack);
    let app_id = deployment.app_id.clone();
    let reply = match (
        deployment.previous,
        state.apps.get(&app_id).map(|a| a.definition.clone()),
    ) {
        (Some(previous), Some(current)) => {
            let mut desired = previous;
            desired.remove("version");
            apply_definition(state, &app_id, current, desired)
        }
        (None, Some(_)) => {
            remove_app(state, &app_id);
            let (deployment_id, version) =
                state.new_deployment(&app_id, DeploymentKind::StopApplication, None);
            DeploymentReply {
                deployment_id,
                version,
                created: false,
            }
        }
        (_, None) => {
            let (deployment_id, version) = state.new_deployment(&app_id, DeploymentKind::NoOp, None);
            DeploymentReply {
                deployment_id,
                version,
                created: false,
            }
        }
    };
    Ok(Some(reply))
}

/// `DELETE /v2/apps/{id}/tasks[/{taskId}]`: kills tasks (they come back unless `scale`).
pub fn kill_tasks(
    state: &mut SimState,
    url_id: &str,
    task_id: Option<&str>,
    host: Option<&str>,
    scale: bool,
    force: bool,
) -> Result<Value, ApiError> {
    let id = canonical_app_id(url_id)?;
    if !state.apps.contains_key(&id) {
        return Err(ApiError::app_not_found(&id));
    }
    let victims: Vec<_> = state
        .alive_tasks(&id)
        .filter(|t| task_id.is_none_or(|tid| t.id == tid))
        .filter(|t| host.is_none_or(|h| t.host == h))
        .cloned()
        .collect();
    if let Some(tid) = task_id
        && victims.is_empty()
    {
        return Err(ApiError::message(
            StatusCode::NOT_FOUND,
            format!("Task '{tid}' does not exist"),
        ));
    }
    if scale {
        check_lock(state, &id, force)?;
    }
    for task in &victims {
        state.remove_task(&task.id, "TASK_KILLED", "Killed", "Killed by request");
    }
    if scale {
        let current = state.apps[&id].definition.clone();
        let mut desired = current.clone();
        let instances = state.apps[&id].instances().saturating_sub(victims.len());
        desired.insert("instances".into(), json!(instances));
        return Ok(apply_definition(state, &id, current, desired).body());
    }
    let tasks: Vec<Value> = victims.iter().map(|t| t.to_json()).collect();
    Ok(match task_id {
        Some(_) => json!({ "task": tasks.first() }),
        None => json!({ "tasks": tasks }),
    })
}
