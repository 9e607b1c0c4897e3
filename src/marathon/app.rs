//! The parts of a Marathon app that berth reads and writes. Every level berth reads keeps the
//! fields it does not understand in `extra`, verbatim, so a read-modify-write never drops a
//! user's setting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::constraint::Constraints;

/// An app as `GET /v2/apps/{id}` returns it (`{"app": ...}`), including response-only fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct App {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<Constraints>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_strategy: Option<UpgradeStrategy>,
    /// Output; in a partial-update body it would mean "roll back", so berth never sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_info: Option<VersionInfo>,
    /// Response-only: the app's tasks (always embedded on a single-app GET).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Vec<Task>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_task_failure: Option<TaskFailure>,
    /// Response-only: deployments currently touching the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployments: Option<Vec<DeploymentRef>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl App {
    /// A minimal Docker app (used by tests and the demo).
    pub fn docker(id: &str, image: &str, instances: u32) -> Self {
        Self {
            id: id.to_string(),
            instances: Some(instances),
            container: Some(Container {
                kind: Some("DOCKER".into()),
                docker: Some(Docker {
                    image: image.to_string(),
                    extra: Map::new(),
                }),
                volumes: None,
                port_mappings: None,
                extra: Map::new(),
            }),
            constraints: None,
            labels: None,
            upgrade_strategy: None,
            version: None,
            version_info: None,
            tasks: None,
            last_task_failure: None,
            deployments: None,
            extra: Map::new(),
        }
    }

    /// The app without what berth never decides on: the fields it does not own at the top level
    /// (`cmd`, `env`, `healthChecks`, …), the tasks' details and `versionInfo`. Enough to plan
    /// with, and far smaller to keep in a cache; never enough to write back (a write reads the
    /// app again first).
    pub fn slim(mut self) -> App {
        self.extra = Map::new();
        self.version_info = None;
        for t in self.tasks.iter_mut().flatten() {
            t.extra = Map::new();
            t.slave_id = None;
            t.started_at = None;
        }
        self
    }

    /// Host volumes of the container, in order.
    pub fn host_volumes(&self) -> impl Iterator<Item = &HostVolume> {
        self.container
            .iter()
            .flat_map(|c| c.volumes.iter().flatten())
            .filter_map(|v| match v {
                Volume::Host(h) => Some(h),
                _ => None,
            })
    }

    /// Hosts where the app's tasks run now.
    pub fn task_hosts(&self) -> Vec<&str> {
        let mut hosts: Vec<&str> = self.tasks.iter().flatten().map(|t| t.host.as_str()).collect();
        hosts.sort_unstable();
        hosts.dedup();
        hosts
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// `DOCKER` (Marathon's default) or `MESOS`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<Docker>,
    /// An ordered list: Marathon compares it with `!=`, so reordering restarts every task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<Volume>>,
    /// 1.5+ networking; 1.4 apps carry `docker.portMappings` instead (kept in `docker.extra`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_mappings: Option<Vec<PortMapping>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Docker {
    pub image: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u32>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `RW` or `RO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeMode {
    #[serde(rename = "RW")]
    ReadWrite,
    #[serde(rename = "RO")]
    ReadOnly,
}

/// A volume, by the keys present, in the order Marathon's reader tries them (persistent,
/// external, secret, host); anything else is kept as raw JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Volume {
    Persistent(PersistentVolume),
    External(ExternalVolume),
    Secret(SecretVolume),
    Host(HostVolume),
    Other(Map<String, Value>),
}

/// A Docker host (bind) volume: the kind berth manages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostVolume {
    pub container_path: String,
    pub host_path: String,
    pub mode: VolumeMode,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl HostVolume {
    pub fn new(container_path: &str, host_path: &str, mode: VolumeMode) -> Self {
        Self {
            container_path: container_path.to_string(),
            host_path: host_path.to_string(),
            mode,
            extra: Map::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolume {
    pub container_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<VolumeMode>,
    pub persistent: PersistentInfo,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersistentInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalVolume {
    pub container_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<VolumeMode>,
    pub external: ExternalInfo,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretVolume {
    pub container_path: String,
    pub secret: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `{minimumHealthCapacity, maximumOverCapacity}`, doubles in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeStrategy {
    pub minimum_health_capacity: f64,
    pub maximum_over_capacity: f64,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl UpgradeStrategy {
    /// Old tasks stop before new ones start: with `maximumOverCapacity: 0` alone Marathon still
    /// allows one extra instance when `ceil(n × minimumHealthCapacity) == n`.
    pub fn single_writer() -> Self {
        Self {
            minimum_health_capacity: 0.0,
            maximum_over_capacity: 0.0,
            extra: Map::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scaling_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_config_change_at: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A task (`GET /v2/apps/{id}/tasks` or embedded in the app).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// Opaque.
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub app_id: String,
    /// The offer hostname, which `hostname` constraints match.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// The Mesos agent id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slave_id: Option<String>,
    /// A Mesos state: `TASK_STAGING`, `TASK_RUNNING`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `lastTaskFailure`: where berth finds Docker's mount errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskFailure {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub app_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub task_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub timestamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRef {
    pub id: String,
}

/// The top-level fields berth owns in an app, as a partial update (`PUT` with the default
/// `partialUpdate=true`): each field present replaces the app's field whole.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub constraints: Option<Constraints>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade_strategy: Option<UpgradeStrategy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Only when berth stops an app to move its data, and starts it again on the new host
    /// (never from [`AppUpdate::between`]: the instance count is the user's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
}

impl AppUpdate {
    /// The update that turns `current` into `desired` for the fields berth owns, or `None` when
    /// they already match (so steady state writes nothing). `container` and `constraints` are
    /// sent whole; constraints compare as a set; `version`/`versionInfo` are never sent.
    pub fn between(current: &App, desired: &App) -> Option<AppUpdate> {
        let update = AppUpdate {
            container: (current.container != desired.container)
                .then(|| desired.container.clone())
                .flatten(),
            constraints: (current.constraints.clone().unwrap_or_default()
                != desired.constraints.clone().unwrap_or_default())
            .then(|| desired.constraints.clone().unwrap_or_default()),
            upgrade_strategy: (desired.upgrade_strategy.is_some()
                && current.upgrade_strategy != desired.upgrade_strategy)
                .then(|| desired.upgrade_strategy.clone())
                .flatten(),
            labels: (desired.labels.is_some()
                && current.labels.clone().unwrap_or_default() != desired.labels.clone().unwrap_or_default())
            .then(|| desired.labels.clone())
            .flatten(),
            instances: None,
        };
        (update != AppUpdate::default()).then_some(update)
    }

    pub fn is_empty(&self) -> bool {
        *self == AppUpdate::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_round_trip_at_every_level() {
        let original = json!({
            "id": "/toto/web", "cmd": "run", "instances": 2, "healthChecks": [{ "protocol": "HTTP" }],
            "container": {
                "type": "DOCKER", "futureField": 1,
                "docker": { "image": "nginx", "parameters": [{ "key": "user", "value": "1000" }], "network": "BRIDGE" },
                "volumes": [
                    { "containerPath": "/a", "hostPath": "/b", "mode": "RO", "x": 1 },
                    { "containerPath": "data", "mode": "RW", "persistent": { "size": 10, "profileName": "p" } },
                    { "containerPath": "ext", "mode": "RW", "external": { "name": "v", "provider": "dvdi", "options": {} } },
                    { "containerPath": "s", "secret": "s1" },
                    { "containerPath": "odd", "hostPath": "/x", "mode": "XX" }
                ],
                "portMappings": [{ "containerPort": 80, "hostPort": 0, "protocol": "tcp" }]
            },
            "constraints": [["hostname", "CLUSTER", "node-1"]],
            "labels": { "a": "b" },
            "upgradeStrategy": { "minimumHealthCapacity": 1.0, "maximumOverCapacity": 1.0, "extra": true },
            "version": "2020-01-01T00:00:00.000Z",
            "versionInfo": { "lastScalingAt": "x", "lastConfigChangeAt": "y", "more": 1 },
            "tasks": [{ "id": "t", "appId": "/toto/web", "host": "node-1", "ports": [1] }],
            "lastTaskFailure": { "message": "m", "slaveId": "s" },
            "deployments": [],
            "tasksRunning": 1
        });
        let app: App = serde_json::from_value(original.clone()).unwrap();
        assert!(matches!(
            app.container.as_ref().unwrap().volumes.as_ref().unwrap()[1],
            Volume::Persistent(_)
        ));
        assert!(matches!(
            app.container.as_ref().unwrap().volumes.as_ref().unwrap()[4],
            Volume::Other(_)
        ));
        assert_eq!(serde_json::to_value(&app).unwrap(), original);
    }

    #[test]
    fn update_is_none_when_owned_fields_match() {
        let mut current = App::docker("/a", "nginx", 1);
        current.constraints = Some(Constraints::from_iter([
            crate::marathon::Constraint::hostname_cluster("n1"),
            crate::marathon::Constraint::new("rack", "UNIQUE", None),
        ]));
        let mut desired = current.clone();
        desired.constraints = Some(Constraints::from_iter([
            crate::marathon::Constraint::new("rack", "UNIQUE", None),
            crate::marathon::Constraint::hostname_cluster("n1"),
        ]));
        assert_eq!(AppUpdate::between(&current, &desired), None);
        desired.upgrade_strategy = Some(UpgradeStrategy::single_writer());
        let update = AppUpdate::between(&current, &desired).unwrap();
        assert_eq!(
            serde_json::to_value(&update).unwrap(),
            json!({ "upgradeStrategy": { "minimumHealthCapacity": 0.0, "maximumOverCapacity": 0.0 } })
        );
    }
}
