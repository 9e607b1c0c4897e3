//! Bounded work per request: path depth, trees deeper than any fd budget, huge directories,
//! and deletes that outlive their request (run as root, against real directories and the real
//! agent binary).

mod support_agent;

use std::{
    ffi::OsStr,
    os::fd::OwnedFd,
    path::Path,
    time::{Duration, Instant},
};

use berth::agent::{
    OpError,
    api::{
        ContainerOwner, DeleteResult, EnsureVolumeRequest, ErrorBody, VolumeQuery, VolumeType, VolumeUsage,
    },
    client::{AgentClient, AgentClientOptions},
    safe_fs::FsError,
};
use rustix::fs::{Mode, OFlags};
use support_agent::{process::start_agent, *};

fn dir_req(path: &str) -> EnsureVolumeRequest {
    EnsureVolumeRequest {
        tenant: "toto".into(),
        host_path: path.into(),
        volume_type: VolumeType::Directory,
        owner: Some(ContainerOwner { uid: 0, gid: 0 }),
        permissions: None,
        seed: None,
    }
}

fn q(path: &str) -> VolumeQuery {
    VolumeQuery {
        tenant: "toto".into(),
        host_path: path.into(),
    }
}

/// Everything below the agent root, to prove that a refused request created nothing.
fn listing(base: &Path) -> Vec<String> {
    snapshot(base).keys().map(|p| p.display().to_string()).collect()
}

