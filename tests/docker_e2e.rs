//! The seed's problems with real containers: a real kube-apiserver v1.20.2, `berth controller`
//! as a process, real `berth agent` processes, and the Marathon simulator in Docker mode, where
//! every task is a real container on a Docker engine with the app's host volumes as
//! `-v hostPath:containerPath:rw|ro`, as Mesos' Docker containerizer passes them. Each test shows
//! the failure without berth (Docker's real error, the real owners on the host) and the fix with
//! it.
//!
//! No registry is reachable: the test image is `docker import`ed from a root filesystem made of
//! Debian's busybox-static. The ownership test starts a second, private `dockerd` with
//! `--userns-remap=default` (its own data root, exec root, socket and bridge; no iptables).
//! Every container, image and engine a test makes is removed when it ends.
mod support;
mod support_helm;

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use berth::crd::StatefulLocalVolume;
use kube::Api;
use marathon_sim::DockerMode;
use serde_json::{Value, json};
use support::{
    admin_client, install_crd, namespace,
    stack::{ControllerProcess, Stack, StackOptions, eventually},
};

/// What the test image holds at /etc/localtime: a file, as in any distribution image, with
/// content that differs from the host's.
const IMAGE_LOCALTIME: &str = "the image's own /etc/localtime\n";

fn docker(host: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new("docker");
    if let Some(host) = host {
        cmd.env("DOCKER_HOST", host);
    }
    cmd.args(args).output().expect("run the docker CLI")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A tiny image made from Debian's busybox-static, `docker import`ed into one engine; removed
/// when dropped.
struct TestImage {
    tag: String,
    host: Option<String>,
}

impl TestImage {
    fn import(host: Option<&str>) -> TestImage {
        remove_stale_images(host);
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let tag = format!(
            "berth-e2e/app:{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let listed = Command::new("dpkg")
            .args(["-L", "busybox-static"])
            .output()
            .expect("run dpkg");
        let busybox = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .find(|l| l.ends_with("/bin/busybox"))
            .map(PathBuf::from)
            .expect("busybox-static is installed (scripts/kube-test-env install)");
        let root = tempfile::tempdir().expect("a temp dir");
        let r = root.path();
        for dir in ["bin", "etc", "tmp"] {
            std::fs::create_dir_all(r.join(dir)).unwrap();
        }
        std::fs::copy(&busybox, r.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "cat", "echo", "touch", "ls", "id", "md5sum", "sleep", "mkdir", "test", "[",
        ] {
            std::os::unix::fs::symlink("busybox", r.join("bin").join(applet)).unwrap();
        }
        std::fs::write(r.join("etc/localtime"), IMAGE_LOCALTIME).unwrap();
        std::fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(r)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run tar");
        let mut import = Command::new("docker");
        if let Some(host) = host {
            import.env("DOCKER_HOST", host);
        }
        let out = import
            .args(["import", "-c", "ENV PATH=/bin", "-", &tag])
            .stdin(tar.stdout.take().expect("tar's stdout"))
            .output()
            .expect("run docker import");
        assert!(tar.wait().expect("wait for tar").success(), "tar failed");
        assert!(
            out.status.success(),
            "docker import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TestImage {
            tag,
            host: host.map(str::to_string),
        }
    }
}

/// Removes test images of test processes that are gone (killed before their cleanup ran).
fn remove_stale_images(host: Option<&str>) {
    let listed = docker(host, &["images", "berth-e2e/app", "--format", "{{.Tag}}"]);
    for tag in stdout(&listed).lines() {
        let pid = tag.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            docker(host, &["image", "rm", "-f", &format!("berth-e2e/app:{tag}")]);
        }
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        docker(self.host.as_deref(), &["image", "rm", "-f", &self.tag]);
    }
}

/// A private Docker engine with `--userns-remap=default`; stopped and removed when dropped.
struct RemapEngine {
    child: Child,
    dir: tempfile::TempDir,
    host: String,
    /// The bridge made for it (removed with it).
    bridge: String,
    /// The first host id of the remap range (`dockremap` in /etc/subuid).
    base: u32,
}

impl RemapEngine {
    async fn start() -> RemapEngine {
        support::require_root();
        let dir = tempfile::Builder::new()
            .prefix("berth-dockerd")
            .tempdir()
            .expect("a temp dir");
        let d = dir.path();
        std::fs::write(d.join("daemon.json"), "{}").unwrap();
        let host = format!("unix://{}", d.join("docker.sock").display());
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        // A bridge of its own: with `--bridge=none` dockerd deletes the host's default `docker0`,
        // which would break the machine's main engine.
        let bridge = format!("berthud{}", std::process::id() % 100_000);
        let _ = Command::new("ip").args(["link", "del", &bridge]).status();
        for args in [
            vec!["link", "add", bridge.as_str(), "type", "bridge"],
            vec!["link", "set", bridge.as_str(), "up"],
        ] {
            let ok = Command::new("ip").args(&args).status().is_ok_and(|s| s.success());
            assert!(ok, "ip {}", args.join(" "));
        }
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .args(["-H", &host])
            .args([
                "--userns-remap=default",
                &format!("--bridge={bridge}"),
                "--iptables=false",
                "--ip-masq=false",
                "--storage-driver=vfs",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let mut engine = RemapEngine {
            child,
            dir,
            host,
            bridge,
            base: 0,
        };
        let host = engine.host.clone();
        let userns = eventually(60, "the userns-remap dockerd to answer", || {
            let host = host.clone();
            async move {
                let out = docker(Some(&host), &["info", "-f", "{{json .SecurityOptions}}"]);
                out.status.success().then(|| stdout(&out))
            }
        })
        .await;
        assert!(
            userns.contains("name=userns"),
            "the private engine runs without userns: {userns}"
        );
        // dockerd created dockremap's ranges if scripts/kube-test-env had not.
        let subuid = std::fs::read_to_string("/etc/subuid").expect("read /etc/subuid");
        let line = subuid
            .lines()
            .find(|l| l.starts_with("dockremap:"))
            .expect("a dockremap range in /etc/subuid");
        engine.base = line.split(':').nth(1).unwrap().parse().unwrap();
        engine
    }
}

impl Drop for RemapEngine {
    fn drop(&mut self) {
        // SIGTERM: dockerd stops its containers and its own containerd.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        for _ in 0..150 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!(
                "--- dockerd log (last lines, newest first) ---\n{}",
                tail.join("\n")
            );
        }
    }
}

struct Scenario {
    ns: String,
    api: Api<StatefulLocalVolume>,
    stack: Stack,
    http: reqwest::Client,
    image: String,
    docker_host: Option<String>,
}

impl Scenario {
    /// A stack whose simulator runs tasks as containers on `engine` (the default engine when
    /// None), each host's `/containerdata` being its own directory.
    async fn start(hosts: &[&str], image: &TestImage, engine: Option<&RemapEngine>) -> Scenario {
        let client = admin_client().await;
        install_crd(&client).await;
        support_helm::grant_chart_rbac_once(&client).await;
        let ns = namespace(&client, "toto").await;
        let api = Api::namespaced(client, &ns);
        let docker_host = engine.map(|e| e.host.clone());
        let mut options = StackOptions::default();
        if let Some(engine) = engine {
            options.remap = (engine.base, 65536);
        }
        let sim_host = docker_host.clone();
        options.sim = Box::new(move |config, roots| {
            config.step = Duration::from_millis(100);
            config.docker = Some(DockerMode {
                host_roots: roots.iter().cloned().collect(),
                docker_host: sim_host,
                ..DockerMode::default()
            });
        });
        let stack = Stack::start_with(hosts, options).await;
        Scenario {
            ns,
            api,
            stack,
            http: reqwest::Client::new(),
            image: image.tag.clone(),
            docker_host,
        }
    }

    async fn controller(&self) -> ControllerProcess {
        self.stack.controller(&self.ns, &[]).await
    }

    fn app_id(&self, name: &str) -> String {
        format!("/{}/{name}", self.ns)
    }

    /// A Docker app of the test image running `cmd`, without networking (`net=none`: the
    /// userns-remap engine refuses the host network), with extra Docker parameters.
    fn app(&self, id: &str, cmd: &str, instances: u32, parameters: &[(&str, &str)]) -> Value {
        let mut params = vec![json!({"key": "net", "value": "none"})];
        params.extend(parameters.iter().map(|(k, v)| json!({"key": k, "value": v})));
        json!({
            "id": id, "cmd": cmd, "cpus": 0.1, "mem": 32, "instances": instances,
            "backoffSeconds": 1,
            "container": {"type": "DOCKER", "docker": {"image": self.image, "parameters": params}, "volumes": []},
        })
    }

    async fn create_app(&self, app: Value) {
        self.stack.create_app(&app).await;
    }

    async fn scale(&self, id: &str, instances: u32) {
        let res = self
            .http
            .put(format!("{}/v2/apps{id}", self.stack.sim.url()))
            .json(&json!({ "instances": instances }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    }

    async fn delete_app(&self, id: &str) {
        let res = self
            .http
            .delete(format!("{}/v2/apps{id}", self.stack.sim.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    }

    async fn get_app(&self, id: &str) -> Value {
        self.stack.app(id).await
    }

    /// Waits for a task failure whose message contains `needle`; returns the message.
    async fn wait_failure(&self, id: &str, needle: &str) -> String {
        eventually(60, &format!("a task failure of {id} with '{needle}'"), || async {
            let app = self.get_app(id).await;
            let message = app["lastTaskFailure"]["message"].as_str()?.to_string();
            message.contains(needle).then_some(message)
        })
        .await
    }

    /// Waits for a running task of the app whose container was started (other than `not`);
    /// returns (task id, host, container name).
    async fn wait_running(&self, id: &str, not: Option<&str>) -> (String, String, String) {
        eventually(60, &format!("a running container of {id}"), || async {
            let app = self.get_app(id).await;
            let task = app["tasks"]
                .as_array()?
                .iter()
                .find(|t| t["state"] == "TASK_RUNNING" && t["id"].as_str() != not)?
                .clone();
            let task_id = task["id"].as_str()?.to_string();
            let container = self.stack.sim.container_of(&task_id)?;
            Some((task_id, task["host"].as_str()?.to_string(), container))
        })
        .await
    }

    async fn apply(&self, name: &str, spec: Value) {
        support::create_volume(&self.api, name, spec).await;
    }

    /// Waits for `Ready` with this reason; returns (status, message).
    async fn wait_reason(&self, name: &str, reason: &str, secs: u64) -> (String, String) {
        eventually(secs, &format!("{name} to have Ready reason {reason}"), || async {
            let v = self.api.get(name).await.ok()?;
            let ready = v.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
            (ready.reason == reason).then_some((ready.status, ready.message))
        })
        .await
    }

    fn logs(&self, container: &str) -> String {
        let out = docker(self.docker_host.as_deref(), &["logs", container]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn container_exists(&self, container: &str) -> bool {
        docker(self.docker_host.as_deref(), &["inspect", container])
            .status
            .success()
    }

    /// A host's path for a tenant without berth, as the app writes it (`/containerdata/...`,
    /// which the simulator maps to the host's root).
    fn plain_path(&self, host: &str, path: &str) -> PathBuf {
        self.stack
            .host(host)
            .root
            .join(path.trim_start_matches("/containerdata/"))
    }
}

fn md5(path: &Path) -> String {
    let out = Command::new("md5sum").arg(path).output().expect("run md5sum");
    stdout(&out)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_mount_fails_with_not_a_directory_without_berth_and_reads_the_seeded_file_with_it() {
    let image = TestImage::import(None);
    let s = Scenario::start(&["node-1"], &image, None).await;
    let _ctl = s.controller().await;

    // Without berth: the chrooted path does not exist on the host, so `-v` makes a directory
    // there, and mounting it onto the image's file fails.
    let plain = "/tata/clock";
    let host_path = "/containerdata/user-tata/etc/localtime";
    let mut app = s.app(plain, "cat /etc/localtime; exec sleep 3600", 1, &[]);
    app["container"]["volumes"] =
        json!([{"containerPath": "/etc/localtime", "hostPath": host_path, "mode": "RO"}]);
    s.create_app(app).await;
    let message = s.wait_failure(plain, "not a directory").await;
    eprintln!("lastTaskFailure without berth: {message}");
    assert!(
        message.contains("Are you trying to mount a directory onto a file (or vice-versa)?"),
        "{message}"
    );
    let on_host = s.plain_path("node-1", host_path);
    assert!(message.contains(&on_host.display().to_string()), "{message}");
    assert!(
        std::fs::symlink_metadata(&on_host).unwrap().is_dir(),
        "Docker left a directory at {}",
        on_host.display()
    );
    assert_eq!(s.get_app(plain).await["tasksRunning"], 0);
    s.delete_app(plain).await;

    // With berth: a File volume, seeded from the host's /etc/localtime, declared before the app
    // starts.
    let id = s.app_id("clock");
    s.create_app(s.app(&id, "md5sum /etc/localtime; exec sleep 3600", 0, &[]))
        .await;
    s.apply(
        "localtime",
        json!({"app": id, "containerPath": "/etc/localtime", "hostPath": "/etc/localtime", "type": "File",
               "readOnly": true, "seed": {"copyFromHost": "/etc/localtime"}}),
    )
    .await;
    s.wait_reason("localtime", "Bound", 60).await;
    s.scale(&id, 1).await;
    let (_, host, container) = s.wait_running(&id, None).await;
    let seeded = s.stack.host(&host).tenant_path(&s.ns, "/etc/localtime");
    assert!(std::fs::symlink_metadata(&seeded).unwrap().is_file());
    let want = md5(Path::new("/etc/localtime"));
    let output = eventually(30, "the container to print its /etc/localtime", || async {
        let logs = s.logs(&container);
        logs.contains("/etc/localtime").then_some(logs)
    })
    .await;
    eprintln!("the container with berth printed: {}", output.trim());
    assert!(
        output.contains(&want),
        "the container must read the seeded copy of the host's /etc/localtime ({want}), not the image's: {output}"
    );
    assert_eq!(s.get_app(&id).await["tasksRunning"], 1);
    // The plain app's containers went with it.
    assert!(
        s.stack
            .sim
            .containers()
            .keys()
            .all(|task| !task.starts_with("tata_clock.")),
        "{:?}",
        s.stack.sim.containers()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_volume_where_the_image_has_a_file_becomes_a_mount_type_mismatch_condition() {
    let image = TestImage::import(None);
    let s = Scenario::start(&["node-1"], &image, None).await;
    let _ctl = s.controller().await;
    let id = s.app_id("clock");
    s.create_app(s.app(&id, "cat /etc/localtime; exec sleep 3600", 0, &[]))
        .await;
    // Declared as a Directory (the default), but the image has a file at /etc/localtime.
    s.apply(
        "localtime",
        json!({"app": id, "containerPath": "/etc/localtime", "hostPath": "/etc/localtime"}),
    )
    .await;
    s.wait_reason("localtime", "Bound", 60).await;
    s.scale(&id, 1).await;
    let docker_said = s.wait_failure(&id, "not a directory").await;
    // Marathon keeps the scale deployment going for ever (its task fails on every relaunch);
    // berth reports the failure while it runs.
    let (status, message) = s.wait_reason("localtime", "MountTypeMismatch", 60).await;
    eprintln!("Ready=False MountTypeMismatch: {message}");
    assert_eq!(status, "False");
    assert!(message.contains("(the volume at /etc/localtime)"), "{message}");
    assert!(message.contains("Set spec.type to File"), "{message}");
    assert!(
        message.contains("not a directory"),
        "the condition quotes Docker: {message}"
    );
    assert!(docker_said.contains("error mounting"), "{docker_said}");
    let stalled = s
        .api
        .get("localtime")
        .await
        .unwrap()
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Stalled")
        .unwrap();
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "MountTypeMismatch")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uid_1000_can_write_its_volume_under_a_userns_remap_dockerd_only_with_berth() {
    let engine = RemapEngine::start().await;
    let image = TestImage::import(Some(&engine.host));
    let s = Scenario::start(&["node-1"], &image, Some(&engine)).await;
    let _ctl = s.controller().await;
    let base = engine.base;
    let write = "id; touch /data/written && echo wrote /data/written && exec sleep 3600";

    // Without berth: Docker creates the missing source as the remapped root, and the container
    // process (uid 1000, host uid base+1000) cannot write it.
    let plain = "/tata/writer";
    let host_path = "/containerdata/user-tata/data";
    let mut app = s.app(plain, write, 1, &[("user", "1000:1000")]);
    app["container"]["volumes"] = json!([{"containerPath": "/data", "hostPath": host_path, "mode": "RW"}]);
    s.create_app(app).await;
    let message = s.wait_failure(plain, "Permission denied").await;
    eprintln!("lastTaskFailure without berth: {message}");
    assert!(message.contains("Container exited with status 1"), "{message}");
    let on_host = std::fs::metadata(s.plain_path("node-1", host_path)).unwrap();
    eprintln!(
        "without berth the volume is {:o} {}:{}",
        on_host.mode() & 0o7777,
        on_host.uid(),
        on_host.gid()
    );
    assert_eq!(
        (on_host.uid(), on_host.gid()),
        (base, base),
        "Docker made the volume for the remapped root"
    );
    s.delete_app(plain).await;

    // With berth: owner 1000:1000 in the container is host base+1000.
    let id = s.app_id("writer");
    s.create_app(s.app(&id, write, 0, &[("user", "1000:1000")])).await;
    s.apply(
        "data",
        json!({"app": id, "containerPath": "/data", "hostPath": "/data", "owner": {"uid": 1000, "gid": 1000}}),
    )
    .await;
    s.wait_reason("data", "Bound", 60).await;
    s.scale(&id, 1).await;
    let (_, host, container) = s.wait_running(&id, None).await;
    let written = s.stack.host(&host).tenant_path(&s.ns, "/data/written");
    let meta = eventually(30, "the container to write /data/written", || async {
        std::fs::symlink_metadata(&written).ok()
    })
    .await;
    let logs = s.logs(&container);
    eprintln!(
        "with berth the container said: {}; the file is {}:{} on the host",
        logs.trim().replace('\n', "; "),
        meta.uid(),
        meta.gid()
    );
    assert!(logs.contains("uid=1000"), "{logs}");
    assert_eq!(
        (meta.uid(), meta.gid()),
        (base + 1000, base + 1000),
        "uid 1000 in the container is base+1000 on the host"
    );
    // The container's own view of its ids confirms the engine's mapping.
    let pid = stdout(&docker(
        Some(&engine.host),
        &["inspect", "-f", "{{.State.Pid}}", &container],
    ));
    let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    assert_eq!(
        uid_map.split_whitespace().take(3).collect::<Vec<_>>(),
        vec!["0".to_string(), base.to_string(), "65536".to_string()],
        "{uid_map}"
    );
    drop(s);
    drop(image);
    drop(engine);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_task_finds_its_data_only_when_berth_pins_it() {
    let image = TestImage::import(None);
    let s = Scenario::start(&["node-1", "node-2"], &image, None).await;
    let ctl = s.controller().await;
    // Each start records what it found, then leaves a marker.
    let cmd = "echo \"start on $HOST saw: $(cat /data/marker 2>/dev/null || echo nothing)\" >> /data/log; \
               echo \"written on $HOST\" > /data/marker; exec sleep 3600";

    // Without berth: the task's host goes away, Marathon places it on the other host, where the
    // data is not.
    let plain = "/tata/store";
    let host_path = "/containerdata/user-tata/store";
    let mut app = s.app(plain, cmd, 1, &[]);
    app["container"]["volumes"] = json!([{"containerPath": "/data", "hostPath": host_path, "mode": "RW"}]);
    s.create_app(app).await;
    let (task, first, container) = s.wait_running(plain, None).await;
    let first_log = s.plain_path(&first, host_path).join("log");
    eventually(30, "the first start to write its log", || async {
        std::fs::read_to_string(&first_log).ok().filter(|l| !l.is_empty())
    })
    .await;
    s.stack.sim.set_agent_up(&first, false);
    let (_, second, _) = s.wait_running(plain, Some(&task)).await;
    assert_ne!(second, first, "with its host down the task must move");
    assert!(
        !s.container_exists(&container),
        "the lost task's container is removed"
    );
    let second_log = s.plain_path(&second, host_path).join("log");
    let log = eventually(30, "the second start to write its log", || async {
        std::fs::read_to_string(&second_log)
            .ok()
            .filter(|l| !l.is_empty())
    })
    .await;
    eprintln!("without berth, on {second}: {}", log.trim());
    assert_eq!(
        log,
        format!("start on {second} saw: nothing\n"),
        "the data stayed on {first}"
    );
    assert_eq!(
        std::fs::read_to_string(s.plain_path(&first, host_path).join("marker")).unwrap(),
        format!("written on {first}\n")
    );
    s.stack.sim.set_agent_up(&first, true);
    s.delete_app(plain).await;

    // With berth: the app is pinned where its volume is, so it comes back there.
    let id = s.app_id("store");
    s.create_app(s.app(&id, cmd, 0, &[])).await;
    s.apply(
        "store",
        json!({"app": id, "containerPath": "/data", "hostPath": "/store"}),
    )
    .await;
    s.wait_reason("store", "Bound", 60).await;
    s.scale(&id, 1).await;
    let (task, host, _) = s.wait_running(&id, None).await;
    let data = s.stack.host(&host).tenant_path(&s.ns, "/store");
    eventually(30, "the first start to write its log", || async {
        std::fs::read_to_string(data.join("log"))
            .ok()
            .filter(|l| !l.is_empty())
    })
    .await;
    s.stack.sim.set_agent_up(&host, false);
    s.stack.sim.set_agent_up(&host, true);
    let (_, again, _) = s.wait_running(&id, Some(&task)).await;
    assert_eq!(again, host, "berth's pin brings the task back to its data");
    let log = eventually(30, "the second start to write its log", || async {
        std::fs::read_to_string(data.join("log"))
            .ok()
            .filter(|l| l.lines().count() == 2)
    })
    .await;
    eprintln!("with berth, on {host}: {}", log.trim().replace('\n', " | "));
    assert_eq!(
        log,
        format!("start on {host} saw: nothing\nstart on {host} saw: written on {host}\n")
    );

    // Stopping the simulator removes every container it made. (The controller goes first: its
    // event stream would hold the simulator's graceful shutdown open.)
    drop(ctl);
    let sim_id = s.stack.sim.docker_id().unwrap();
    let Scenario { stack, .. } = s;
    let Stack { sim, hosts, dir, .. } = stack;
    sim.shutdown().await;
    let left = docker(
        None,
        &["ps", "-aq", "--filter", &format!("label=berth-sim={sim_id}")],
    );
    assert_eq!(stdout(&left), "", "containers left behind");
    drop(hosts);
    drop(dir);
}
