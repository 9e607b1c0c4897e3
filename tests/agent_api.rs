//! The agent's HTTP API against a real server on 127.0.0.1 and real directories (run as root).

mod support_agent;

use std::{os::unix::fs::PermissionsExt, path::Path};

use berth::agent::{
    api::{ContainerOwner, EnsureVolumeRequest, EntryType, ErrorBody, Seed, VolumeType},
    client::{AgentClient, AgentClientError, AgentClientOptions},
    remap::IdMap,
};
use serde_json::json;
use support_agent::*;

fn client(server: &Server) -> AgentClient {
    AgentClient::new(&server.url(), TOKEN, &AgentClientOptions::default()).unwrap()
}

fn dir_req(tenant: &str, path: &str) -> EnsureVolumeRequest {
    EnsureVolumeRequest {
        tenant: tenant.into(),
        host_path: path.into(),
        volume_type: VolumeType::Directory,
        owner: None,
        permissions: None,
        seed: None,
    }
}

/// Lists everything below the agent root (to prove that a refused request created nothing).
fn listing(base: &Path) -> Vec<String> {
    let mut v: Vec<String> = snapshot(base).keys().map(|p| p.display().to_string()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn requests_without_or_with_a_wrong_token_get_401_and_change_nothing() {
    let env = Env::new();
    let server = start_server(env.agent.clone(), None).await;
    let http = reqwest::Client::new();
    let before = listing(&env.base);
    let body = json!({"tenant": "toto", "hostPath": "/var/log"});
    let url = format!("{}/v1/volumes", server.url());
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no header", None),
        ("wrong token", Some("Bearer wrong-token-0123456789abcdef".into())),
        (
            "token prefix",
            Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        ),
        ("token plus suffix", Some(format!("Bearer {TOKEN}x"))),
        ("basic scheme", Some(format!("Basic {TOKEN}"))),
        ("lower-case scheme", Some(format!("bearer{TOKEN}"))),
    ];
    for (what, auth) in cases {
        for method in [reqwest::Method::PUT, reqwest::Method::DELETE] {
            let mut r = http.request(method.clone(), &url).json(&body);
            if method == reqwest::Method::DELETE {
                r = http
                    .delete(&url)
                    .query(&[("tenant", "toto"), ("hostPath", "/var")]);
            }
            if let Some(a) = &auth {
                r = r.header("authorization", a);
            }
            let resp = r.send().await.unwrap();
            assert_eq!(resp.status(), 401, "{what} {method}");
            let err: ErrorBody = resp.json().await.unwrap();
            assert_eq!(err.error.code, "unauthorized", "{what}");
        }
        let resp = http
            .get(format!("{}/v1/host", server.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{what} host");
    }
    assert_eq!(
        listing(&env.base),
        before,
        "an unauthenticated request changed the root"
    );
    // Health needs no token.
    let h = http
        .get(format!("{}/healthz", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 200);
    // The typed client with a wrong token reports a rejection, not an unreachable host.
    let bad = AgentClient::new(
        &server.url(),
        "another-token-0123456789",
        &AgentClientOptions::default(),
    )
    .unwrap();
    let e = bad.ensure_volume(&dir_req("toto", "/x")).await.unwrap_err();
    assert!(e.is_rejected() && e.code() == Some("unauthorized"), "{e}");
    assert!(!env.tenant_root("toto").exists());
}

#[tokio::test]
async fn ensure_directory_maps_owner_through_remap_and_is_idempotent() {
    let env = Env::new();
    let server = start_server(env.agent.clone(), None).await;
    let c = client(&server);
    let mut req = dir_req("toto", "/var/lib/app");
    req.owner = Some(ContainerOwner { uid: 1000, gid: 1000 });
    req.permissions = Some("0750".into());
    let s = c.ensure_volume(&req).await.unwrap();
    let p = env.tenant_root("toto").join("var/lib/app");
    assert_eq!(s.absolute_path, p.display().to_string());
    assert!(s.created && s.changed);
    assert_eq!(s.entry_type, EntryType::Directory);
    assert_eq!((s.owner.host_uid, s.owner.host_gid), (166536, 166536));
    assert_eq!(
        (s.owner.container_uid, s.owner.container_gid),
        (Some(1000), Some(1000))
    );
    assert_eq!(s.mode, "0750");
    // On disk, not only in the answer.
    assert!(p.is_dir());
    assert_eq!(owner_of(&p), (166536, 166536));
    assert_eq!(mode_of(&p), 0o750);
    // Parents: root-owned 0755 directories; the tenant root too.
    for parent in [env.tenant_root("toto"), p.parent().unwrap().to_path_buf()] {
        assert_eq!(owner_of(&parent), (0, 0), "{}", parent.display());
        assert_eq!(mode_of(&parent), 0o755, "{}", parent.display());
    }
    // Again: nothing to do.
    let again = c.ensure_volume(&req).await.unwrap();
    assert!(!again.created && !again.changed);
    // Drift is repaired.
    std::os::unix::fs::chown(&p, Some(5), Some(5)).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
    let fixed = c.ensure_volume(&req).await.unwrap();
    assert!(!fixed.created && fixed.changed);
    assert_eq!(owner_of(&p), (166536, 166536));
    assert_eq!(mode_of(&p), 0o750);
    // Without an owner, a new volume belongs to the container's root (host 165536).
    let s = c.ensure_volume(&dir_req("toto", "/data")).await.unwrap();
    assert_eq!((s.owner.host_uid, s.owner.container_uid), (165536, Some(0)));
    assert_eq!(s.mode, "0755");
}

/// A host's volumes verified in one request: each answered as `PUT /v1/volumes` would, in
/// order; a refusal of one does not stop the others.
#[tokio::test]
async fn a_batch_ensures_each_volume_and_answers_each_in_order() {
    use berth::agent::api::{BatchResult, MAX_BATCH};
    let env = Env::new();
    let server = start_server(env.agent.clone(), None).await;
    let c = client(&server);
    c.ensure_volume(&dir_req("toto", "/kept")).await.unwrap();
    std::fs::write(env.tenant_root("toto").join("afile"), b"x").unwrap();
    let batch = [
        dir_req("toto", "/kept").into(),
        dir_req("toto", "/afile").into(),
        dir_req("toto", "/new").into(),
    ];
    let results = c.ensure_batch(&batch).await.unwrap();
    assert!(
        matches!(&results[0], BatchResult::Ok(v) if !v.state.created && !v.state.changed),
        "{results:?}"
    );
    assert!(
        matches!(&results[1], BatchResult::Error { status: 409, error } if error.code == "type_mismatch"),
        "{results:?}"
    );
    assert!(
        matches!(&results[2], BatchResult::Ok(v) if v.state.created),
        "{results:?}"
    );
    assert!(env.tenant_root("toto").join("new").is_dir());
    let too_many: Vec<_> = (0..=MAX_BATCH)
        .map(|i| dir_req("toto", &format!("/v{i}")).into())
        .collect();
    let e = c.ensure_batch(&too_many).await.unwrap_err();
    assert!(e.is_rejected(), "{e}");
    assert!(
        !env.tenant_root("toto").join("v0").exists(),
        "a refused batch changes nothing"
    );
}

#[tokio::test]
async fn concatenated_ranges_and_out_of_range_ids() {
    let env = Env::with(|base| {
        let u = IdMap::from_host_ranges("subuid", &[(300000, 65536), (165536, 1000)]).unwrap();
        let g = IdMap::from_host_ranges("subgid", &[(165536, 65536)]).unwrap();
        config(base, u, g)
    });
    let server = start_server(env.agent.clone(), None).await;
    let c = client(&server);
    // Sorted by host start: 165536 (1000 ids) then 300000, so container uid 1500 → 300500.
    let mut req = dir_req("toto", "/a");
    req.owner = Some(ContainerOwner { uid: 1500, gid: 7 });
    let s = c.ensure_volume(&req).await.unwrap();
    assert_eq!(owner_of(&env.tenant_root("toto").join("a")), (300500, 165543));
    assert_eq!(s.owner.container_uid, Some(1500));
    let mut req = dir_req("toto", "/b");
    req.owner = Some(ContainerOwner { uid: 999, gid: 0 });
    c.ensure_volume(&req).await.unwrap();
    assert_eq!(owner_of(&env.tenant_root("toto").join("b")).0, 166535);
    // 1000 + 65536 ids are mapped: 66536 is the first unmapped uid.
    let mut req = dir_req("toto", "/c");
    req.owner = Some(ContainerOwner { uid: 66536, gid: 0 });
    let e = c.ensure_volume(&req).await.unwrap_err();
    match &e {
        AgentClientError::Rejected {
            status,
            code,
            message,
        } => {
            assert_eq!((*status, code.as_str()), (422, "id_out_of_range"));
            assert!(
                message.contains("66536") && message.contains("0 to 66535"),
                "{message}"
            );
            // Where the ranges come from is the host's business.
            assert!(!message.contains("test ranges"), "{message}");
        }
        other => panic!("{other}"),
    }
    assert!(
        !env.tenant_root("toto").join("c").exists(),
        "refused, yet created"
    );
    let mut req = dir_req("toto", "/c");
    req.owner = Some(ContainerOwner { uid: 0, gid: 65536 });
    assert_eq!(
        c.ensure_volume(&req).await.unwrap_err().code(),
        Some("id_out_of_range")
    );
}

#[tokio::test]
async fn file_volumes_are_files_seeded_once() {
    let env = Env::with(|base| {
        let (u, g) = remap_165536();
        let mut cfg = config(base, u, g);
        cfg.seed_allow = vec![base.parent().unwrap().join("decoy/etc/passwd")];
        cfg
    });
    let server = start_server(env.agent.clone(), None).await;
    let c = client(&server);
    let req = EnsureVolumeRequest {
        tenant: "toto".into(),
        host_path: "/etc/app.conf".into(),
        volume_type: VolumeType::File,
        owner: Some(ContainerOwner { uid: 1000, gid: 1000 }),
        permissions: Some("0640".into()),
        seed: Some(Seed::Content("key=value\n".into())),
    };
    let s = c.ensure_volume(&req).await.unwrap();
    let p = env.tenant_root("toto").join("etc/app.conf");
    assert!(p.is_file(), "a File volume must be a regular file");
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "key=value\n");
    assert_eq!(
        (s.entry_type, s.size_bytes, s.mode.as_str()),
        (EntryType::File, 10, "0640")
    );
    assert_eq!(owner_of(&p), (166536, 166536));
    // The app changed it; the seed is never applied again.
    std::fs::write(&p, "mine").unwrap();
    let again = c.ensure_volume(&req).await.unwrap();
    assert!(!again.created);
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "mine");
    // A file without a seed is empty, never a directory.
    let mut empty = req.clone();
    empty.host_path = "/etc/localtime".into();
    empty.seed = None;
    c.ensure_volume(&empty).await.unwrap();
    assert!(env.tenant_root("toto").join("etc/localtime").is_file());
    // Copy from an allowlisted host file.
    let mut copy = req.clone();
    copy.host_path = "/etc/passwd".into();
    copy.seed = Some(Seed::CopyFromHost(
        env.decoy.join("etc/passwd").display().to_string(),
    ));
    c.ensure_volume(&copy).await.unwrap();
    assert_eq!(
        std::fs::read(env.tenant_root("toto").join("etc/passwd")).unwrap(),
        std::fs::read(env.decoy.join("etc/passwd")).unwrap()
    );
    // A host file that is not allowlisted is refused, and nothing is created.
    let mut steal = req.clone();
    steal.host_path = "/etc/shadow".into();
    steal.seed = Some(Seed::CopyFromHost(
        env.decoy.join("etc/shadow").display().to_string(),
    ));
    let e = c.ensure_volume(&steal).await.unwrap_err();
    assert_eq!(e.code(), Some("seed_not_allowed"), "{e}");
    assert!(!env.tenant_root("toto").join("etc/shadow").exists());
    // The tenant reads this message (volume status, events): it names the file it asked for,
    // never the host's allowlist.
    let msg = e.to_string();
    assert!(msg.contains("is not allowed on this host"), "{msg}");
    assert!(msg.contains("ask the host's administrator"), "{msg}");
    assert!(!msg.contains("decoy/etc/passwd"), "the allowlist leaked: {msg}");
    // A seed on a directory is refused.
    let mut d = dir_req("toto", "/x");
    d.seed = Some(Seed::Content("x".into()));
    assert_eq!(
        c.ensure_volume(&d).await.unwrap_err().code(),
        Some("invalid_seed")
    );
}

#[tokio::test]
async fn an_existing_path_of_the_wrong_type_is_reported_not_replaced() {
    let env = Env::new();
    let server = start_server(env.agent.clone(), None).await;
    let c = client(&server);
    let root = env.tenant_root("toto");
    // What Docker's -v leaves behind: a directory where a file belongs.
    std::fs::create_dir_all(root.join("etc/localtime/keep")).unwrap();
    let req = EnsureVolumeRequest {
        volume_type: VolumeType::File,
        ..dir_req("toto", "/etc/localtime")
    };
    let e = c.ensure_volume(&req).await.unwrap_err();
    match &e {
        AgentClientError::Rejected {
            status,
            code,
            message,
        } => {
            assert_eq!((*status, code.as_str()), (409, "type_mismatch"));
            let want = format!(
                "{}/etc/localtime exists as a directory but the volume is declared type File",
                root.display()
            );
            assert!(message.contains(&want), "{message}");
            assert!(
                message.contains("Remove it or change the volume's type"),
                "{message}"
            );
        }
        other => panic!("{other}"),
    }
    assert!(
        root.join("etc/localtime/keep").is_dir(),
        "the directory was replaced"
    );
    // The reverse: a file where a directory is declared, and a file as a parent.
    std::fs::write(root.join("etc/conf"), "x").unwrap();
    let e = c.ensure_volume(&dir_req("toto", "/etc/conf")).await.unwrap_err();
    assert_eq!(e.code(), Some("type_mismatch"));
    assert!(
        e.to_string()
            .contains("exists as a regular file but the volume is declared type Directory"),
        "{e}"
    );
    let e = c
        .ensure_volume(&dir_req("toto", "/etc/conf/sub"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("parent_not_directory"), "{e}");
    assert_eq!(std::fs::read_to_string(root.join("etc/conf")).unwrap(), "x");
}

#[tokio::test]
async fn inspect_and_delete() {
    let env = Env::new();
    let server = start_server(env.agent.clone(), None).await;
    let c = client(&server);
    assert!(c.inspect("toto", "/data").await.unwrap().is_none());
    c.ensure_volume(&dir_req("toto", "/data")).await.unwrap();
    let d = env.tenant_root("toto").join("data");
    std::fs::create_dir_all(d.join("a/b")).unwrap();
    std::fs::write(d.join("a/b/blob"), vec![7u8; 100_000]).unwrap();
    std::os::unix::fs::symlink("/", d.join("a/root-link")).unwrap();
    let u = c.inspect("toto", "/data").await.unwrap().unwrap();
    assert_eq!(u.state.entry_type, EntryType::Directory);
    assert_eq!(u.entries, 5, "data, a, b, blob, root-link");
    assert!(u.usage_bytes >= 100_000, "{}", u.usage_bytes);
    assert!(
        u.usage_bytes < 10_000_000,
        "followed the symlink to /? {}",
        u.usage_bytes
    );
    let r = c.delete("toto", "/data").await.unwrap();
    assert!(r.existed);
    assert_eq!(r.removed_entries, 5);
    assert!(!d.exists());
    assert!(env.tenant_root("toto").is_dir(), "the tenant root must stay");
    let r = c.delete("toto", "/data").await.unwrap();
    assert!(!r.existed, "deleting is idempotent");
    // The tenant root itself cannot be deleted.
    let before = listing(&env.base);
    for p in ["/", "//", ""] {
        let e = c.delete("toto", p).await.unwrap_err();
        assert_eq!(e.code(), Some("invalid_path"), "{p:?}: {e}");
    }
    assert_eq!(listing(&env.base), before);
}

#[tokio::test]
async fn hostile_paths_and_tenants_are_refused_and_change_nothing() {
    let env = Env::new();
    let server = start_server(env.agent.clone(), None).await;
    let c = client(&server);
    // Another tenant with data, to prove nobody reaches it.
    c.ensure_volume(&dir_req("other", "/secret")).await.unwrap();
    let decoy = env.snapshot_decoy();
    let before = listing(&env.base);
    let long = format!("/{}", "a".repeat(256));
    let deep = "/abcdefgh".repeat(460);
    let decoy_abs = env.decoy.join("etc").display().to_string();
    let bad_paths: Vec<&str> = vec![
        "..",
        "/..",
        "/../user-other/secret",
        "/a/../../etc",
        "/./etc",
        "etc",
        "",
        "/",
        "a/b",
        "/etc\0/x",
        "/etc\n/x",
        "/a:b",
        "/a,b",
        "/a\\b",
        "/caf\u{e9}",
        &long,
        &deep,
        &decoy_abs[1..],
    ];
    for p in &bad_paths {
        for verb in ["ensure", "delete", "inspect"] {
            let e = match verb {
                "ensure" => c.ensure_volume(&dir_req("toto", p)).await.unwrap_err(),
                "delete" => c.delete("toto", p).await.unwrap_err(),
                _ => c.inspect("toto", p).await.unwrap_err(),
            };
            assert!(e.is_rejected(), "{verb} {p:?}: {e}");
            assert_eq!(e.code(), Some("invalid_path"), "{verb} {p:?}: {e}");
        }
    }
    let bad_tenants = [
        "..",
        ".",
        "a/b",
        "/a",
        "",
        "Toto",
        "t\u{43e}to",
        "toto ",
        "-toto",
        "toto\0",
        "user-toto/..",
        &"a".repeat(64),
    ];
    for t in bad_tenants {
        let e = c.ensure_volume(&dir_req(t, "/x")).await.unwrap_err();
        assert_eq!(e.code(), Some("invalid_tenant"), "{t:?}: {e}");
        let e = c.delete(t, "/secret").await.unwrap_err();
        assert_eq!(e.code(), Some("invalid_tenant"), "{t:?}: {e}");
    }
    // An absolute host path is just a path below the tenant root, never the host's.
    let s = c.ensure_volume(&dir_req("toto", &decoy_abs)).await.unwrap();
    assert!(
        s.absolute_path
            .starts_with(&env.tenant_root("toto").display().to_string())
    );
    assert_unchanged(&decoy, &env.decoy);
    let mut after = listing(&env.base);
    after.retain(|p| !p.starts_with(&env.tenant_root("toto").display().to_string()));
    assert_eq!(
        after,
        before
            .into_iter()
            .filter(|p| !p.starts_with(&env.tenant_root("toto").display().to_string()))
            .collect::<Vec<_>>()
    );
    assert!(env.tenant_root("other").join("secret").is_dir());
    // Malformed JSON and unknown fields are refused with a readable message.
    let http = reqwest::Client::new();
    let resp = http
        .put(format!("{}/v1/volumes", server.url()))
        .bearer_auth(TOKEN)
        .json(&json!({"tenant": "toto", "hostPath": "/y", "type": "Socket"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let e: ErrorBody = resp.json().await.unwrap();
    assert_eq!(e.error.code, "invalid_request");
}

#[tokio::test]
async fn host_info_reports_hostname_root_space_and_remap() {
    let env = Env::new();
    let server = start_server(env.agent.clone(), None).await;
    let h = client(&server).host_info().await.unwrap();
    assert_eq!(h.hostname, "node-test");
    assert_eq!(h.attributes["rack"], "r1");
    assert_eq!(h.root, env.base.display().to_string());
    assert!(h.space.total_bytes > 0 && h.space.free_bytes <= h.space.total_bytes);
    assert!(!h.remap.identity);
    assert_eq!(h.remap.uid_ranges[0].host_start, 165536);
    assert_eq!(h.remap.uid_ranges[0].count, 65536);
    assert_eq!(h.version, env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn client_tells_unreachable_from_rejected() {
    // A port with nothing listening.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let c = AgentClient::new(
        &format!("http://{addr}"),
        TOKEN,
        &AgentClientOptions {
            connect_timeout: std::time::Duration::from_secs(2),
            ..Default::default()
        },
    )
    .unwrap();
    let e = c.delete("toto", "/data").await.unwrap_err();
    assert!(e.is_unreachable() && e.is_retryable() && !e.is_rejected(), "{e}");
    // What a tenant may read names no agent address; the log line does.
    let shown = e.to_string();
    assert!(
        !shown.contains(&addr.to_string()) && !shown.contains("127.0.0.1"),
        "{shown}"
    );
    assert!(shown.contains("unreachable"), "{shown}");
    assert_eq!(e.url(), Some(format!("http://{addr}").as_str()));
    assert!(e.log_message().contains(&addr.to_string()));
    // A server that accepts but never answers: a timeout is also "unreachable".
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            conns.push(s);
        }
    });
    let c = AgentClient::new(
        &format!("http://{silent_addr}"),
        TOKEN,
        &AgentClientOptions {
            timeout: std::time::Duration::from_millis(300),
            ..Default::default()
        },
    )
    .unwrap();
    let e = c.delete("toto", "/data").await.unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    assert!(AgentClient::new("ftp://x", TOKEN, &AgentClientOptions::default()).is_err());
}

#[tokio::test]
async fn tls_with_a_private_ca() {
    let env = Env::new();
    let certs = env.tmp.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    make_certs(&certs);
    let tls = berth::agent::server::load_tls(&certs.join("agent.pem"), &certs.join("agent.key")).unwrap();
    let server = start_server(env.agent.clone(), Some(tls)).await;
    let url = format!("https://127.0.0.1:{}", server.addr.port());
    let ca = std::fs::read(certs.join("ca.pem")).unwrap();
    let c = AgentClient::new(
        &url,
        TOKEN,
        &AgentClientOptions {
            ca_pem: Some(ca),
            ..Default::default()
        },
    )
    .unwrap();
    let s = c.ensure_volume(&dir_req("toto", "/tls")).await.unwrap();
    assert!(s.created);
    // Without the private CA the handshake fails: no answer, so "unreachable", never "gone".
    let untrusting = AgentClient::new(&url, TOKEN, &AgentClientOptions::default()).unwrap();
    let e = untrusting.host_info().await.unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    // Plain HTTP to the TLS port gets no API answer.
    let plain = AgentClient::new(
        &format!("http://127.0.0.1:{}", server.addr.port()),
        TOKEN,
        &AgentClientOptions {
            timeout: std::time::Duration::from_secs(3),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(plain.host_info().await.is_err());
    // A bad key or certificate file is a clear start-up error.
    assert!(berth::agent::server::load_tls(&certs.join("ca.key"), &certs.join("agent.key")).is_err());
}
