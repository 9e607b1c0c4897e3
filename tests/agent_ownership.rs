//! What the agent owns and never grants: the directories above a volume must be root's (a
//! tenant-owned parent, e.g. left by a Retain delete, is refused), and no file volume keeps or
//! gets setuid/setgid bits (run as root, on real directories).

mod support_agent;

use std::os::unix::fs::PermissionsExt;

use berth::agent::{
    OpError,
    api::{ContainerOwner, EnsureVolumeRequest, VolumeType},
    safe_fs::FsError,
};
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

#[test]
fn a_parent_the_tenant_owns_or_others_can_write_is_refused_and_nothing_is_created_below() {
    use std::os::unix::fs::chown;
    let env = Env::new();
    let root = env.tenant_root("toto");
    let old = root.join("old");
    // What a Retain delete leaves behind: the former volume, owned by the tenant's uid.
    std::fs::create_dir_all(&old).unwrap();
    chown(&old, Some(166536), Some(166536)).unwrap();
    let decoy = env.snapshot_decoy();
    for kind in [VolumeType::Directory, VolumeType::File] {
        let e = env
            .agent
            .ensure(&req("/old/new/leaf", kind, 1000, "0750"))
            .unwrap_err();
        assert!(matches!(e, OpError::Fs(FsError::UnsafeParent { .. })), "{e}");
        assert_eq!((e.code(), e.status()), ("unsafe_parent", 409));
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("{} lies above the volume", old.display())),
            "{msg}"
        );
        assert!(msg.contains("is owned by uid 166536"), "{msg}");
        assert!(msg.contains("chown root") && msg.contains("retry"), "{msg}");
        assert!(!old.join("new").exists(), "created below an unsafe parent");
    }
    // Root-owned but writable by the group, or by everyone (even with the sticky bit).
    chown(&old, Some(0), Some(0)).unwrap();
    for (mode, shown) in [(0o775, "0775"), (0o1777, "1777"), (0o757, "0757")] {
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = env
            .agent
            .ensure(&req("/old/leaf", VolumeType::Directory, 1000, "0750"))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("is writable by group or others (mode {shown})")),
            "{e}"
        );
        assert!(!old.join("leaf").exists());
    }
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The tenant root itself.
    chown(&root, Some(165536), Some(165536)).unwrap();
    let e = env
        .agent
        .ensure(&req("/fresh", VolumeType::Directory, 1000, "0750"))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("{} lies above the volume", root.display())),
        "{e}"
    );
    assert!(!root.join("fresh").exists());
    // Once fixed, the volume is made, with new parents root-owned 0755.
    chown(&root, Some(0), Some(0)).unwrap();
    env.agent
        .ensure(&req("/old/new/leaf", VolumeType::Directory, 1000, "0750"))
        .unwrap();
    assert_eq!(owner_of(&old.join("new")), (0, 0));
    assert_eq!(mode_of(&old.join("new")), 0o755);
    assert_eq!(owner_of(&old.join("new/leaf")), (166536, 166536));
    // The volume itself may belong to the tenant: ensuring it again is fine.
    env.agent
        .ensure(&req("/old/new/leaf", VolumeType::Directory, 1000, "0750"))
        .unwrap();
    assert_unchanged(&decoy, &env.decoy);
}

