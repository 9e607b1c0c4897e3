//! Hostile trees: symlinks, hard links, special files, mounts and rename races inside a tenant
//! root, against the agent's operations on real directories (run as root). Each test snapshots a
//! decoy tree outside the root and asserts it did not change.

mod support_agent;

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt, symlink},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use berth::agent::{
    OpError,
    api::{ContainerOwner, EnsureVolumeRequest, EntryType, VolumeQuery, VolumeType},
    safe_fs::FsError,
};
use rustix::fs::{FileType, Mode, RenameFlags};
use support_agent::*;

fn req(path: &str, kind: VolumeType, uid: u32, mode: &str) -> EnsureVolumeRequest {
    EnsureVolumeRequest {
        tenant: "toto".into(),
        host_path: path.into(),
        volume_type: kind,
        owner: Some(ContainerOwner { uid, gid: uid }),
        permissions: Some(mode.into()),
        seed: None,
    }
}

fn q(path: &str) -> VolumeQuery {
    VolumeQuery {
        tenant: "toto".into(),
        host_path: path.into(),
    }
}

/// Runs `f` on a thread and fails (instead of hanging) when it takes longer than 60 s, e.g.
/// because something opened a FIFO.
fn within_a_minute<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the operation hung (did it open a FIFO or device?)")
}

#[test]
fn a_component_that_is_a_symlink_is_never_followed() {
    let env = Env::new();
    let root = env.tenant_root("toto");
    std::fs::create_dir_all(&root).unwrap();
    let other = env.tenant_root("other");
    std::fs::create_dir_all(other.join("secret")).unwrap();
    let decoy = env.snapshot_decoy();
    let other_before = snapshot(&other);
    symlink("/", root.join("rootlink")).unwrap();
    symlink(&other, root.join("neighbour")).unwrap();
    symlink(&env.decoy, root.join("decoy")).unwrap();
    symlink("../user-other", root.join("relative")).unwrap();
    // If the agent followed `rootlink -> /`, this would create a directory in the host's /tmp.
    let probe = format!("berth-escape-probe-{}", std::process::id());
    let cases = [
        format!("/rootlink/tmp/{probe}"),
        "/neighbour/secret/x".to_owned(),
        "/neighbour/new".to_owned(),
        "/relative/secret/x".to_owned(),
        "/decoy/etc/x".to_owned(),
        "/decoy/data".to_owned(),
    ];
    for p in &cases {
        for kind in [VolumeType::Directory, VolumeType::File] {
            let e = env.agent.ensure(&req(p, kind, 1000, "0777")).unwrap_err();
            assert!(matches!(e, OpError::Fs(FsError::Symlink { .. })), "{p}: {e}");
            assert!(e.to_string().contains("is a symbolic link"), "{e}");
        }
        assert!(matches!(
            env.agent.delete(&q(p)).unwrap_err(),
            OpError::Fs(FsError::Symlink { .. })
        ));
        assert!(env.agent.inspect(&q(p)).is_err());
    }
    assert!(
        !Path::new("/tmp").join(&probe).exists(),
        "escaped through a symlink to /"
    );
    assert_unchanged(&decoy, &env.decoy);
    assert_eq!(snapshot(&other), other_before, "another tenant's root changed");
    // The tenant root itself as a symlink (to another tenant) is refused as well.
    let evil = env.tenant_root("evil");
    symlink(&other, &evil).unwrap();
    let mut r = req("/secret/x", VolumeType::Directory, 0, "0777");
    r.tenant = "evil".into();
    assert!(matches!(
        env.agent.ensure(&r).unwrap_err(),
        OpError::Fs(FsError::Symlink { .. })
    ));
    assert_eq!(snapshot(&other), other_before);
}

