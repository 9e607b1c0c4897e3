//! Bugs the per-app pass fixed, each shown on the real stack (kube-apiserver 1.20, the Marathon
//! simulator, real agents, the controller as a process with the chart's RBAC).
mod support;
mod support_helm;
mod support_scenario;

use std::time::Duration;

use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use support::stack::{StackOptions, eventually};
use support_scenario::{Scenario, constraints, docker_app, host_volumes, pin, ready};

/// `reclaimPolicy: Delete` with agents found only through `--agent-app`: the delete used to ask
/// discovery without the agent app's hosts, found no agent, and kept the finalizer forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_reaches_an_agent_found_through_the_agent_app() {
    let port = support::stack::free_port();
    let hosts = ["127.0.0.2", "127.0.0.3"];
    let s = Scenario::start_with(
        &hosts,
        StackOptions {
            shared_agent_port: Some(port),
            ..StackOptions::default()
        },
    )
    .await;
    s.create_app(json!({
        "id": "/berth.system/agent", "cmd": "berth agent", "cpus": 0.1, "mem": 64, "instances": 2,
        "constraints": [["hostname", "UNIQUE"]],
    }))
    .await;
    s.wait_app_settled("/berth.system/agent").await;
    let port = port.to_string();
    let _ctl = s
        .stack
        .controller_without_static_agents(
            &s.ns,
            &[
                "--agent-app",
                "/berth.system/agent",
                "--agent-scheme",
                "http",
                "--agent-port",
                &port,
            ],
        )
        .await;
    let id = s.app_id("web");
    s.create_app(docker_app(&id)).await;
    s.wait_app_settled(&id).await;
    s.apply(
        "data",
        json!({"app": id, "containerPath": "/data", "hostPath": "/data", "reclaimPolicy": "Delete"}),
    )
    .await;
    let host = s.wait_bound("data").await.status.unwrap().host.unwrap();
    let path = s.stack.host(&host).tenant_path(&s.ns, "/data");
    std::fs::write(path.join("f"), b"x").unwrap();

    s.api.delete("data", &DeleteParams::default()).await.unwrap();
    eventually(30, "the volume to be gone", || async {
        s.api.get("data").await.is_err().then_some(())
    })
    .await;
    assert!(!path.exists(), "reclaimPolicy Delete removed the data on {host}");
}

/// A volume whose namespace no longer maps to a tenant (the operator changed the mapping): its
/// Delete used to be skipped while the event said "its data deleted".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_still_happens_after_the_namespace_lost_its_tenant() {
    let (s, id, mut ctl) = Scenario::with_running_app(&["node-1"], "web").await;
    s.apply(
        "data",
        json!({"app": id, "containerPath": "/data", "hostPath": "/data", "reclaimPolicy": "Delete"}),
    )
    .await;
    s.wait_bound("data").await;
    let path = s.stack.host("node-1").tenant_path(&s.ns, "/data");
    std::fs::write(path.join("f"), b"x").unwrap();
    s.wait_app_settled(&id).await;
    ctl.kill();

    // Now only namespace `other` is a tenant.
    let _ctl = s
        .stack
        .controller(
            &s.ns,
            &["--mapped-namespaces-only", "--tenant-map", "other=other"],
        )
        .await;
    s.api.delete("data", &DeleteParams::default()).await.unwrap();
    eventually(30, "the volume to be gone", || async {
        s.api.get("data").await.is_err().then_some(())
    })
    .await;
    assert!(!path.exists(), "the data was deleted, as the event says");
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(support::admin_client().await, &s.ns);
    let notes: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Released"))
        .filter_map(|e| e.note)
        .collect();
    assert!(
        notes.iter().any(|n| n.contains("its data on node-1 was deleted")),
        "{notes:?}"
    );
    assert!(host_volumes(&s.app(&id).await).is_empty());
}

