//! Moving a volume between two real agents (own roots, own remaps, own tokens) over HTTP on
//! 127.0.0.1: a live pass, changes, a final pass of the changes, the target's commit against the
//! source's manifest, then both manifests equal (run as root, on real directories).

mod support_agent;

use std::{
    collections::BTreeSet,
    os::unix::{
        ffi::OsStrExt,
        fs::{MetadataExt, symlink},
    },
};

use berth::agent::{
    api::{
        CommitRequest, ContainerOwner, EnsureVolumeRequest, EntryType, IdentityCheck, ManifestSummary,
        PassMode, TransferState, VolumeType,
    },
    identity::Expect,
};
use support_agent::{migration::*, *};

fn dir_req(owner: u32) -> EnsureVolumeRequest {
    EnsureVolumeRequest {
        tenant: "toto".into(),
        host_path: "/data".into(),
        volume_type: VolumeType::Directory,
        owner: Some(ContainerOwner {
            uid: owner,
            gid: owner,
        }),
        permissions: Some("0750".into()),
        seed: None,
    }
}

fn check(expect: Expect) -> IdentityCheck {
    IdentityCheck {
        identity: Some(identity()),
        expect: Some(expect),
    }
}

/// Every path below `dir` (relative), for comparing trees.
fn paths(dir: &std::path::Path) -> BTreeSet<Vec<u8>> {
    snapshot(dir)
        .keys()
        .map(|p| p.strip_prefix(dir).unwrap().as_os_str().as_bytes().to_vec())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_moves_with_owners_remapped_links_holes_and_odd_names_and_manifests_agree() {
    let source = Host::new("node-1", 165536).await;
    let target = Host::new("node-2", 231072).await;
    let decoys = (source.env.snapshot_decoy(), target.env.snapshot_decoy());
    // Provision on both hosts with the volume's identity; fill the source.
    let s = source
        .client
        .ensure_volume_checked(&dir_req(1000), &check(Expect::New))
        .await
        .unwrap();
    assert_eq!(s.identity, Some(identity()));
    let src = source.volume("toto", "/data");
    make_tree(&src, 2000, 165536);
    target
        .client
        .ensure_volume_checked(&dir_req(1000), &check(Expect::New))
        .await
        .unwrap();

    // Pass 1, while "the app runs": everything.
    let st = source
        .client
        .start_transfer(&request(&target, "mig-1", 1))
        .await
        .unwrap();
    assert_eq!(st.mode, PassMode::Full);
    let live = wait(&source.client, "mig-1").await;
    assert_eq!(live.state, TransferState::Succeeded, "{live:?}");
    assert!(
        live.files_total >= 2000 && live.files_done == live.files_total,
        "{live:?}"
    );
    assert_eq!(
        live.manifest.as_ref().unwrap().skipped,
        2,
        "the FIFO and the device: {live:?}"
    );
    assert_eq!(live.setid_stripped, 1);
    let received = live.received.clone().unwrap();
    assert_eq!(received.mode, Some(PassMode::Full));
    // The staged copy is not in place yet: the target's volume is still the empty one.
    assert_eq!(
        std::fs::read_dir(target.volume("toto", "/data")).unwrap().count(),
        0
    );
    let staged = target.client.incoming_status("mig-1", "toto").await.unwrap();
    assert!(
        staged.exists && staged.last_complete_pass == Some(1),
        "{staged:?}"
    );

    // The app writes on: a changed file, a removed file and directory, new entries.
    std::fs::write(src.join("small/d3/f3.txt"), b"changed after the live pass\n").unwrap();
    std::fs::remove_file(src.join("small/d4/f4.txt")).unwrap();
    std::fs::remove_dir_all(src.join("small/d9")).unwrap();
    std::fs::write(src.join("new-file"), b"new\n").unwrap();
    std::fs::remove_file(src.join("other/relative")).unwrap();
    symlink("../big/blob.bin", src.join("other/relative")).unwrap();
    std::fs::hard_link(src.join("links/original"), src.join("links/fourth")).unwrap();

    // Pass 2, after the app stopped: only what changed.
    source
        .client
        .start_transfer(&request(&target, "mig-1", 2))
        .await
        .unwrap();
    let last = wait(&source.client, "mig-1").await;
    assert_eq!(last.state, TransferState::Succeeded, "{last:?}");
    assert_eq!(last.mode, PassMode::Delta);
    assert!(
        last.entries_sent < 50,
        "a final pass sends only changes: {last:?}"
    );
    assert_eq!(last.deleted, 2, "f4.txt and d9: {last:?}");
    assert!(
        last.wire_bytes < live.wire_bytes / 10,
        "{} vs {}",
        last.wire_bytes,
        live.wire_bytes
    );

    // Commit on the target against the source's manifest, then compare both.
    let digest = last.manifest.clone().unwrap().digest;
    let commit = CommitRequest {
        tenant: "toto".into(),
        host_path: "/data".into(),
        identity: identity(),
        manifest: digest.clone(),
    };
    let done = target.client.commit("mig-1", &commit).await.unwrap();
    assert!(!done.already_committed);
    assert_eq!(done.manifest.digest, digest);
    let m_src = source.client.manifest("toto", "/data").await.unwrap().unwrap();
    let m_dst = target.client.manifest("toto", "/data").await.unwrap().unwrap();
    // The same digest and counts; only the source has entries it left out (FIFO, device).
    let without_skipped = ManifestSummary {
        skipped: 0,
        skipped_paths: Vec::new(),
        ..m_src.manifest.clone()
    };
    assert_eq!(
        without_skipped, m_dst.manifest,
        "source and target manifests differ"
    );
    assert_eq!(m_src.manifest.skipped_paths, ["/fifo", "/null-device"]);
    assert_eq!(
        m_src.manifest.digest, digest,
        "the final pass's manifest is the source's"
    );
    assert_eq!(m_dst.identity, Some(identity()), "the identity came along");
    assert!(m_src.manifest.files == 1809 && m_src.manifest.hard_links == 3 && m_src.manifest.symlinks == 3);

    // What is on the target's disk.
    let dst = target.volume("toto", "/data");
    let mut want = paths(&src);
    want.remove(&b"fifo"[..]);
    want.remove(&b"null-device"[..]);
    assert_eq!(paths(&dst), want, "the same names (specials left out)");
    let md = |p: &str| std::fs::symlink_metadata(dst.join(p)).unwrap();
    assert_eq!(
        (md("big/blob.bin").uid(), md("big/blob.bin").gid()),
        (232072, 232072),
        "container 1000 on the target"
    );
    assert_eq!(md("").uid(), 232072, "the volume's own owner too");
    assert_eq!(md("").mode() & 0o7777, 0o750);
    assert_eq!(md("root-owned").uid(), 0, "unmapped stays unmapped");
    assert_eq!(md("bin/suid").mode() & 0o7777, 0o755, "setuid is never copied");
    let sparse = md("big/sparse.img");
    assert_eq!(sparse.len(), 64 << 20);
    assert!(
        sparse.blocks() * 512 < 1 << 20,
        "the sparse file stayed sparse: {} blocks",
        sparse.blocks()
    );
    assert_eq!(
        std::fs::read(dst.join("big/sparse.img")).unwrap(),
        std::fs::read(src.join("big/sparse.img")).unwrap()
    );
    let ino = md("links/original").ino();
    for l in ["links/second", "other/third", "links/fourth"] {
        assert_eq!(md(l).ino(), ino, "{l} is a hard link of links/original");
    }
    assert_eq!(md("links/original").nlink(), 4);
    assert_eq!(
        std::fs::read_link(dst.join("other/escaping"))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        b"../../../../../../etc/shadow"
    );
    assert_eq!(
        std::fs::read_link(dst.join("other/relative"))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        b"../big/blob.bin"
    );
    assert_eq!(
        std::fs::read(dst.join("small/d3/f3.txt")).unwrap(),
        b"changed after the live pass\n"
    );
    assert!(md("").is_dir() && !dst.join("small/d9").exists() && !dst.join("small/d4/f4.txt").exists());
    assert_eq!(
        md("big/blob.bin").mtime(),
        std::fs::metadata(src.join("big/blob.bin")).unwrap().mtime()
    );
    // The staging area is gone; nothing outside either root changed.
    assert!(
        !target
            .env
            .tenant_root("toto")
            .join(".berth-staging/mig-1")
            .exists()
    );
    assert_unchanged(&decoys.0, &source.env.decoy);
    assert_unchanged(&decoys.1, &target.env.decoy);

    // A retried commit (its answer lost) finds it done; the target's data is the volume's.
    let again = target.client.commit("mig-1", &commit).await.unwrap();
    assert!(again.already_committed);
    let bound = target
        .client
        .ensure_volume_checked(&dir_req(1000), &check(Expect::Bound))
        .await
        .unwrap();
    assert_eq!(bound.state.entry_type, EntryType::Directory);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_volume_moves_and_a_commit_never_replaces_another_volumes_data() {
    let source = Host::new("node-1", 165536).await;
    let target = Host::new("node-2", 231072).await;
    let file = EnsureVolumeRequest {
        tenant: "toto".into(),
        host_path: "/data".into(),
        volume_type: VolumeType::File,
        owner: Some(ContainerOwner { uid: 7, gid: 8 }),
        permissions: Some("0640".into()),
        seed: None,
    };
    source
        .client
        .ensure_volume_checked(&file, &check(Expect::New))
        .await
        .unwrap();
    std::fs::write(source.volume("toto", "/data"), pattern(300_000, 9)).unwrap();
    // The target's path holds another volume's data.
    let other = IdentityCheck {
        identity: Some(berth::agent::identity::VolumeIdentity::parse("another-volume").unwrap()),
        expect: Some(Expect::New),
    };
    target.client.ensure_volume_checked(&file, &other).await.unwrap();
    std::fs::write(target.volume("toto", "/data"), b"someone else's").unwrap();

    source
        .client
        .start_transfer(&request(&target, "mig-f", 1))
        .await
        .unwrap();
    let st = wait(&source.client, "mig-f").await;
    assert_eq!(st.state, TransferState::Succeeded, "{st:?}");
    let commit = CommitRequest {
        tenant: "toto".into(),
        host_path: "/data".into(),
        identity: identity(),
        manifest: st.manifest.unwrap().digest,
    };
    let e = target.client.commit("mig-f", &commit).await.unwrap_err();
    assert_eq!(e.code(), Some("identity_mismatch"), "{e}");
    assert_eq!(
        std::fs::read(target.volume("toto", "/data")).unwrap(),
        b"someone else's"
    );
    // A wrong manifest is refused too, even with the path free.
    std::fs::remove_file(target.volume("toto", "/data")).unwrap();
    let wrong = CommitRequest {
        manifest: "0".repeat(64),
        ..commit.clone()
    };
    let e = target.client.commit("mig-f", &wrong).await.unwrap_err();
    assert_eq!(e.code(), Some("manifest_mismatch"), "{e}");
    assert!(!target.volume("toto", "/data").exists());
    let done = target.client.commit("mig-f", &commit).await.unwrap();
    assert_eq!(done.state.entry_type, EntryType::File);
    assert_eq!(done.state.owner.container_uid, Some(7));
    assert_eq!(done.state.mode, "0640");
    assert_eq!(
        std::fs::read(target.volume("toto", "/data")).unwrap(),
        pattern(300_000, 9)
    );
}
