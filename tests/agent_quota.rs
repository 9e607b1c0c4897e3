//! Capacities as limits, on a real btrfs filesystem made in a file and loop-mounted as the
//! agent's root (run as root): a write past a volume's limit fails while its neighbour keeps
//! writing, the limit changes in place, usage comes from quota accounting, and delete removes the
//! subvolume and its qgroup. Usage by walking is checked on the ordinary (ext4) test directory.

mod support_agent;

use std::{os::unix::fs::MetadataExt, path::Path, sync::Arc};

use berth::agent::{
    Agent, AgentConfig,
    api::{
        ContainerOwner, EnsureVolumeRequest, QuotaKind, UsageRequest, UsageSource, VolumeQuery, VolumeType,
    },
    client::{AgentClient, AgentClientOptions},
};
use support_agent::{loopfs::*, *};

const MIB: u64 = 1 << 20;

fn req(path: &str) -> EnsureVolumeRequest {
    EnsureVolumeRequest {
        tenant: "toto".into(),
        host_path: path.into(),
        volume_type: VolumeType::Directory,
        owner: Some(ContainerOwner { uid: 1000, gid: 1000 }),
        permissions: Some("0750".into()),
        seed: None,
    }
}

fn q(path: &str) -> VolumeQuery {
    VolumeQuery {
        tenant: "toto".into(),
        host_path: path.into(),
    }
}

/// An agent whose root is `containerdata` on the loop-mounted filesystem.
fn agent_on(fs: &LoopBtrfs, enable_quota: bool) -> Arc<Agent> {
    let base = fs.path("containerdata");
    std::fs::create_dir_all(&base).unwrap();
    let (u, g) = remap_165536();
    Arc::new(
        Agent::new(AgentConfig {
            enable_quota,
            ..config(&base, u, g)
        })
        .unwrap(),
    )
}

fn is_subvolume(p: &Path) -> bool {
    std::fs::metadata(p).unwrap().ino() == 256
}

fn subvolume_id(p: &Path) -> u64 {
    let f = std::fs::File::open(p).unwrap();
    berth::agent::quota::btrfs::subvolume_id(std::os::fd::AsFd::as_fd(&f)).unwrap()
}

fn is_quota_error(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc_codes::EDQUOT | libc_codes::ENOSPC))
}

mod libc_codes {
    pub const ENOSPC: i32 = 28;
    pub const EDQUOT: i32 = 122;
}

