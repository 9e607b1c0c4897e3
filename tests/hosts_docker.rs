//! Hosts as Docker containers (`StackOptions::docker_hosts`): every `berth agent` runs in a
//! container of its own, from an image built out of this build's binary as `scripts/image`
//! builds it, run as `deploy/agent/marathon-app.json` runs it (root, six capabilities, no new
//! privileges, read-only root), with only its own host's root and token mounted, at its own
//! address on a Docker network of the stack. These tests check what the scenario tests about
//! moving data and losing hosts rely on: each agent sees only its own disk; agents reach each
//! other over the network and move a volume between them; a host cut off the network or killed
//! is unreachable, and comes back at the same URL with its data.
// `support` and `support_agent` (for the migration helpers) both load tests/support/loopfs.rs.
#![allow(clippy::duplicate_mod)]
mod support;
mod support_agent;

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use berth::agent::{
    api::{
        CommitRequest, ContainerOwner, EnsureVolumeRequest, IdentityCheck, ManifestSummary, TransferRequest,
        TransferState, TransferTarget, VolumeType,
    },
    client::AgentClient,
    credentials,
    identity::Expect,
};
use support::{
    docker_hosts::AGENT_CAP_MASK,
    stack::{Host, Stack, StackOptions},
};
use support_agent::migration::{UID, claims, identity, make_tree, pattern, wait};

const SOURCE_REMAP: u32 = 165536;
const TARGET_REMAP: u32 = 231072;

fn docker_options() -> StackOptions {
    StackOptions {
        docker_hosts: true,
        ..StackOptions::default()
    }
}

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

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether `from`'s container gets an answer from the agent at `url` over the network: a plain
/// `GET /healthz` with busybox nc (its stdin kept open a second: it quits at the end of its input),
/// 3 s at most (busybox's static wget crashes on this machine). Returns
/// the answer (or what went wrong) in `Err` when there is none.
fn peer_reaches(from: &Host, url: &str) -> Result<(), String> {
    let addr = url.strip_prefix("http://").expect("an http:// URL");
    let (ip, port) = addr.split_once(':').expect("ip:port");
    let out = from.exec([
        "busybox",
        "timeout",
        "3",
        "sh",
        "-c",
        &format!(
            "(printf 'GET /healthz HTTP/1.1\\r\\nHost: {addr}\\r\\nConnection: close\\r\\n\\r\\n'; sleep 1) | busybox nc -w 2 {ip} {port}"
        ),
    ]);
    let answer = text(&out);
    if answer.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!("{}: {answer:?}", out.status))
    }
}

