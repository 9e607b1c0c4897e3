//! A volume's identity on its data (`trusted.berth.volume`): marked when created, checked on
//! every ensure and delete that names it, and out of reach of a process without CAP_SYS_ADMIN
//! (what every container is). Run as root, on real directories, through the HTTP API.

mod support_agent;

use std::{os::unix::fs::chown, path::Path, process::Command};

use berth::agent::{
    api::{ContainerOwner, EnsureVolumeRequest, IdentityCheck, ReleaseRequest, VolumeType},
    client::{AgentClient, AgentClientOptions},
    identity::{Expect, VolumeIdentity, XATTR},
};
use support_agent::*;

const A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const B: &str = "bbbbbbbb-0000-4000-8000-000000000002";

fn req(path: &str) -> EnsureVolumeRequest {
    EnsureVolumeRequest {
        tenant: "toto".into(),
        host_path: path.into(),
        volume_type: VolumeType::Directory,
        owner: Some(ContainerOwner { uid: 1000, gid: 1000 }),
        permissions: None,
        seed: None,
    }
}

fn id(s: &str) -> VolumeIdentity {
    VolumeIdentity::parse(s).unwrap()
}

fn check(uid: &str, expect: Expect) -> IdentityCheck {
    IdentityCheck {
        identity: Some(id(uid)),
        expect: Some(expect),
    }
}

fn mark(p: &Path) -> Option<Vec<u8>> {
    let mut buf = [0u8; 256];
    match rustix::fs::lgetxattr(p, XATTR, &mut buf[..]) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(rustix::io::Errno::NODATA) => None,
        Err(e) => panic!("getxattr {}: {e}", p.display()),
    }
}

async fn setup() -> (Env, Server, AgentClient) {
    let env = Env::new();
    let server = start_server(env.agent.clone(), None).await;
    let client = AgentClient::new(&server.url(), TOKEN, &AgentClientOptions::default()).unwrap();
    (env, server, client)
}

#[tokio::test]
async fn data_is_marked_when_created_and_another_volumes_or_missing_data_is_refused() {
    let (env, _server, c) = setup().await;
    let vol = env.tenant_root("toto").join("data");
    let made = c
        .ensure_volume_checked(&req("/data"), &check(A, Expect::New))
        .await
        .unwrap();
    assert!(made.state.created && !made.adopted);
    assert_eq!(mark(&vol).unwrap(), format!("bound {A}").as_bytes());
    std::fs::write(vol.join("precious"), b"A's data").unwrap();
    // Retries and later ensures of the same volume pass; inspect tells the identity.
    c.ensure_volume_checked(&req("/data"), &check(A, Expect::New))
        .await
        .unwrap();
    c.ensure_volume_checked(&req("/data"), &check(A, Expect::Bound))
        .await
        .unwrap();
    assert_eq!(
        c.inspect("toto", "/data").await.unwrap().unwrap().identity,
        Some(id(A))
    );
    // Another volume on the same path (a reused name): refused, in every mode.
    for expect in [
        Expect::New,
        Expect::AdoptUnstamped,
        Expect::AdoptReleased,
        Expect::Bound,
    ] {
        let e = c
            .ensure_volume_checked(&req("/data"), &check(B, expect))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("identity_mismatch"), "{expect:?}: {e}");
        assert!(
            e.to_string().contains(A) && e.to_string().contains("/data"),
            "{e}"
        );
    }
    assert_eq!(mark(&vol).unwrap(), format!("bound {A}").as_bytes());
    assert_eq!(std::fs::read(vol.join("precious")).unwrap(), b"A's data");

    // A volume bound before, whose data is gone (a rebuilt host): never recreated empty.
    let e = c
        .ensure_volume_checked(&req("/gone"), &check(B, Expect::Bound))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("data_missing"), "{e}");
    assert!(
        !env.tenant_root("toto").join("gone").exists(),
        "nothing was created"
    );
    // ... or replaced by an empty directory (what Docker's -v makes of a missing path).
    std::fs::create_dir(env.tenant_root("toto").join("gone")).unwrap();
    let e = c
        .ensure_volume_checked(&req("/gone"), &check(B, Expect::Bound))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("data_missing"), "{e}");
    // Unmarked data where a bound volume's data should be.
    std::fs::write(env.tenant_root("toto").join("gone/x"), b"?").unwrap();
    let e = c
        .ensure_volume_checked(&req("/gone"), &check(B, Expect::Bound))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("identity_missing"), "{e}");
    // A first binding does not take it over unless told to.
    let e = c
        .ensure_volume_checked(&req("/gone"), &check(B, Expect::New))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("unstamped_data"), "{e}");
    assert_eq!(mark(&env.tenant_root("toto").join("gone")), None);
    let adopted = c
        .ensure_volume_checked(&req("/gone"), &check(B, Expect::AdoptUnstamped))
        .await
        .unwrap();
    assert!(adopted.adopted);
    assert_eq!(
        mark(&env.tenant_root("toto").join("gone")).unwrap(),
        format!("bound {B}").as_bytes()
    );

    // Without an identity, ensure works as it always did (today's controller).
    let plain = c.ensure_volume(&req("/plain")).await.unwrap();
    assert!(plain.created);
    assert_eq!(mark(&env.tenant_root("toto").join("plain")), None);
    // A volume in the staging area is refused.
    let e = c.ensure_volume(&req("/.berth-staging/x")).await.unwrap_err();
    assert_eq!(e.code(), Some("invalid_request"), "{e}");
}