#[test]
fn a_final_symlink_to_a_decoy_shadow_is_not_chowned_or_chmodded() {
    let env = Env::new();
    let root = env.tenant_root("toto");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let shadow = env.decoy.join("etc/shadow");
    symlink(&shadow, root.join("etc/shadow")).unwrap();
    symlink(env.decoy.join("data"), root.join("etc/datadir")).unwrap();
    let decoy = env.snapshot_decoy();
    for (p, kind) in [
        ("/etc/shadow", VolumeType::File),
        ("/etc/shadow", VolumeType::Directory),
        ("/etc/datadir", VolumeType::Directory),
        ("/etc/datadir", VolumeType::File),
    ] {
        let e = env.agent.ensure(&req(p, kind, 1000, "0666")).unwrap_err();
        assert!(matches!(e, OpError::Fs(FsError::Symlink { .. })), "{p}: {e}");
    }
    // Inspect reports the link as a link (it does not follow it).
    let u = env.agent.inspect(&q("/etc/shadow")).unwrap();
    assert_eq!(u.state.entry_type, EntryType::Symlink);
    // Deleting removes the link, not the target.
    assert!(env.agent.delete(&q("/etc/shadow")).unwrap().existed);
    assert!(std::fs::symlink_metadata(root.join("etc/shadow")).is_err());
    assert_unchanged(&decoy, &env.decoy);
    assert_eq!(owner_of(&shadow), (0, 42));
    assert_eq!(mode_of(&shadow), 0o640);
}

#[test]
fn a_hard_link_to_a_file_outside_is_never_chowned_or_chmodded() {
    let env = Env::new();
    let root = env.tenant_root("toto");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let shadow = env.decoy.join("etc/shadow");
    // Same filesystem (both in one temp dir), as a container with CAP_FOWNER could do it.
    std::fs::hard_link(&shadow, root.join("etc/shadow")).unwrap();
    let decoy = env.snapshot_decoy();
    for kind in [VolumeType::File, VolumeType::Directory] {
        let e = env
            .agent
            .ensure(&req("/etc/shadow", kind, 1000, "0666"))
            .unwrap_err();
        match kind {
            VolumeType::File => {
                assert!(
                    matches!(e, OpError::Fs(FsError::HardLinked { nlink: 2, .. })),
                    "{e}"
                );
                assert!(e.to_string().contains("hard links"), "{e}");
            }
            VolumeType::Directory => {
                assert!(matches!(e, OpError::Fs(FsError::TypeMismatch { .. })), "{e}")
            }
        }
    }
    // Even with no owner or mode requested (nothing to change), a hard-linked file is refused.
    let mut plain = req("/etc/shadow", VolumeType::File, 0, "0640");
    plain.owner = None;
    plain.permissions = None;
    assert!(matches!(
        env.agent.ensure(&plain).unwrap_err(),
        OpError::Fs(FsError::HardLinked { .. })
    ));
    assert_unchanged(&decoy, &env.decoy);
    // Deleting the tenant's link leaves the outside file intact (only its link count drops).
    env.agent.delete(&q("/etc")).unwrap();
    let md = std::fs::metadata(&shadow).unwrap();
    assert_eq!(md.nlink(), 1);
    assert_unchanged(&decoy, &env.decoy);
}

