//! A small world for pass tests: a Marathon that applies updates and runs deployments on
//! demand, agents that create what they are asked to, and a Kubernetes API whose writes flow
//! back into the controller's volume cache as the watch would deliver them. Every call lands in
//! one ordered log, so tests can check what a pass did and in which order.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::BoxFuture;
use kube::{
    ResourceExt,
    runtime::{reflector::store::Writer, watcher},
};
use serde_json::{Value, json};

use crate::{
    agent::api::{
        DeleteResult, EnsureBody, EnsuredVolume, EntryType, HostInfo, LimitState, OwnerState, QuotaKind,
        Seed, UsageReport, VolumeQuery, VolumeState, VolumeType,
    },
    controller::{
        app_cache::AppCache,
        cache::VolumeCache,
        context::{Context, Settings},
        failure::{Failure, Kind},
        metrics::Metrics,
        pass::plan::DataRef,
        placement::Candidate,
        ports::{AgentsApi, KubeApi, MarathonApi, VolumeEvent},
        seal::Sealer,
    },
    crd::{FINALIZER, StatefulLocalVolume, StatefulLocalVolumeStatus, validate::TenantPolicy},
    marathon::{App, AppUpdate, MarathonError, responses::DeploymentResult},
    tenant::NamespaceMapping,
};

#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    GetApp,
    UpdateApp(Value),
    RestartApp,
    LaunchQueue,
    Candidates,
    Ensure(String, String),
    Delete(String, String, String),
    /// The data on (host, path) marked released.
    Release(String, String),
    AddFinalizer(String),
    RemoveFinalizer(String),
    Status(String, Box<StatefulLocalVolumeStatus>),
    Event(String, VolumeEvent),
}

impl Call {
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            Call::GetApp | Call::LaunchQueue | Call::Candidates | Call::Ensure(..)
        )
    }
}

#[derive(Default)]
pub struct Agent {
    /// Paths (host, tenant path) that exist on the hosts.
    pub existing: HashSet<(String, String)>,
    /// Refusals or failures for a path.
    pub fail: HashMap<String, Failure>,
    /// Hosts whose agent does not answer.
    pub down: HashSet<String>,
    /// Whether the hosts' filesystems enforce capacities (btrfs, XFS) or not.
    pub limits: bool,
}

pub struct World {
    pub calls: Mutex<Vec<Call>>,
    pub app: Mutex<Option<App>>,
    pub marathon_down: Mutex<bool>,
    /// The next update fails with this.
    pub update_error: Mutex<Option<MarathonError>>,
    pub agent: Mutex<Agent>,
    pub candidates: Vec<Candidate>,
    /// Status writes fail while set.
    pub status_fails: Mutex<bool>,
    writer: Mutex<Writer<StatefulLocalVolume>>,
    pub cache: Arc<VolumeCache>,
    deployments: Mutex<u32>,
}

impl World {
    pub fn new(app: Option<Value>) -> Arc<Self> {
        let writer = Writer::default();
        let cache = Arc::new(VolumeCache::new(vec![(None, writer.as_reader())]));
        let world = Arc::new(Self {
            calls: Mutex::default(),
            app: Mutex::new(app.map(|a| serde_json::from_value(a).expect("an app"))),
            marathon_down: Mutex::new(false),
            update_error: Mutex::default(),
            agent: Mutex::default(),
            candidates: ["node-1", "node-2", "node-3"]
                .iter()
                .enumerate()
                .map(|(i, h)| Candidate {
                    host: (*h).into(),
                    free_bytes: 100 + i as u64,
                    total_bytes: 0,
                    promised_bytes: 0,
                    room_bytes: 100 + i as u64,
                    attributes: Default::default(),
                })
                .collect(),
            status_fails: Mutex::new(false),
            writer: Mutex::new(writer),
            cache,
            deployments: Mutex::new(0),
        });
        world.feed(watcher::Event::Init);
        world.feed(watcher::Event::InitDone);
        world
    }

    fn feed(&self, ev: watcher::Event<StatefulLocalVolume>) {
        self.writer.lock().unwrap().apply_watcher_event(&ev);
        self.cache.observe(&None, &ev);
    }

    fn log(&self, c: Call) {
        self.calls.lock().unwrap().push(c);
    }

