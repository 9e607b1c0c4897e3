//! Agents as Docker containers, for scenario tests about moving data and losing hosts: each
//! simulated host's `berth agent` runs in a container of its own (its own filesystem view, its
//! own address on a Docker network of the stack), from an image built out of this test build's
//! binary the way `scripts/image` builds berth's image, and run as
//! `deploy/agent/marathon-app.json` runs it: root, every capability dropped but the six the agent
//! needs, no new privileges, read-only root filesystem. A host is cut off with
//! `docker network disconnect` or `docker kill`.
//!
//! The host's root directory and its token file are bind-mounted at the same absolute paths, so
//! the agent's `--root-template` reads the same inside and outside, and a test inspects the
//! host's files directly (it runs as root).
//!
//! Names: networks `berth-test-<pid>-<n>`, containers `berth-test-<pid>-<n>-<host>`, images
//! `berth-test/agent:<key of the binary>`. What a killed test process left behind is removed by
//! the next one ([`remove_stale`]).
#![allow(dead_code)]

use std::{
    ffi::{OsStr, OsString},
    fs::File,
    net::Ipv4Addr,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::Path,
    process::{Command, Output},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use super::repo_root;

/// The port every agent container listens on (each container has an address of its own).
pub const AGENT_PORT: u16 = 8080;
/// The prefix of every network and container these helpers make.
pub const PREFIX: &str = "berth-test-";
/// The repository of the agent images these helpers build.
pub const IMAGE_REPO: &str = "berth-test/agent";
/// The base image `scripts/image` builds on (fixed in the script).
const BASE_TAG: &str = "berth-local/base:bookworm";
/// How many agent images to keep (for other worktrees or binaries running at the same time).
const IMAGES_KEPT: usize = 3;

/// The capabilities the agent keeps in its container, everything else dropped (as
/// `deploy/agent/marathon-app.json` runs it): chown/fchown to any id, chmod and open any file,
/// keep setgid bits, and `CAP_SYS_ADMIN` for the `trusted.berth.volume` attribute.
pub const AGENT_CAPS: [&str; 6] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "SYS_ADMIN",
];

/// The same capabilities as a `CapEff` mask of `/proc/<pid>/status`.
pub const AGENT_CAP_MASK: u64 = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 21);

const NEED_DOCKER: &str = "these tests run every agent as a Docker container: install Docker and \
    start its daemon (CI does, as for tests/docker_e2e.rs; scripts/kube-test-env install adds \
    busybox-static for the image's base)";

/// Runs the docker CLI; panics when it cannot be started (no Docker).
pub fn docker<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the docker CLI ({e}): {NEED_DOCKER}"))
}

/// Runs the docker CLI, panics with its output when it fails; returns its trimmed stdout.
pub fn docker_ok<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> String {
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = docker(&args);
    assert!(
        out.status.success(),
        "docker {} failed: {}{}",
        shown(&args),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn shown(args: &[OsString]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Panics with a clear message unless the docker CLI runs and its daemon answers (never skips).
pub fn require_docker() {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let out = docker(["version", "--format", "{{.Server.Version}}"]);
        assert!(
            out.status.success(),
            "the Docker daemon does not answer (docker version: {}): {NEED_DOCKER}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    });
}

/// Everything a Stack with container agents needs before its first container: Docker, no
/// leftovers of dead test processes, the agent image.
pub fn prepare() -> &'static str {
    require_docker();
    remove_stale();
    agent_image()
}

/// The test process that made a network or container, from its name.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

fn is_stale(name: &str) -> bool {
    owner_pid(name)
        .is_some_and(|pid| pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists())
}

/// Removes the containers and networks of test processes that are gone (killed before their
/// cleanup ran). Once per test process.
pub fn remove_stale() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let names = docker_ok([
            "ps",
            "-a",
            "--filter",
            &format!("name={PREFIX}"),
            "--format",
            "{{.Names}}",
        ]);
        for name in names.lines().filter(|n| is_stale(n)) {
            docker(["rm", "-f", name]);
        }
        let networks = docker_ok([
            "network",
            "ls",
            "--filter",
            &format!("name={PREFIX}"),
            "--format",
            "{{.Name}}",
        ]);
        for name in networks.lines().filter(|n| is_stale(n)) {
            remove_attached(name);
            docker(["network", "rm", name]);
        }
    });
}