#[tokio::test]
async fn a_write_past_a_volumes_limit_fails_while_its_neighbour_keeps_writing() {
    let fs = LoopBtrfs::new(320);
    let agent = agent_on(&fs, true);
    let host = agent.host_info().unwrap();
    assert_eq!(host.quota.kind, QuotaKind::BtrfsQgroup);
    assert!(
        host.quota.enforced,
        "--enable-quota turned quota on: {:?}",
        host.quota
    );
    assert_eq!(host.space.total_inodes, None, "btrfs allocates inodes as needed");

    let a = agent.ensure_with(&req("/a"), Some(16 * MIB)).unwrap();
    let b = agent.ensure_with(&req("/b"), Some(16 * MIB)).unwrap();
    let root = fs.path("containerdata/user-toto");
    for (v, name) in [(&a, "a"), (&b, "b")] {
        assert!(v.state.created);
        let limit = v.limit.as_ref().unwrap();
        assert!(limit.enforced, "{limit:?}");
        assert_eq!(
            (limit.kind, limit.bytes, limit.requested_bytes),
            (QuotaKind::BtrfsQgroup, Some(16 * MIB), 16 * MIB)
        );
        assert!(
            is_subvolume(&root.join(name)),
            "a volume with a capacity is a subvolume"
        );
        assert_eq!(owner_of(&root.join(name)), (166536, 166536));
        assert_eq!(mode_of(&root.join(name)), 0o750);
    }

    // /a is full at its limit; /b, on the same filesystem, still takes writes.
    let (written, err) = fill(&root.join("a/big"), 40 * MIB);
    let err = err.expect("a write past the volume's limit must fail");
    assert!(is_quota_error(&err), "EDQUOT or ENOSPC expected, got {err}");
    assert!(written <= 16 * MIB, "{written} bytes went into a 16 MiB volume");
    let (written_b, err_b) = fill(&root.join("b/data"), 8 * MIB);
    assert!(
        err_b.is_none(),
        "the neighbour volume must keep writing: {err_b:?}"
    );
    assert_eq!(written_b, 8 * MIB);

    // The capacity grows in place: the same subvolume takes more, up to the new limit.
    let id_a = subvolume_id(&root.join("a"));
    let grown = agent.ensure_with(&req("/a"), Some(40 * MIB)).unwrap();
    assert!(!grown.state.created && grown.state.changed);
    assert_eq!(grown.limit.as_ref().unwrap().bytes, Some(40 * MIB));
    assert!(grown.limit.as_ref().unwrap().enforced);
    assert_eq!(
        subvolume_id(&root.join("a")),
        id_a,
        "changed in place, not recreated"
    );
    let (written, err) = fill(&root.join("a/second"), 16 * MIB);
    assert!(err.is_none(), "16 MiB more fit below 40 MiB: {err:?}");
    assert_eq!(written, 16 * MIB);
    let (more, err) = fill(&root.join("a/more"), 16 * MIB);
    assert!(err.as_ref().is_some_and(is_quota_error), "past 40 MiB: {err:?}");
    assert!(more < 9 * MIB, "{more} more bytes went past the new limit");
    let again = agent.ensure_with(&req("/a"), Some(40 * MIB)).unwrap();
    assert!(!again.state.changed, "the same capacity again changes nothing");

    // A capacity below what is stored is not applied: the limit stays and the answer says why.
    fs.sync();
    let shrunk = agent.ensure_with(&req("/a"), Some(4 * MIB)).unwrap();
    let l = shrunk.limit.unwrap();
    assert!(!l.enforced);
    assert_eq!(l.bytes, Some(40 * MIB), "the old limit stays");
    let why = l.reason.unwrap();
    assert!(why.contains("already holds") && why.contains("at least"), "{why}");
    assert!(
        !why.contains(fs.mnt.to_str().unwrap()),
        "no host path in a tenant's message: {why}"
    );

    // Usage from quota accounting, through the HTTP API: what was written, within block rounding.
    let server = start_server(agent.clone(), None).await;
    let client = AgentClient::new(&server.url(), TOKEN, &AgentClientOptions::default()).unwrap();
    fs.sync();
    let usage = client.usage(&[q("/a"), q("/b"), q("/missing")]).await.unwrap();
    let [ua, ub, missing] = &usage.volumes[..] else {
        panic!("three answers expected: {usage:?}")
    };
    assert_eq!(ub.source, Some(UsageSource::Quota));
    let used_b = ub.used_bytes.unwrap();
    assert!(
        (8 * MIB..8 * MIB + 256 * 1024).contains(&used_b),
        "/b wrote 8 MiB, qgroup says {used_b}"
    );
    assert_eq!(ub.limit_bytes, Some(16 * MIB));
    assert_eq!(ub.used_inodes, None, "qgroups do not count inodes");
    assert!(ub.measured_at.is_some());
    // Against what the files of /a hold (the failed writes stored part of their last chunk).
    let used_a = ua.used_bytes.unwrap();
    let held: u64 = ["big", "second", "more"]
        .iter()
        .map(|f| std::fs::metadata(root.join("a").join(f)).unwrap().blocks() * 512)
        .sum();
    assert!(
        (held..held + 256 * 1024).contains(&used_a),
        "the files of /a hold {held} bytes, qgroup says {used_a}"
    );
    assert_eq!(ua.limit_bytes, Some(40 * MIB));
    assert_eq!(missing.error.as_ref().unwrap().code, "not_found");

    // Delete removes the subvolume and, once btrfs has freed it, its qgroup.
    let id_b = subvolume_id(&root.join("b"));
    assert!(fs.qgroup_ids().contains(&id_a) && fs.qgroup_ids().contains(&id_b));
    let gone = client.delete("toto", "/a").await.unwrap();
    assert!(gone.existed);
    assert!(!root.join("a").exists());
    // The qgroup outlives the subvolume until btrfs has freed its data; the agent removes it on
    // a later call (recent kernels also do it themselves), whoever comes first.
    fs.wait_for_cleaner();
    fs.sync();
    client.usage(&[q("/b")]).await.unwrap();
    assert!(
        !fs.qgroup_ids().contains(&id_a),
        "the qgroup of the deleted volume must go: {:?}",
        fs.qgroup_ids()
    );
    assert!(fs.qgroup_ids().contains(&id_b), "the neighbour's qgroup stays");
    assert!(
        !fs.btrfs(&["subvolume", "list"])
            .contains(" path containerdata/user-toto/a\n")
    );
}

