//! Two agents ("hosts") with their own roots, remaps and tokens, and a tree with everything a
//! migration must carry.

use std::{
    ffi::OsStr,
    os::unix::{
        ffi::OsStrExt,
        fs::{PermissionsExt, symlink},
    },
    path::Path,
    time::{Duration, Instant},
};

use berth::agent::{
    AgentConfig,
    api::{TransferRequest, TransferState, TransferStatus, TransferTarget},
    client::{AgentClient, AgentClientOptions},
    credentials,
    identity::VolumeIdentity,
    remap::IdMap,
    transfer::TicketClaims,
};

use super::{Env, Server, config, start_server_as};

pub const UID: &str = "0b0e7c3e-59a1-4b7e-9a51-2f0d8c7e1a01";

/// One host: its root, its agent server, its token and a client with that token.
pub struct Host {
    pub env: Env,
    pub server: Server,
    pub token: String,
    pub client: AgentClient,
}

impl Host {
    /// A host whose remap maps container 0.. to host `start`..
    pub async fn new(name: &str, start: u32) -> Self {
        Self::in_dir(name, start, &std::env::temp_dir(), false).await
    }

    /// A host whose root is in `parent` (a filesystem of the test's choice), with the agent's
    /// `--enable-quota` set to `quota`.
    pub async fn in_dir(name: &str, start: u32, parent: &Path, quota: bool) -> Self {
        let map = || IdMap::from_host_ranges("test", &[(start, 65536)]).unwrap();
        let env = Env::with_in(parent, |base| AgentConfig {
            enable_quota: quota,
            ..config(base, map(), map())
        });
        let token = format!("{name}-token-0123456789abcdef");
        let server = start_server_as(env.agent.clone(), None, Default::default(), &token).await;
        let client = AgentClient::new(&server.url(), &token, &AgentClientOptions::default()).unwrap();
        Self {
            env,
            server,
            token,
            client,
        }
    }

    pub fn volume(&self, tenant: &str, path: &str) -> std::path::PathBuf {
        self.env.tenant_root(tenant).join(path.trim_start_matches('/'))
    }
}

pub fn identity() -> VolumeIdentity {
    VolumeIdentity::parse(UID).unwrap()
}

pub fn claims(id: &str, pass: u32, tenant: &str, path: &str, ttl: u64) -> TicketClaims {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    TicketClaims {
        transfer_id: id.into(),
        pass,
        tenant: tenant.into(),
        host_path: path.into(),
        identity: UID.into(),
        expires_at: now + ttl,
    }
}

/// A transfer request of `/data` of tenant `toto` to `target`.
pub fn request(target: &Host, id: &str, pass: u32) -> TransferRequest {
    TransferRequest {
        id: id.into(),
        tenant: "toto".into(),
        host_path: "/data".into(),
        identity: identity(),
        pass,
        full: false,
        compression: Default::default(),
        target: TransferTarget {
            url: target.server.url(),
            ticket: credentials::transfer_ticket(&target.token, &claims(id, pass, "toto", "/data", 600)),
        },
    }
}

/// Polls a transfer until it ends (failing after 5 minutes instead of hanging).
pub async fn wait(client: &AgentClient, id: &str) -> TransferStatus {
    let start = Instant::now();
    loop {
        let s = client
            .transfer_status(id)
            .await
            .unwrap()
            .expect("the source knows the transfer");
        if !matches!(s.state, TransferState::Queued | TransferState::Running) {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "transfer {id} did not end: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A deterministic byte pattern (not compressible to nothing, not random either).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Fills `dir` (a volume) with: `files` small files in 10 directories, a 3 MiB file, a sparse
/// 64 MiB file with three data blocks, a hard-linked file with two more links, internal,
/// absolute and escaping symlinks, names with a newline and non-UTF-8 bytes, a setuid file, a
/// FIFO and a device node, a 40-level deep path; everything owned by container uid/gid 1000
/// (host `start + 1000`) unless said otherwise.
pub fn make_tree(dir: &Path, files: usize, host_start: u32) {
    use std::os::unix::fs::chown;
    let owner = host_start + 1000;
    let write = |p: &Path, data: &[u8]| {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
        chown(p, Some(owner), Some(owner)).unwrap();
    };
    for i in 0..files {
        write(
            &dir.join(format!("small/d{}/f{i}.txt", i % 10)),
            format!("file {i}\n").repeat(i % 7 + 1).as_bytes(),
        );
    }
    write(&dir.join("big/blob.bin"), &pattern(3 << 20, 1));
    // Sparse: 64 MiB with data at 0, 10 MiB + 5 and the last byte.
    let sparse = dir.join("big/sparse.img");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(&sparse).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(&pattern(100_000, 2), (10 << 20) + 5).unwrap();
        f.write_all_at(b"z", (64 << 20) - 1).unwrap();
    }
    chown(&sparse, Some(owner), Some(owner)).unwrap();
    write(&dir.join("links/original"), b"shared inode\n");
    std::fs::hard_link(dir.join("links/original"), dir.join("links/second")).unwrap();
    std::fs::create_dir_all(dir.join("other")).unwrap();
    std::fs::hard_link(dir.join("links/original"), dir.join("other/third")).unwrap();
    symlink("../links/original", dir.join("other/relative")).unwrap();
    symlink("/etc/passwd", dir.join("other/absolute")).unwrap();
    symlink("../../../../../../etc/shadow", dir.join("other/escaping")).unwrap();
    let odd = dir.join("odd");
    std::fs::create_dir_all(&odd).unwrap();
    write(&odd.join("new\nline"), b"newline\n");
    write(&odd.join(OsStr::from_bytes(b"bytes-\xff\xfe")), b"latin1\n");
    write(&odd.join(" -leading dash and spaces "), b"spaces\n");
    let suid = dir.join("bin/suid");
    write(&suid, b"#!/bin/sh\n");
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join("null-device"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    let mut deep = dir.join("deep");
    for i in 0..40 {
        deep = deep.join(format!("l{i}"));
    }
    write(&deep.join("bottom"), b"bottom\n");
    // A root-owned file (outside the remap on both hosts).
    std::fs::write(dir.join("root-owned"), b"root\n").unwrap();
}
