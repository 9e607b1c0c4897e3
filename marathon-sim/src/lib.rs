//! A stand-in for Marathon's REST API (see `docs/marathon.md` for coverage and differences).
//!
//! It simulates agents, constraint placement, deployments following `upgradeStrategy`, the
//! deployment lock, the launch queue and the event stream, following Marathon 1.5+ (1.4 shapes
//! are accepted). Test controls live under `/_sim/...`.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let sim = marathon_sim::Simulator::start(marathon_sim::Config::with_agents(&["node-1", "node-2"])).await?;
//! println!("Marathon at {}", sim.url());
//! sim.shutdown().await;
//! # Ok(()) }
//! ```

mod apps;
mod controls;
mod definition;
mod deploy;
mod docker;
mod errors;
mod events;
mod http;
mod placement;
mod state;
mod util;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use docker::DockerMode;
pub use state::{DeploymentKind, DeploymentOutcome, DeploymentRecord, LoggedRequest};

/// One simulated Mesos agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The offer hostname (what `hostname` constraints and `task.host` see).
    pub hostname: String,
    /// The Mesos agent id (`slaveId` in tasks).
    pub id: String,
    /// Attributes as text (`rack` → `r1`); Marathon stringifies scalars as `0.###`.
    pub attributes: BTreeMap<String, String>,
    /// Disk offered, in MiB; tasks use their app's `disk`.
    pub disk_mb: f64,
}

impl AgentConfig {
    pub fn new(hostname: &str) -> Self {
        Self {
            hostname: hostname.to_string(),
            id: format!("{hostname}-S0"),
            attributes: BTreeMap::new(),
            disk_mb: 100_000.0,
        }
    }

    pub fn attribute(mut self, key: &str, value: &str) -> Self {
        self.attributes.insert(key.to_string(), value.to_string());
        self
    }

    pub fn disk_mb(mut self, disk_mb: f64) -> Self {
        self.disk_mb = disk_mb;
        self
    }

    /// Parses `host=node-1,id=S1,attr.rack=r1,disk=1000` (the binary's `--agent`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut agent: Option<AgentConfig> = None;
        let mut pending: Vec<(String, String)> = Vec::new();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("expected key=value, got '{part}'"))?;
            if key == "host" {
                agent = Some(AgentConfig::new(value));
            } else {
                pending.push((key.to_string(), value.to_string()));
            }
        }
        let mut agent = agent.ok_or("an agent needs host=<hostname>")?;
        for (key, value) in pending {
            match key.as_str() {
                "id" => agent.id = value,
                "disk" => {
                    agent.disk_mb = value
                        .parse()
                        .map_err(|_| format!("disk must be a number of MiB, got '{value}'"))?
                }
                k if k.starts_with("attr.") => {
                    agent.attributes.insert(k["attr.".len()..].to_string(), value);
                }
                other => {
                    return Err(format!(
                        "unknown agent key '{other}' (use host, id, disk, attr.<name>)"
                    ));
                }
            }
        }
        Ok(agent)
    }
}

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct Config {
    pub agents: Vec<AgentConfig>,
    /// One scheduling step: a launched task stays staged for one step, so a deployment takes
    /// at least two; long enough for tests to hit the deployment lock.
    pub step: Duration,
    /// What `/v2/info` reports as `version`.
    pub marathon_version: String,
    /// Require HTTP basic credentials (user, password) on every Marathon endpoint.
    pub basic_auth: Option<(String, String)>,
    /// Accept `Authorization: token=<token>` (DC/OS) on every Marathon endpoint.
    pub dcos_token: Option<String>,
    /// Act as a non-leader for the event stream: `/v2/events` answers 307 to this leader base URL
    /// (Marathon redirects the stream instead of proxying it).
    pub events_leader: Option<String>,
    pub listen: SocketAddr,
    /// Run each task of a Docker app as a real container (see [`DockerMode`]).
    pub docker: Option<DockerMode>,
}

impl Config {
    pub fn with_agents(hostnames: &[&str]) -> Self {
        Self {
            agents: hostnames.iter().map(|h| AgentConfig::new(h)).collect(),
            ..Self::default()
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            agents: Vec::new(),
            step: Duration::from_millis(100),
            marathon_version: "1.10.26".into(),
            basic_auth: None,
            dcos_token: None,
            events_leader: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            docker: None,
        }
    }
}

pub(crate) struct Shared {
    pub state: Mutex<state::SimState>,
    pub config: Config,
    pub addr: SocketAddr,
    pub framework_id: String,
    pub(crate) containerizer: Option<Arc<docker::Containerizer>>,
}