    /// The calls so far, and forgets them.
    pub fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    /// Creates or changes a volume, as `kubectl apply` would.
    pub fn apply(&self, v: StatefulLocalVolume) {
        let mut v = v;
        if let Some(current) = self.get(&v.name_any()) {
            v.metadata.uid = current.metadata.uid.clone();
            v.metadata.creation_timestamp = current.metadata.creation_timestamp.clone();
            v.metadata.finalizers = current.metadata.finalizers.clone();
            v.status = current.status.clone();
            let spec_changed = v.spec != current.spec;
            v.metadata.generation = Some(current.metadata.generation.unwrap_or(1) + i64::from(spec_changed));
        }
        self.feed(watcher::Event::Apply(v));
    }

    pub fn get(&self, name: &str) -> Option<StatefulLocalVolume> {
        self.cache
            .all()
            .into_iter()
            .find(|v| v.name_any() == name)
            .map(|v| (*v).clone())
    }

    /// `kubectl delete`: the deletion timestamp, and the object gone once no finalizer holds it.
    pub fn delete(&self, name: &str) {
        let mut v = self.get(name).expect("the volume exists");
        v.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        v.metadata.generation = Some(v.metadata.generation.unwrap_or(1) + 1);
        self.settle(v);
    }

    fn settle(&self, v: StatefulLocalVolume) {
        if v.metadata.deletion_timestamp.is_some() && v.finalizers().is_empty() {
            self.feed(watcher::Event::Delete(v));
        } else {
            self.feed(watcher::Event::Apply(v));
        }
    }

    /// Marathon finishes every deployment: tasks of the app run on its pinned host.
    pub fn finish_deployments(&self) {
        let mut app = self.app.lock().unwrap();
        let Some(app) = app.as_mut() else { return };
        app.deployments = Some(Vec::new());
        let host = app
            .constraints
            .iter()
            .flat_map(|c| c.pinned_hosts())
            .next()
            .unwrap_or_else(|| "node-1".into());
        let n = app.instances.unwrap_or(1);
        let version = app.version.clone();
        app.tasks = Some(
            (0..n)
                .map(|i| {
                    serde_json::from_value(json!({"id": format!("t{i}"), "appId": app.id, "host": host,
                        "state": "TASK_RUNNING", "version": version}))
                    .unwrap()
                })
                .collect(),
        );
    }

    pub fn app(&self) -> App {
        self.app.lock().unwrap().clone().expect("the app exists")
    }
}

pub struct Ports(pub Arc<World>);

fn name_of(v: &StatefulLocalVolume) -> String {
    format!("{}/{}", v.namespace().unwrap_or_default(), v.name_any())
}

impl MarathonApi for Ports {
    fn get_app<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<App, MarathonError>> {
        Box::pin(async move {
            self.0.log(Call::GetApp);
            if *self.0.marathon_down.lock().unwrap() {
                return Err(MarathonError::Timeout { url: "m".into() });
            }
            let app = self.0.app.lock().unwrap().clone().filter(|a| a.id == id);
            app.ok_or(MarathonError::NotFound {
                message: format!("App '{id}' does not exist"),
            })
        })
    }

    fn update_app<'a>(
        &'a self,
        _id: &'a str,
        update: &'a AppUpdate,
    ) -> BoxFuture<'a, Result<DeploymentResult, MarathonError>> {
        Box::pin(async move {
            self.0.log(Call::UpdateApp(serde_json::to_value(update).unwrap()));
            if let Some(e) = self.0.update_error.lock().unwrap().take() {
                return Err(e);
            }
            let mut n = self.0.deployments.lock().unwrap();
            *n += 1;
            let id = format!("deployment-{n}");
            let mut guard = self.0.app.lock().unwrap();
            let app = guard.as_mut().expect("the app exists");
            if let Some(c) = &update.container {
                app.container = Some(c.clone());
            }
            if let Some(c) = &update.constraints {
                app.constraints = Some(c.clone());
            }
            if let Some(u) = &update.upgrade_strategy {
                app.upgrade_strategy = Some(u.clone());
            }
            if let Some(l) = &update.labels {
                app.labels = Some(l.clone());
            }
            app.version = Some(format!("v{n}"));
            app.deployments = Some(vec![serde_json::from_value(json!({"id": id})).unwrap()]);
            Ok(DeploymentResult {
                deployment_id: id,
                version: format!("v{n}"),
            })
        })
    }

    fn restart_app<'a>(&'a self, _id: &'a str) -> BoxFuture<'a, Result<DeploymentResult, MarathonError>> {
        Box::pin(async move {
            self.0.log(Call::RestartApp);
            let mut guard = self.0.app.lock().unwrap();
            let app = guard.as_mut().expect("the app exists");
            app.deployments = Some(vec![serde_json::from_value(json!({"id": "restart"})).unwrap()]);
            Ok(DeploymentResult {
                deployment_id: "restart".into(),
                version: "r".into(),
            })
        })
    }

    fn launch_blocked<'a>(&'a self, _id: &'a str) -> BoxFuture<'a, Result<bool, MarathonError>> {
        Box::pin(async move {
            self.0.log(Call::LaunchQueue);
            Ok(false)
        })
    }
}

