//! A whole berth installation for scenario tests: the Marathon simulator with simulated hosts,
//! one real `berth agent` process per host on its own root directory, and `berth controller`
//! as a process that authenticates with the controller's service-account token (so it has
//! exactly the RBAC the test grants it).
//!
//! With [`StackOptions::docker_hosts`], each agent runs in a Docker container of its own instead
//! (see [`super::docker_hosts`]): its own filesystem view and address, cut off with
//! [`Host::disconnect`] or [`Host::kill`].
#![allow(dead_code)]

use std::{
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use marathon_sim::{Config as SimConfig, SimHandle, Simulator};

use super::{
    docker_hosts::{self, AgentContainer, DockerNetwork},
    kubeconfig, repo_root,
};

/// The controller's agent secret; each agent gets the token derived from it for its host.
pub const AGENT_SECRET: &str = "test-agent-secret-0123456789";
/// The remap every simulated host applies (a real dockremap range).
pub const REMAP_BASE: u32 = 165536;

pub fn berth_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_berth"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One simulated container host with its agent.
pub struct Host {
    pub name: String,
    /// The directory above the tenant roots (the host's `/containerdata`).
    pub root: PathBuf,
    pub url: String,
    agent: AgentRun,
    /// How the agent was started, to start it again.
    args: Vec<std::ffi::OsString>,
    log: PathBuf,
    /// The host's own filesystem, when it has one (unmounted after the agent stopped).
    pub fs: Option<super::loopfs::LoopBtrfs>,
}

/// How a host's agent runs.
enum AgentRun {
    Process(Child),
    Container(AgentContainer),
}

impl Host {
    /// The host path of a tenant's user path, e.g. `tenant_path("toto", "/etc/localtime")`.
    pub fn tenant_path(&self, tenant: &str, path: &str) -> PathBuf {
        self.root
            .join(format!("user-{tenant}"))
            .join(path.trim_start_matches('/'))
    }

    /// Kills the agent (SIGKILL); a container stays, stopped.
    pub fn stop_agent(&mut self) {
        match &mut self.agent {
            AgentRun::Process(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            AgentRun::Container(c) => c.kill(),
        }
    }

    /// Kills the agent (SIGKILL) and starts it again with the same flags, appending to its log
    /// (a container: `docker kill`, `docker start`).
    pub async fn restart_agent(&mut self) {
        self.stop_agent();
        self.start().await;
    }

    /// Whether the agent runs in a container ([`StackOptions::docker_hosts`]).
    pub fn is_container(&self) -> bool {
        matches!(self.agent, AgentRun::Container(_))
    }

    /// The agent's container, with [`StackOptions::docker_hosts`].
    pub fn container(&self) -> Option<&AgentContainer> {
        match &self.agent {
            AgentRun::Container(c) => Some(c),
            AgentRun::Process(_) => None,
        }
    }

    fn expect_container(&self, what: &str) -> &AgentContainer {
        self.container().unwrap_or_else(|| {
            panic!(
                "{what} needs the host's agent in a container (StackOptions::docker_hosts); {} runs it as a process",
                self.name
            )
        })
    }

    /// The host's lost: kills its agent (`docker kill`; the container stays, stopped).
    pub fn kill(&mut self) {
        self.stop_agent();
    }

    /// Starts the agent again (`docker start`, same address) and waits until it answers. A
    /// disconnected host must be [`Self::reconnect`]ed first (it would start cut off).
    pub async fn start(&mut self) {
        match &mut self.agent {
            AgentRun::Process(child) => {
                let _ = child.kill();
                let _ = child.wait();
                *child = spawn_agent(&self.args, &self.log);
                wait_http(&format!("{}/healthz", self.url)).await;
            }
            AgentRun::Container(c) => {
                assert!(
                    c.connected(),
                    "{} is disconnected: reconnect() it before start()",
                    self.name
                );
                c.start();
                c.wait_healthy().await;
            }
        }
    }

    /// Cuts the host off the network (`docker network disconnect`): its agent runs on, neither
    /// the test host nor the other agents reach it. Containers only.
    pub fn disconnect(&self) {
        self.expect_container("disconnect()").disconnect();
    }

    /// Connects the host again with the same address (so the same URL) and waits until its agent
    /// answers. Containers only.
    pub async fn reconnect(&self) {
        let c = self.expect_container("reconnect()");
        c.connect();
        c.wait_healthy().await;
    }

    /// `docker exec` in the host's container (busybox: `cat`, `ls`, `id`, `busybox wget`, …).
    pub fn exec<S: AsRef<std::ffi::OsStr>>(&self, args: impl IntoIterator<Item = S>) -> std::process::Output {
        self.expect_container("exec()").exec(args)
    }

    /// The agent's log so far (a container's: `docker logs`, also written to the log file).
    pub fn log_text(&self) -> String {
        if let AgentRun::Container(c) = &self.agent {
            let text = c.logs();
            let _ = std::fs::write(&self.log, &text);
            return text;
        }
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The file the agent's log goes to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The host's agent token (what the controller derives from [`AGENT_SECRET`]).
    pub fn token(&self) -> String {
        berth::agent::credentials::host_token(AGENT_SECRET.as_bytes(), &self.name)
    }

    /// A client of the host's agent with its token and this whole-request timeout (the connect
    /// timeout is the same, at most 5 s).
    pub fn client(&self, timeout: Duration) -> berth::agent::client::AgentClient {
        let options = berth::agent::client::AgentClientOptions {
            timeout,
            connect_timeout: timeout.min(Duration::from_secs(5)),
            ..Default::default()
        };
        berth::agent::client::AgentClient::new(&self.url, &self.token(), &options)
            .expect("a client of the host's agent")
    }
}

fn spawn_agent(args: &[std::ffi::OsString], log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the agent's log");
    Command::new(berth_bin())
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start berth agent")
}

impl Drop for Host {
    fn drop(&mut self) {
        if let AgentRun::Container(c) = &self.agent {
            let text = self.log_text();
            if std::thread::panicking() {
                eprintln!(
                    "--- agent log of {} (container {}, {}) ---\n{text}",
                    self.name,
                    c.name,
                    self.log.display()
                );
            }
            c.remove();
            return;
        }
        self.stop_agent();
    }
}

/// Dropped in field order: the simulator (and its containers) and the agents go before the
/// directory they use.
pub struct Stack {
    pub sim: SimHandle,
    pub hosts: Vec<Host>,
    /// The hosts' Docker network, with [`StackOptions::docker_hosts`] (dropped after the hosts'
    /// containers).
    pub network: Option<DockerNetwork>,
    pub agent_secret_file: PathBuf,
    pub dir: tempfile::TempDir,
}

/// Adjusts the simulator's configuration, given each host's name and root.
pub type SimConfigFn = Box<dyn FnOnce(&mut SimConfig, &[(String, PathBuf)])>;

/// How [`Stack::start_with`] sets up the stack; the default is what [`Stack::start`] does.
pub struct StackOptions {
    /// The agents' `--uid-map`/`--gid-map` range: (first host id, count).
    pub remap: (u32, u32),
    /// Adjusts the simulator's configuration, given each host's name and root (its
    /// `/containerdata`).
    pub sim: SimConfigFn,
    /// Mesos attributes per host (`("node-1", "rack:r1")`): the host's agent gets them as
    /// `--attributes`, the simulated Mesos agent offers them.
    pub attributes: Vec<(&'static str, &'static str)>,
    /// Every agent listens on `<host name>:<this port>`, as agents deployed as a Marathon app do;
    /// the host names must then be loopback addresses (127.0.0.2, …). Default: 127.0.0.1 and a
    /// port of its own per agent.
    pub shared_agent_port: Option<u16>,
    /// Each host's `/containerdata` on a loop-mounted btrfs filesystem of this many MiB, its
    /// agent started with `--enable-quota` (capacities enforced).
    pub btrfs_mib: Option<u64>,
    /// Each agent in a Docker container of its own on a network of the stack (image built from
    /// this build's binary), its root and token file mounted at the same paths; the URL is
    /// `http://<container address>:8080`. See [`super::docker_hosts`].
    pub docker_hosts: bool,
    /// A remap range of its own for some hosts (`("node-2", (231072, 65536))`); the others use
    /// [`Self::remap`].
    pub remap_of: Vec<(&'static str, (u32, u32))>,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            remap: (REMAP_BASE, 65536),
            sim: Box::new(|_, _| {}),
            attributes: Vec::new(),
            shared_agent_port: None,
            btrfs_mib: None,
            docker_hosts: false,
            remap_of: Vec::new(),
        }
    }
}

impl Stack {
    /// `POST /v2/apps` on the simulator; the app must be created (201).
    pub async fn create_app(&self, app: &serde_json::Value) {
        let res = reqwest::Client::new()
            .post(format!("{}/v2/apps", self.sim.url()))
            .json(app)
            .send()
            .await
            .expect("POST /v2/apps");
        let status = res.status();
        assert_eq!(status, 201, "{}", res.text().await.unwrap_or_default());
    }

    /// `GET /v2/apps/{id}` on the simulator: the app (with tasks, deployments, lastTaskFailure).
    pub async fn app(&self, id: &str) -> serde_json::Value {
        let res = reqwest::Client::new()
            .get(format!("{}/v2/apps{id}", self.sim.url()))
            .send()
            .await
            .expect("GET /v2/apps/{id}");
        res.json::<serde_json::Value>().await.expect("an app as JSON")["app"].clone()
    }

    pub async fn start(hostnames: &[&str]) -> Stack {
        Self::start_with(hostnames, StackOptions::default()).await
    }

    pub async fn start_with(hostnames: &[&str], options: StackOptions) -> Stack {
        super::require_root();
        assert!(
            !(options.docker_hosts && options.shared_agent_port.is_some()),
            "docker_hosts gives every agent an address of its own: no shared_agent_port"
        );
        let network = options.docker_hosts.then(|| {
            docker_hosts::prepare();
            DockerNetwork::create()
        });
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut filesystems: Vec<Option<super::loopfs::LoopBtrfs>> = hostnames
            .iter()
            .map(|_| options.btrfs_mib.map(super::loopfs::LoopBtrfs::new))
            .collect();
        let roots: Vec<(String, PathBuf)> = hostnames
            .iter()
            .zip(&filesystems)
            .map(|(name, fs)| {
                let root = match fs {
                    Some(fs) => fs.path("containerdata"),
                    None => dir.path().join(name).join("containerdata"),
                };
                (name.to_string(), root)
            })
            .collect();
        for (_, root) in &roots {
            std::fs::create_dir_all(root).expect("create a host root");
        }
        let mut sim_config = SimConfig::with_agents(hostnames);
        let attributes_of = |host: &str| {
            options
                .attributes
                .iter()
                .find(|(h, _)| *h == host)
                .map_or("", |(_, a)| *a)
        };
        for agent in &mut sim_config.agents {
            agent.attributes = berth::agent::attributes::parse(attributes_of(&agent.hostname))
                .expect("valid test attributes");
        }
        (options.sim)(&mut sim_config, &roots);
        let sim = Simulator::start(sim_config)
            .await
            .expect("start the Marathon simulator");
        let agent_secret_file = dir.path().join("agent-secret");
        std::fs::write(&agent_secret_file, AGENT_SECRET).expect("write the agent secret");
        std::fs::set_permissions(&agent_secret_file, std::fs::Permissions::from_mode(0o600))
            .expect("make the secret private");
        let remap_of = |host: &str| {
            let (first, count) = options
                .remap_of
                .iter()
                .find(|(h, _)| *h == host)
                .map_or(options.remap, |(_, r)| *r);
            format!("{first}:{count}")
        };
        let mut hosts = Vec::new();
        for (name, root) in roots {
            let name = name.as_str();
            let remap = remap_of(name);
            let addr = match (&network, options.shared_agent_port) {
                (Some(_), _) => format!("0.0.0.0:{}", docker_hosts::AGENT_PORT),
                (None, Some(port)) => format!("{name}:{port}"),
                (None, None) => format!("127.0.0.1:{}", free_port()),
            };
            // Each agent knows only its own host's token.
            let token_file = dir.path().join(format!("agent-token-{name}"));
            std::fs::write(
                &token_file,
                berth::agent::credentials::host_token(AGENT_SECRET.as_bytes(), name),
            )
            .expect("write the host's agent token");
            std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))
                .expect("make the token private");
            let mut args: Vec<std::ffi::OsString> = ["agent", "--listen", &addr, "--hostname", name]
                .iter()
                .map(Into::into)
                .collect();
            args.push("--token-file".into());
            args.push(token_file.clone().into());
            args.push("--root-template".into());
            args.push(root.join("user-{tenant}").into());
            for a in [
                "--uid-map",
                &remap,
                "--gid-map",
                &remap,
                "--seed-allow",
                "/etc/localtime",
            ] {
                args.push(a.into());
            }
            args.push("--attributes".into());
            args.push(attributes_of(name).into());
            let fs = filesystems.remove(0);
            if fs.is_some() {
                args.push("--enable-quota".into());
            }
            let log = dir.path().join(format!("agent-{name}.log"));
            let (agent, url) = match &network {
                None => {
                    let agent = spawn_agent(&args, &log);
                    let url = format!("http://{addr}");
                    wait_http(&format!("{url}/healthz")).await;
                    (AgentRun::Process(agent), url)
                }
                Some(network) => {
                    let c = AgentContainer::run(name, network, hosts.len(), &args, &[&root], &[&token_file]);
                    // When it never answers, this panics with its log, and the network's drop
                    // removes the container.
                    c.wait_healthy().await;
                    let url = c.url();
                    (AgentRun::Container(c), url)
                }
            };
            hosts.push(Host {
                name: name.to_string(),
                root,
                url,
                agent,
                args,
                log,
                fs,
            });
        }
        Stack {
            dir,
            sim,
            hosts,
            network,
            agent_secret_file,
        }
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .expect("a host of the stack")
    }

    pub fn host_mut(&mut self, name: &str) -> &mut Host {
        self.hosts
            .iter_mut()
            .find(|h| h.name == name)
            .expect("a host of the stack")
    }

    /// A kubeconfig that authenticates as the controller's service account.
    pub fn controller_kubeconfig(&self) -> PathBuf {
        let admin = std::fs::read_to_string(kubeconfig()).expect("read the test kubeconfig");
        let path = self.dir.path().join("controller-kubeconfig");
        std::fs::write(
            &path,
            admin.replace("token: admintoken", "token: controllertoken"),
        )
        .expect("write the controller kubeconfig");
        path
    }

    /// Starts `berth controller` for one namespace, with every host's agent given by `--agent`.
    pub async fn controller(&self, namespace: &str, extra: &[&str]) -> ControllerProcess {
        let agents: Vec<String> = self
            .hosts
            .iter()
            .map(|h| format!("{}={}", h.name, h.url))
            .collect();
        let mut args: Vec<&str> = extra.to_vec();
        for a in &agents {
            args.extend(["--agent", a]);
        }
        self.controller_without_static_agents(namespace, &args).await
    }

    /// Starts `berth controller` for one namespace with only the flags in `extra` to find agents
    /// (e.g. `--agent-app`).
    pub async fn controller_without_static_agents(
        &self,
        namespace: &str,
        extra: &[&str],
    ) -> ControllerProcess {
        self.controller_with_env(namespace, extra, &[]).await
    }

    /// [`Self::controller_without_static_agents`] with more environment variables (e.g. the
    /// soak's crash points).
    pub async fn controller_with_env(
        &self,
        namespace: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> ControllerProcess {
        let port = free_port();
        let log = self.dir.path().join(format!("controller-{port}.log"));
        let mut cmd = Command::new(berth_bin());
        cmd.arg("controller")
            .args(["--namespace", namespace, "--marathon-url", &self.sim.url()])
            .arg("--agent-secret-file")
            .arg(&self.agent_secret_file)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            // Quick defaults for tests, unless the caller sets them.
            .args(["--resync", "3s"].iter().filter(|_| !extra.contains(&"--resync")))
            .args(
                ["--debounce", "500ms"]
                    .iter()
                    .filter(|_| !extra.contains(&"--debounce")),
            )
            .args(
                ["--outage-grace", "2s"]
                    .iter()
                    .filter(|_| !extra.contains(&"--outage-grace")),
            )
            .env("KUBECONFIG", self.controller_kubeconfig())
            .env("RUST_LOG", "info,berth=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create the controller log"));
        let child = cmd.spawn().expect("start berth controller");
        let metrics = format!("http://127.0.0.1:{port}");
        if !try_http(&format!("{metrics}/healthz")).await {
            panic!(
                "the controller's /healthz did not answer within 30 s; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        ControllerProcess { child, log, metrics }
    }
}

/// A running controller; killed when dropped.
pub struct ControllerProcess {
    child: Child,
    pub log: PathBuf,
    pub metrics: String,
}

impl ControllerProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has ended (a crash point aborted it, say).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The controller's `/metrics` text; `None` while it does not answer.
    pub async fn metrics_text(&self) -> Option<String> {
        reqwest::get(format!("{}/metrics", self.metrics))
            .await
            .ok()?
            .text()
            .await
            .ok()
    }

    /// The value of one series exactly as rendered (`name` or `name{labels}`); `None` when the
    /// series is absent or the controller does not answer.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        self.metrics_text()
            .await?
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// A memory figure of the process from /proc (e.g. `VmRSS`, `VmHWM`), in KiB.
    pub fn memory_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- controller log ({}) ---\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(dir.join(name)).expect("create a log file")
}

async fn wait_http(url: &str) {
    if !try_http(url).await {
        panic!("{url} did not answer within 30 s");
    }
}

async fn try_http(url: &str) -> bool {
    // Generous: a debug build starting beside Docker builds and other tests on 2 CPUs.
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if client
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn repo() -> PathBuf {
    repo_root()
}
