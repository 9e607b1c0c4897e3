//! Shared helpers of the agent tests: a temp agent root, a decoy tree outside it with a
//! snapshot of owners, modes and contents, and a real agent server on 127.0.0.1:0.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use berth::agent::{Agent, AgentConfig, Token, remap::IdMap, server};
use tempfile::TempDir;

#[path = "../support/loopfs.rs"]
pub mod loopfs;
pub mod migration;
pub mod process;

pub const TOKEN: &str = "test-token-0123456789abcdef";

/// Fails loudly (never skips) when not root: these tests chown, mknod and mount for real.
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the agent tests create devices, change owners and bind-mount: run them as root"
    );
}

/// A temp dir holding the agent root (`base`) and a decoy tree (`decoy`) outside it.
pub struct Env {
    pub tmp: TempDir,
    pub base: PathBuf,
    pub decoy: PathBuf,
    pub agent: Arc<Agent>,
}

pub fn config(base: &Path, uid_map: IdMap, gid_map: IdMap) -> AgentConfig {
    AgentConfig {
        root_template: format!("{}/user-{{tenant}}", base.display()),
        hostname: "node-test".into(),
        attributes: [("rack".to_owned(), "r1".to_owned())].into(),
        uid_map,
        gid_map,
        remap_source: "test ranges".into(),
        seed_allow: Vec::new(),
        max_seed_bytes: 1024 * 1024,
        ..AgentConfig::default()
    }
}

pub fn remap_165536() -> (IdMap, IdMap) {
    (
        IdMap::from_host_ranges("subuid", &[(165536, 65536)]).unwrap(),
        IdMap::from_host_ranges("subgid", &[(165536, 65536)]).unwrap(),
    )
}

impl Env {
    pub fn new() -> Self {
        let (u, g) = remap_165536();
        Self::with(|base| config(base, u, g))
    }

    pub fn with(make: impl FnOnce(&Path) -> AgentConfig) -> Self {
        Self::with_in(&std::env::temp_dir(), make)
    }

    /// [`Env::with`] in the directory `parent` (e.g. a loop-mounted filesystem).
    pub fn with_in(parent: &Path, make: impl FnOnce(&Path) -> AgentConfig) -> Self {
        require_root();
        let tmp = tempfile::Builder::new()
            .prefix("berth-agent-test")
            .tempdir_in(parent)
            .unwrap();
        let base = tmp.path().join("containerdata");
        let decoy = tmp.path().join("decoy");
        std::fs::create_dir(&base).unwrap();
        make_decoy(&decoy);
        let agent = Arc::new(Agent::new(make(&base)).unwrap());
        Self {
            tmp,
            base,
            decoy,
            agent,
        }
    }

    pub fn tenant_root(&self, tenant: &str) -> PathBuf {
        self.base.join(format!("user-{tenant}"))
    }

    pub fn snapshot_decoy(&self) -> Snapshot {
        snapshot(&self.decoy)
    }
}

/// A decoy "host" tree: an /etc/shadow look-alike and other files with distinct owners and modes.
pub fn make_decoy(decoy: &Path) {
    use std::os::unix::fs::chown;
    let etc = decoy.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let shadow = etc.join("shadow");
    std::fs::write(&shadow, "root:$6$decoy$hash:19000:0:99999:7:::\n").unwrap();
    chown(&shadow, Some(0), Some(42)).unwrap();
    std::fs::set_permissions(&shadow, std::fs::Permissions::from_mode(0o640)).unwrap();
    let passwd = etc.join("passwd");
    std::fs::write(&passwd, "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o644)).unwrap();
    let data = decoy.join("data");
    std::fs::create_dir_all(data.join("deep")).unwrap();
    std::fs::write(data.join("deep/precious.txt"), "do not delete").unwrap();
    chown(data.join("deep"), Some(7), Some(7)).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// Type, owner, mode, size, contents (or link target) of every object below a path.
pub type Snapshot = BTreeMap<PathBuf, (u32, u32, u32, u64, Vec<u8>)>;

pub fn snapshot(root: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).unwrap();
        let content = if md.file_type().is_symlink() {
            std::fs::read_link(&p)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else if md.is_file() {
            std::fs::read(&p).unwrap()
        } else {
            Vec::new()
        };
        if md.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
        let size = if md.is_dir() { 0 } else { md.len() };
        out.insert(p, (md.mode(), md.uid(), md.gid(), size, content));
    }
    out
}

/// Asserts that nothing below `decoy` changed.
pub fn assert_unchanged(before: &Snapshot, decoy: &Path) {
    let after = snapshot(decoy);
    if *before != after {
        for (k, v) in before {
            match after.get(k) {
                None => eprintln!("removed: {}", k.display()),
                Some(a) if a != v => eprintln!("changed: {} {:?} -> {:?}", k.display(), v, a),
                _ => {}
            }
        }
        for k in after.keys() {
            if !before.contains_key(k) {
                eprintln!("added: {}", k.display());
            }
        }
        panic!("the decoy tree outside the tenant root changed");
    }
}

/// A running agent server on 127.0.0.1:0; shut down on drop.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub async fn start_server(agent: Arc<Agent>, tls: Option<Arc<rustls::ServerConfig>>) -> Server {
    start_server_with(agent, tls, server::ServeOptions::default()).await
}

pub async fn start_server_with(
    agent: Arc<Agent>,
    tls: Option<Arc<rustls::ServerConfig>>,
    options: server::ServeOptions,
) -> Server {
    start_server_as(agent, tls, options, TOKEN).await
}

/// A server whose bearer token is `token` (agents of different hosts have different tokens).
pub async fn start_server_as(
    agent: Arc<Agent>,
    tls: Option<Arc<rustls::ServerConfig>>,
    options: server::ServeOptions,
    token: &str,
) -> Server {
    berth::tls::install_crypto_provider();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = server::router(agent, Token::new(token).unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        server::serve_with(listener, router, tls, options, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Server { addr, stop: Some(tx) }
}

/// Unmounts (lazily) on drop, so a failing test leaves no mount behind.
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// `mount --bind src dst`; panics with the reason when the kernel refuses.
pub fn bind_mount(src: &Path, dst: &Path) -> MountGuard {
    let out = std::process::Command::new("mount")
        .arg("--bind")
        .arg(src)
        .arg(dst)
        .output()
        .expect("run mount(8)");
    assert!(
        out.status.success(),
        "mount --bind failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    MountGuard(dst.to_path_buf())
}

pub fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

pub fn owner_of(p: &Path) -> (u32, u32) {
    let md = std::fs::symlink_metadata(p).unwrap();
    (md.uid(), md.gid())
}

/// Makes a CA and a server certificate for 127.0.0.1 with openssl(1).
pub fn make_certs(dir: &Path) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl(1) is needed for the TLS test");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=berth test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "agent.key",
        "-out",
        "agent.csr",
        "-subj",
        "/CN=agent",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "agent.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "agent.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}
