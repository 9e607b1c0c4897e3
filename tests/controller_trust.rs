//! What a tenant can try against berth, and what berth refuses: each attack reproduced on the
//! real stack by the user `tenant`, whose rights are those of a namespace admin in its own
//! namespace only (StatefulLocalVolumes and their status), against the controller running with
//! exactly the chart's RBAC.
mod support;
mod support_helm;
mod support_scenario;

use std::time::Duration;

use berth::crd::StatefulLocalVolume;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::stack::eventually;
use support_scenario::{Scenario, constraints, docker_app, host_volumes, pin, ready, wait_condition_in};

/// The tenant's own view of its namespace: what it creates, it creates as `tenant`.
async fn as_tenant(ns: &str) -> Api<StatefulLocalVolume> {
    Api::namespaced(support::tenant_client(ns).await, ns)
}

async fn create(api: &Api<StatefulLocalVolume>, name: &str, spec: serde_json::Value) {
    api.create(&PostParams::default(), &support::volume(name, spec))
        .await
        .unwrap_or_else(|e| panic!("the tenant creates {name}: {e}"));
}

/// A user who may create volumes in the namespace named like the agent app's group mounted a
/// seeded file into the agent's own (privileged) app: its next start would have run the
/// tenant's script as root on the host. The agent app's whole group is berth's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_volume_reaches_the_agent_app_or_its_group() {
    let s = Scenario::start(&["node-1"]).await;
    let agent = s.app_id("agent");
    let mut agent_app = docker_app(&agent);
    agent_app["container"]["docker"]["privileged"] = json!(true);
    s.create_app(agent_app).await;
    let beside = s.app_id("beside");
    s.create_app(docker_app(&beside)).await;
    for id in [&agent, &beside] {
        s.wait_app_settled(id).await;
    }
    let _ctl = s.stack.controller(&s.ns, &["--agent-app", &agent]).await;
    s.stack.sim.clear_requests();

    let tenant = as_tenant(&s.ns).await;
    create(
        &tenant,
        "takeover",
        json!({"app": agent, "type": "File", "containerPath": "/usr/local/bin/berth",
               "hostPath": "/bin/berth", "seed": {"content": "#!/bin/sh\nid > /tmp/owned\n"}}),
    )
    .await;
    create(
        &tenant,
        "beside",
        json!({"app": beside, "containerPath": "/d", "hostPath": "/beside"}),
    )
    .await;
    for name in ["takeover", "beside"] {
        let r = ready(s.wait_reason(name, "AppNotAllowed", 30).await);
        assert_eq!(r.status, "False");
        assert!(
            r.message.contains("berth's own agent app or lies in its group"),
            "{name}: {}",
            r.message
        );
    }
    assert!(s.stack.sim.write_requests().is_empty(), "no app was written");
    for path in ["/bin/berth", "/beside"] {
        assert!(
            !s.stack.host("node-1").tenant_path(&s.ns, path).exists(),
            "{path} was created"
        );
    }
}

/// Apps whose container can reach the host (privileged, or Docker parameters giving host
/// access) never get a volume: whatever the tenant puts in it would run with the host's rights.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_volume_reaches_an_app_with_host_access() {
    let s = Scenario::start(&["node-1"]).await;
    let privileged = s.app_id("priv");
    let mut app = docker_app(&privileged);
    app["container"]["docker"]["privileged"] = json!(true);
    s.create_app(app).await;
    let host_net = s.app_id("hostnet");
    let mut app = docker_app(&host_net);
    app["container"]["docker"]["parameters"] = json!([{"key": "net", "value": "host"}]);
    s.create_app(app).await;
    let userns = s.app_id("userns");
    let mut app = docker_app(&userns);
    app["container"]["docker"]["parameters"] = json!([{"key": "userns", "value": "host"}]);
    s.create_app(app).await;
    for id in [&privileged, &host_net, &userns] {
        s.wait_app_settled(id).await;
    }
    let _ctl = s.controller().await;
    s.stack.sim.clear_requests();
    let tenant = as_tenant(&s.ns).await;
    for (name, app) in [("priv", &privileged), ("hostnet", &host_net), ("userns", &userns)] {
        create(
            &tenant,
            name,
            json!({"app": app, "containerPath": "/d", "hostPath": format!("/{name}")}),
        )
        .await;
    }
    for (name, needle) in [
        ("priv", "privileged"),
        ("hostnet", "net=host"),
        ("userns", "userns=host"),
    ] {
        let r = ready(s.wait_reason(name, "AppNotAllowed", 30).await);
        assert!(r.message.contains(needle), "{name}: {}", r.message);
        assert!(
            !s.stack
                .host("node-1")
                .tenant_path(&s.ns, &format!("/{name}"))
                .exists()
        );
    }
    assert!(s.stack.sim.write_requests().is_empty(), "no app was written");
}