/// Marathon filters every event by `event_type`, `event_stream_attached` included: a change made
/// while berth's event stream was down used to wait for the next resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_missed_while_the_event_stream_was_down_is_repaired_on_reconnect() {
    let s = Scenario::start(&["node-1"]).await;
    let id = s.app_id("web");
    s.create_app(docker_app(&id)).await;
    s.wait_app_settled(&id).await;
    let _ctl = s.stack.controller(&s.ns, &["--resync", "300s"]).await;
    s.apply(
        "data",
        json!({"app": id, "containerPath": "/data", "hostPath": "/data"}),
    )
    .await;
    s.wait_bound("data").await;
    s.wait_app_settled(&id).await;
    // Let every pass that binding asked for end, so nothing but the reconnection can repair.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The stream is down for 8 s; meanwhile someone removes the pin and the volume, and the
    // deployment of that change ends: every event about it is missed.
    s.stack.sim.event_stream_outage(Duration::from_secs(8));
    let res = s
        .http
        .put(format!("{}/v2/apps{id}", s.stack.sim.url()))
        .json(&json!({"constraints": [], "container": {"type": "DOCKER", "docker": {"image": "busybox"}, "volumes": []}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let settled = s.wait_app_settled(&id).await;
    assert!(
        host_volumes(&settled).is_empty(),
        "the change is done before the stream is back"
    );
    // Repaired within seconds of the reconnection, not at the resync 300 s away.
    eventually(25, "the pin and the volume to be restored", || async {
        let app = s.app(&id).await;
        (constraints(&app) == vec![pin("node-1")] && host_volumes(&app).len() == 1).then_some(())
    })
    .await;
}

/// A changed `spec.placement.host` of bound data that berth cannot move (a read-only volume
/// may share its data with other volumes) says why, names the volume, and leaves the app where
/// its data is. (Moves themselves: `tests/controller_migration.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_host_of_bound_data_that_cannot_move_says_why() {
    let (s, id, _ctl) = Scenario::with_running_app(&["node-1", "node-2"], "web").await;
    s.apply(
        "data",
        json!({"app": id, "containerPath": "/data", "hostPath": "/data", "readOnly": true,
               "placement": {"host": "node-1"}}),
    )
    .await;
    s.wait_bound("data").await;
    let before = s.wait_app_settled(&id).await;
    let writes = s.app_writes(&id);
    s.api
        .patch(
            "data",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"placement": {"host": "node-2"}}})),
        )
        .await
        .unwrap();
    let message = ready(s.wait_reason("data", "ConflictingPlacement", 30).await).message;
    assert!(
        message.contains("volume ")
            && message.contains("its data is on node-1")
            && message.contains("read-only")
            && message.contains("set placement.host back to node-1"),
        "{message}"
    );
    let app = s.app(&id).await;
    assert_eq!(
        constraints(&app),
        constraints(&before),
        "the app stays where its data is"
    );
    assert_eq!(host_volumes(&app), host_volumes(&before));
    assert_eq!(s.app_writes(&id), writes);
}

/// At rest, each host confirms all its volumes in one request per resync; what it finds changed
/// on the host is repaired there and reported on the volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_host_confirms_its_volumes_in_one_request_and_drift_is_repaired() {
    use std::os::unix::fs::PermissionsExt;
    let (s, id, ctl) = Scenario::with_running_app(&["node-1"], "web").await;
    for (name, path) in [("a", "/a"), ("b", "/b"), ("c", "/c")] {
        s.apply(name, json!({"app": id, "containerPath": path, "hostPath": path}))
            .await;
    }
    for name in ["a", "b", "c"] {
        s.wait_bound(name).await;
    }
    let counter = |metrics: &str, endpoint: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("berth_agent_requests_total{")
                    && l.contains(&format!("endpoint=\"{endpoint}\""))
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    let metrics = || async { ctl.metrics_text().await.expect("the controller's /metrics") };
    // Let binding settle, then watch two resync periods (3 s each in tests).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = metrics().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = metrics().await;
    let batches = counter(&after, "ensure_batch") - counter(&before, "ensure_batch");
    assert!(
        (1.0..=3.0).contains(&batches),
        "about one batched request per resync for the host's three volumes, not one per volume: {batches}"
    );
    assert_eq!(
        counter(&after, "ensure_volume"),
        counter(&before, "ensure_volume")
    );

    let dir = s.stack.host("node-1").tenant_path(&s.ns, "/b");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    eventually(20, "the mode to be restored", || async {
        (std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777 == 0o755).then_some(())
    })
    .await;
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(support::admin_client().await, &s.ns);
    eventually(15, "a HostRepaired event on b", || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("HostRepaired")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("b")
            })
            .then_some(())
    })
    .await;
}
