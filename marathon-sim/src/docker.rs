//! Docker containerizer mode: every task of an app with `container.docker.image` becomes a real
//! container on a Docker engine, started the way Mesos' Docker containerizer starts it
//! (`apache/mesos` `src/docker/docker.cpp`): host volumes as `-v hostPath:containerPath:rw|ro`,
//! `container.docker.parameters` as `--key=value`, the network from the app, and `cmd` through
//! `/bin/sh -c`.
//!
//! A container that cannot be started or that exits makes its task fail with Docker's own
//! message in `lastTaskFailure`; Marathon then relaunches it after the app's `backoffSeconds`.
//! Killing a task removes its container. Every container carries the label
//! `berth-sim=<simulator id>` and all of them are removed when the simulator stops.
//!
//! Host paths: each simulated agent may have a root directory that stands for its
//! `/containerdata`. An absolute `hostPath` under `/containerdata/` is mapped below that agent's
//! root; any other absolute `hostPath` is used verbatim (berth's agents already write per-host
//! paths). Relative host paths (Docker named volumes, or Mesos' sandbox) are refused.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::Shared;
use crate::state::SimState;

/// The label every container of one simulator carries.
pub const SIM_LABEL: &str = "berth-sim";
/// The label holding the Marathon task id of a container.
pub const TASK_LABEL: &str = "berth-sim-task";
/// Where Mesos maps the sandbox inside a container; relative container paths are joined to it.
const MAPPED_SANDBOX: &str = "/mnt/mesos/sandbox";
/// What the simulated agents call their data directory.
const CONTAINERDATA: &str = "/containerdata";
/// A Docker command that takes longer than this is treated as failed.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs tasks as real Docker containers (see the module documentation).
#[derive(Debug, Clone)]
pub struct DockerMode {
    /// Each agent's `/containerdata`, by hostname. Agents without an entry use host paths as
    /// given.
    pub host_roots: BTreeMap<String, PathBuf>,
    /// The engine to use (`unix:///path/docker.sock`); the `docker` CLI's default otherwise.
    pub docker_host: Option<String>,
    /// The `docker` CLI to run.
    pub docker_bin: PathBuf,
    /// How often containers are checked for exits.
    pub poll: Duration,
}

impl Default for DockerMode {
    fn default() -> Self {
        Self {
            host_roots: BTreeMap::new(),
            docker_host: None,
            docker_bin: PathBuf::from("docker"),
            poll: Duration::from_millis(300),
        }
    }
}

impl DockerMode {
    /// Parses the binary's `--docker-root host=DIR`.
    pub fn add_root(&mut self, text: &str) -> Result<(), String> {
        let (host, dir) = text
            .split_once('=')
            .ok_or_else(|| format!("expected HOST=DIR, got '{text}'"))?;
        if host.is_empty() || !dir.starts_with('/') {
            return Err(format!("expected HOST=/absolute/dir, got '{text}'"));
        }
        self.host_roots.insert(host.to_string(), PathBuf::from(dir));
        Ok(())
    }
}

/// The app's Docker image, when it runs in the Docker containerizer.
pub fn docker_image(definition: &Map<String, Value>) -> Option<&str> {
    let container = definition.get("container")?;
    let kind = container.get("type").and_then(Value::as_str).unwrap_or("DOCKER");
    if kind != "DOCKER" {
        return None;
    }
    container
        .get("docker")?
        .get("image")?
        .as_str()
        .filter(|i| !i.is_empty())
}

/// What a task's container needs, taken from the app version it was launched with.
#[derive(Debug, Clone)]
struct Launch {
    task_id: String,
    app_id: String,
    host: String,
    port: u16,
    definition: Map<String, Value>,
}

/// Maps an app's `hostPath` on one agent.
pub fn host_path(host_path: &str, root: Option<&Path>) -> Result<String, String> {
    if !host_path.starts_with('/') {
        return Err(format!(
            "hostPath '{host_path}' is relative: Docker named volumes and sandbox paths are not \
             simulated"
        ));
    }
    if let Some(root) = root
        && (host_path == CONTAINERDATA || host_path.starts_with("/containerdata/"))
    {
        let rest = host_path[CONTAINERDATA.len()..].trim_start_matches('/');
        let mapped = if rest.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rest)
        };
        return Ok(mapped.to_string_lossy().into_owned());
    }
    Ok(host_path.to_string())
}

