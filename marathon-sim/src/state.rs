//! The simulated cluster: agents, apps (with their stored versions), tasks and deployments.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, watch};

use crate::AgentConfig;
use crate::util::{VersionClock, iso_millis, now_millis, uuid_v4};

#[derive(Debug, Clone)]
pub struct Agent {
    pub hostname: String,
    pub id: String,
    pub attributes: BTreeMap<String, String>,
    pub disk_mb: f64,
    pub up: bool,
}

impl From<&AgentConfig> for Agent {
    fn from(config: &AgentConfig) -> Self {
        Self {
            hostname: config.hostname.clone(),
            id: config.id.clone(),
            attributes: config.attributes.clone(),
            disk_mb: config.disk_mb,
            up: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Staging,
    Running,
}

impl TaskState {
    pub fn mesos_name(self) -> &'static str {
        match self {
            TaskState::Staging => "TASK_STAGING",
            TaskState::Running => "TASK_RUNNING",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Task {
    pub id: String,
    pub instance_id: String,
    pub app_id: String,
    pub host: String,
    pub agent_id: String,
    pub state: TaskState,
    pub staged_at: String,
    pub started_at: Option<String>,
    /// The app version the task was launched with.
    pub version: String,
    /// `versionInfo.lastConfigChangeAt` at launch: tasks of an older configuration are replaced
    /// by restarts and ignored by constraint checks.
    pub config_version: String,
    pub staged_tick: u64,
    pub disk_mb: f64,
    pub port: u16,
    /// False while the containerizer has not started the task's container yet (Docker mode):
    /// such a task stays staged.
    pub ready: bool,
}

impl Task {
    pub fn to_json(&self) -> Value {
        let mut task = json!({
            "id": self.id,
            "appId": self.app_id,
            "host": self.host,
            "slaveId": self.agent_id,
            "state": self.state.mesos_name(),
            "ipAddresses": [{ "ipAddress": "127.0.0.1", "protocol": "IPv4" }],
            "servicePorts": [],
            "localVolumes": [],
            "role": "*",
            "ports": [self.port],
            "stagedAt": self.staged_at,
            "version": self.version,
        });
        if let Some(started) = &self.started_at {
            task["startedAt"] = json!(started);
        }
        task
    }
}

/// One app: its current definition (with `version` and `versionInfo`) and its stored versions.
#[derive(Debug, Clone)]
pub struct AppRecord {
    pub definition: Map<String, Value>,
    pub versions: Vec<Map<String, Value>>,
    pub last_task_failure: Option<Value>,
    pub launch_queue: LaunchQueue,
    /// Launch back-off after a failed container (Docker mode): no launch before this instant.
    pub delay_until: Option<std::time::Instant>,
}

/// Launches that could not be placed on the last attempt, for `/v2/queue`.
#[derive(Debug, Clone, Default)]
pub struct LaunchQueue {
    pub waiting: usize,
    pub since: Option<String>,
    pub offers_processed: usize,
    pub declined_constraint: usize,
    pub declined_disk: usize,
    pub last_unused_offer_at: Option<String>,
}

impl AppRecord {
    pub fn instances(&self) -> usize {
        self.definition
            .get("instances")
            .and_then(Value::as_u64)
            .unwrap_or(1) as usize
    }

    pub fn version(&self) -> String {
        self.definition
            .get("version")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }

    pub fn config_version(&self) -> String {
        self.definition
            .get("versionInfo")
            .and_then(|v| v.get("lastConfigChangeAt"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }

    pub fn disk_mb(&self) -> f64 {
        self.definition.get("disk").and_then(Value::as_f64).unwrap_or(0.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DeploymentKind {
    StartApplication,
    ScaleApplication,
    RestartApplication,
    StopApplication,
    /// A plan with no steps (a PUT that changes nothing).
    NoOp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentOutcome {
    Running,
    Succeeded,
    Canceled,
    RolledBack,
}

#[derive(Debug, Clone)]
pub struct Deployment {
    pub id: String,
    pub version: String,
    pub app_id: String,
    pub kind: DeploymentKind,
    /// The definition before this deployment (None when it created the app), for rollbacks.
    pub previous: Option<Map<String, Value>>,
    /// Restart bookkeeping (`TaskReplaceActor`): computed at the first step.
    pub restart_plan: Option<RestartPlan>,
}

#[derive(Debug, Clone, Copy)]
pub struct RestartPlan {
    pub min_healthy: usize,
    pub max_capacity: usize,
}

impl Deployment {
    pub fn to_json(&self) -> Value {
        let action = match self.kind {
            DeploymentKind::NoOp => None,
            kind => Some(format!("{kind:?}")),
        };
        let actions: Vec<Value> = action
            .iter()
            .map(|a| json!({ "action": a, "app": self.app_id }))
            .collect();
        let current: Vec<Value> = action
            .iter()
            .map(|a| json!({ "action": a, "app": self.app_id, "readinessCheckResults": [] }))
            .collect();
        json!({
            "id": self.id,
            "version": self.version,
            "affectedApps": [self.app_id],
            "affectedPods": [],
            "steps": if actions.is_empty() { json!([]) } else { json!([{ "actions": actions }]) },
            "currentActions": current,
            "currentStep": if action.is_some() { 1 } else { 0 },
            "totalSteps": if action.is_some() { 1 } else { 0 },
        })
    }
}

/// What tests read back about a deployment, including whether old and new tasks overlapped.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRecord {
    pub id: String,
    pub app_id: String,
    pub kind: DeploymentKind,
    pub outcome: DeploymentOutcome,
    /// True when a task of the new configuration was launched while one of an older
    /// configuration of the same app was still alive.
    pub old_and_new_overlapped: bool,
    pub max_tasks_alive: usize,
}

/// One request as received (test controls excluded), so tests can count writes.
#[derive(Debug, Clone, Serialize)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: String,
    /// The status the simulator answered (an injected failure included).
    pub status: u16,
}

/// Failures to inject into the next requests.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    pub remaining: usize,
    pub status: Option<u16>,
    pub latency: Duration,
}

/// Random failures of a share of all requests (a test control): each request fails with
/// `status` with `probability`, after a random latency up to `max_latency`.
#[derive(Debug, Clone, Default)]
pub struct Chaos {
    pub probability: f64,
    pub status: u16,
    pub max_latency: Duration,
    /// xorshift64 state (deterministic for a given seed).
    pub rng: u64,
}

impl Chaos {
    /// The next pseudo-random number in [0, 1).
    pub fn next_unit(&mut self) -> f64 {
        let mut x = self.rng.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// An event for the SSE stream: its type and its JSON (which carries `eventType`).
#[derive(Debug, Clone)]
pub struct SimEvent {
    pub event_type: String,
    pub data: Value,
}

pub struct SimState {
    pub agents: Vec<Agent>,
    pub apps: BTreeMap<String, AppRecord>,
    pub tasks: Vec<Task>,
    pub deployments: Vec<Deployment>,
    pub history: Vec<DeploymentRecord>,
    pub clock: VersionClock,
    pub tick: u64,
    pub next_port: u16,
    pub events: broadcast::Sender<SimEvent>,
    pub stream_generation: watch::Sender<u64>,
    /// The event stream refuses connections until then (a test control: clients miss events).
    pub events_refused_until: Option<std::time::Instant>,
    pub request_log: Vec<LoggedRequest>,
    pub faults: FaultPlan,
    pub chaos: Chaos,
    /// Tasks of apps with a Docker image wait for a real container (Docker mode).
    pub docker_mode: bool,
}

impl SimState {
    pub fn new(agents: &[AgentConfig]) -> Self {
        let (events, _) = broadcast::channel(1024);
        let (stream_generation, _) = watch::channel(0);
        Self {
            agents: agents.iter().map(Agent::from).collect(),
            apps: BTreeMap::new(),
            tasks: Vec::new(),
            deployments: Vec::new(),
            history: Vec::new(),
            clock: VersionClock::default(),
            tick: 0,
            next_port: 31000,
            events,
            stream_generation,
            events_refused_until: None,
            request_log: Vec::new(),
            faults: FaultPlan::default(),
            chaos: Chaos::default(),
            docker_mode: false,
        }
    }

    /// Publishes an event; `eventType` and `timestamp` are added to its JSON.
    pub fn emit(&self, event_type: &str, mut data: Value) {
        if let Some(obj) = data.as_object_mut() {
            obj.insert("eventType".into(), json!(event_type));
            obj.entry("timestamp")
                .or_insert_with(|| json!(iso_millis(now_millis())));
        }
        // No subscriber is fine: events are not stored.
        let _ = self.events.send(SimEvent {
            event_type: event_type.to_string(),
            data,
        });
    }

    pub fn deployments_of(&self, app_id: &str) -> Vec<String> {
        self.deployments
            .iter()
            .filter(|d| d.app_id == app_id)
            .map(|d| d.id.clone())
            .collect()
    }

    pub fn alive_tasks(&self, app_id: &str) -> impl Iterator<Item = &Task> {
        self.tasks.iter().filter(move |t| t.app_id == app_id)
    }

    /// The app as `GET /v2/apps/{id}` returns it: definition plus counts, deployments,
    /// and optionally tasks and lastTaskFailure.
    pub fn app_info(&self, app: &AppRecord, with_tasks: bool, with_failure: bool) -> Value {
        let id = app
            .definition
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let tasks: Vec<&Task> = self.alive_tasks(id).collect();
        let mut info = app.definition.clone();
        let running = tasks.iter().filter(|t| t.state == TaskState::Running).count();
        info.insert("tasksStaged".into(), json!(tasks.len() - running));
        info.insert("tasksRunning".into(), json!(running));
        info.insert("tasksHealthy".into(), json!(0));
        info.insert("tasksUnhealthy".into(), json!(0));
        info.insert(
            "deployments".into(),
            Value::Array(
                self.deployments_of(id)
                    .into_iter()
                    .map(|d| json!({ "id": d }))
                    .collect(),
            ),
        );
        if with_tasks {
            info.insert(
                "tasks".into(),
                Value::Array(tasks.iter().map(|t| t.to_json()).collect()),
            );
        }
        if with_failure && let Some(failure) = &app.last_task_failure {
            info.insert("lastTaskFailure".into(), failure.clone());
        }
        Value::Object(info)
    }

    pub fn new_deployment(
        &mut self,
        app_id: &str,
        kind: DeploymentKind,
        previous: Option<Map<String, Value>>,
    ) -> (String, String) {
        let id = uuid_v4();
        let version = self.clock.next();
        let deployment = Deployment {
            id: id.clone(),
            version: version.clone(),
            app_id: app_id.to_string(),
            kind,
            previous,
            restart_plan: None,
        };
        self.emit("deployment_info", json!({ "plan": deployment.to_json(), "currentStep": { "actions": deployment.to_json()["currentActions"] } }));
        self.history.push(DeploymentRecord {
            id: id.clone(),
            app_id: app_id.to_string(),
            kind,
            outcome: DeploymentOutcome::Running,
            old_and_new_overlapped: false,
            max_tasks_alive: self.alive_tasks(app_id).count(),
        });
        self.deployments.push(deployment);
        (id, version)
    }

    pub fn record_mut(&mut self, deployment_id: &str) -> Option<&mut DeploymentRecord> {
        self.history.iter_mut().rev().find(|r| r.id == deployment_id)
    }

    /// Ends a deployment without success (forced cancel or rollback).
    pub fn cancel_deployment(&mut self, deployment_id: &str, outcome: DeploymentOutcome) {
        let Some(pos) = self.deployments.iter().position(|d| d.id == deployment_id) else {
            return;
        };
        let deployment = self.deployments.remove(pos);
        if let Some(record) = self.record_mut(deployment_id) {
            record.outcome = outcome;
        }
        self.emit(
            "deployment_failed",
            json!({ "id": deployment.id, "plan": deployment.to_json(), "reason": "DeploymentCanceled" }),
        );
    }

    /// Removes a task (killed, failed or lost) and reports it on the event stream.
    pub fn remove_task(
        &mut self,
        task_id: &str,
        mesos_state: &str,
        condition: &str,
        message: &str,
    ) -> Option<Task> {
        let pos = self.tasks.iter().position(|t| t.id == task_id)?;
        let task = self.tasks.remove(pos);
        self.emit_task_change(&task, mesos_state, condition, message);
        Some(task)
    }

    pub fn emit_task_change(&self, task: &Task, mesos_state: &str, condition: &str, message: &str) {
        self.emit(
            "status_update_event",
            json!({
                "slaveId": task.agent_id, "taskId": task.id, "taskStatus": mesos_state, "message": message,
                "appId": task.app_id, "host": task.host,
                "ipAddresses": [{ "ipAddress": "127.0.0.1", "protocol": "IPv4" }],
                "ports": [task.port], "version": task.version,
            }),
        );
        self.emit(
            "instance_changed_event",
            json!({
                "instanceId": task.instance_id, "condition": condition, "runSpecId": task.app_id,
                "agentId": task.agent_id, "host": task.host, "runSpecVersion": task.version,
            }),
        );
    }
}