#[test]
fn special_files_in_a_deleted_tree_are_unlinked_never_opened() {
    let env = Env::new();
    env.agent
        .ensure(&req("/data", VolumeType::Directory, 0, "0755"))
        .unwrap();
    let d = env.tenant_root("toto").join("data");
    std::fs::create_dir_all(d.join("sub/deeper")).unwrap();
    let dirfd = rustix::fs::open(&d, rustix::fs::OFlags::DIRECTORY, Mode::empty()).unwrap();
    rustix::fs::mkfifoat(&dirfd, "fifo", Mode::from_raw_mode(0o666)).unwrap();
    // /dev/null's numbers: harmless if opened, but it must not be.
    rustix::fs::mknodat(
        &dirfd,
        "sub/nulldev",
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    rustix::fs::mknodat(
        &dirfd,
        "sub/deeper/blockdev",
        FileType::BlockDevice,
        Mode::from_raw_mode(0o600),
        rustix::fs::makedev(7, 0),
    )
    .unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(d.join("sub/sock")).unwrap();
    let suid = d.join("sub/deeper/suid");
    std::fs::write(&suid, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    symlink(env.decoy.join("data"), d.join("sub/to-decoy-dir")).unwrap();
    symlink(env.decoy.join("etc/shadow"), d.join("to-shadow")).unwrap();
    symlink("/", d.join("sub/deeper/to-root")).unwrap();
    std::fs::hard_link(env.decoy.join("etc/passwd"), d.join("hardlink-passwd")).unwrap();
    std::fs::set_permissions(d.join("sub"), std::fs::Permissions::from_mode(0o000)).unwrap();
    let decoy = env.snapshot_decoy();
    let agent = env.agent.clone();
    let r = within_a_minute(move || agent.delete(&q("/data"))).unwrap();
    assert!(r.existed);
    // data, sub, deeper, fifo, nulldev, blockdev, sock, suid, 3 links, hard link.
    assert_eq!(r.removed_entries, 12);
    assert!(!d.exists());
    assert_unchanged(&decoy, &env.decoy);
    assert_eq!(
        std::fs::metadata(env.decoy.join("etc/passwd")).unwrap().nlink(),
        1
    );
}

#[test]
fn delete_never_crosses_a_bind_mount() {
    let env = Env::new();
    env.agent
        .ensure(&req("/data", VolumeType::Directory, 0, "0755"))
        .unwrap();
    let d = env.tenant_root("toto").join("data");
    std::fs::create_dir_all(d.join("a/mnt")).unwrap();
    std::fs::write(d.join("a/file"), "x").unwrap();
    std::fs::write(d.join("top"), "x").unwrap();
    let decoy = env.snapshot_decoy();
    let _m = bind_mount(&env.decoy.join("data"), &d.join("a/mnt"));
    assert!(
        d.join("a/mnt/deep/precious.txt").exists(),
        "bind mount not visible"
    );
    // Creating through the mount is refused (RESOLVE_NO_XDEV), so nothing lands on the decoy.
    // (`data` belongs to the container's root; as a parent it must be root's, so the walk gets
    // as far as the mount.)
    std::os::unix::fs::chown(&d, Some(0), Some(0)).unwrap();
    let e = env
        .agent
        .ensure(&req("/data/a/mnt/new", VolumeType::Directory, 0, "0777"))
        .unwrap_err();
    assert!(matches!(e, OpError::Fs(FsError::MountPoint { .. })), "{e}");
    // Inspect does not count what lies beyond the mount.
    let u = env.agent.inspect(&q("/data")).unwrap();
    assert_eq!(u.skipped_mounts, vec!["/a/mnt".to_owned()]);
    // Delete removes everything else, keeps the mount and says so.
    let e = env.agent.delete(&q("/data")).unwrap_err();
    match &e {
        OpError::Fs(FsError::DeleteIncomplete { remaining, .. }) => {
            assert_eq!(remaining.len(), 1);
            assert!(remaining[0].ends_with("/data/a/mnt"), "{remaining:?}");
        }
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("Unmount"), "{e}");
    assert!(!d.join("top").exists() && !d.join("a/file").exists());
    assert!(d.join("a/mnt/deep/precious.txt").exists());
    // A volume that is itself a mount point is refused whole.
    let e = env.agent.delete(&q("/data/a/mnt")).unwrap_err();
    assert!(matches!(e, OpError::Fs(FsError::MountPoint { .. })), "{e}");
    drop(_m);
    assert_unchanged(&decoy, &env.decoy);
    // Once unmounted, the delete completes.
    assert!(env.agent.delete(&q("/data")).unwrap().existed);
    assert!(!d.exists());
}

/// A thread that keeps swapping `dir/a` (a real directory) and `dir/b` (a symlink to the decoy)
/// with `renameat2(RENAME_EXCHANGE)` until stopped; returns how many swaps it made.
fn start_swapper(dir: &Path, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let dirfd = rustix::fs::open(dir, rustix::fs::OFlags::DIRECTORY, Mode::empty()).unwrap();
    std::thread::spawn(move || {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            if rustix::fs::renameat_with(&dirfd, "a", &dirfd, "b", RenameFlags::EXCHANGE).is_ok() {
                n += 1;
            }
        }
        n
    })
}

#[test]
fn rename_exchange_race_during_ensure_and_delete_never_escapes() {
    let env = Env::new();
    // Two root-owned directories (as parents must be), each holding a directory `a` and a
    // symlink `b` to the decoy that a thread keeps swapping: parents of new volumes in `race`,
    // the volume itself (chowned and chmodded) in `leaf`.
    let race = env.tenant_root("toto").join("race");
    let leaf = env.tenant_root("toto").join("leaf");
    for d in [&race, &leaf] {
        std::fs::create_dir_all(d.join("a")).unwrap();
        symlink(env.decoy.join("data"), d.join("b")).unwrap();
    }
    let decoy = env.snapshot_decoy();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = start_swapper(&race, stop.clone());
    let leaf_swapper = start_swapper(&leaf, stop.clone());
    let (mut ok, mut refused) = (0u32, 0u32);
    for i in 0..3000 {
        let results = [
            env.agent
                .ensure(&req(
                    &format!("/race/a/d{i}"),
                    VolumeType::Directory,
                    1000,
                    "0777",
                ))
                .map(|_| ()),
            env.agent
                .ensure(&req(&format!("/race/b/f{i}"), VolumeType::File, 1000, "0666"))
                .map(|_| ()),
            env.agent
                .ensure(&req("/leaf/a", VolumeType::Directory, 2000 + i, "0777"))
                .map(|_| ()),
            env.agent.delete(&q(&format!("/race/a/d{i}"))).map(|_| ()),
            env.agent.delete(&q(&format!("/race/b/f{i}"))).map(|_| ()),
        ];
        for r in results {
            match r {
                Ok(()) => ok += 1,
                Err(OpError::Fs(
                    FsError::Symlink { .. }
                    | FsError::Raced { .. }
                    | FsError::TypeMismatch { .. }
                    | FsError::ParentNotDirectory { .. },
                )) => refused += 1,
                Err(e) => panic!("unexpected error under the race: {e}"),
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    let leaf_swaps = leaf_swapper.join().unwrap();
    assert!(swaps > 100, "the race thread barely ran ({swaps} swaps)");
    assert!(
        leaf_swaps > 100,
        "the leaf race thread barely ran ({leaf_swaps} swaps)"
    );
    assert!(
        ok > 0 && refused > 0,
        "ok {ok}, refused {refused}: the race did not interleave"
    );
    assert_unchanged(&decoy, &env.decoy);
}

#[test]
fn rename_exchange_race_during_recursive_delete_never_escapes() {
    let env = Env::new();
    let decoy = env.snapshot_decoy();
    let mut swaps = 0;
    for round in 0..150 {
        let vol = format!("/vol{round}");
        env.agent
            .ensure(&req(&vol, VolumeType::Directory, 0, "0755"))
            .unwrap();
        let v = env.tenant_root("toto").join(&vol[1..]);
        for sub in ["a/x/y", "a/z", "c/d"] {
            std::fs::create_dir_all(v.join(sub)).unwrap();
        }
        for f in ["a/f1", "a/x/f2", "a/x/y/f3", "c/f4"] {
            std::fs::write(v.join(f), "payload").unwrap();
        }
        symlink(env.decoy.join("data"), v.join("b")).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = start_swapper(&v, stop.clone());
        std::thread::yield_now();
        let r = env.agent.delete(&q(&vol));
        stop.store(true, Ordering::Relaxed);
        swaps += swapper.join().unwrap();
        match r {
            Ok(_) | Err(OpError::Fs(FsError::Raced { .. })) => {}
            Err(e) => panic!("round {round}: {e}"),
        }
        // Whatever survived the race is removed once the swapping stops.
        env.agent.delete(&q(&vol)).unwrap();
        assert!(!v.exists());
    }
    assert!(swaps > 0, "the race thread never ran");
    assert_unchanged(&decoy, &env.decoy);
}

#[test]
fn an_owner_change_reaches_nothing_outside_the_volume() {
    let env = Env::new();
    let root = env.tenant_root("toto");
    std::fs::create_dir_all(root.join("data/inner")).unwrap();
    std::fs::write(root.join("data/inner/file"), "x").unwrap();
    symlink(env.decoy.join("etc/shadow"), root.join("data/link")).unwrap();
    std::fs::hard_link(env.decoy.join("etc/passwd"), root.join("data/hl")).unwrap();
    let decoy = env.snapshot_decoy();
    let s = env
        .agent
        .ensure(&req("/data", VolumeType::Directory, 1000, "0700"))
        .unwrap();
    assert_eq!((s.owner.host_uid, s.mode.as_str()), (166536, "0700"));
    // What the previous owner held below the volume goes to the new owner: a symlink itself,
    // never its target; a hard-linked file not at all (its other link is outside).
    assert_eq!(owner_of(&root.join("data/inner/file")), (166536, 166536));
    assert_eq!(owner_of(&root.join("data/link")), (166536, 166536));
    assert_eq!(owner_of(&root.join("data/hl")), (0, 0));
    assert_eq!(s.reowned.expect("the tree was re-owned").skipped_hard_links, 1);
    assert_unchanged(&decoy, &env.decoy);
}

#[test]
fn a_fifo_or_device_at_a_file_volume_path_is_reported_never_opened() {
    let env = Env::new();
    let root = env.tenant_root("toto");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let etc = rustix::fs::open(root.join("etc"), rustix::fs::OFlags::DIRECTORY, Mode::empty()).unwrap();
    // Opening this FIFO for reading without O_NONBLOCK would block forever.
    rustix::fs::mkfifoat(&etc, "localtime", Mode::from_raw_mode(0o644)).unwrap();
    rustix::fs::mknodat(
        &etc,
        "tty",
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rustix::fs::makedev(5, 0),
    )
    .unwrap();
    let tty_mode = mode_of(&root.join("etc/tty"));
    let agent = env.agent.clone();
    let (fifo, dev, inspected) = within_a_minute(move || {
        (
            agent.ensure(&req("/etc/localtime", VolumeType::File, 1000, "0644")),
            agent.ensure(&req("/etc/tty", VolumeType::File, 1000, "0644")),
            agent.inspect(&q("/etc/localtime")),
        )
    });
    let e = fifo.unwrap_err();
    assert!(
        e.to_string()
            .contains("exists as a FIFO (named pipe) but the volume is declared type File"),
        "{e}"
    );
    let e = dev.unwrap_err();
    assert!(e.to_string().contains("exists as a character device"), "{e}");
    assert_eq!(inspected.unwrap().state.entry_type, EntryType::Fifo);
    // Untouched: owner and mode of the special files did not change.
    assert_eq!(owner_of(&root.join("etc/localtime")), (0, 0));
    assert_eq!(owner_of(&root.join("etc/tty")), (0, 0));
    assert_eq!(mode_of(&root.join("etc/tty")), tty_mode);
}

#[test]
fn concurrent_ensures_of_one_file_create_and_seed_it_once() {
    let env = Env::new();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let agent = env.agent.clone();
            std::thread::spawn(move || {
                let mut r = req("/etc/app.conf", VolumeType::File, 1000, "0640");
                r.seed = Some(berth::agent::api::Seed::Content(format!("seed from {t}\n")));
                agent.ensure(&r).unwrap()
            })
        })
        .collect();
    let states: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(states.iter().filter(|s| s.created).count(), 1);
    let p = env.tenant_root("toto").join("etc/app.conf");
    let content = std::fs::read_to_string(&p).unwrap();
    assert!(
        content.starts_with("seed from ") && content.lines().count() == 1,
        "{content:?}"
    );
    assert_eq!(owner_of(&p), (166536, 166536));
    assert_eq!(mode_of(&p), 0o640);
}
