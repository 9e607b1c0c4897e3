//! berth's main job end to end, with real parts: a real kube-apiserver v1.20.2, `berth
//! controller` as a process using the controller service account's token with exactly the
//! chart's RBAC, the Marathon simulator, and one real `berth agent` process per host on its own
//! directory. Each scenario asserts the Marathon app, the files on the host and the status.
mod support;
mod support_helm;
mod support_scenario;

use std::{os::unix::fs::MetadataExt, time::Duration};

use kube::{Api, ResourceExt, api::DeleteParams};
use serde_json::{Value, json};
use support::{
    admin_client,
    stack::{REMAP_BASE, StackOptions, eventually},
};
use support_scenario::{Scenario, constraints, docker_app, host_volumes, idle_docker_app, pin, ready};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_four_problems_are_solved() {
    let s = Scenario::start(&["node-1", "node-2", "node-3"]).await;
    let id = s.app_id("web");
    s.create_app(docker_app(&id)).await;
    let first = s.wait_app_settled(&id).await;
    let first_host = first["tasks"][0]["host"].as_str().unwrap().to_owned();
    let _ctl = s.controller().await;
    s.apply(
        "localtime",
        json!({"app": id, "containerPath": "/etc/localtime", "hostPath": "/etc/localtime", "type": "File",
               "readOnly": true, "seed": {"copyFromHost": "/etc/localtime"}}),
    )
    .await;
    s.apply(
        "data",
        json!({"app": id, "containerPath": "/var/lib/web", "hostPath": "/web/data",
               "owner": {"uid": 1000, "gid": 1000}, "permissions": "0750"}),
    )
    .await;
    let localtime = s.wait_bound("localtime").await;
    let data = s.wait_bound("data").await;

    // 4. Locality: the app already ran on a host, so its data is placed there and it is pinned.
    let status = localtime.status.unwrap();
    assert_eq!(status.host.as_deref(), Some(first_host.as_str()));
    assert_eq!(
        data.status.as_ref().unwrap().host.as_deref(),
        Some(first_host.as_str())
    );
    let host = s.stack.host(&first_host);

    // 1. Chroot: the data lives under the tenant's root.
    let localtime_path = host.tenant_path(&s.ns, "/etc/localtime");
    let data_path = host.tenant_path(&s.ns, "/web/data");
    assert_eq!(
        status.host_path.as_deref(),
        Some(localtime_path.to_str().unwrap())
    );

    // 2. A file is a file, seeded from the host.
    let meta = std::fs::symlink_metadata(&localtime_path).unwrap();
    assert!(
        meta.file_type().is_file(),
        "{} must be a regular file",
        localtime_path.display()
    );
    assert_eq!(
        std::fs::read(&localtime_path).unwrap(),
        std::fs::read("/etc/localtime").unwrap()
    );

    // 3. uid 1000 in the container is host uid base+1000 under the remap.
    let meta = std::fs::symlink_metadata(&data_path).unwrap();
    assert!(meta.is_dir());
    assert_eq!((meta.uid(), meta.gid()), (REMAP_BASE + 1000, REMAP_BASE + 1000));
    assert_eq!(meta.mode() & 0o7777, 0o750);

    // The app mounts both, read-only where asked, and is pinned exactly, single-writer.
    let app = s.wait_app_settled(&id).await;
    let vols = host_volumes(&app);
    assert!(
        vols.contains(&json!({"containerPath": "/etc/localtime", "hostPath": localtime_path, "mode": "RO"}))
    );
    assert!(vols.contains(&json!({"containerPath": "/var/lib/web", "hostPath": data_path, "mode": "RW"})));
    assert_eq!(constraints(&app), vec![pin(&first_host)]);
    assert_eq!(app["upgradeStrategy"]["minimumHealthCapacity"], 0.0);
    assert_eq!(app["upgradeStrategy"]["maximumOverCapacity"], 0.0);
    assert!(
        app["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["host"] == first_host.as_str())
    );
    // The user's own fields survive.
    assert_eq!(app["env"], json!({"KEEP": "me"}));
    assert_eq!(app["labels"]["team"], "toto");
    assert_eq!(app["cmd"], "serve");
    assert_eq!(app["healthChecks"][0]["protocol"], "COMMAND");

    // The restart is single-writer: the old task stopped before the new one started.
    let records = s.stack.sim.deployment_records();
    assert!(
        records.iter().all(|r| !r.old_and_new_overlapped),
        "old and new tasks overlapped: {records:?}"
    );

    // A restart (the host's tasks lost) comes back to the same host.
    s.stack.sim.set_agent_up(&first_host, false);
    s.stack.sim.set_agent_up(&first_host, true);
    let app = s.wait_app_settled(&id).await;
    assert!(
        app["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["host"] == first_host.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_volumes_applied_together_make_one_write_and_steady_state_makes_none() {
    let (s, id, ctl) = Scenario::with_running_app(&["node-1", "node-2"], "db").await;
    for (name, path) in [("a", "/a"), ("b", "/b"), ("c", "/c")] {
        s.apply(name, json!({"app": id, "containerPath": path, "hostPath": path}))
            .await;
    }
    for name in ["a", "b", "c"] {
        s.wait_bound(name).await;
    }
    assert_eq!(
        s.app_writes(&id),
        1,
        "three volumes applied together must reach Marathon in one write"
    );
    let app = s.wait_app_settled(&id).await;
    assert_eq!(host_volumes(&app).len(), 3);

    // Several resyncs (every 3 s) later: no write to Marathon, no status write to Kubernetes.
    let before: Vec<String> = futures::future::join_all(
        ["a", "b", "c"].map(|n| async { s.api.get(n).await.unwrap().resource_version().unwrap() }),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(s.app_writes(&id), 1, "steady state must not write to Marathon");
    let after: Vec<String> = futures::future::join_all(
        ["a", "b", "c"].map(|n| async { s.api.get(n).await.unwrap().resource_version().unwrap() }),
    )
    .await;
    assert_eq!(before, after, "steady state must not write to Kubernetes");
    assert_eq!(ctl.metric("berth_marathon_app_writes_total").await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_restored_and_recorded() {
    let (s, id, _ctl) = Scenario::with_running_app(&["node-1", "node-2"], "web").await;
    s.apply(
        "data",
        json!({"app": id, "containerPath": "/data", "hostPath": "/data"}),
    )
    .await;
    let v = s.wait_bound("data").await;
    let host = v.status.unwrap().host.unwrap();
    s.wait_app_settled(&id).await;

    // Someone removes the pin and the volume from the app.
    let res = s
        .http
        .put(format!("{}/v2/apps{id}", s.stack.sim.url()))
        .json(&json!({"constraints": [], "container": {"type": "DOCKER", "docker": {"image": "busybox"}, "volumes": []}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let app = eventually(30, "the pin and volume to be restored", || async {
        let app = s.app(&id).await;
        (constraints(&app) == vec![pin(&host)] && host_volumes(&app).len() == 1).then_some(app)
    })
    .await;
    assert_eq!(host_volumes(&app)[0]["containerPath"], "/data");
    // And the data on the host was never touched.
    assert!(s.stack.host(&host).tenant_path(&s.ns, "/data").is_dir());
    // The repair is on record: an AppUpdated event (binding itself is told by Provisioned and
    // Bound), saying which fields berth restored.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin_client().await, &s.ns);
    let note = eventually(10, "an AppUpdated event for the repair", || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .iter()
            .find(|e| e.reason.as_deref() == Some("AppUpdated"))
            .and_then(|e| e.note.clone())
    })
    .await;
    assert!(note.contains("volumes") && note.contains("constraints"), "{note}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_app_is_waited_for_not_forced() {
    let s = Scenario::start(&["node-1"]).await;
    let id = s.app_id("web");
    // An app whose deployment cannot finish: it asks for a host that does not exist.
    let mut app = docker_app(&id);
    app["constraints"] = json!([["hostname", "LIKE", "nowhere-[0-9]+"]]);
    s.create_app(app).await;
    let _ctl = s.controller().await;
    s.apply(
        "data",
        json!({"app": id, "containerPath": "/data", "hostPath": "/data", "placement": {"host": "node-1"}}),
    )
    .await;
    let (_, reason, message) = eventually(30, "AppLocked", || async {
        s.condition("data", "Ready")
            .await
            .filter(|(_, r, _)| r == "AppLocked")
    })
    .await;
    assert_eq!(reason, "AppLocked");
    assert!(message.contains("being deployed"), "{message}");
    assert!(
        s.stack
            .sim
            .write_requests()
            .iter()
            .all(|r| !r.query.contains("force=true")),
        "never force"
    );
    assert_eq!(s.app_writes(&id), 0);

    // The user cancels the stuck deployment and fixes the app: berth then writes once.
    let deployments: Value = s
        .http
        .get(format!("{}/v2/deployments", s.stack.sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for d in deployments.as_array().unwrap() {
        s.http
            .delete(format!(
                "{}/v2/deployments/{}?force=true",
                s.stack.sim.url(),
                d["id"].as_str().unwrap()
            ))
            .send()
            .await
            .unwrap();
    }
    s.http
        .put(format!("{}/v2/apps{id}?force=true", s.stack.sim.url()))
        .json(&json!({"constraints": []}))
        .send()
        .await
        .unwrap();
    s.wait_bound("data").await;
    let app = s.app(&id).await;
    assert_eq!(constraints(&app), vec![pin("node-1")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marathon_down_then_up() {
    let s = Scenario::start(&["node-1"]).await;
    let id = s.app_id("web");
    s.create_app(docker_app(&id)).await;
    s.wait_app_settled(&id).await;
    // Marathon answers 503 to everything until the test says otherwise.
    s.stack.sim.inject_faults(100_000, Some(503), Duration::ZERO);
    let ctl = s.controller().await;
    s.apply(
        "data",
        json!({"app": id, "containerPath": "/data", "hostPath": "/data"}),
    )
    .await;
    let message = ready(s.wait_reason("data", "MarathonUnavailable", 30).await).message;
    assert!(message.contains("503"), "{message}");
    // The failures are counted as what they are: Marathon failing, a transient failure.
    let failures = ctl
        .metric("berth_reconcile_errors_total{kind=\"marathon\",class=\"transient\"}")
        .await
        .unwrap_or(0.0);
    assert!(failures >= 1.0, "{failures}");
    // Without Marathon, berth cannot know where the app runs: nothing is placed or created.
    assert_eq!(s.api.get("data").await.unwrap().status.unwrap().host, None);
    assert!(!s.stack.host("node-1").tenant_path(&s.ns, "/data").exists());
    s.stack.sim.inject_faults(0, None, Duration::ZERO);
    // Marathon answers again: berth converges by itself (the event stream reattaches and
    // triggers a reconcile, or the back-off runs out).
    let v = s.wait_bound("data").await;
    assert_eq!(v.status.unwrap().host.as_deref(), Some("node-1"));
    assert_eq!(s.app_writes(&id), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_agent_is_reported_and_nothing_is_deleted() {
    let (mut s, id, ctl) = Scenario::with_running_app(&["node-1"], "web").await;
    s.apply(
        "data",
        json!({"app": id, "containerPath": "/data", "hostPath": "/data", "reclaimPolicy": "Delete"}),
    )
    .await;
    s.wait_bound("data").await;
    let path = s.stack.host("node-1").tenant_path(&s.ns, "/data");
    std::fs::write(path.join("important"), b"keep me").unwrap();
    let app_before = s.wait_app_settled(&id).await;
    let writes_before = s.app_writes(&id);

    s.stack.host_mut("node-1").stop_agent();
    // The data and its mount are as they were: Ready stays True (GitOps tools see no failure),
    // and Synced says berth cannot check the host.
    let v = s.wait_condition("data", "Synced", "HostUnavailable", 30).await;
    let synced = v
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Synced")
        .unwrap();
    assert_eq!(synced.status, "False");
    assert!(
        synced.message.contains("no data is touched"),
        "{}",
        synced.message
    );
    assert_eq!(ready(v).status, "True");
    // The app stays pinned and mounted, unchanged.
    let app = s.app(&id).await;
    assert_eq!(constraints(&app), constraints(&app_before));
    assert_eq!(host_volumes(&app), host_volumes(&app_before));
    assert_eq!(s.app_writes(&id), writes_before);
    // Operators see since when the host is lost (for an alert on how long).
    let since = ctl
        .metric("berth_host_unreachable_since_seconds{host=\"node-1\"}")
        .await
        .unwrap_or(0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(since > now - 120.0 && since <= now, "{since} vs {now}");

    // Even deleting the volume (reclaimPolicy Delete) does not lose data while the host is away:
    // the finalizer holds until the agent can be asked.
    s.api.delete("data", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(s.api.get("data").await.is_ok(), "the finalizer must hold");
    assert_eq!(std::fs::read(path.join("important")).unwrap(), b"keep me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_mid_reconcile_converges_without_duplicates() {
    let s = Scenario::start(&["node-1", "node-2", "node-3"]).await;
    let id = s.app_id("web");
    s.create_app(idle_docker_app(&id)).await;
    s.apply(
        "data",
        json!({"app": id, "containerPath": "/data", "hostPath": "/data"}),
    )
    .await;
    // Kill the controller as soon as it has recorded the placement, before or during provisioning.
    let mut ctl = s.controller().await;
    let host = eventually(30, "a recorded placement", || async {
        s.api.get("data").await.ok()?.status?.host
    })
    .await;
    ctl.kill();
    let _ctl = s.controller().await;
    let v = s.wait_bound("data").await;
    assert_eq!(
        v.status.unwrap().host.as_deref(),
        Some(host.as_str()),
        "placement is sticky across a crash"
    );
    // Provisioned on exactly one host.
    let provisioned: Vec<_> = s
        .stack
        .hosts
        .iter()
        .filter(|h| h.tenant_path(&s.ns, "/data").exists())
        .map(|h| h.name.clone())
        .collect();
    assert_eq!(provisioned, vec![host.clone()]);
    assert_eq!(constraints(&s.app(&id).await), vec![pin(&host)]);
    assert_eq!(s.app_writes(&id), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_retains_or_deletes_the_data_and_restores_the_app() {
    let s = Scenario::start(&["node-1"]).await;
    let id = s.app_id("web");
    s.create_app(docker_app(&id)).await;
    let original = s.wait_app_settled(&id).await;
    let _ctl = s.controller().await;
    s.apply(
        "kept",
        json!({"app": id, "containerPath": "/kept", "hostPath": "/kept"}),
    )
    .await;
    s.apply(
        "gone",
        json!({"app": id, "containerPath": "/gone", "hostPath": "/gone", "reclaimPolicy": "Delete"}),
    )
    .await;
    s.wait_bound("kept").await;
    s.wait_bound("gone").await;
    let host = s.stack.host("node-1");
    std::fs::write(host.tenant_path(&s.ns, "/kept").join("f"), b"x").unwrap();
    std::fs::write(host.tenant_path(&s.ns, "/gone").join("f"), b"x").unwrap();

    s.api.delete("gone", &DeleteParams::default()).await.unwrap();
    eventually(30, "gone to be deleted", || async {
        s.api.get("gone").await.is_err().then_some(())
    })
    .await;
    assert!(
        !host.tenant_path(&s.ns, "/gone").exists(),
        "reclaimPolicy Delete removes the data"
    );
    let app = s.app(&id).await;
    let paths: Vec<_> = host_volumes(&app)
        .iter()
        .map(|v| v["containerPath"].clone())
        .collect();
    assert_eq!(paths, vec![json!("/kept")]);
    assert_eq!(
        constraints(&app),
        vec![pin("node-1")],
        "the pin stays while a volume remains"
    );

    s.api.delete("kept", &DeleteParams::default()).await.unwrap();
    eventually(30, "kept to be deleted", || async {
        s.api.get("kept").await.is_err().then_some(())
    })
    .await;
    assert_eq!(
        std::fs::read(host.tenant_path(&s.ns, "/kept").join("f")).unwrap(),
        b"x",
        "Retain keeps the data"
    );
    let app = s.wait_app_settled(&id).await;
    assert!(host_volumes(&app).is_empty());
    assert!(constraints(&app).is_empty(), "the pin goes with the last volume");
    assert_eq!(
        app["upgradeStrategy"], original["upgradeStrategy"],
        "the user's strategy is restored"
    );
    assert!(
        app["labels"]
            .as_object()
            .unwrap()
            .keys()
            .all(|k| !k.starts_with("berth.dev/"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_and_other_tenants_apps_are_refused_with_clear_conditions() {
    let s = Scenario::start(&["node-1"]).await;
    let _ctl = s.controller().await;
    // Another tenant's app: the apiserver's schema cannot know tenants.
    s.apply(
        "theirs",
        json!({"app": "/tata/web", "containerPath": "/data", "hostPath": "/data"}),
    )
    .await;
    // A seed on a directory: only CEL could refuse it, and 1.20 does not run CEL.
    let id = s.app_id("web");
    s.apply(
        "seeded-dir",
        json!({"app": id, "containerPath": "/d", "hostPath": "/d", "seed": {"content": "x"}}),
    )
    .await;
    for (name, needle) in [
        ("theirs", "outside the tenant's Marathon group"),
        ("seeded-dir", "spec.seed"),
    ] {
        let v = s.wait_reason(name, "InvalidSpec", 30).await;
        let status = v.status.unwrap();
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "False");
        assert!(ready.message.contains(needle), "{name}: {}", ready.message);
        assert!(
            status
                .conditions
                .iter()
                .any(|c| c.type_ == "Stalled" && c.status == "True")
        );
        assert_eq!(status.host, None, "nothing was placed");
    }
    assert!(
        s.stack.sim.write_requests().is_empty(),
        "nothing was written to Marathon"
    );
    assert!(
        !s.stack.host("node-1").tenant_path(&s.ns, "/d").exists(),
        "nothing was provisioned"
    );
}

/// Fails every task of the app with `message` as soon as it appears (a container that cannot
/// start fails again on every relaunch), until `until` has a value.
async fn keep_failing<T, F, Fut>(s: &Scenario, id: &str, message: &str, mut until: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually(45, "the failure to be diagnosed", || {
        let found = until();
        async move {
            let app = s.app(id).await;
            for t in app["tasks"].as_array().cloned().unwrap_or_default() {
                s.stack.sim.fail_task(t["id"].as_str().unwrap(), message);
            }
            found.await
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_mount_errors_become_conditions_that_say_how_to_fix_them() {
    let (s, id, _ctl) = Scenario::with_running_app(&["node-1"], "web").await;
    // Declared as a Directory, but the image has a file at /etc/localtime.
    s.apply(
        "localtime",
        json!({"app": id, "containerPath": "/etc/localtime", "hostPath": "/etc/localtime"}),
    )
    .await;
    let v = s.wait_bound("localtime").await;
    let host_path = v.status.unwrap().host_path.unwrap();
    let docker_error = format!(
        "failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: error during container init: error mounting \"{host_path}\" to rootfs at \"/etc/localtime\": mount {host_path}:/etc/localtime (via /proc/self/fd/6), flags: 0x5000: not a directory: unknown: Are you trying to mount a directory onto a file (or vice-versa)? Check if the specified host path exists and is the expected type"
    );
    let (status, message) = keep_failing(&s, &id, &docker_error, || async {
        let (st, reason, msg) = s.condition("localtime", "Ready").await?;
        (reason == "MountTypeMismatch").then_some((st, msg))
    })
    .await;
    assert_eq!(status, "False");
    assert!(message.contains("(the volume at /etc/localtime)"), "{message}");
    assert!(message.contains("Set spec.type to File"), "{message}");
    let stalled = s.condition("localtime", "Stalled").await;
    assert!(stalled.is_some_and(|(st, r, _)| st == "True" && r == "MountTypeMismatch"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_app_whose_host_is_gone_is_reported_unschedulable() {
    let (s, id, _ctl) = Scenario::with_running_app(&["node-1", "node-2"], "web").await;
    s.apply(
        "data",
        json!({"app": id, "containerPath": "/data", "hostPath": "/data", "placement": {"host": "node-2"}}),
    )
    .await;
    s.wait_bound("data").await;
    // node-2's Mesos agent goes away: Marathon cannot place the task anywhere else (the data is
    // on node-2), and berth says so instead of moving it.
    s.stack.sim.set_agent_up("node-2", false);
    // The data and its mount are fine (Ready stays True); the app cannot run: AppRunning says
    // why.
    let v = s.wait_condition("data", "AppRunning", "Unschedulable", 30).await;
    let running = v
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "AppRunning")
        .unwrap();
    assert_eq!(running.status, "False");
    assert!(running.message.contains("node-2"), "{}", running.message);
    assert_eq!(ready(v).status, "True");
    let app = s.app(&id).await;
    assert_eq!(constraints(&app), vec![pin("node-2")], "the pin stays");
    s.stack.sim.set_agent_up("node-2", true);
    s.wait_bound("data").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_wait_and_events_tell_the_story() {
    let (s, id, _ctl) = Scenario::with_running_app(&["node-1"], "web").await;
    s.apply(
        "data",
        json!({"app": id, "containerPath": "/data", "hostPath": "/data"}),
    )
    .await;
    let out = support::kubectl()
        .args([
            "wait",
            "--for=condition=Ready",
            "slv/data",
            "-n",
            &s.ns,
            "--timeout=60s",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // kstatus: the status describes the current generation.
    let v = s.api.get("data").await.unwrap();
    assert_eq!(
        v.status.as_ref().unwrap().observed_generation,
        v.metadata.generation
    );

    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin_client().await, &s.ns);
    // One event tells the story of a binding: where the data was created (and why there), and
    // where the app mounts it. Becoming Ready is in the conditions, not in a second event.
    let notes = eventually(10, "events", || async {
        let list = events.list(&Default::default()).await.ok()?;
        let notes: Vec<(String, String)> = list
            .items
            .into_iter()
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect();
        (!notes.is_empty()).then_some(notes)
    })
    .await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    let (reason, note) = &notes[0];
    assert_eq!(reason, "Provisioned");
    assert!(note.starts_with("created "), "{note}");
    assert!(
        note.ends_with(&format!("on node-1, where the app runs; {id} mounts it at /data")),
        "{note}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_inside_another_read_write_volume_is_refused() {
    let (s, id, _ctl) = Scenario::with_running_app(&["node-1"], "web").await;
    s.apply(
        "outer",
        json!({"app": id, "containerPath": "/shared", "hostPath": "/shared"}),
    )
    .await;
    s.wait_bound("outer").await;
    // Created a second later (creation times have whole seconds): the older volume keeps working.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let other = s.app_id("other");
    s.create_app(docker_app(&other)).await;
    s.apply(
        "inner",
        json!({"app": other, "containerPath": "/data", "hostPath": "/shared/inner"}),
    )
    .await;
    let message = ready(s.wait_reason("inner", "InvalidSpec", 30).await).message;
    assert!(message.contains("/shared/inner lies inside /shared"), "{message}");
    assert!(message.contains(&format!("{}/outer", s.ns)), "{message}");
    assert!(
        !s.stack
            .host("node-1")
            .tenant_path(&s.ns, "/shared/inner")
            .exists(),
        "nothing was provisioned"
    );
    assert_eq!(s.app_writes(&other), 0, "the other app was not touched");
    assert_eq!(ready(s.api.get("outer").await.unwrap()).reason, "Bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mounted_volume_whose_spec_turns_invalid_keeps_its_mount_and_pin() {
    let (s, id, ctl) = Scenario::with_running_app(&["node-1", "node-2"], "web").await;
    for (name, path) in [("data", "/data"), ("logs", "/logs")] {
        s.apply(name, json!({"app": id, "containerPath": path, "hostPath": path}))
            .await;
    }
    let host = s.wait_bound("data").await.status.unwrap().host.unwrap();
    s.wait_bound("logs").await;
    let before = s.wait_app_settled(&id).await;
    let writes = s.app_writes(&id);
    let patch = |name: &'static str, spec: Value| {
        let api = s.api.clone();
        async move {
            api.patch(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({ "spec": spec })),
            )
            .await
            .unwrap();
        }
    };

    // The data is at /data on the host; a new hostPath would mount an empty path instead. The
    // 1.20 apiserver does not run the CEL rule that refuses this edit, so the controller must.
    patch("data", json!({"hostPath": "/moved"})).await;
    let ready = ready(s.wait_reason("data", "InvalidSpec", 30).await);
    assert!(
        ready.message.contains("cannot change once the volume holds data"),
        "{}",
        ready.message
    );
    assert!(ready.message.contains("keeps"), "{}", ready.message);
    // Its phase stays Bound (the data is still mounted), but the alerting metric counts it.
    eventually(30, "the stalled gauge to count the held volume", || async {
        (ctl.metric("berth_volumes_stalled").await? == 1.0).then_some(())
    })
    .await;

    // Another volume of the app changes: the app is written once, and the held volume stays
    // mounted exactly as before, at its old path, with the pin.
    patch("logs", json!({"readOnly": true})).await;
    let app = eventually(30, "/logs to be mounted read-only", || async {
        let app = s.app(&id).await;
        host_volumes(&app)
            .iter()
            .any(|v| v["containerPath"] == "/logs" && v["mode"] == "RO")
            .then_some(app)
    })
    .await;
    let data_mount = |app: &Value| {
        host_volumes(app)
            .into_iter()
            .find(|v| v["containerPath"] == "/data")
    };
    assert_eq!(
        data_mount(&app),
        data_mount(&before),
        "the held volume is untouched"
    );
    assert_eq!(constraints(&app), vec![pin(&host)]);
    s.wait_bound("logs").await;
    assert_eq!(s.app_writes(&id), writes + 1, "one write, for /logs only");
    assert!(!s.stack.host(&host).tenant_path(&s.ns, "/moved").exists());

    // Putting the path back makes the volume Ready again without touching the app.
    patch("data", json!({"hostPath": "/data"})).await;
    s.wait_bound("data").await;
    assert_eq!(s.app_writes(&id), writes + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_honours_the_apps_attribute_constraints() {
    let options = StackOptions {
        attributes: vec![("node-1", "rack:r1"), ("node-2", "rack:r2")],
        ..StackOptions::default()
    };
    let s = Scenario::start_with(&["node-1", "node-2"], options).await;
    let _ctl = s.controller().await;
    // Apps with no task yet, so berth chooses among the agents.
    let app_in = |name: &str, rack: &str| {
        let mut app = idle_docker_app(&s.app_id(name));
        app["constraints"] = json!([["rack", "CLUSTER", rack]]);
        app
    };
    s.create_app(app_in("web", "r2")).await;
    s.create_app(app_in("batch", "r9")).await;
    s.apply(
        "web-data",
        json!({"app": s.app_id("web"), "containerPath": "/data", "hostPath": "/web"}),
    )
    .await;
    s.apply(
        "batch-data",
        json!({"app": s.app_id("batch"), "containerPath": "/data", "hostPath": "/batch"}),
    )
    .await;

    let v = s.wait_bound("web-data").await;
    assert_eq!(
        v.status.unwrap().host.as_deref(),
        Some("node-2"),
        "the only host in rack r2"
    );
    let app = s.app(&s.app_id("web")).await;
    let mut c = constraints(&app);
    c.sort_by_key(|c| c.to_string());
    assert_eq!(c, vec![pin("node-2"), json!(["rack", "CLUSTER", "r2"])]);

    // No agent is in rack r9: berth says so and creates nothing, instead of pinning the app to
    // a host Marathon could never use.
    let ready = ready(s.wait_reason("batch-data", "NoSuitableHost", 30).await);
    assert!(ready.message.contains("constraints"), "{}", ready.message);
    for host in ["node-1", "node-2"] {
        assert!(!s.stack.host(host).tenant_path(&s.ns, "/batch").exists());
    }
    assert_eq!(s.app_writes(&s.app_id("batch")), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_found_through_the_agent_apps_tasks() {
    // Hosts named by address, as on DC/OS: each agent listens on <host>:<port>, and the
    // controller knows no agent but the Marathon app `/berth/agent` whose tasks they are.
    let port = support::stack::free_port();
    let hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let options = StackOptions {
        shared_agent_port: Some(port),
        ..StackOptions::default()
    };
    let s = Scenario::start_with(&hosts, options).await;
    // The agent app runs on two of the three hosts.
    s.create_app(json!({
        "id": "/berth/agent", "cmd": "berth agent", "cpus": 0.1, "mem": 64, "instances": 2,
        "constraints": [["hostname", "UNIQUE"], ["hostname", "UNLIKE", "127\\.0\\.0\\.4"]],
    }))
    .await;
    s.wait_app_settled("/berth/agent").await;
    let port = port.to_string();
    let _ctl = s
        .stack
        .controller_without_static_agents(
            &s.ns,
            &[
                "--agent-app",
                "/berth/agent",
                "--agent-scheme",
                "http",
                "--agent-port",
                &port,
            ],
        )
        .await;

    // A running app: its volume goes where it runs, through that host's discovered agent.
    let id = s.app_id("web");
    s.create_app(json!({
        "id": id, "cmd": "serve", "cpus": 0.1, "mem": 64, "instances": 1,
        "container": {"type": "DOCKER", "docker": {"image": "busybox"}},
        "constraints": [["hostname", "UNLIKE", "127\\.0\\.0\\.4"]],
    }))
    .await;
    let running_on = s.wait_app_settled(&id).await["tasks"][0]["host"]
        .as_str()
        .unwrap()
        .to_owned();
    s.apply(
        "data",
        json!({"app": id, "containerPath": "/data", "hostPath": "/data"}),
    )
    .await;
    let v = s.wait_bound("data").await;
    assert_eq!(v.status.unwrap().host.as_deref(), Some(running_on.as_str()));
    assert!(s.stack.host(&running_on).tenant_path(&s.ns, "/data").is_dir());

    // An app with no task yet: placement asks the discovered agents only, never 127.0.0.4.
    let idle = s.app_id("idle");
    s.create_app(idle_docker_app(&idle)).await;
    s.apply(
        "idle",
        json!({"app": idle, "containerPath": "/data", "hostPath": "/idle"}),
    )
    .await;
    let host = s.wait_bound("idle").await.status.unwrap().host.unwrap();
    assert_ne!(host, "127.0.0.4", "no agent task runs there");
    assert!(s.stack.host(&host).tenant_path(&s.ns, "/idle").is_dir());

    // A volume asking for the host without an agent task: berth says where agents come from and
    // creates nothing, even though an agent process happens to listen there.
    let pinned = s.app_id("pinned");
    s.create_app(idle_docker_app(&pinned)).await;
    s.apply(
        "pinned",
        json!({"app": pinned, "containerPath": "/data", "hostPath": "/pinned", "placement": {"host": "127.0.0.4"}}),
    )
    .await;
    let ready = ready(s.wait_reason("pinned", "HostUnavailable", 30).await);
    assert!(
        ready
            .message
            .contains("no berth agent is known for host 127.0.0.4"),
        "{}",
        ready.message
    );
    assert!(!s.stack.host("127.0.0.4").tenant_path(&s.ns, "/pinned").exists());
}