/// With `team-a=<tenant>`, a namespace literally named like the tenant must not become that
/// tenant too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_mapping_reserves_its_tenant() {
    let s = Scenario::start(&["node-1"]).await;
    let client = support::admin_client().await;
    let impostor = support::namespace(&client, "impostor").await;
    // The tenant of namespace `s.ns` is, by the operator's map, named like `impostor`.
    let map = format!("{}={impostor}", s.ns);
    let _ctl = s
        .stack
        .controller(&format!("{},{impostor}", s.ns), &["--tenant-map", &map])
        .await;
    let id = format!("/{impostor}/web");
    s.create_app(docker_app(&id)).await;
    s.wait_app_settled(&id).await;
    let api = as_tenant(&impostor).await;
    create(
        &api,
        "data",
        json!({"app": id, "containerPath": "/d", "hostPath": "/d"}),
    )
    .await;
    let v = ready(wait_condition_in(&api, "data", "Ready", "InvalidSpec", 30).await);
    assert!(
        v.message.contains(&format!("maps namespace \"{}\"", s.ns)),
        "{}",
        v.message
    );
    assert_eq!(s.app_writes(&id), 0);
}

/// The nested-volume rule compared a volume only with older volumes not being deleted: flipping
/// an outer volume to read-write was admitted (the inner one became held), and a child was
/// admitted under a parent whose deletion was pending while it was still mounted read-write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_or_a_newcomer_that_would_widen_access_is_refused() {
    let (mut s, id, _ctl) = Scenario::with_running_app(&["node-1"], "web").await;
    let tenant = as_tenant(&s.ns).await;
    // Two apps share a read-only dataset: one path, read-only in both.
    let reader = s.app_id("reader");
    s.create_app(docker_app(&reader)).await;
    s.wait_app_settled(&reader).await;
    create(
        &tenant,
        "mine",
        json!({"app": id, "containerPath": "/ds", "hostPath": "/dataset", "readOnly": true}),
    )
    .await;
    create(
        &tenant,
        "theirs",
        json!({"app": reader, "containerPath": "/ds", "hostPath": "/dataset", "readOnly": true}),
    )
    .await;
    s.wait_bound("mine").await;
    s.wait_bound("theirs").await;
    let before = s.wait_app_settled(&id).await;
    // A volume inside another volume is refused, read-only or not: the inner volume's parent
    // would belong to the outer volume's containers.
    create(
        &tenant,
        "inner",
        json!({"app": id, "containerPath": "/inner", "hostPath": "/dataset/sub"}),
    )
    .await;
    let r = ready(s.wait_reason("inner", "InvalidSpec", 30).await);
    assert!(r.message.contains("lies inside /dataset"), "{}", r.message);

    // (a) The owner flips its volume to read-write: that edit is refused (the other app would
    // read what this one writes), the other volume keeps working, and the app keeps its mount
    // read-only.
    tenant
        .patch(
            "mine",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"readOnly": false}})),
        )
        .await
        .unwrap();
    let r = ready(s.wait_reason("mine", "InvalidSpec", 30).await);
    assert!(
        r.message.contains("also the host path of volume"),
        "{}",
        r.message
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ready(s.api.get("theirs").await.unwrap()).reason, "Bound");
    assert_eq!(host_volumes(&s.app(&id).await), host_volumes(&before));
    assert_eq!(host_volumes(&before)[0]["mode"], "RO");

    // (b) A parent whose deletion is pending still counts: its agent is away, so its finalizer
    // holds, and a child under it is refused.
    let app2 = s.app_id("batch");
    s.create_app(docker_app(&app2)).await;
    s.wait_app_settled(&app2).await;
    create(
        &tenant,
        "parent",
        json!({"app": app2, "containerPath": "/p", "hostPath": "/logs", "reclaimPolicy": "Delete"}),
    )
    .await;
    s.wait_bound("parent").await;
    s.stack.host_mut("node-1").stop_agent();
    tenant.delete("parent", &DeleteParams::default()).await.unwrap();
    eventually(30, "the parent to leave its app", || async {
        host_volumes(&s.app(&app2).await).is_empty().then_some(())
    })
    .await;
    assert!(
        s.api.get("parent").await.is_ok(),
        "its finalizer holds while the agent is away"
    );
    create(
        &tenant,
        "child",
        json!({"app": app2, "containerPath": "/c", "hostPath": "/logs/child"}),
    )
    .await;
    let r = ready(s.wait_reason("child", "InvalidSpec", 30).await);
    assert!(r.message.contains("lies inside /logs"), "{}", r.message);
}