#[test]
fn a_plain_directory_keeps_working_and_says_why_it_is_not_limited() {
    let fs = LoopBtrfs::new(320);
    let agent = agent_on(&fs, true);
    agent.ensure(&req("/old")).unwrap();
    let old = fs.path("containerdata/user-toto/old");
    assert!(
        !is_subvolume(&old),
        "without a capacity a volume is a plain directory"
    );
    std::fs::write(old.join("keep"), "data").unwrap();
    let v = agent.ensure_with(&req("/old"), Some(16 * MIB)).unwrap();
    let l = v.limit.unwrap();
    assert!(!l.enforced && l.bytes.is_none());
    assert!(
        l.reason
            .as_deref()
            .unwrap()
            .contains("existed before it had a capacity"),
        "{l:?}"
    );
    assert_eq!(
        std::fs::read_to_string(old.join("keep")).unwrap(),
        "data",
        "the data is untouched"
    );
    assert!(!is_subvolume(&old));
    // A file volume's size is never limited; the answer says so.
    let f = agent
        .ensure_with(
            &EnsureVolumeRequest {
                volume_type: VolumeType::File,
                ..req("/etc/conf")
            },
            Some(16 * MIB),
        )
        .unwrap();
    assert!(!f.limit.unwrap().enforced);
    // Too small a capacity is refused before anything is made.
    let e = agent.ensure_with(&req("/tiny"), Some(1000)).unwrap_err();
    assert_eq!(e.code(), "invalid_capacity");
    assert!(!fs.path("containerdata/user-toto/tiny").exists());
}

#[test]
fn without_quota_a_capacity_is_advisory_until_quota_is_enabled() {
    let fs = LoopBtrfs::new(320);
    let agent = agent_on(&fs, false);
    let info = agent.host_info().unwrap().quota;
    assert_eq!(info.kind, QuotaKind::BtrfsQgroup);
    assert!(!info.enforced);
    assert!(
        info.reason.as_deref().unwrap().contains("not enabled"),
        "{info:?}"
    );
    let v = agent.ensure_with(&req("/a"), Some(8 * MIB)).unwrap();
    let l = v.limit.unwrap();
    assert!(!l.enforced, "{l:?}");
    assert!(l.reason.unwrap().contains("not enabled"));
    let a = fs.path("containerdata/user-toto/a");
    assert!(is_subvolume(&a), "made a subvolume, ready for a limit");
    // Not enforced, and it really is not: 12 MiB go into an 8 MiB volume.
    let (written, err) = fill(&a.join("f"), 12 * MIB);
    assert!(err.is_none() && written == 12 * MIB);
    // Once the administrator enables quota, the next ensure sets the limit, but never below what
    // is stored: 8 MiB is refused, 16 MiB holds.
    fs.btrfs(&["quota", "enable"]);
    fs.btrfs(&["quota", "rescan", "-w"]);
    let v = agent.ensure_with(&req("/a"), Some(8 * MIB)).unwrap();
    let l = v.limit.unwrap();
    assert!(!l.enforced && l.bytes.is_none(), "{l:?}");
    assert!(l.reason.unwrap().contains("already holds 12.0 MiB"));
    let v = agent.ensure_with(&req("/a"), Some(16 * MIB)).unwrap();
    assert!(v.limit.as_ref().unwrap().enforced, "{:?}", v.limit);
    let (more, err) = fill(&a.join("g"), 8 * MIB);
    assert!(err.as_ref().is_some_and(is_quota_error), "{err:?}");
    assert!(more < 5 * MIB, "{more} bytes went past the limit");
    // Without a capacity the limit is lifted again.
    let v = agent.ensure(&req("/a")).unwrap();
    assert!(v.changed);
    let (written, err) = fill(&a.join("g"), 8 * MIB);
    assert!(err.is_none() && written == 8 * MIB, "{err:?}");
}