impl AgentsApi for Ports {
    fn candidates(&self) -> BoxFuture<'_, Vec<Candidate>> {
        Box::pin(async move {
            self.0.log(Call::Candidates);
            self.0.candidates.clone()
        })
    }

    fn ensure<'a>(
        &'a self,
        host: &'a str,
        reqs: &'a [EnsureBody],
    ) -> BoxFuture<'a, Result<Vec<Result<EnsuredVolume, Failure>>, Failure>> {
        Box::pin(async move {
            let mut agent = self.0.agent.lock().unwrap();
            if agent.down.contains(host) {
                for req in reqs {
                    self.0
                        .log(Call::Ensure(host.into(), req.request.host_path.clone()));
                }
                return Err(Failure::new(
                    Kind::Unreachable,
                    format!("the agent of {host} did not answer"),
                ));
            }
            let limits = agent.limits;
            Ok(reqs
                .iter()
                .map(|with| {
                    let req = &with.request;
                    self.0.log(Call::Ensure(host.into(), req.host_path.clone()));
                    if let Some(f) = agent.fail.get(&req.host_path) {
                        return Err(f.clone());
                    }
                    let created = agent.existing.insert((host.into(), req.host_path.clone()));
                    let limit = with.capacity_bytes.map(|bytes| LimitState {
                        kind: if limits {
                            QuotaKind::BtrfsQgroup
                        } else {
                            QuotaKind::None
                        },
                        requested_bytes: bytes,
                        bytes: limits.then_some(bytes),
                        enforced: limits,
                        reason: (!limits).then(|| "the host's filesystem cannot limit a directory".into()),
                    });
                    let state = VolumeState {
                        tenant: req.tenant.clone(),
                        host_path: req.host_path.clone(),
                        absolute_path: format!("/containerdata/user-{}{}", req.tenant, req.host_path),
                        entry_type: match req.volume_type {
                            VolumeType::File => EntryType::File,
                            _ => EntryType::Directory,
                        },
                        owner: OwnerState {
                            host_uid: 0,
                            host_gid: 0,
                            container_uid: Some(0),
                            container_gid: Some(0),
                        },
                        mode: "0755".into(),
                        size_bytes: match &req.seed {
                            Some(Seed::Content(c)) => c.len() as u64,
                            Some(Seed::CopyFromHost(_)) => 64,
                            None => 0,
                        },
                        created,
                        changed: created,
                        reowned: None,
                    };
                    Ok(EnsuredVolume {
                        state,
                        limit,
                        identity: with.check.identity.clone(),
                        adopted: false,
                    })
                })
                .collect())
        })
    }

    fn usage<'a>(
        &'a self,
        host: &'a str,
        volumes: &'a [VolumeQuery],
    ) -> BoxFuture<'a, Result<Vec<UsageReport>, Failure>> {
        Box::pin(async move {
            Err(Failure::new(
                Kind::Unreachable,
                format!(
                    "the agent of {host} measures nothing here ({} volumes)",
                    volumes.len()
                ),
            ))
        })
    }

    fn host_info<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<HostInfo, Failure>> {
        Box::pin(async move {
            Err(Failure::new(
                Kind::Unreachable,
                format!("{host}: no host info here"),
            ))
        })
    }

    fn delete<'a>(&'a self, data: &'a DataRef) -> BoxFuture<'a, Result<DeleteResult, Failure>> {
        let (host, tenant, host_path) = (data.host.as_str(), data.tenant.as_str(), data.host_path.as_str());
        Box::pin(async move {
            self.0
                .log(Call::Delete(host.into(), tenant.into(), host_path.into()));
            let mut agent = self.0.agent.lock().unwrap();
            if agent.down.contains(host) {
                return Err(Failure::new(
                    Kind::Unreachable,
                    format!("the agent of {host} did not answer"),
                ));
            }
            let existed = agent.existing.remove(&(host.into(), host_path.into()));
            Ok(DeleteResult {
                tenant: tenant.into(),
                host_path: host_path.into(),
                existed,
                removed_entries: u64::from(existed),
            })
        })
    }

    fn release<'a>(&'a self, data: &'a DataRef) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            self.0
                .log(Call::Release(data.host.clone(), data.host_path.clone()));
            Ok(())
        })
    }
}