#[test]
fn a_setuid_file_left_by_a_container_never_regains_setuid_after_a_chown() {
    let env = Env::new();
    let mut file = req("/bin/tool", VolumeType::File, 0, "0644");
    file.owner = None;
    file.permissions = None;
    env.agent.ensure(&file).unwrap();
    let p = env.tenant_root("toto").join("bin/tool");
    assert_eq!(owner_of(&p), (165536, 165536), "the container's root owns it");
    // The container (root inside) writes a shell and makes it setuid, setgid, or both.
    std::fs::write(&p, "#!/bin/sh\nexec /bin/sh\n").unwrap();
    for bits in [0o4755, 0o2755, 0o6755] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(bits)).unwrap();
        // The attack: a new owner and no permissions. Before the fix the agent re-applied the
        // mode it read before the chown, so the file became setuid to the new owner.
        let mut attack = file.clone();
        attack.owner = Some(ContainerOwner { uid: 1000, gid: 1000 });
        let s = env.agent.ensure(&attack).unwrap();
        assert_eq!(mode_of(&p), 0o755, "bits {bits:o} survived: {:o}", mode_of(&p));
        assert_eq!(s.mode, "0755");
        assert!(s.changed);
        assert_eq!(owner_of(&p), (166536, 166536));
        // Without an owner change either (nothing is chowned): stripped all the same.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(bits)).unwrap();
        let s = env.agent.ensure(&file).unwrap();
        assert_eq!(mode_of(&p), 0o755, "bits {bits:o} survived without a chown");
        assert!(s.changed);
        std::os::unix::fs::chown(&p, Some(165536), Some(165536)).unwrap();
    }
    // Asking for them is refused, for files and directories alike.
    for (kind, mode) in [
        (VolumeType::File, "4755"),
        (VolumeType::File, "2755"),
        (VolumeType::Directory, "4755"),
        (VolumeType::Directory, "2775"),
    ] {
        let e = env.agent.ensure(&req("/bin/tool2", kind, 0, mode)).unwrap_err();
        assert_eq!(e.code(), "invalid_permissions", "{mode}: {e}");
    }
    // A directory's setgid bit (group inheritance, no privilege) is kept when no permissions
    // are asked for, and goes when other permissions are.
    env.agent
        .ensure(&req("/shared", VolumeType::Directory, 1000, "0770"))
        .unwrap();
    let d = env.tenant_root("toto").join("shared");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o2770)).unwrap();
    let mut keep = req("/shared", VolumeType::Directory, 1000, "0770");
    keep.permissions = None;
    env.agent.ensure(&keep).unwrap();
    assert_eq!(mode_of(&d), 0o2770);
    env.agent
        .ensure(&req("/shared", VolumeType::Directory, 1000, "0770"))
        .unwrap();
    assert_eq!(mode_of(&d), 0o770);
}

/// Changing a directory volume's owner gives its tree to the new owner: what the previous owner
/// held below it, through fds, never following a link, never a hard-linked file, never another
/// user's file, never across a mount.
#[test]
fn a_new_owner_gets_the_tree_the_previous_owner_held() {
    use std::os::unix::fs::{MetadataExt, chown, symlink};
    let env = Env::new();
    let v = env
        .agent
        .ensure(&req("/data", VolumeType::Directory, 1000, "0750"))
        .unwrap();
    assert_eq!(v.owner.host_uid, 166536);
    let dir = env.tenant_root("toto").join("data");
    // What the app wrote as uid 1000: files, a deep directory, a FIFO, a symlink to a decoy
    // file outside, a hard link to another file of the volume; and a file of another user.
    std::fs::create_dir_all(dir.join("a/b/c")).unwrap();
    for p in ["f", "a/g", "a/b/c/h", "a/b/linked"] {
        std::fs::write(dir.join(p), p).unwrap();
    }
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join("fifo").as_path(),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    symlink(env.decoy.join("etc/shadow"), dir.join("to-shadow")).unwrap();
    std::fs::hard_link(dir.join("a/b/linked"), dir.join("a/second-link")).unwrap();
    std::fs::write(dir.join("others"), "x").unwrap();
    for p in ["f", "a", "a/g", "a/b", "a/b/c", "a/b/c/h", "a/b/linked", "fifo"] {
        chown(dir.join(p), Some(166536), Some(166536)).unwrap();
    }
    std::os::unix::fs::lchown(dir.join("to-shadow"), Some(166536), Some(166536)).unwrap();
    chown(dir.join("others"), Some(170000), Some(170000)).unwrap();
    let decoy = env.snapshot_decoy();

    let v = env
        .agent
        .ensure(&req("/data", VolumeType::Directory, 2000, "0750"))
        .unwrap();
    let r = v.reowned.expect("the tree was re-owned");
    // f, a, a/g, a/b, a/b/c, a/b/c/h, fifo, to-shadow: 8 entries; both links of the
    // hard-linked file are left.
    assert_eq!(
        (r.entries, r.skipped_hard_links, r.skipped_mounts),
        (8, 2, 0),
        "{r:?}"
    );
    let owner = |p: &str| {
        let m = std::fs::symlink_metadata(dir.join(p)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(owner(""), (167536, 167536));
    for p in ["f", "a", "a/g", "a/b", "a/b/c", "a/b/c/h", "fifo", "to-shadow"] {
        assert_eq!(owner(p), (167536, 167536), "{p}");
    }
    assert_eq!(
        owner("a/b/linked"),
        (166536, 166536),
        "a hard-linked file is never changed"
    );
    assert_eq!(owner("others"), (170000, 170000), "another user's file is theirs");
    assert_eq!(
        env.snapshot_decoy(),
        decoy,
        "the symlink's target was not touched"
    );
    // Converged: nothing more to do.
    let again = env
        .agent
        .ensure(&req("/data", VolumeType::Directory, 2000, "0750"))
        .unwrap();
    assert_eq!((again.changed, again.reowned), (false, None));
}