/// Removes every container attached to a network.
fn remove_attached(network: &str) {
    let ids = docker_ok(["ps", "-aq", "--filter", &format!("network={network}")]);
    for id in ids.lines().filter(|l| !l.is_empty()) {
        docker(["rm", "-f", id]);
    }
}

/// The agent image for this test build's `berth` binary, built once per binary: within a process
/// once (later calls wait for the first), across processes under a lock file (one builds, the
/// others then find the image).
pub fn agent_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(build_agent_image)
}

/// What identifies a build of the image: the binary (path, size, modification time, inode) and
/// the files that shape the image.
fn image_key(bin: &Path) -> String {
    let md = std::fs::metadata(bin).unwrap_or_else(|e| panic!("the berth binary {}: {e}", bin.display()));
    let mut h = blake3::Hasher::new();
    h.update(bin.as_os_str().as_bytes());
    for n in [md.len(), md.mtime() as u64, md.mtime_nsec() as u64, md.ino()] {
        h.update(&n.to_le_bytes());
    }
    for f in ["Dockerfile", "scripts/image"] {
        h.update(&std::fs::read(repo_root().join(f)).unwrap_or_default());
    }
    h.finalize().to_hex()[..16].to_string()
}

fn image_exists(tag: &str) -> bool {
    docker(["image", "inspect", tag]).status.success()
}

/// An exclusive lock on a file, held until the returned file is dropped.
fn lock_file(path: &Path) -> File {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open the lock file {}: {e}", path.display()));
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
        .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
    f
}

fn scripts_image(args: &[&OsStr]) -> Result<(), String> {
    let out = Command::new(repo_root().join("scripts/image"))
        .args(args)
        .output()
        .expect("run scripts/image");
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "scripts/image {:?} failed:\n{}{}",
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// `scripts/image` with one retry: a build that another process's `scripts/image` disturbed
/// (it prunes the legacy builder's stage images when it ends) fails once.
fn scripts_image_retried(args: &[&OsStr]) {
    if let Err(first) = scripts_image(args) {
        eprintln!("[docker_hosts] retrying after: {first}");
        std::thread::sleep(Duration::from_secs(2));
        if let Err(second) = scripts_image(args) {
            panic!("{second}");
        }
    }
}

/// Whether the binary runs in the image (the base has the libraries it links).
fn image_runs(tag: &str) -> bool {
    let out = docker([
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "berth",
        tag,
        "--version",
    ]);
    out.status.success()
        && String::from_utf8_lossy(&out.stdout).trim() == format!("berth {}", env!("CARGO_PKG_VERSION"))
}

fn build_agent_image() -> String {
    require_docker();
    let _lock = lock_file(&std::env::temp_dir().join("berth-test-agent-image.lock"));
    // A copy of the binary as it is now, so that a build running on (cargo relinks it) changes
    // neither the key nor what goes in the image.
    let bin = super::stack::berth_bin();
    let copy = tempfile::Builder::new()
        .prefix("berth-test-image")
        .tempdir()
        .expect("a temp dir");
    let (tag, binary) = loop {
        let key = image_key(&bin);
        let tag = format!("{IMAGE_REPO}:{key}");
        if image_exists(&tag) {
            return tag;
        }
        let binary = copy.path().join("berth");
        std::fs::copy(&bin, &binary).unwrap_or_else(|e| panic!("copy {}: {e}", bin.display()));
        if image_key(&bin) == key {
            break (tag, binary);
        }
    };
    let started = Instant::now();
    let (bin_arg, tag_arg) = (binary.as_os_str(), OsStr::new(&tag));
    let build = || {
        scripts_image_retried(&[
            "build".as_ref(),
            "--binary".as_ref(),
            bin_arg,
            "--tag".as_ref(),
            tag_arg,
        ])
    };
    let base = || scripts_image_retried(&["base".as_ref(), BASE_TAG.as_ref(), bin_arg]);
    if !image_exists(BASE_TAG) {
        base();
    }
    build();
    if !image_runs(&tag) || !image_has_ca_bundle(&tag) {
        // The base was imported for another binary and lacks a library this one links, or by
        // a scripts/image from before the base carried the CA bundle.
        base();
        docker(["image", "rm", "-f", &tag]);
        build();
        assert!(
            image_runs(&tag),
            "berth --version does not run in {tag}, even on a base made for this binary"
        );
        // Without CA certificates the agent could not send transfers (scripts/image base).
        assert!(image_has_ca_bundle(&tag), "{tag} has no {CA_BUNDLE}");
    }
    eprintln!(
        "[docker_hosts] built {tag} from {} in {:.1} s",
        bin.display(),
        started.elapsed().as_secs_f64()
    );
    // Older agent images (kept: the newest few, and any a container still uses).
    let tags = docker_ok(["images", IMAGE_REPO, "--format", "{{.Tag}}"]);
    for old in tags
        .lines()
        .filter(|t| format!("{IMAGE_REPO}:{t}") != tag)
        .skip(IMAGES_KEPT - 1)
    {
        docker(["image", "rm", &format!("{IMAGE_REPO}:{old}")]);
    }
    tag
}

/// Where the Dockerfile puts the system's CA certificates (copied from the build image).
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Whether an image holds [`CA_BUNDLE`], as production images must: the Dockerfile copies it
/// from its build image, and `scripts/image base` from the machine (Debian's ca-certificates).
fn image_has_ca_bundle(tag: &str) -> bool {
    docker([
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "busybox",
        tag,
        "test",
        "-s",
        CA_BUNDLE,
    ])
    .status
    .success()
}

/// IPv4 routes of the test host (destination, mask), default routes left out.
fn host_routes() -> Vec<(u32, u32)> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let hex = |s: &str| {
        u32::from_str_radix(s, 16)
            .ok()
            .map(|v| u32::from_be_bytes(v.to_le_bytes()))
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((hex(f.get(1)?)?, hex(f.get(7)?)?))
        })
        .filter(|&(_, mask)| mask != 0)
        .collect()
}