impl Shared {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn leader(&self) -> String {
        self.addr.to_string()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, state::SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Simulator;

impl Simulator {
    /// Binds `config.listen` (default 127.0.0.1:0) and serves until [`SimHandle::shutdown`].
    pub async fn start(config: Config) -> std::io::Result<SimHandle> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let framework_id = format!("{}-0000", util::uuid_v4());
        let containerizer = config
            .docker
            .clone()
            .map(|mode| Arc::new(docker::Containerizer::new(mode, framework_id[..8].to_string())));
        let mut sim_state = state::SimState::new(&config.agents);
        sim_state.docker_mode = containerizer.is_some();
        let shared = Arc::new(Shared {
            state: Mutex::new(sim_state),
            config: config.clone(),
            addr,
            framework_id,
            containerizer: containerizer.clone(),
        });
        let app = http::routes(shared.clone()).merge(controls::routes(shared.clone()));
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stop_rx.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "marathon-sim server failed");
            }
        });
        let ticker_shared = shared.clone();
        let ticker = tokio::spawn(async move {
            let mut interval = tokio::time::interval(ticker_shared.config.step);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                deploy::tick(&mut ticker_shared.lock());
            }
        });
        let containers = containerizer.map(|c| tokio::spawn(docker::run(shared.clone(), c)));
        Ok(SimHandle {
            shared,
            stop: Some(stop_tx),
            server: Some(server),
            ticker,
            containers,
        })
    }
}

/// A running simulator. Dropping it stops the scheduler; [`SimHandle::shutdown`] also waits for
/// the HTTP server to close every connection.
pub struct SimHandle {
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    ticker: JoinHandle<()>,
    containers: Option<JoinHandle<()>>,
}

impl SimHandle {
    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub fn url(&self) -> String {
        self.shared.url()
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Every Marathon request received so far (test controls excluded).
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.lock().request_log.clone()
    }

    /// Requests that could change state (POST, PUT, PATCH, DELETE).
    pub fn write_requests(&self) -> Vec<LoggedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method != "GET" && r.method != "HEAD")
            .collect()
    }

    pub fn clear_requests(&self) {
        self.shared.lock().request_log.clear();
    }

    /// From now on, each Marathon request waits a random time up to `max_latency`, then fails
    /// with `status` with `probability` (0 turns it off). Deterministic for a given `seed`.
    pub fn chaos(&self, probability: f64, status: u16, max_latency: Duration, seed: u64) {
        self.shared.lock().chaos = state::Chaos {
            probability,
            status,
            max_latency,
            rng: seed,
        };
    }

    /// Makes the next `count` Marathon requests wait `latency`, then fail with `status` if set.
    pub fn inject_faults(&self, count: usize, status: Option<u16>, latency: Duration) {
        self.shared.lock().faults = state::FaultPlan {
            remaining: count,
            status,
            latency,
        };
    }

    /// Takes an agent down (its tasks are lost) or brings it back. False for an unknown host.
    pub fn set_agent_up(&self, hostname: &str, up: bool) -> bool {
        controls::set_agent_up(&mut self.shared.lock(), hostname, up)
    }

    /// Fails a task with `message`, which becomes the app's `lastTaskFailure`.
    pub fn fail_task(&self, task_id: &str, message: &str) -> bool {
        controls::fail_task(&mut self.shared.lock(), task_id, message)
    }

    /// Ends every open `/v2/events` stream (clients see the connection end).
    pub fn drop_event_streams(&self) {
        self.shared.lock().stream_generation.send_modify(|g| *g += 1);
    }

    /// Ends every open event stream and refuses new ones (503) for `outage`: events of that
    /// time are missed by every subscriber, as when a client loses its connection to Marathon.
    pub fn event_stream_outage(&self, outage: Duration) {
        let mut state = self.shared.lock();
        state.events_refused_until = Some(std::time::Instant::now() + outage);
        state.stream_generation.send_modify(|g| *g += 1);
    }

    /// Every deployment so far, with its outcome and whether old and new tasks overlapped.
    pub fn deployment_records(&self) -> Vec<DeploymentRecord> {
        self.shared.lock().history.clone()
    }

    /// Docker mode: the id in the `berth-sim=<id>` label of this simulator's containers.
    pub fn docker_id(&self) -> Option<String> {
        self.shared.containerizer.as_ref().map(|c| c.sim_id.clone())
    }

    /// Docker mode: the name of a task's container, once it has been started.
    pub fn container_of(&self, task_id: &str) -> Option<String> {
        self.shared.containerizer.as_ref()?.container_of(task_id)
    }

    /// Docker mode: task id → container name, for every container started and not yet removed.
    pub fn containers(&self) -> BTreeMap<String, String> {
        self.shared
            .containerizer
            .as_ref()
            .map(|c| c.containers())
            .unwrap_or_default()
    }

    /// Stops serving: open event streams end, the listener closes, connections drain. In Docker
    /// mode every container of this simulator is removed.
    pub async fn shutdown(mut self) {
        self.drop_event_streams();
        self.ticker.abort();
        if let Some(containers) = self.containers.take() {
            containers.abort();
            let _ = containers.await;
            // A `docker run` cut short may still create its container: look after a moment.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if let Some(containerizer) = &self.shared.containerizer {
            containerizer.remove_all().await;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.ticker.abort();
        if let Some(containers) = self.containers.take() {
            containers.abort();
            // A `docker run` cut short may still create its container: look again after a
            // moment (removal by label catches containers the map never saw).
            if let Some(containerizer) = &self.shared.containerizer {
                std::thread::sleep(Duration::from_millis(200));
                containerizer.remove_all_blocking();
            }
        }
        if let Ok(state) = self.shared.state.lock() {
            state.stream_generation.send_modify(|g| *g += 1);
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