#[tokio::test]
async fn released_data_is_adopted_only_deliberately_and_delete_refuses_another_identity() {
    let (env, _server, c) = setup().await;
    let vol = env.tenant_root("toto").join("data");
    c.ensure_volume_checked(&req("/data"), &check(A, Expect::New))
        .await
        .unwrap();
    std::fs::write(vol.join("kept"), b"retained").unwrap();
    // Delete naming another identity, or none on unmarked data: refused, nothing removed.
    let e = c.delete_checked("toto", "/data", &id(B)).await.unwrap_err();
    assert_eq!(e.code(), Some("identity_mismatch"), "{e}");
    assert!(vol.join("kept").exists());
    // The volume is deleted with reclaimPolicy Retain: its data is released.
    let r = c
        .release(&ReleaseRequest {
            tenant: "toto".into(),
            host_path: "/data".into(),
            identity: id(A),
        })
        .await
        .unwrap();
    assert!(r.existed && r.changed);
    assert_eq!(mark(&vol).unwrap(), format!("released {A}").as_bytes());
    assert!(c.inspect("toto", "/data").await.unwrap().unwrap().released);
    let e = c
        .ensure_volume_checked(&req("/data"), &check(B, Expect::New))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("released_data"), "{e}");
    let e = c
        .ensure_volume_checked(&req("/data"), &check(B, Expect::AdoptUnstamped))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("released_data"), "{e}");
    let adopted = c
        .ensure_volume_checked(&req("/data"), &check(B, Expect::AdoptReleased))
        .await
        .unwrap();
    assert!(adopted.adopted);
    assert_eq!(mark(&vol).unwrap(), format!("bound {B}").as_bytes());
    assert_eq!(std::fs::read(vol.join("kept")).unwrap(), b"retained");
    // Now A may not delete it; B may.
    let e = c.delete_checked("toto", "/data", &id(A)).await.unwrap_err();
    assert_eq!(e.code(), Some("identity_mismatch"), "{e}");
    let gone = c.delete_checked("toto", "/data", &id(B)).await.unwrap();
    assert!(gone.existed && !vol.exists());
    // Unmarked data is not known to be the volume's: a delete naming an identity keeps it.
    c.ensure_volume(&req("/legacy")).await.unwrap();
    let e = c.delete_checked("toto", "/legacy", &id(A)).await.unwrap_err();
    assert_eq!(e.code(), Some("identity_missing"), "{e}");
    assert!(env.tenant_root("toto").join("legacy").exists());
}