fn open_dir(p: &Path) -> OwnedFd {
    rustix::fs::open(
        p,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap()
}

/// Builds a chain of `depth` directories named `d` below `top`, the way a container would:
/// relative to the previous directory's fd, never by path (the full path is longer than
/// PATH_MAX). Each level holds a file; the bottom holds a symlink to `link_to`.
fn make_chain(top: &Path, depth: usize, link_to: &Path) {
    let mut fd = open_dir(top);
    for _ in 0..depth {
        let f = rustix::fs::openat(
            &fd,
            "f",
            OFlags::CREATE | OFlags::WRONLY,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        drop(f);
        rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
        fd = rustix::fs::openat(&fd, "d", OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
    }
    rustix::fs::symlinkat(link_to, &fd, "escape").unwrap();
}

#[tokio::test]
async fn a_path_of_2001_components_is_refused_and_creates_nothing() {
    let env = Env::new();
    let server = start_server(env.agent.clone(), None).await;
    let c = AgentClient::new(&server.url(), TOKEN, &AgentClientOptions::default()).unwrap();
    let before = listing(&env.base);
    let deep = "/a".repeat(2001);
    let e = c.ensure_volume(&dir_req(&deep)).await.unwrap_err();
    assert_eq!(e.code(), Some("invalid_path"), "{e}");
    assert!(
        e.to_string().contains("has 2001 components; the limit is 32"),
        "{e}"
    );
    assert_eq!(
        listing(&env.base),
        before,
        "a refused request created directories"
    );
    // 32 components are fine, and the parents are created quietly (one line, not 31).
    let ok = "/a".repeat(32);
    c.ensure_volume(&dir_req(&ok)).await.unwrap();
    assert!(env.tenant_root("toto").join(&ok[1..]).is_dir());
}

#[test]
fn a_tree_1000_directories_deep_is_deleted_completely() {
    let env = Env::new();
    env.agent.ensure(&dir_req("/deep")).unwrap();
    let top = env.tenant_root("toto").join("deep");
    make_chain(&top, 1000, &env.decoy);
    let decoy = env.snapshot_decoy();
    // Inspect counts what it walks (256 levels) and says the rest was not counted.
    let u = env.agent.inspect(&q("/deep")).unwrap();
    assert!(u.depth_limited);
    assert_eq!(
        u.entries,
        1 + 2 * 256,
        "the volume, then a file and a directory per level"
    );
    let start = Instant::now();
    let r = env.agent.delete(&q("/deep")).unwrap();
    let took = start.elapsed();
    eprintln!(
        "deleted a 1,000-deep tree ({} entries) in {took:?}",
        r.removed_entries
    );
    assert!(r.existed);
    assert_eq!(
        r.removed_entries,
        1 + 1000 + 1000 + 1,
        "volume, directories, files, symlink"
    );
    assert!(!top.exists());
    assert_unchanged(&decoy, &env.decoy);
    // Only the tenant root is left: no moved subtree stayed behind.
    assert_eq!(std::fs::read_dir(env.tenant_root("toto")).unwrap().count(), 0);
}

#[test]
fn a_deep_tree_with_a_mount_far_below_keeps_the_mount_and_deletes_the_rest() {
    let env = Env::new();
    env.agent.ensure(&dir_req("/deep")).unwrap();
    let top = env.tenant_root("toto").join("deep");
    // 150 levels with a file each, and a mount point at the bottom bound from the decoy: the
    // delete moves the part below 64 levels up twice before it reaches the mount.
    let mut bottom = top.clone();
    for _ in 0..150 {
        bottom.push("d");
    }
    std::fs::create_dir_all(bottom.join("mnt")).unwrap();
    let mut level = top.clone();
    for _ in 0..150 {
        level.push("d");
        std::fs::write(level.join("f"), "x").unwrap();
    }
    let guard = bind_mount(&env.decoy.join("data"), &bottom.join("mnt"));
    let decoy = env.snapshot_decoy();
    let e = env.agent.delete(&q("/deep")).unwrap_err();
    let remaining = match &e {
        OpError::Fs(FsError::DeleteIncomplete { remaining, .. }) => remaining.clone(),
        other => panic!("{other}"),
    };
    assert_eq!(remaining.len(), 1, "{remaining:?}");
    // The mount moved with its subtree; the path reported is where it is now.
    let mnt = Path::new(&remaining[0]);
    assert!(
        remaining[0].contains("/deep/.berth-delete-") && remaining[0].ends_with("/d/mnt"),
        "{remaining:?}"
    );
    assert!(
        mnt.join("deep/precious.txt").exists(),
        "the mount is not where it was reported"
    );
    assert_unchanged(&decoy, &env.decoy);
    let out = std::process::Command::new("umount").arg(mnt).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::mem::forget(guard); // unmounted where it is now; its original path is gone
    let r = env.agent.delete(&q("/deep")).unwrap();
    assert!(r.existed);
    assert!(!top.exists());
    assert_unchanged(&decoy, &env.decoy);
}

/// Creates `n` empty files with 60-character names in `dir`.
fn fill(dir: &Path, n: usize) {
    let fd = open_dir(dir);
    for i in 0..n {
        let name = format!("{i:08}-{}", "x".repeat(51));
        drop(
            rustix::fs::openat(
                &fd,
                name.as_str(),
                OFlags::CREATE | OFlags::WRONLY,
                Mode::from_raw_mode(0o644),
            )
            .unwrap(),
        );
    }
}

#[tokio::test]
async fn a_directory_of_200000_entries_is_walked_and_deleted_in_bounded_memory() {
    require_root();
    berth::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("containerdata");
    std::fs::create_dir(&base).unwrap();
    let agent = start_agent(
        &base,
        &tmp.path().join("agent.log"),
        &[OsStr::new("--delete-wait"), OsStr::new("10m")],
    )
    .await;
    let c = AgentClient::new(
        &agent.url(),
        TOKEN,
        &AgentClientOptions {
            timeout: Duration::from_secs(900),
            ..Default::default()
        },
    )
    .unwrap();
    c.ensure_volume(&dir_req("/big")).await.unwrap();
    let n = 200_000;
    let start = Instant::now();
    fill(&base.join("user-toto/big"), n);
    eprintln!("created {n} files in {:?}", start.elapsed());
    let idle = agent.rss_kib();
    agent.reset_peak();
    let start = Instant::now();
    let u: VolumeUsage = c.inspect("toto", "/big").await.unwrap().unwrap();
    let walk = (agent.peak_rss_kib().saturating_sub(idle), start.elapsed());
    assert_eq!(u.entries, n as u64 + 1);
    let before_delete = agent.rss_kib();
    agent.reset_peak();
    let start = Instant::now();
    let r: DeleteResult = c.delete("toto", "/big").await.unwrap();
    let delete = (
        agent.peak_rss_kib().saturating_sub(before_delete),
        start.elapsed(),
    );
    assert_eq!(r.removed_entries, n as u64 + 1);
    eprintln!(
        "agent RSS {idle} KiB idle; peak growth walking {n} entries: {} KiB ({:?}); deleting them: {} KiB ({:?})",
        walk.0, walk.1, delete.0, delete.1
    );
    // Collecting the names cost ~20 MiB at this size (about 100 bytes per 60-byte name);
    // streaming them costs a directory buffer.
    assert!(walk.0 < 8 * 1024, "walking grew the agent by {} KiB", walk.0);
    assert!(delete.0 < 8 * 1024, "deleting grew the agent by {} KiB", delete.0);
}

#[tokio::test]
async fn a_second_delete_of_a_path_being_deleted_is_answered_in_progress() {
    let env = Env::with(|base| {
        let (u, g) = remap_165536();
        let mut cfg = config(base, u, g);
        // The request does not wait: every DELETE answers at once.
        cfg.delete_wait = Duration::ZERO;
        cfg
    });
    let server = start_server(env.agent.clone(), None).await;
    let http = reqwest::Client::new();
    env.agent.ensure(&dir_req("/big")).unwrap();
    let n = 100_000;
    fill(&env.tenant_root("toto").join("big"), n);
    let url = format!("{}/v1/volumes?tenant=toto&hostPath=/big", server.url());
    let first = http.delete(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(first.status(), 409);
    let body: ErrorBody = first.json().await.unwrap();
    assert_eq!(body.error.code, "delete_in_progress", "{}", body.error.message);
    // While it runs: no second walk, and neither an ensure nor an inspect of the path (or of
    // a path below it) touches it.
    let second = http.delete(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(second.status(), 409);
    let body: ErrorBody = second.json().await.unwrap();
    assert_eq!(body.error.code, "delete_in_progress");
    assert!(
        body.error.message.contains("entries removed so far"),
        "{}",
        body.error.message
    );
    assert!(
        body.error.message.contains("/user-toto/big is being deleted"),
        "{}",
        body.error.message
    );
    assert!(matches!(
        env.agent.ensure(&dir_req("/big/sub")),
        Err(OpError::DeleteInProgress { .. })
    ));
    assert!(matches!(
        env.agent.inspect(&q("/big")),
        Err(OpError::DeleteInProgress { .. })
    ));
    assert!(matches!(
        env.agent.delete(&q("/big")),
        Err(OpError::DeleteInProgress { .. })
    ));
    assert_eq!(env.agent.delete_walks_started(), 1);
    // The typed client says it plainly, and it is worth retrying.
    let c = AgentClient::new(&server.url(), TOKEN, &AgentClientOptions::default()).unwrap();
    let e = c.delete("toto", "/big").await.unwrap_err();
    assert!(e.is_delete_in_progress() && e.is_retryable(), "{e}");
    // Once it is done, the next DELETE returns the walk's result.
    let start = Instant::now();
    let done: DeleteResult = loop {
        let r = http.delete(&url).bearer_auth(TOKEN).send().await.unwrap();
        if r.status() == 200 {
            break r.json().await.unwrap();
        }
        assert_eq!(r.status(), 409);
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the delete never finished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("deleted {n} entries in about {:?}", start.elapsed());
    assert!(done.existed);
    assert_eq!(done.removed_entries, n as u64 + 1);
    assert!(!env.tenant_root("toto").join("big").exists());
    // And after that, deleting is idempotent again.
    assert!(!env.agent.delete(&q("/big")).unwrap().existed);
}