fn str_field<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// The network Mesos gives the container: a `net`/`network` parameter wins, then the 1.5+
/// `networks`, then the 1.4 `container.docker.network`; Mesos' default is the host network.
fn network(definition: &Map<String, Value>, parameters: &[(String, String)]) -> Option<String> {
    if parameters.iter().any(|(k, _)| k == "net" || k == "network") {
        return None;
    }
    if let Some(first) = definition
        .get("networks")
        .and_then(Value::as_array)
        .and_then(|n| n.first())
    {
        return Some(match str_field(first, "mode") {
            Some("container/bridge") => "bridge".into(),
            Some("container") => str_field(first, "name").unwrap_or("bridge").to_string(),
            _ => "host".into(),
        });
    }
    let legacy = definition
        .get("container")
        .and_then(|c| c.get("docker"))
        .and_then(|d| str_field(d, "network"));
    Some(
        match legacy {
            Some("BRIDGE") => "bridge",
            Some("NONE") => "none",
            _ => "host",
        }
        .to_string(),
    )
}

/// The `docker run` arguments for one task (after `docker run -d`).
fn run_args(launch: &Launch, name: &str, sim_id: &str, root: Option<&Path>) -> Result<Vec<String>, String> {
    let definition = &launch.definition;
    let image = docker_image(definition).ok_or("the app has no Docker image")?;
    let container = definition.get("container").cloned().unwrap_or(Value::Null);
    let docker = container.get("docker").cloned().unwrap_or(Value::Null);
    let mut args: Vec<String> = vec![
        "--name".into(),
        name.into(),
        "--label".into(),
        format!("{SIM_LABEL}={sim_id}"),
        "--label".into(),
        format!("{TASK_LABEL}={}", launch.task_id),
    ];
    let mut env: Vec<(String, String)> = vec![
        ("MARATHON_APP_ID".into(), launch.app_id.clone()),
        ("MESOS_TASK_ID".into(), launch.task_id.clone()),
        ("HOST".into(), launch.host.clone()),
        ("PORT0".into(), launch.port.to_string()),
    ];
    if let Some(vars) = definition.get("env").and_then(Value::as_object) {
        for (key, value) in vars {
            if let Some(value) = value.as_str() {
                env.push((key.clone(), value.to_string()));
            }
        }
    }
    for (key, value) in env {
        args.push("-e".into());
        args.push(format!("{key}={value}"));
    }
    for volume in container
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        // Persistent, external and secret volumes are not Docker host volumes.
        let (Some(container_path), Some(host)) =
            (str_field(volume, "containerPath"), str_field(volume, "hostPath"))
        else {
            continue;
        };
        let source = host_path(host, root)?;
        let target = if container_path.starts_with('/') {
            container_path.to_string()
        } else {
            format!("{MAPPED_SANDBOX}/{container_path}")
        };
        let mode = match str_field(volume, "mode") {
            Some("RO") => "ro",
            _ => "rw",
        };
        args.push("-v".into());
        args.push(format!("{source}:{target}:{mode}"));
    }
    let parameters: Vec<(String, String)> = docker
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                str_field(p, "key")?.to_string(),
                str_field(p, "value")?.to_string(),
            ))
        })
        .collect();
    if let Some(net) = network(definition, &parameters) {
        args.push("--net".into());
        args.push(net);
    }
    if docker.get("privileged").and_then(Value::as_bool) == Some(true) {
        args.push("--privileged".into());
    }
    for (key, value) in &parameters {
        args.push(format!("--{key}={value}"));
    }
    let cmd = definition.get("cmd").and_then(Value::as_str);
    if cmd.is_some() {
        args.push("--entrypoint".into());
        args.push("/bin/sh".into());
    }
    args.push(image.to_string());
    if let Some(cmd) = cmd {
        args.push("-c".into());
        args.push(cmd.to_string());
    } else if let Some(list) = definition.get("args").and_then(Value::as_array) {
        args.extend(list.iter().filter_map(Value::as_str).map(str::to_string));
    }
    Ok(args)
}