#[test]
fn hostile_trees_on_btrfs_change_nothing_outside_the_root_and_do_not_escape_the_count() {
    let fs = LoopBtrfs::new(320);
    let agent = agent_on(&fs, true);
    let decoy = fs.path("decoy");
    make_decoy(&decoy);
    let before = snapshot(&decoy);
    let root = fs.path("containerdata/user-toto");
    let subvolumes = || fs.btrfs(&["subvolume", "list"]).lines().count();

    // A symlink where the volume should be: refused, nothing made through it.
    agent.ensure(&req("/x")).unwrap();
    std::os::unix::fs::symlink(&decoy, root.join("link")).unwrap();
    let n = subvolumes();
    let e = agent.ensure_with(&req("/link"), Some(16 * MIB)).unwrap_err();
    assert_eq!(e.code(), "symlink");
    assert_eq!(subvolumes(), n, "no subvolume made");
    let usage = agent
        .usage(&UsageRequest {
            volumes: vec![q("/link")],
        })
        .unwrap();
    assert!(
        usage.volumes[0].used_bytes.unwrap() <= 4096,
        "a link is measured as itself: {usage:?}"
    );

    // A subvolume the tenant made inside its limited volume: its data is counted in usage and
    // the answer says the limit does not hold it.
    agent.ensure_with(&req("/a"), Some(32 * MIB)).unwrap();
    run(
        "btrfs",
        &["subvolume", "create", root.join("a/escape").to_str().unwrap()],
    );
    let (written, err) = fill(&root.join("a/escape/f"), 4 * MIB);
    assert!(err.is_none() && written == 4 * MIB);
    fs.sync();
    let v = agent.ensure_with(&req("/a"), Some(32 * MIB)).unwrap();
    let l = v.limit.unwrap();
    assert!(!l.enforced);
    assert!(
        l.reason
            .unwrap()
            .contains("subvolume(s) were created inside the volume")
    );
    let usage = agent
        .usage(&UsageRequest {
            volumes: vec![q("/a")],
        })
        .unwrap();
    let u = &usage.volumes[0];
    assert_eq!((u.source, u.nested_subvolumes), (Some(UsageSource::Quota), 1));
    assert!(u.used_bytes.unwrap() >= 4 * MIB, "{u:?}");

    // A volume inside that volume (a tenant-owned parent), where the tenant's subvolume is:
    // refused, and no limit is put on the tenant's subvolume.
    let escape_id = subvolume_id(&root.join("a/escape"));
    let e = agent.ensure_with(&req("/a/escape"), Some(2 * MIB)).unwrap_err();
    assert_eq!(e.code(), "unsafe_parent");
    assert!(
        !fs.btrfs(&["qgroup", "show", "-r", "--raw"])
            .lines()
            .any(|l| l.starts_with(&format!("0/{escape_id} ")) && !l.contains("none"))
    );

    // A bind mount inside a subvolume volume is still never crossed by delete; the subvolume
    // the tenant made is deleted with the rest (it is no mount).
    std::fs::create_dir(root.join("a/m")).unwrap();
    let _mount = bind_mount(&decoy.join("data"), &root.join("a/m"));
    let e = agent.delete(&q("/a")).unwrap_err();
    assert_eq!(e.code(), "delete_incomplete", "{e}");
    assert!(e.to_string().contains("/a/m"), "{e}");
    assert!(
        !root.join("a/escape").exists(),
        "the nested subvolume was deleted"
    );
    drop(_mount);
    assert!(agent.delete(&q("/a")).unwrap().existed);
    assert!(!root.join("a").exists());
    assert_unchanged(&before, &decoy);
}