/// An admin of namespace `evil` named toto's app and wrote its volume's status (toto's host and
/// path): toto's own volume went to ConflictingPlacement. Now the foreign volume takes no part,
/// and berth ignores status it did not write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_volume_and_its_forged_status_change_nothing() {
    let s = Scenario::start(&["node-1", "node-2"]).await;
    let client = support::admin_client().await;
    let evil_ns = support::namespace(&client, "evil").await;
    let id = s.app_id("web");
    s.create_app(docker_app(&id)).await;
    s.wait_app_settled(&id).await;
    // One controller for both namespaces, as a cluster-wide controller sees them.
    let _ctl = s.stack.controller(&format!("{},{evil_ns}", s.ns), &[]).await;
    s.apply(
        "data",
        json!({"app": id, "containerPath": "/data", "hostPath": "/data"}),
    )
    .await;
    let bound = s.wait_bound("data").await.status.unwrap();
    let before = s.wait_app_settled(&id).await;
    let writes = s.app_writes(&id);

    let evil = as_tenant(&evil_ns).await;
    create(
        &evil,
        "x",
        json!({"app": id, "containerPath": "/x", "hostPath": "/data"}),
    )
    .await;
    let forged = json!({"apiVersion": "berth.dev/v1alpha1", "kind": "StatefulLocalVolume",
        "status": {"host": "node-2", "hostPath": bound.host_path, "app": id, "tenant": s.ns,
                   "seal": bound.seal, "phase": "Bound"}});
    evil.patch_status("x", &PatchParams::apply("evil").force(), &Patch::Apply(&forged))
        .await
        .unwrap();
    let r = ready(wait_condition_in(&evil, "x", "Ready", "InvalidSpec", 30).await);
    assert!(
        r.message.contains("outside the tenant's Marathon group"),
        "{}",
        r.message
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let v = s.api.get("data").await.unwrap();
    assert_eq!(ready(v).reason, "Bound", "toto's volume is untouched");
    let app = s.app(&id).await;
    assert_eq!(constraints(&app), constraints(&before));
    assert_eq!(host_volumes(&app), host_volumes(&before));
    assert_eq!(s.app_writes(&id), writes);
}

/// A tenant rewrote its own volume's status to point at another volume's data (same path, other
/// host) and deleted it with reclaimPolicy Delete: berth must not delete data by a record it did
/// not write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_never_deletes_by_a_status_it_did_not_write() {
    let s = Scenario::start(&["node-1", "node-2"]).await;
    let (a, b) = (s.app_id("a"), s.app_id("b"));
    for id in [&a, &b] {
        s.create_app(docker_app(id)).await;
        s.wait_app_settled(id).await;
    }
    let _ctl = s.controller().await;
    let tenant = as_tenant(&s.ns).await;
    // The same path on two hosts, read-only in both apps (so the overlap rule allows it).
    create(
        &tenant,
        "va",
        json!({"app": a, "containerPath": "/d", "hostPath": "/same", "readOnly": true,
               "placement": {"host": "node-1"}, "reclaimPolicy": "Delete"}),
    )
    .await;
    create(
        &tenant,
        "vb",
        json!({"app": b, "containerPath": "/d", "hostPath": "/same", "readOnly": true,
               "placement": {"host": "node-2"}}),
    )
    .await;
    s.wait_bound("va").await;
    s.wait_bound("vb").await;
    let b_data = s.stack.host("node-2").tenant_path(&s.ns, "/same");
    std::fs::write(b_data.join("precious"), b"b's data").unwrap();
    let a_data = s.stack.host("node-1").tenant_path(&s.ns, "/same");
    std::fs::write(a_data.join("mine"), b"a's data").unwrap();

    let status = s.api.get("va").await.unwrap().status.unwrap();
    let forged = json!({"apiVersion": "berth.dev/v1alpha1", "kind": "StatefulLocalVolume",
        "status": {"host": "node-2", "hostPath": status.host_path, "app": status.app,
                   "tenant": status.tenant, "seal": status.seal, "phase": "Bound"}});
    tenant
        .patch_status(
            "va",
            &PatchParams::apply("tenant").force(),
            &Patch::Apply(&forged),
        )
        .await
        .unwrap();
    tenant.delete("va", &DeleteParams::default()).await.unwrap();
    eventually(30, "va to be gone", || async {
        s.api.get("va").await.is_err().then_some(())
    })
    .await;
    assert_eq!(
        std::fs::read(b_data.join("precious")).unwrap(),
        b"b's data",
        "vb's data is intact"
    );
    assert_eq!(
        std::fs::read(a_data.join("mine")).unwrap(),
        b"a's data",
        "nothing is deleted by a record berth cannot vouch for"
    );
    assert_eq!(constraints(&s.app(&b).await), vec![pin("node-2")]);
}