/// A user-defined bridge network with a fixed /24 subnet in 172.30.0.0/16, chosen to collide
/// with no other Docker network and no route of the test host. Removed when dropped (with any
/// container still attached).
pub struct DockerNetwork {
    pub name: String,
    /// `172.30.X.0/24`.
    pub subnet: String,
    prefix: [u8; 3],
}

impl DockerNetwork {
    pub fn create() -> DockerNetwork {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        require_docker();
        let pid = std::process::id();
        let seq = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{pid}-{seq}");
        let routes = host_routes();
        let first = pid.wrapping_mul(31).wrapping_add(seq.wrapping_mul(7)) % 256;
        let mut refused = Vec::new();
        for i in 0..256 {
            let x = ((first + i) % 256) as u8;
            let prefix = [172, 30, x];
            let net = u32::from_be_bytes([172, 30, x, 0]);
            let mask = 0xffff_ff00;
            if routes
                .iter()
                .any(|&(dst, m)| (dst & m & mask) == (net & m & mask))
            {
                continue;
            }
            let subnet = format!("172.30.{x}.0/24");
            let out = docker([
                "network",
                "create",
                "--driver",
                "bridge",
                "--subnet",
                &subnet,
                "--gateway",
                &format!("172.30.{x}.1"),
                "--label",
                "io.berth.test=hosts",
                &name,
            ]);
            if out.status.success() {
                return DockerNetwork { name, subnet, prefix };
            }
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            // Another network (of another test process, say) holds this subnet: the next one.
            if err.contains("overlap") || err.contains("in use") {
                refused.push(subnet);
                continue;
            }
            panic!("docker network create {name} --subnet {subnet}: {err}");
        }
        panic!("no free /24 in 172.30.0.0/16 for a test network (refused: {refused:?})");
    }

    /// The fixed address of the `index`th host (from .2; .1 is the gateway, the test host).
    pub fn ip(&self, index: usize) -> Ipv4Addr {
        assert!(index < 250, "at most 250 hosts on a test network");
        let [a, b, c] = self.prefix;
        Ipv4Addr::new(a, b, c, 2 + index as u8)
    }
}