/// Asserts that a request fails as "unreachable" (no answer), within the client's timeout.
async fn assert_unreachable(client: &AgentClient, what: &str) {
    let started = Instant::now();
    let e = client
        .host_info()
        .await
        .expect_err(&format!("{what}: the agent must not answer"));
    assert!(
        e.is_unreachable(),
        "{what}: want unreachable, got {}",
        e.log_message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{what}: took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_agent_container_sees_only_its_own_hosts_root() {
    let started = Instant::now();
    let s = Stack::start_with(&["node-1", "node-2"], docker_options()).await;
    eprintln!("stack of 2 container hosts up in {:?}", started.elapsed());
    let (a, b) = (s.host("node-1"), s.host("node-2"));
    assert!(a.is_container() && b.is_container());
    let network = s.network.as_ref().expect("the stack's network");
    assert_eq!(a.url, format!("http://{}:8080", network.ip(0)));
    assert_eq!(b.url, format!("http://{}:8080", network.ip(1)));

    // The agent is pid 1 of its container, root with exactly the six capabilities.
    let status = a.exec(["cat", "/proc/1/status"]);
    assert!(status.status.success(), "{}", text(&status));
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in /proc/1/status:\n{status}"))
            .trim()
            .to_string()
    };
    assert!(field("Name:").starts_with("berth"), "{status}");
    assert_eq!(field("Uid:").split_whitespace().next(), Some("0"), "{status}");
    assert_eq!(
        u64::from_str_radix(&field("CapEff:"), 16).unwrap(),
        AGENT_CAP_MASK,
        "{status}"
    );
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");

    // A volume on node-1, its data written on node-1's disk.
    let (ca, cb) = (
        a.client(Duration::from_secs(30)),
        b.client(Duration::from_secs(30)),
    );
    ca.ensure_volume_checked(&dir_req(1000), &check(Expect::New))
        .await
        .unwrap();
    let vol = a.tenant_path("toto", "/data");
    let md = std::fs::metadata(&vol).unwrap();
    assert!(md.is_dir());
    assert_eq!((md.uid(), md.gid()), (SOURCE_REMAP + 1000, SOURCE_REMAP + 1000));
    // The agent in the container marked it (trusted.* needs CAP_SYS_ADMIN there).
    let mut mark = vec![0_u8; 512];
    let n = rustix::fs::getxattr(&vol, berth::agent::identity::XATTR, &mut mark)
        .unwrap_or_else(|e| panic!("the identity mark on {}: {e}", vol.display()));
    assert!(
        String::from_utf8_lossy(&mark[..n]).contains(UID),
        "{:?}",
        String::from_utf8_lossy(&mark[..n])
    );
    let file = vol.join("only-on-node-1.txt");
    std::fs::write(&file, b"written on node-1's disk\n").unwrap();
    let m = ca
        .manifest("toto", "/data")
        .await
        .unwrap()
        .expect("node-1 has it");
    assert_eq!(m.manifest.files, 1, "{m:?}");
    assert_eq!(m.identity, Some(identity()));

    // node-2's agent knows no such volume, and its data is not there.
    assert_eq!(cb.manifest("toto", "/data").await.unwrap(), None);
    let e = cb
        .ensure_volume_checked(&dir_req(1000), &check(Expect::Bound))
        .await
        .expect_err("node-2 has no data of the volume");
    assert_eq!(e.code(), Some("data_missing"), "{}", e.log_message());
    assert!(!b.tenant_path("toto", "/data").exists());

    // Inside the containers: node-1 sees its file, node-2 sees none of node-1's directories.
    let in_a = a.exec(["cat".as_ref(), file.as_os_str()]);
    assert!(in_a.status.success(), "{}", text(&in_a));
    assert_eq!(in_a.stdout, b"written on node-1's disk\n");
    let in_b = b.exec(["cat".as_ref(), file.as_os_str()]);
    assert!(
        !in_b.status.success(),
        "node-2 read node-1's file: {}",
        text(&in_b)
    );
    for dir in [a.root.as_path(), a.root.parent().unwrap()] {
        let ls = b.exec(["ls".as_ref(), dir.as_os_str()]);
        assert!(
            !ls.status.success(),
            "node-2 sees {}: {}",
            dir.display(),
            text(&ls)
        );
    }
    let own = b.exec(["ls".as_ref(), b.root.as_os_str()]);
    assert!(own.status.success(), "{}", text(&own));
    // Nor does it see the other host's token.
    let token_a = s.dir.path().join("agent-token-node-1");
    assert!(token_a.exists());
    assert!(!b.exec(["cat".as_ref(), token_a.as_os_str()]).status.success());
    eprintln!("test done in {:?}", started.elapsed());
}

/// Relative path → (mode, uid, gid, size, contents or link target) of everything below `root`.
fn tree(root: &Path) -> std::collections::BTreeMap<PathBuf, (u32, u32, u32, u64, Vec<u8>)> {
    support_agent::snapshot(root)
        .into_iter()
        .map(|(p, v)| (p.strip_prefix(root).unwrap().to_path_buf(), v))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_moves_between_agent_containers_over_their_network_with_owners_remapped() {
    let started = Instant::now();
    let s = Stack::start_with(
        &["node-1", "node-2"],
        StackOptions {
            docker_hosts: true,
            remap_of: vec![
                ("node-1", (SOURCE_REMAP, 65536)),
                ("node-2", (TARGET_REMAP, 65536)),
            ],
            ..StackOptions::default()
        },
    )
    .await;
    let (source, target) = (s.host("node-1"), s.host("node-2"));
    let (cs, ct) = (
        source.client(Duration::from_secs(120)),
        target.client(Duration::from_secs(120)),
    );
    cs.ensure_volume_checked(&dir_req(1000), &check(Expect::New))
        .await
        .unwrap();
    let src = source.tenant_path("toto", "/data");
    make_tree(&src, 300, SOURCE_REMAP);
    ct.ensure_volume_checked(&dir_req(1000), &check(Expect::New))
        .await
        .unwrap();
    let dst = target.tenant_path("toto", "/data");
    assert_eq!(std::fs::read_dir(&dst).unwrap().count(), 0);

    // The source's container sends to the target's address on the network, with a ticket for
    // the target's token.
    let id = "mig-docker-1";
    let request = TransferRequest {
        id: id.into(),
        tenant: "toto".into(),
        host_path: "/data".into(),
        identity: identity(),
        pass: 1,
        full: false,
        compression: Default::default(),
        target: TransferTarget {
            url: target.url.clone(),
            ticket: credentials::transfer_ticket(&target.token(), &claims(id, 1, "toto", "/data", 600)),
        },
    };
    let transfer = Instant::now();
    cs.start_transfer(&request).await.unwrap();
    let st = wait(&cs, id).await;
    assert_eq!(
        st.state,
        TransferState::Succeeded,
        "{st:?}\n--- source log ---\n{}\n--- target log ---\n{}",
        source.log_text(),
        target.log_text()
    );
    assert!(st.files_total >= 300 && st.files_done == st.files_total, "{st:?}");
    let digest = st.manifest.clone().unwrap().digest;
    let done = ct
        .commit(
            id,
            &CommitRequest {
                tenant: "toto".into(),
                host_path: "/data".into(),
                identity: identity(),
                manifest: digest.clone(),
            },
        )
        .await
        .unwrap();
    eprintln!(
        "transfer of {} files ({} bytes) and commit in {:?}",
        st.files_total,
        st.bytes_total,
        transfer.elapsed()
    );
    assert_eq!(done.manifest.digest, digest);

    // Both agents' manifests agree (the source's also lists the FIFO and device it left out).
    let m_src = cs.manifest("toto", "/data").await.unwrap().unwrap();
    let m_dst = ct.manifest("toto", "/data").await.unwrap().unwrap();
    assert_eq!(
        ManifestSummary {
            skipped: 0,
            skipped_paths: Vec::new(),
            ..m_src.manifest.clone()
        },
        m_dst.manifest
    );
    assert_eq!(m_dst.identity, Some(identity()));

    // On the disks: the same names, bytes and modes; owners moved into the target's range.
    let (before, after) = (tree(&src), tree(&dst));
    let map = |id: u32| {
        if (SOURCE_REMAP..SOURCE_REMAP + 65536).contains(&id) {
            id - SOURCE_REMAP + TARGET_REMAP
        } else {
            id
        }
    };
    let mut want = before.clone();
    want.remove(Path::new("fifo"));
    want.remove(Path::new("null-device"));
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the same entries (FIFO and device left out)"
    );
    let mut remapped = 0;
    for (path, (mode, uid, gid, size, content)) in &want {
        let got = &after[path];
        let mode = if path == Path::new("bin/suid") {
            mode & !0o6000
        } else {
            *mode
        };
        assert_eq!(
            got,
            &(mode, map(*uid), map(*gid), *size, content.clone()),
            "{}",
            path.display()
        );
        if *uid != map(*uid) {
            remapped += 1;
        }
    }
    assert!(remapped > 300, "{remapped} entries remapped");
    let md = |p: &str| std::fs::symlink_metadata(dst.join(p)).unwrap();
    assert_eq!(
        (md("").uid(), md("big/blob.bin").uid()),
        (TARGET_REMAP + 1000, TARGET_REMAP + 1000)
    );
    assert_eq!(md("root-owned").uid(), 0, "unmapped stays unmapped");
    assert_eq!(
        std::fs::read(dst.join("big/blob.bin")).unwrap(),
        pattern(3 << 20, 1)
    );
    assert!(md("big/sparse.img").blocks() * 512 < 1 << 20, "stayed sparse");
    assert_eq!(md("links/second").ino(), md("links/original").ino());
    assert_eq!(md("links/original").nlink(), 3);
    // The target's data is the volume's now.
    ct.ensure_volume_checked(&dir_req(1000), &check(Expect::Bound))
        .await
        .unwrap();
    eprintln!("test done in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_off_or_killed_is_unreachable_and_comes_back_at_the_same_url_with_its_data() {
    let started = Instant::now();
    let mut s = Stack::start_with(&["node-1", "node-2"], docker_options()).await;
    let url = s.host("node-1").url.clone();
    // Short timeouts: a host that is gone gives no answer at all.
    let quick = s.host("node-1").client(Duration::from_secs(2));
    quick
        .ensure_volume_checked(&dir_req(1000), &check(Expect::New))
        .await
        .unwrap();
    let file = s.host("node-1").tenant_path("toto", "/data").join("kept.bin");
    std::fs::write(&file, pattern(100_000, 7)).unwrap();
    let before = quick.manifest("toto", "/data").await.unwrap().unwrap();
    peer_reaches(s.host("node-2"), &url).expect("node-2 reaches node-1 over the network");

    // Cut off: the agent runs on, but neither the test host nor node-2 reaches it.
    let cut = Instant::now();
    s.host("node-1").disconnect();
    assert_unreachable(&quick, "disconnected").await;
    assert!(
        peer_reaches(s.host("node-2"), &url).is_err(),
        "node-2 still reaches node-1"
    );
    let c = s.host("node-1").container().unwrap();
    assert!(c.running(), "a disconnected host keeps running");
    s.host("node-1").reconnect().await;
    assert_eq!(s.host("node-1").url, url);
    quick.host_info().await.expect("back at the same URL");
    peer_reaches(s.host("node-2"), &url).expect("node-2 reaches node-1 again");
    eprintln!("disconnect/reconnect in {:?}", cut.elapsed());

    // Killed: gone until started again, then back with its data.
    let kill = Instant::now();
    s.host_mut("node-1").kill();
    assert!(!s.host("node-1").container().unwrap().running());
    assert_unreachable(&quick, "killed").await;
    assert!(peer_reaches(s.host("node-2"), &url).is_err());
    s.host_mut("node-1").start().await;
    assert_eq!(s.host("node-1").url, url);
    quick.host_info().await.expect("back at the same URL");
    let bound = quick
        .ensure_volume_checked(&dir_req(1000), &check(Expect::Bound))
        .await
        .expect("its data is still the volume's");
    assert_eq!(bound.identity, Some(identity()));
    assert_eq!(quick.manifest("toto", "/data").await.unwrap().unwrap(), before);
    assert_eq!(std::fs::read(&file).unwrap(), pattern(100_000, 7));
    peer_reaches(s.host("node-2"), &url).expect("node-2 reaches node-1 again");
    eprintln!("kill/start in {:?}", kill.elapsed());

    // restart_agent does both; the log keeps every run (three starts by now).
    s.host_mut("node-1").restart_agent().await;
    quick.host_info().await.expect("restarted");
    let log = s.host("node-1").log_text();
    assert!(!log.is_empty());
    assert_eq!(
        std::fs::read_to_string(s.host("node-1").log_path()).unwrap(),
        log,
        "the container's log is saved to the host's log file"
    );
    eprintln!("test done in {:?}", started.elapsed());
}