/// Docker's error text from a failed `docker run`, without the CLI's usage hint.
fn docker_error(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| !l.starts_with("See 'docker run") && !l.starts_with("Run 'docker run"))
        .collect();
    let text = lines.join(" ");
    let text = text.strip_prefix("docker: ").unwrap_or(&text).to_string();
    if text.is_empty() {
        format!("docker run exited with {}", output.status)
    } else {
        text
    }
}

/// Turns a task id into a container name (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`).
fn container_name(sim_id: &str, task_id: &str) -> String {
    let clean: String = task_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("mesos-{sim_id}-{clean}")
}

/// The running side of Docker mode: which container belongs to which task.
pub(crate) struct Containerizer {
    mode: DockerMode,
    pub sim_id: String,
    containers: Mutex<BTreeMap<String, String>>,
}

impl Containerizer {
    pub fn new(mode: DockerMode, sim_id: String) -> Self {
        Self {
            mode,
            sim_id,
            containers: Mutex::new(BTreeMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The container of a task, if it has one.
    pub fn container_of(&self, task_id: &str) -> Option<String> {
        self.map().get(task_id).cloned()
    }

    /// Task id → container name, for every container of this simulator.
    pub fn containers(&self) -> BTreeMap<String, String> {
        self.map().clone()
    }

    fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.mode.docker_bin);
        if let Some(host) = &self.mode.docker_host {
            cmd.env("DOCKER_HOST", host);
        }
        cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
        cmd
    }

    async fn docker(&self, args: &[String]) -> std::io::Result<Output> {
        let mut cmd = self.command();
        cmd.args(args);
        match tokio::time::timeout(DOCKER_TIMEOUT, cmd.output()).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("docker {} took longer than {DOCKER_TIMEOUT:?}", args.join(" ")),
            )),
        }
    }

    async fn remove(&self, name: &str) {
        match self.docker(&["rm".into(), "-f".into(), name.into()]).await {
            Ok(out) if out.status.success() => {}
            Ok(out) => tracing::warn!(container = name, error = %docker_error(&out), "docker rm failed"),
            Err(e) => tracing::warn!(container = name, error = %e, "docker rm failed"),
        }
    }

    /// Removes every container of this simulator (also those it lost track of).
    pub async fn remove_all(&self) {
        let filter = format!("label={SIM_LABEL}={}", self.sim_id);
        let listed = self
            .docker(&["ps".into(), "-aq".into(), "--filter".into(), filter])
            .await;
        if let Ok(out) = listed {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                self.remove(id).await;
            }
        }
        self.map().clear();
    }

    /// The blocking form of [`Containerizer::remove_all`], for `Drop`.
    pub fn remove_all_blocking(&self) {
        let mut cmd = std::process::Command::new(&self.mode.docker_bin);
        if let Some(host) = &self.mode.docker_host {
            cmd.env("DOCKER_HOST", host);
        }
        let filter = format!("label={SIM_LABEL}={}", self.sim_id);
        let Ok(out) = cmd.args(["ps", "-aq", "--filter", &filter]).output() else {
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if !ids.is_empty() {
            let mut rm = std::process::Command::new(&self.mode.docker_bin);
            if let Some(host) = &self.mode.docker_host {
                rm.env("DOCKER_HOST", host);
            }
            let _ = rm.args(["rm", "-f"]).args(&ids).output();
        }
        self.map().clear();
    }

    /// One pass: remove the containers of killed tasks, start containers for new tasks, and
    /// fail the tasks whose container exited.
    pub async fn sync(&self, shared: &Shared) {
        let (alive, launches) = {
            let state = shared.lock();
            let alive: BTreeSet<String> = state.tasks.iter().map(|t| t.id.clone()).collect();
            let known = self.map();
            let launches: Vec<Launch> = state
                .tasks
                .iter()
                .filter(|t| !t.ready && !known.contains_key(&t.id))
                .filter_map(|t| {
                    let app = state.apps.get(&t.app_id)?;
                    let definition = app
                        .versions
                        .iter()
                        .rev()
                        .find(|v| v.get("version").and_then(Value::as_str) == Some(t.version.as_str()))
                        .unwrap_or(&app.definition)
                        .clone();
                    Some(Launch {
                        task_id: t.id.clone(),
                        app_id: t.app_id.clone(),
                        host: t.host.clone(),
                        port: t.port,
                        definition,
                    })
                })
                .collect();
            (alive, launches)
        };
        // Killed tasks first: a restart stops the old container before the new one starts.
        let gone: Vec<(String, String)> = self
            .map()
            .iter()
            .filter(|(task, _)| !alive.contains(*task))
            .map(|(t, n)| (t.clone(), n.clone()))
            .collect();
        for (task, name) in gone {
            self.remove(&name).await;
            self.map().remove(&task);
        }
        for launch in launches {
            self.start(shared, launch).await;
        }
        self.reap(shared).await;
    }

    async fn start(&self, shared: &Shared, launch: Launch) {
        let name = container_name(&self.sim_id, &launch.task_id);
        let root = self.mode.host_roots.get(&launch.host).map(PathBuf::as_path);
        let args = match run_args(&launch, &name, &self.sim_id, root) {
            Ok(args) => args,
            Err(message) => {
                fail(
                    &mut shared.lock(),
                    &launch.task_id,
                    &format!("Failed to launch container: {message}"),
                );
                return;
            }
        };
        let mut full = vec!["run".to_string(), "-d".to_string()];
        full.extend(args);
        tracing::debug!(task = %launch.task_id, args = ?full, "docker run");
        match self.docker(&full).await {
            Ok(out) if out.status.success() => {
                let still_alive = {
                    let mut state = shared.lock();
                    match state.tasks.iter_mut().find(|t| t.id == launch.task_id) {
                        Some(task) => {
                            task.ready = true;
                            self.map().insert(launch.task_id.clone(), name.clone());
                            true
                        }
                        None => false,
                    }
                };
                if !still_alive {
                    // Killed while its container was starting.
                    self.remove(&name).await;
                }
            }
            Ok(out) => {
                let message = format!("Failed to run docker container: {}", docker_error(&out));
                // `docker run` leaves the container it created but could not start.
                self.remove(&name).await;
                fail(&mut shared.lock(), &launch.task_id, &message);
            }
            Err(e) => {
                self.remove(&name).await;
                fail(
                    &mut shared.lock(),
                    &launch.task_id,
                    &format!("Failed to run docker container: {e}"),
                );
            }
        }
    }

    /// Tasks whose container exited: `TASK_FINISHED` for status 0, `TASK_FAILED` otherwise.
    async fn reap(&self, shared: &Shared) {
        if self.map().is_empty() {
            return;
        }
        let args: Vec<String> = [
            "ps",
            "-a",
            "--filter",
            &format!("label={SIM_LABEL}={}", self.sim_id),
            "--filter",
            "status=exited",
            "--filter",
            "status=dead",
            "--format",
            "{{.Names}}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let Ok(out) = self.docker(&args).await else {
            return;
        };
        let exited: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let tasks: Vec<(String, String)> = self
            .map()
            .iter()
            .filter(|(_, name)| exited.contains(*name))
            .map(|(t, n)| (t.clone(), n.clone()))
            .collect();
        for (task, name) in tasks {
            let code = self
                .docker(&[
                    "inspect".into(),
                    "-f".into(),
                    "{{.State.ExitCode}}".into(),
                    name.clone(),
                ])
                .await
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            let logs = self
                .docker(&["logs".into(), "--tail".into(), "5".into(), name.clone()])
                .await
                .ok()
                .map(|o| {
                    let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
                    text.push_str(&String::from_utf8_lossy(&o.stderr));
                    text.split_whitespace().collect::<Vec<_>>().join(" ")
                })
                .unwrap_or_default();
            self.remove(&name).await;
            self.map().remove(&task);
            let state = &mut shared.lock();
            if code == "0" {
                state.remove_task(
                    &task,
                    "TASK_FINISHED",
                    "Finished",
                    "Container exited with status 0",
                );
            } else {
                let mut message = format!("Container exited with status {code}");
                if !logs.is_empty() {
                    message.push_str(&format!("; last output: {logs}"));
                }
                fail(state, &task, &message);
            }
        }
    }
}