impl Drop for DockerNetwork {
    fn drop(&mut self) {
        remove_attached(&self.name);
        let out = docker(["network", "rm", &self.name]);
        if !out.status.success() {
            eprintln!(
                "[docker_hosts] docker network rm {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
}

/// One host's agent in a container. Not removed on drop: its [`super::stack::Host`] does that
/// (after saving its log).
pub struct AgentContainer {
    /// The container's name, `berth-test-<pid>-<n>-<host>`.
    pub name: String,
    pub network: String,
    pub ip: Ipv4Addr,
    pub port: u16,
}

impl AgentContainer {
    /// `docker run -d` of the agent image as the `index`th host of `network`, with `args` after
    /// the image's entrypoint (`agent --listen 0.0.0.0:<AGENT_PORT> ...`). `rw` and `ro` are
    /// bind-mounted at the same paths (read-write, read-only). Does not wait for the agent.
    pub fn run(
        host: &str,
        network: &DockerNetwork,
        index: usize,
        args: &[OsString],
        rw: &[&Path],
        ro: &[&Path],
    ) -> AgentContainer {
        let image = agent_image();
        let name = format!("{}-{host}", network.name);
        let ip = network.ip(index);
        let mut cmd: Vec<OsString> = [
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &network.name,
            "--ip",
            &ip.to_string(),
            "--user",
            "0:0",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--read-only",
            "--label",
            "io.berth.test=hosts",
        ]
        .iter()
        .map(Into::into)
        .collect();
        for cap in AGENT_CAPS {
            cmd.extend(["--cap-add".into(), cap.into()]);
        }
        let mount = |p: &Path, readonly: bool| {
            let p = p.to_str().expect("a UTF-8 path to mount");
            assert!(!p.contains(','), "{p}: a path to mount cannot hold a comma");
            let mut m = format!("type=bind,source={p},target={p}");
            if readonly {
                m.push_str(",readonly");
            }
            ["--mount".into(), m.into()]
        };
        for p in rw {
            cmd.extend(mount(p, false));
        }
        for p in ro {
            cmd.extend(mount(p, true));
        }
        // The agent's --seed-allow /etc/localtime, as the Marathon app mounts it.
        if Path::new("/etc/localtime").exists() {
            cmd.extend(mount(Path::new("/etc/localtime"), true));
        }
        if std::env::var_os("RUST_LOG").is_some() {
            cmd.extend(["-e".into(), "RUST_LOG".into()]);
        }
        cmd.push(image.into());
        cmd.extend(args.iter().cloned());
        docker_ok(&cmd);
        AgentContainer {
            name,
            network: network.name.clone(),
            ip,
            port: AGENT_PORT,
        }
    }

    /// `http://<ip>:<port>`: the agent's URL for the test host and for the other agents.
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.ip, self.port)
    }

    /// `docker kill` (SIGKILL); the container stays, stopped. Nothing happens when it is not
    /// running.
    pub fn kill(&self) {
        let out = docker(["kill", &self.name]);
        assert!(
            out.status.success() || !self.running(),
            "docker kill {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `docker start` (it keeps its address on the network); does not wait for the agent.
    pub fn start(&self) {
        docker_ok(["start", &self.name]);
    }

    /// `docker network disconnect`: the agent runs on, unreachable.
    pub fn disconnect(&self) {
        docker_ok(["network", "disconnect", &self.network, &self.name]);
    }

    /// `docker network connect` with the same address.
    pub fn connect(&self) {
        docker_ok([
            "network",
            "connect",
            "--ip",
            &self.ip.to_string(),
            &self.network,
            &self.name,
        ]);
    }

    /// Whether the container is attached to its network (not [`Self::disconnect`]ed).
    pub fn connected(&self) -> bool {
        let networks = docker(["inspect", "-f", "{{json .NetworkSettings.Networks}}", &self.name]);
        String::from_utf8_lossy(&networks.stdout).contains(&format!("\"{}\"", self.network))
    }

    pub fn running(&self) -> bool {
        docker(["inspect", "-f", "{{.State.Running}}", &self.name]).stdout == b"true\n"
    }

    /// `docker exec` in the container (as root, without the agent's capabilities beyond
    /// Docker's).
    pub fn exec<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Output {
        let mut all: Vec<OsString> = vec!["exec".into(), self.name.clone().into()];
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        docker(all)
    }

    /// Everything the agent wrote (stdout and stderr, every run of the container).
    pub fn logs(&self) -> String {
        let out = docker(["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Waits until the agent answers `/healthz` (30 s at most; then panics with its state and
    /// log).
    pub async fn wait_healthy(&self) {
        berth::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .expect("an HTTP client");
        let url = format!("{}/healthz", self.url());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let state = docker(["inspect", "-f", "{{json .State}}", &self.name]);
        panic!(
            "the agent in container {} did not answer {url} within 30 s; state: {}\n--- its log ---\n{}",
            self.name,
            String::from_utf8_lossy(&state.stdout).trim(),
            self.logs()
        );
    }

    /// `docker rm -f`.
    pub fn remove(&self) {
        docker(["rm", "-f", &self.name]);
    }
}
