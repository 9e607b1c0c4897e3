//! A whole berth installation for scenario tests: a namespace (the tenant), the stack (the
//! simulator with hosts and agents) and helpers to create apps and volumes and wait for them.
#![allow(dead_code)]

use berth::crd::StatefulLocalVolume;
use kube::Api;
use serde_json::{Value, json};

use crate::{
    support::{
        admin_client, install_crd, namespace,
        stack::{ControllerProcess, Stack, StackOptions, eventually},
    },
    support_helm,
};

pub struct Scenario {
    pub ns: String,
    pub api: Api<StatefulLocalVolume>,
    pub stack: Stack,
    pub http: reqwest::Client,
}

impl Scenario {
    pub async fn start(hosts: &[&str]) -> Scenario {
        Scenario::start_with(hosts, StackOptions::default()).await
    }

    pub async fn start_with(hosts: &[&str], options: StackOptions) -> Scenario {
        let client = admin_client().await;
        install_crd(&client).await;
        support_helm::grant_chart_rbac_once(&client).await;
        let ns = namespace(&client, "toto").await;
        let api = Api::namespaced(client, &ns);
        let stack = Stack::start_with(hosts, options).await;
        Scenario {
            ns,
            api,
            stack,
            http: reqwest::Client::new(),
        }
    }

    /// A stack with a running Docker app `/<tenant>/<name>` and a controller for the tenant.
    pub async fn with_running_app(hosts: &[&str], name: &str) -> (Scenario, String, ControllerProcess) {
        let s = Scenario::start(hosts).await;
        let id = s.app_id(name);
        s.create_app(docker_app(&id)).await;
        s.wait_app_settled(&id).await;
        let ctl = s.controller().await;
        (s, id, ctl)
    }

    pub async fn controller(&self) -> ControllerProcess {
        self.stack.controller(&self.ns, &[]).await
    }

    pub fn app_id(&self, name: &str) -> String {
        format!("/{}/{name}", self.ns)
    }

    pub async fn create_app(&self, app: Value) {
        self.stack.create_app(&app).await;
    }

    pub async fn app(&self, id: &str) -> Value {
        self.stack.app(id).await
    }

    /// App writes to Marathon (PUT/PATCH of the app, restarts), counted from the simulator's log.
    pub fn app_writes(&self, id: &str) -> usize {
        self.stack
            .sim
            .write_requests()
            .iter()
            .filter(|r| r.path == format!("/v2/apps{id}") || r.path == format!("/v2/apps{id}/restart"))
            .filter(|r| r.method != "POST" || r.path.ends_with("/restart"))
            .count()
    }

    pub async fn apply(&self, name: &str, spec: Value) {
        crate::support::create_volume(&self.api, name, spec).await;
    }

    pub async fn condition(&self, name: &str, type_: &str) -> Option<(String, String, String)> {
        let v = self.api.get(name).await.ok()?;
        let c = v.status?.conditions.into_iter().find(|c| c.type_ == type_)?;
        Some((c.status, c.reason, c.message))
    }

    /// Waits for `Ready` with this reason; returns the volume.
    pub async fn wait_reason(&self, name: &str, reason: &str, secs: u64) -> StatefulLocalVolume {
        self.wait_condition(name, "Ready", reason, secs).await
    }

    /// Waits for the condition `type_` with this reason; returns the volume.
    pub async fn wait_condition(
        &self,
        name: &str,
        type_: &str,
        reason: &str,
        secs: u64,
    ) -> StatefulLocalVolume {
        wait_condition_in(&self.api, name, type_, reason, secs).await
    }

    pub async fn wait_bound(&self, name: &str) -> StatefulLocalVolume {
        self.wait_reason(name, "Bound", 60).await
    }

    /// The events about volume `name`: (reason, note).
    pub async fn events(&self, name: &str) -> Vec<(String, String)> {
        let api: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.api.clone().into_client(), &self.ns);
        let mut out: Vec<(String, String)> = api
            .list(&Default::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect();
        out.sort();
        out
    }

    /// Waits until the app's deployments are done and its tasks run.
    pub async fn wait_app_settled(&self, id: &str) -> Value {
        eventually(30, "the app to settle", || async {
            let app = self.app(id).await;
            let settled = app["deployments"].as_array().is_some_and(|d| d.is_empty())
                && app["tasks"].as_array().is_some_and(|t| !t.is_empty());
            settled.then_some(app)
        })
        .await
    }
}

pub fn docker_app(id: &str) -> Value {
    json!({
        "id": id, "cmd": "serve", "cpus": 0.1, "mem": 64, "instances": 1,
        "container": {"type": "DOCKER", "docker": {"image": "busybox"}},
        "env": {"KEEP": "me"}, "labels": {"team": "toto"},
        "healthChecks": [{"protocol": "COMMAND", "command": {"value": "true"}}]
    })
}

/// [`docker_app`] with no instance: it runs nowhere yet, so berth must choose its host.
pub fn idle_docker_app(id: &str) -> Value {
    let mut app = docker_app(id);
    app["instances"] = json!(0);
    app
}

/// The volume's Ready condition.
/// Waits until volume `name`, read through `api` (a tenant's client, say), has the condition
/// `type_` with this reason; returns the volume.
pub async fn wait_condition_in(
    api: &Api<StatefulLocalVolume>,
    name: &str,
    type_: &str,
    reason: &str,
    secs: u64,
) -> StatefulLocalVolume {
    eventually(
        secs,
        &format!("{name} to have {type_} reason {reason}"),
        || async {
            let v = api.get(name).await.ok()?;
            let c = v.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
            (c.reason == reason).then_some(v)
        },
    )
    .await
}

pub fn ready(v: StatefulLocalVolume) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    v.status
        .expect("a status")
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .expect("a Ready condition")
}

pub fn host_volumes(app: &Value) -> Vec<Value> {
    app["container"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

pub fn constraints(app: &Value) -> Vec<Value> {
    app["constraints"].as_array().cloned().unwrap_or_default()
}

pub fn pin(host: &str) -> Value {
    json!(["hostname", "CLUSTER", host])
}