/// Fails a task with `message` (its app's `lastTaskFailure`) and delays the next launch by the
/// app's `backoffSeconds`, as Marathon's launch queue does.
fn fail(state: &mut SimState, task_id: &str, message: &str) {
    let app_id = state
        .tasks
        .iter()
        .find(|t| t.id == task_id)
        .map(|t| t.app_id.clone());
    if !crate::controls::fail_task(state, task_id, message) {
        return;
    }
    if let Some(app) = app_id.and_then(|id| state.apps.get_mut(&id)) {
        let seconds = app
            .definition
            .get("backoffSeconds")
            .and_then(Value::as_f64)
            .unwrap_or(1.0)
            .clamp(0.0, 3600.0);
        app.delay_until = Some(Instant::now() + Duration::from_secs_f64(seconds));
    }
}

/// Runs [`Containerizer::sync`] every `poll` until aborted.
pub(crate) async fn run(shared: Arc<Shared>, containerizer: Arc<Containerizer>) {
    let mut interval = tokio::time::interval(containerizer.mode.poll);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        containerizer.sync(&shared).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn launch(definition: Value) -> Launch {
        Launch {
            task_id: "toto_web.instance-1._app.1".into(),
            app_id: "/toto/web".into(),
            host: "node-1".into(),
            port: 31000,
            definition: definition.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn volumes_parameters_and_cmd_follow_mesos() {
        let l = launch(json!({
            "id": "/toto/web", "cmd": "cat /etc/localtime",
            "container": {"type": "DOCKER", "docker": {"image": "img:1", "parameters": [{"key": "user", "value": "1000:1000"}]},
                "volumes": [
                    {"containerPath": "/etc/localtime", "hostPath": "/containerdata/user-toto/etc/localtime", "mode": "RO"},
                    {"containerPath": "data", "hostPath": "/srv/data", "mode": "RW"},
                    {"containerPath": "/p", "persistent": {"size": 10}, "mode": "RW"}
                ]}
        }));
        let args = run_args(&l, "c", "sim", Some(Path::new("/tmp/n1/containerdata"))).unwrap();
        let text = args.join(" ");
        assert!(
            text.contains("-v /tmp/n1/containerdata/user-toto/etc/localtime:/etc/localtime:ro"),
            "{text}"
        );
        assert!(text.contains("-v /srv/data:/mnt/mesos/sandbox/data:rw"), "{text}");
        assert!(text.contains("--net host"), "{text}");
        assert!(text.contains("--user=1000:1000"), "{text}");
        assert!(
            text.ends_with("--entrypoint /bin/sh img:1 -c cat /etc/localtime"),
            "{text}"
        );
        assert_eq!(args.iter().filter(|a| *a == "-v").count(), 2);
    }

    #[test]
    fn a_net_parameter_replaces_the_default_network() {
        let l = launch(
            json!({"id": "/a", "container": {"docker": {"image": "i", "parameters": [{"key": "net", "value": "none"}]}}}),
        );
        let args = run_args(&l, "c", "sim", None).unwrap();
        assert!(!args.contains(&"--net".to_string()));
        assert!(args.contains(&"--net=none".to_string()));
        let l = launch(
            json!({"id": "/a", "networks": [{"mode": "container/bridge"}], "container": {"docker": {"image": "i"}}}),
        );
        assert!(
            run_args(&l, "c", "sim", None)
                .unwrap()
                .join(" ")
                .contains("--net bridge")
        );
    }

    #[test]
    fn host_paths_outside_containerdata_are_verbatim_and_relative_ones_refused() {
        let root = Path::new("/r/n1");
        assert_eq!(
            host_path("/containerdata/user-a/x", Some(root)).unwrap(),
            "/r/n1/user-a/x"
        );
        assert_eq!(host_path("/containerdata", Some(root)).unwrap(), "/r/n1");
        assert_eq!(
            host_path("/containerdatax/y", Some(root)).unwrap(),
            "/containerdatax/y"
        );
        assert_eq!(host_path("/tmp/x", Some(root)).unwrap(), "/tmp/x");
        assert_eq!(host_path("/containerdata/u", None).unwrap(), "/containerdata/u");
        assert!(host_path("named", Some(root)).is_err());
    }

    #[test]
    fn only_docker_apps_have_an_image() {
        let def = |v: Value| v.as_object().cloned().unwrap_or_default();
        assert_eq!(
            docker_image(&def(json!({"container": {"docker": {"image": "x"}}}))),
            Some("x")
        );
        assert_eq!(
            docker_image(&def(
                json!({"container": {"type": "MESOS", "docker": {"image": "x"}}})
            )),
            None
        );
        assert_eq!(docker_image(&def(json!({"cmd": "sleep 1"}))), None);
    }
}