#[test]
fn the_qgroup_calls_agree_with_the_btrfs_tool() {
    use berth::agent::quota::btrfs;
    let fs = LoopBtrfs::new(320);
    let mnt = std::fs::File::open(&fs.mnt).unwrap();
    let fd = std::os::fd::AsFd::as_fd(&mnt);
    assert_eq!(btrfs::quota_status(fd).unwrap(), btrfs::QuotaStatus::Disabled);
    btrfs::enable_quota(fd).unwrap();
    assert_eq!(btrfs::quota_status(fd).unwrap(), btrfs::QuotaStatus::On);
    run("btrfs", &["subvolume", "create", fs.path("v").to_str().unwrap()]);
    let id = subvolume_id(&fs.path("v"));
    btrfs::set_limit(fd, id, Some(5 * MIB)).unwrap();
    assert_eq!(
        btrfs::qgroups(fd, Some((id, id))).unwrap()[&id].max_rfer,
        Some(5 * MIB)
    );
    let shown = fs.btrfs(&["qgroup", "show", "-r", "--raw"]);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with(&format!("0/{id} ")) && l.contains(&(5 * MIB).to_string())),
        "{shown}"
    );
    btrfs::set_limit(fd, id, None).unwrap();
    assert_eq!(btrfs::qgroups(fd, Some((id, id))).unwrap()[&id].max_rfer, None);
    // Removing a qgroup (the call the agent makes after a delete), on a level-1 qgroup the tool
    // made: the same ioctl, and no subvolume involved.
    fs.btrfs(&["qgroup", "create", "1/7"]);
    assert!(fs.btrfs(&["qgroup", "show", "--raw"]).contains("1/7"));
    btrfs::remove_qgroup(fd, (1 << 48) | 7).unwrap();
    assert!(!fs.btrfs(&["qgroup", "show", "--raw"]).contains("1/7"));
    assert_eq!(
        btrfs::remove_qgroup(fd, (1 << 48) | 7),
        Err(rustix::io::Errno::NOENT)
    );
}