impl KubeApi for Ports {
    fn add_finalizer<'a>(&'a self, v: &'a StatefulLocalVolume) -> BoxFuture<'a, Result<(), kube::Error>> {
        Box::pin(async move {
            self.0.log(Call::AddFinalizer(name_of(v)));
            let mut current = self.0.get(&v.name_any()).expect("the volume exists");
            current.finalizers_mut().push(FINALIZER.into());
            self.0.settle(current);
            Ok(())
        })
    }

    fn remove_finalizer<'a>(&'a self, v: &'a StatefulLocalVolume) -> BoxFuture<'a, Result<(), kube::Error>> {
        Box::pin(async move {
            self.0.log(Call::RemoveFinalizer(name_of(v)));
            if let Some(mut current) = self.0.get(&v.name_any()) {
                current.finalizers_mut().retain(|f| f != FINALIZER);
                self.0.settle(current);
            }
            Ok(())
        })
    }

    fn apply_status<'a>(
        &'a self,
        v: &'a StatefulLocalVolume,
        status: &'a StatefulLocalVolumeStatus,
    ) -> BoxFuture<'a, Result<(), kube::Error>> {
        Box::pin(async move {
            if *self.0.status_fails.lock().unwrap() {
                return Err(kube::Error::Api(
                    kube::core::Status::failure("conflict", "Conflict")
                        .with_code(409)
                        .boxed(),
                ));
            }
            self.0.log(Call::Status(name_of(v), Box::new(status.clone())));
            if let Some(mut current) = self.0.get(&v.name_any()) {
                current.status = Some(status.clone());
                self.0.settle(current);
            }
            Ok(())
        })
    }

    fn publish<'a>(&'a self, v: &'a StatefulLocalVolume, event: &'a VolumeEvent) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.0.log(Call::Event(name_of(v), event.clone()));
        })
    }
}

pub const SECRET: &[u8] = b"agent-secret-for-tests";

pub fn context(world: &Arc<World>, tenants: NamespaceMapping) -> Context {
    let ports = Arc::new(Ports(world.clone()));
    Context::new(
        ports.clone(),
        ports.clone(),
        ports,
        TenantPolicy::default(),
        tenants,
        Sealer::new(SECRET),
        Arc::new(Metrics::default()),
        world.cache.clone(),
        Arc::new(AppCache::new(Duration::from_secs(600))),
        Settings {
            resync: Duration::from_secs(300),
            agent_app: Some("/berth.system/agent".into()),
            outage_grace: Duration::from_secs(60),
            usage_warning: 0.9,
            overcommit: 1.0,
            ..Settings::default()
        },
    )
}

/// A volume of namespace `ns` for `app`, as a user writes it.
pub fn volume(ns: &str, name: &str, spec: Value) -> StatefulLocalVolume {
    serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "StatefulLocalVolume",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"), "generation": 1,
                     "creationTimestamp": k8s_openapi::jiff::Timestamp::now().to_string()},
        "spec": spec,
    }))
    .expect("a volume")
}

/// A running Docker app with one task on `host` (or none).
pub fn docker_app(id: &str, task_host: Option<&str>) -> Value {
    let tasks: Vec<Value> = task_host
        .map(|h| json!({"id": "t0", "appId": id, "host": h, "state": "TASK_RUNNING", "version": "v0"}))
        .into_iter()
        .collect();
    json!({"id": id, "instances": 1, "version": "v0",
           "container": {"type": "DOCKER", "docker": {"image": "busybox"}},
           "tasks": tasks, "deployments": []})
}
