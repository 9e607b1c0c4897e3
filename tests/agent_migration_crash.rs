//! Killing the real `berth agent` processes mid-transfer: first the source, then the target.
//! The source data stays intact, the target's volume is never replaced by a partial copy, and a
//! retry completes (run as root).

mod support_agent;

use std::{
    ffi::OsStr,
    path::Path,
    time::{Duration, Instant},
};

use berth::agent::{
    api::{CommitRequest, ContainerOwner, EnsureVolumeRequest, IdentityCheck, TransferState, VolumeType},
    client::{AgentClient, AgentClientOptions},
    credentials,
    identity::Expect,
};
use support_agent::{
    migration::{claims, identity, pattern, wait},
    process::{AgentProc, start_agent},
    *,
};

fn client(p: &AgentProc) -> AgentClient {
    AgentClient::new(&p.url(), TOKEN, &AgentClientOptions::default()).unwrap()
}

async fn agent(base: &Path, log: &Path) -> AgentProc {
    start_agent(base, log, &[OsStr::new("--shutdown-timeout"), OsStr::new("1s")]).await
}

/// Waits until the source has sent at least `bytes` of pass `pass`.
async fn until_sent(c: &AgentClient, id: &str, bytes: u64) {
    let start = Instant::now();
    loop {
        let s = c.transfer_status(id).await.unwrap().unwrap();
        assert!(
            matches!(s.state, TransferState::Queued | TransferState::Running),
            "the pass ended before it could be interrupted: {s:?}"
        );
        if s.bytes_done >= bytes {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no progress: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Pass `pass` of transfer `id` of `/data` to `target`, with a ticket signed by its token.
fn req_with(target: &AgentProc, id: &str, pass: u32) -> berth::agent::api::TransferRequest {
    berth::agent::api::TransferRequest {
        id: id.into(),
        tenant: "toto".into(),
        host_path: "/data".into(),
        identity: identity(),
        pass,
        full: false,
        compression: Default::default(),
        target: berth::agent::api::TransferTarget {
            url: target.url(),
            ticket: credentials::transfer_ticket(TOKEN, &claims(id, pass, "toto", "/data", 600)),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_either_agent_mid_transfer_leaves_the_source_intact_and_a_retry_completes() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let (src_base, dst_base) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(&src_base).unwrap();
    std::fs::create_dir_all(&dst_base).unwrap();
    let (src_log, dst_log) = (tmp.path().join("src.log"), tmp.path().join("dst.log"));
    let mut source = agent(&src_base, &src_log).await;
    let mut target = agent(&dst_base, &dst_log).await;
    let vol = EnsureVolumeRequest {
        tenant: "toto".into(),
        host_path: "/data".into(),
        volume_type: VolumeType::Directory,
        owner: Some(ContainerOwner { uid: 1000, gid: 1000 }),
        permissions: None,
        seed: None,
    };
    let check = IdentityCheck {
        identity: Some(identity()),
        expect: Some(Expect::New),
    };
    client(&source).ensure_volume_checked(&vol, &check).await.unwrap();
    client(&target).ensure_volume_checked(&vol, &check).await.unwrap();
    let src = src_base.join("user-toto/data");
    let chunk = pattern(1 << 20, 3);
    for f in 0..6 {
        let mut data = Vec::with_capacity(48 << 20);
        for i in 0..48u8 {
            data.extend_from_slice(&chunk);
            data[(i as usize) << 20] = i ^ f;
        }
        std::fs::write(src.join(format!("big-{f}")), &data).unwrap();
    }
    for i in 0..300 {
        std::fs::write(src.join(format!("small-{i}")), format!("{i}\n")).unwrap();
    }
    let original = client(&source)
        .manifest("toto", "/data")
        .await
        .unwrap()
        .unwrap()
        .manifest;
    let dst = dst_base.join("user-toto/data");

    // 1. The source dies in the middle of pass 1.
    client(&source)
        .start_transfer(&req_with(&target, "crash-1", 1))
        .await
        .unwrap();
    until_sent(&client(&source), "crash-1", 20 << 20).await;
    source.signal(rustix::process::Signal::KILL);
    source.wait_exit(Duration::from_secs(20)).await;
    // The target notices the broken stream and keeps it staged, never in place.
    let start = Instant::now();
    loop {
        let s = client(&target).incoming_status("crash-1", "toto").await.unwrap();
        if !s.receiving {
            assert!(s.exists && s.last_complete_pass.is_none(), "{s:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the target still receives: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        std::fs::read_dir(&dst).unwrap().count(),
        0,
        "the target's volume is untouched"
    );
    source = agent(&src_base, &src_log).await;
    let now = client(&source)
        .manifest("toto", "/data")
        .await
        .unwrap()
        .unwrap()
        .manifest;
    assert_eq!(now, original, "the source is intact");
    // It restarted: it knows no transfer any more (the controller starts the pass again).
    assert!(
        client(&source)
            .transfer_status("crash-1")
            .await
            .unwrap()
            .is_none()
    );

    // 2. The target dies in the middle of the retry.
    client(&source)
        .start_transfer(&req_with(&target, "crash-1", 2))
        .await
        .unwrap();
    until_sent(&client(&source), "crash-1", 20 << 20).await;
    target.signal(rustix::process::Signal::KILL);
    target.wait_exit(Duration::from_secs(20)).await;
    let failed = wait(&client(&source), "crash-1").await;
    assert_eq!(failed.state, TransferState::Failed, "{failed:?}");
    let code = failed.error.as_ref().unwrap().code.clone();
    assert!(
        ["target_unreachable", "disconnected"].contains(&code.as_str()),
        "{failed:?}"
    );
    assert_eq!(
        client(&source)
            .manifest("toto", "/data")
            .await
            .unwrap()
            .unwrap()
            .manifest,
        original
    );
    target = agent(&dst_base, &dst_log).await;
    let staged = client(&target).incoming_status("crash-1", "toto").await.unwrap();
    assert!(
        staged.exists && !staged.receiving && staged.last_complete_pass.is_none(),
        "{staged:?}"
    );
    assert_eq!(
        std::fs::read_dir(&dst).unwrap().count(),
        0,
        "nothing half-renamed into place"
    );
    // An incomplete staging area is never committed.
    let commit = CommitRequest {
        tenant: "toto".into(),
        host_path: "/data".into(),
        identity: identity(),
        manifest: original.digest.clone(),
    };
    let e = client(&target).commit("crash-1", &commit).await.unwrap_err();
    assert_eq!(e.code(), Some("staging_conflict"), "{e}");

    // 3. A retry completes; the commit puts exactly the source's data in place.
    client(&source)
        .start_transfer(&req_with(&target, "crash-1", 3))
        .await
        .unwrap();
    let done = wait(&client(&source), "crash-1").await;
    assert_eq!(done.state, TransferState::Succeeded, "{done:?}");
    assert_eq!(done.manifest.as_ref().unwrap().digest, original.digest);
    let placed = client(&target).commit("crash-1", &commit).await.unwrap();
    assert_eq!(placed.manifest, original);
    assert_eq!(
        client(&target)
            .manifest("toto", "/data")
            .await
            .unwrap()
            .unwrap()
            .manifest,
        original
    );
    assert!(!dst_base.join("user-toto/.berth-staging/crash-1").exists());
    drop((source, target));
}