/// Runs this test binary's `xattr_helper` under `wrapper`, which performs `op` on `path`;
/// returns what it printed ("ok" or the errno).
fn helper(wrapper: &[&str], op: &str, path: &Path) -> String {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(wrapper[0]);
    cmd.args(&wrapper[1..])
        .arg(exe)
        .args(["--exact", "xattr_helper", "--nocapture", "--test-threads=1"])
        .env("BERTH_XATTR_OP", op)
        .env("BERTH_XATTR_PATH", path);
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.split_once("XATTR-RESULT ").map(|(_, r)| r))
        .unwrap_or_else(|| {
            panic!(
                "the helper printed no result: {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_owned()
}

/// Not a test on its own: does one xattr operation when run by [`helper`].
#[test]
fn xattr_helper() {
    let (Ok(op), Ok(path)) = (std::env::var("BERTH_XATTR_OP"), std::env::var("BERTH_XATTR_PATH")) else {
        return;
    };
    let path = Path::new(&path);
    let r = match op.as_str() {
        "set" => rustix::fs::lsetxattr(
            path,
            XATTR,
            format!("bound {B}").as_bytes(),
            rustix::fs::XattrFlags::empty(),
        ),
        "remove" => rustix::fs::lremovexattr(path, XATTR),
        "read" => {
            let mut buf = [0u8; 256];
            rustix::fs::lgetxattr(path, XATTR, &mut buf[..]).map(|_| ())
        }
        other => panic!("unknown op {other}"),
    };
    println!(
        "XATTR-RESULT {}",
        match r {
            Ok(()) => "ok".to_owned(),
            Err(rustix::io::Errno::PERM) => "PERM".to_owned(),
            Err(rustix::io::Errno::NODATA) => "NODATA".to_owned(),
            Err(e) => format!("errno {}", e.raw_os_error()),
        }
    );
}

#[tokio::test]
async fn a_process_without_cap_sys_admin_can_neither_forge_read_nor_remove_the_mark() {
    let (env, _server, c) = setup().await;
    c.ensure_volume_checked(&req("/data"), &check(A, Expect::New))
        .await
        .unwrap();
    let vol = env.tenant_root("toto").join("data");
    // Let an unprivileged user reach the volume (the temp dir is private by default).
    std::fs::set_permissions(
        env.tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // The tenant's own file, owned by its container user (host 166536): a container root or
    // that user would try on it.
    let file = vol.join("mine");
    std::fs::write(&file, b"x").unwrap();
    chown(&file, Some(166536), Some(166536)).unwrap();
    let no_sys_admin: &[&str] = &[
        "setpriv",
        "--bounding-set=-sys_admin",
        "--inh-caps=-sys_admin",
        "--",
    ];
    let tenant_user: &[&str] = &[
        "setpriv",
        "--reuid=166536",
        "--regid=166536",
        "--clear-groups",
        "--",
    ];
    for (who, wrapper) in [
        ("root without CAP_SYS_ADMIN", no_sys_admin),
        ("the owner", tenant_user),
    ] {
        for target in [&vol, &file] {
            assert_eq!(
                helper(wrapper, "set", target),
                "PERM",
                "{who} set the mark on {}",
                target.display()
            );
            assert_eq!(
                helper(wrapper, "remove", target),
                "PERM",
                "{who} removed it from {}",
                target.display()
            );
        }
        // trusted.* attributes are invisible without CAP_SYS_ADMIN.
        assert_eq!(helper(wrapper, "read", &vol), "NODATA", "{who} read the mark");
    }
    assert_eq!(
        mark(&vol).unwrap(),
        format!("bound {A}").as_bytes(),
        "the mark is unchanged"
    );
    assert_eq!(mark(&file), None, "no mark was forged on a file");
    // The helper does work with the capability (so the refusals above are the kernel's).
    assert_eq!(helper(&["env"], "set", &file), "ok");
    assert_eq!(mark(&file).unwrap(), format!("bound {B}").as_bytes());
}