#[test]
fn usage_of_a_plain_directory_is_walked_in_the_background_and_cached() {
    let env = Env::new();
    env.agent.ensure(&req("/data")).unwrap();
    let data = env.tenant_root("toto").join("data");
    std::fs::write(data.join("one"), vec![1u8; 1 << 20]).unwrap();
    std::fs::create_dir(data.join("sub")).unwrap();
    std::fs::write(data.join("sub/two"), vec![2u8; 8192]).unwrap();
    let ask = || {
        env.agent
            .usage(&UsageRequest {
                volumes: vec![q("/data")],
            })
            .unwrap()
            .volumes
            .remove(0)
    };
    let first = ask();
    assert_eq!(first.source, Some(UsageSource::Walk));
    assert!(
        first.used_bytes.is_none() && first.measured_at.is_none(),
        "the first answer never waits for a walk"
    );
    // The walker runs on its own thread; ask until it has measured (no time is asserted).
    let measured = loop {
        let r = ask();
        if r.measured_at.is_some() {
            break r;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let bytes = measured.used_bytes.unwrap();
    assert!(
        ((1 << 20) + 8192..(1 << 20) + 64 * 1024).contains(&bytes),
        "{bytes}"
    );
    assert_eq!(
        measured.used_inodes,
        Some(4),
        "the volume, a file, a directory and a file"
    );
    assert_eq!(measured.limit_bytes, None);
    // Within the interval (10 minutes) the cached figures are answered, with their time.
    std::fs::write(data.join("three"), vec![3u8; 1 << 20]).unwrap();
    let cached = ask();
    assert_eq!(
        (cached.used_bytes, &cached.measured_at),
        (Some(bytes), &measured.measured_at)
    );
    // Deleting the volume forgets it.
    env.agent.delete(&q("/data")).unwrap();
    assert_eq!(ask().error.unwrap().code, "not_found");
}

/// Measures `POST /v1/usage` for many volumes by quota accounting and by walking (numbers in
/// docs/benchmarks.md). Not a check: `cargo test --release --test agent_quota -- --ignored
/// --nocapture`.
#[test]
#[ignore]
fn measure_usage_latency() {
    use std::time::Instant;
    const N: usize = 300;
    const FILES: usize = 100;
    let fs = LoopBtrfs::new(1024);
    let agent = agent_on(&fs, true);
    let env = Env::new();
    let names: Vec<String> = (0..N).map(|i| format!("/v{i}")).collect();
    for n in &names {
        agent.ensure_with(&req(n), Some(64 * MIB)).unwrap();
        env.agent.ensure(&req(n)).unwrap();
        for (root, base) in [
            (fs.path("containerdata/user-toto"), 0),
            (env.tenant_root("toto"), 1),
        ] {
            for f in 0..FILES {
                std::fs::write(root.join(&n[1..]).join(format!("f{f}")), [base as u8; 4096]).unwrap();
            }
        }
    }
    fs.sync();
    let all = UsageRequest {
        volumes: names.iter().map(|n| q(n)).collect(),
    };
    let t = Instant::now();
    let by_quota = agent.usage(&all).unwrap();
    let quota_call = t.elapsed();
    assert!(
        by_quota
            .volumes
            .iter()
            .all(|v| v.source == Some(UsageSource::Quota))
    );
    let t = Instant::now();
    for n in &names {
        env.agent.inspect(&q(n)).unwrap();
    }
    let walk_all = t.elapsed();
    let t = Instant::now();
    env.agent.usage(&all).unwrap();
    let first_walk_call = t.elapsed();
    while env
        .agent
        .usage(&all)
        .unwrap()
        .volumes
        .iter()
        .any(|v| v.measured_at.is_none())
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let t = Instant::now();
    env.agent.usage(&all).unwrap();
    let cached_walk_call = t.elapsed();
    println!(
        "{N} volumes of {FILES} files: usage by quota in one call {quota_call:?}; walking them all {walk_all:?}; \
         a usage call answered from the walk cache {cached_walk_call:?} (first call, queueing the walks: {first_walk_call:?})"
    );
}

/// The ensure body of `/data` with a capacity and the test identity.
fn moving_body(expect: berth::agent::identity::Expect) -> berth::agent::api::EnsureBody {
    berth::agent::api::EnsureBody {
        request: req("/data"),
        capacity_bytes: Some(32 * MIB),
        check: berth::agent::api::IdentityCheck {
            identity: Some(support_agent::migration::identity()),
            expect: Some(expect),
        },
    }
}

/// Fills the source's `/data` (8 MiB, a directory, a small file), moves it to the target in one
/// full pass and commits it there.
async fn move_data(source: &support_agent::migration::Host, target: &support_agent::migration::Host) {
    use berth::agent::api::{CommitRequest, TransferState};
    use support_agent::migration::{identity, request, wait};
    let src = source.volume("toto", "/data");
    let (written, err) = fill(&src.join("big"), 8 * MIB);
    assert!(err.is_none() && written == 8 * MIB);
    std::fs::create_dir(src.join("dir")).unwrap();
    std::fs::write(src.join("dir/small"), b"small\n").unwrap();
    source
        .client
        .start_transfer(&request(target, "mig-q", 1))
        .await
        .unwrap();
    let pass = wait(&source.client, "mig-q").await;
    assert_eq!(pass.state, TransferState::Succeeded, "{pass:?}");
    let commit = CommitRequest {
        tenant: "toto".into(),
        host_path: "/data".into(),
        identity: identity(),
        manifest: pass.manifest.unwrap().digest,
    };
    target.client.commit("mig-q", &commit).await.unwrap();
    let dst = target.volume("toto", "/data");
    assert_eq!(std::fs::read(dst.join("dir/small")).unwrap(), b"small\n");
    assert!(
        !target
            .env
            .tenant_root("toto")
            .join(".berth-staging/mig-q")
            .exists(),
        "the staging area (with the empty volume it took) is gone"
    );
}

/// A source and a target host with their roots in `parent` (quota enabled with `quota`), each
/// with `/data` ensured with its capacity; the answers of both ensures.
async fn hosts_with_volume(
    parent: &Path,
    quota: bool,
) -> (
    support_agent::migration::Host,
    support_agent::migration::Host,
    Vec<berth::agent::api::EnsuredVolume>,
) {
    use support_agent::migration::Host;
    let source = Host::in_dir("node-1", 165536, parent, quota).await;
    let target = Host::in_dir("node-2", 231072, parent, quota).await;
    let mut ensured = Vec::new();
    for h in [&source, &target] {
        let body = moving_body(berth::agent::identity::Expect::New);
        ensured.push(h.client.ensure_volume_with_capacity(&body).await.unwrap());
    }
    (source, target, ensured)
}

/// A volume held to its capacity by a btrfs qgroup moves to another host and is still held
/// to it there: the copy is staged as a subvolume, like the empty volume it replaces, so the
/// target's next ensure sets its limit, and a write past it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_volume_is_still_held_to_its_capacity() {
    use berth::agent::identity::Expect;

    let fs = LoopBtrfs::new(400);
    let (source, target, ensured) = hosts_with_volume(&fs.path(""), true).await;
    for v in ensured {
        assert!(v.limit.as_ref().unwrap().enforced, "{:?}", v.limit);
    }
    move_data(&source, &target).await;

    let dst = target.volume("toto", "/data");
    assert!(
        is_subvolume(&dst),
        "the copy in place is a subvolume, as the volume it replaced"
    );
    let again = target
        .client
        .ensure_volume_with_capacity(&moving_body(Expect::Bound))
        .await
        .unwrap();
    let limit = again.limit.unwrap();
    assert!(limit.enforced, "{limit:?}");
    assert_eq!(limit.bytes, Some(32 * MIB));
    let (written, err) = fill(&dst.join("more"), 64 * MIB);
    assert!(
        err.as_ref().is_some_and(is_quota_error),
        "a write past the capacity fails on the new host: {err:?}"
    );
    assert!(
        written <= 24 * MIB + MIB,
        "{written} bytes more went into a 32 MiB volume holding 8"
    );
}

/// On XFS a volume with a capacity is counted by its project id, which new files inherit from
/// their directory. A moved volume keeps the target volume's project id on every file it holds,
/// so all of them count against its limit there. (This machine's kernel has no XFS quota: the
/// ids are checked with `xfs_io`, the enforcement itself is not.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_volume_keeps_its_xfs_project_id_on_every_file() {
    use berth::agent::identity::Expect;

    let fs = LoopXfs::new(512);
    let (source, target, ensured) = hosts_with_volume(&fs.path(""), false).await;
    for v in ensured {
        assert_eq!(
            v.limit.as_ref().unwrap().kind,
            QuotaKind::XfsProject,
            "{:?}",
            v.limit
        );
    }
    let dst = target.volume("toto", "/data");
    let project = LoopXfs::project_of(&dst);
    assert_ne!(project, 0, "the target's new volume has a project id");
    // Each host allocates its own ids; here both hosts share one filesystem, so the source's
    // volume is given another id by hand, as another host would have.
    run(
        "xfs_io",
        &[
            "-c",
            "chproj 42",
            source.volume("toto", "/data").to_str().unwrap(),
        ],
    );
    assert_ne!(project, 42);
    move_data(&source, &target).await;

    for p in ["", "big", "dir", "dir/small"] {
        assert_eq!(
            LoopXfs::project_of(&dst.join(p)),
            project,
            "/data/{p} counts against the volume's limit on the new host"
        );
    }
    let again = target
        .client
        .ensure_volume_with_capacity(&moving_body(Expect::Bound))
        .await
        .unwrap();
    let reason = again.limit.unwrap().reason.unwrap_or_default();
    assert!(
        !reason.contains("project id had been changed"),
        "the volume in place carries its id: {reason}"
    );
}
