//! What a user sees, through kubectl, on the real stack: edits that would lose data are refused
//! and held, events say what happened this time, Ready means what GitOps tools read it as, and a
//! new owner gets the data.
mod support;
mod support_helm;
mod support_scenario;

use std::{os::unix::fs::MetadataExt, time::Duration};

use serde_json::{Value, json};
use support::stack::{REMAP_BASE, eventually};
use support_scenario::{Scenario, constraints, docker_app, host_volumes, ready};

/// `kubectl` in the scenario's namespace; panics with its stderr when it fails.
fn kubectl(s: &Scenario, args: &[&str]) -> String {
    let out = support::kubectl()
        .args(["-n", &s.ns])
        .args(args)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The events of one volume as `kubectl get events` lists them: (type, reason, note).
fn events_of(s: &Scenario, name: &str) -> Vec<(String, String, String)> {
    let out = kubectl(
        s,
        &[
            "get",
            "events.events.k8s.io",
            "--field-selector",
            &format!("regarding.name={name}"),
            "-o",
            "json",
        ],
    );
    let list: Value = serde_json::from_str(&out).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let f = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (f("type"), f("reason"), f("note"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_of_a_bound_volumes_app_is_refused_and_holds_its_data_where_it_is() {
    let (s, web, _ctl) = Scenario::with_running_app(&["node-1", "node-2"], "web").await;
    let batch = s.app_id("batch");
    s.create_app(docker_app(&batch)).await;
    s.wait_app_settled(&batch).await;
    s.apply(
        "web-data",
        json!({"app": web, "containerPath": "/var/lib/web", "hostPath": "/web"}),
    )
    .await;
    s.apply(
        "batch-data",
        json!({"app": batch, "containerPath": "/scratch", "hostPath": "/batch"}),
    )
    .await;
    s.wait_bound("web-data").await;
    s.wait_bound("batch-data").await;
    let web_before = s.wait_app_settled(&web).await;
    let batch_before = s.wait_app_settled(&batch).await;
    let writes = (s.app_writes(&web), s.app_writes(&batch));

    kubectl(
        &s,
        &[
            "patch",
            "slv",
            "web-data",
            "--type",
            "merge",
            "-p",
            &format!(r#"{{"spec":{{"app":"{batch}"}}}}"#),
        ],
    );
    let r = ready(s.wait_reason("web-data", "InvalidSpec", 30).await);
    assert!(r.message.contains("spec.app cannot change"), "{}", r.message);
    assert!(r.message.contains("keeps"), "{}", r.message);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        host_volumes(&s.app(&web).await),
        host_volumes(&web_before),
        "the web app keeps its data"
    );
    assert_eq!(constraints(&s.app(&batch).await), constraints(&batch_before));
    assert_eq!(
        (s.app_writes(&web), s.app_writes(&batch)),
        writes,
        "no app was written"
    );
    assert_eq!(
        ready(s.api.get("batch-data").await.unwrap()).reason,
        "Bound",
        "the other volume is untouched"
    );
    let events = events_of(&s, "web-data");
    assert!(
        events
            .iter()
            .any(|(t, reason, note)| t == "Warning" && reason == "InvalidSpec" && note.contains("spec.app")),
        "a refused spec records an event: {events:?}"
    );

    // Put back: bound again, nothing written.
    kubectl(
        &s,
        &[
            "patch",
            "slv",
            "web-data",
            "--type",
            "merge",
            "-p",
            &format!(r#"{{"spec":{{"app":"{web}"}}}}"#),
        ],
    );
    s.wait_reason("web-data", "Bound", 30).await;
    assert_eq!(s.app_writes(&web), writes.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_volume_at_the_same_container_path_is_refused_and_the_first_kept() {
    let (s, web, _ctl) = Scenario::with_running_app(&["node-1"], "web").await;
    s.apply(
        "first",
        json!({"app": web, "containerPath": "/data", "hostPath": "/first"}),
    )
    .await;
    s.wait_bound("first").await;
    s.apply(
        "second",
        json!({"app": web, "containerPath": "/data", "hostPath": "/second"}),
    )
    .await;
    let r = ready(s.wait_reason("second", "InvalidSpec", 30).await);
    assert!(
        r.message.contains("already the mount point of volume"),
        "{}",
        r.message
    );
    let app = s.wait_app_settled(&web).await;
    let mounts = host_volumes(&app);
    assert_eq!(mounts.len(), 1);
    assert!(mounts[0]["hostPath"].as_str().unwrap().ends_with("/first"));
    assert_eq!(ready(s.api.get("first").await.unwrap()).reason, "Bound");
    let listed = kubectl(&s, &["get", "slv", "-o", "wide"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("second") && l.contains("InvalidSpec")),
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_say_what_happened_this_time() {
    let (s, web, _ctl) = Scenario::with_running_app(&["node-1"], "web").await;
    s.apply(
        "data",
        json!({"app": web, "containerPath": "/data", "hostPath": "/data"}),
    )
    .await;
    s.wait_bound("data").await;
    s.wait_app_settled(&web).await;
    // Two edits, two updates of the app: each AppUpdated names its own deployment.
    for read_only in [true, false] {
        let patch = format!(r#"{{"spec":{{"readOnly":{read_only}}}}}"#);
        kubectl(&s, &["patch", "slv", "data", "--type", "merge", "-p", &patch]);
        eventually(30, "the app to carry the edit", || async {
            let app = s.app(&web).await;
            let mode = if read_only { "RO" } else { "RW" };
            (host_volumes(&app)[0]["mode"] == mode && app["deployments"].as_array()?.is_empty()).then_some(())
        })
        .await;
    }
    let updates: Vec<String> = eventually(15, "two AppUpdated events", || async {
        let notes: Vec<String> = events_of(&s, "data")
            .into_iter()
            .filter(|(_, r, _)| r == "AppUpdated")
            .map(|(_, _, n)| n)
            .collect();
        (notes.len() >= 2).then_some(notes)
    })
    .await;
    assert_ne!(
        updates[0], updates[1],
        "each event has its own deployment: {updates:?}"
    );

    // A volume refused before anything was created gets no word about apps or data.
    s.apply(
        "theirs",
        json!({"app": "/tata/web", "containerPath": "/x", "hostPath": "/x"}),
    )
    .await;
    s.wait_reason("theirs", "InvalidSpec", 30).await;
    kubectl(&s, &["delete", "slv", "theirs"]);
    eventually(30, "theirs to be gone", || async {
        s.api.get("theirs").await.is_err().then_some(())
    })
    .await;
    let events = events_of(&s, "theirs");
    assert!(events.iter().all(|(_, r, _)| r != "AppUpdated"), "{events:?}");
    assert!(
        events.iter().all(|(_, _, n)| !n.contains("the data stays")),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_stays_through_a_marathon_blip_and_does_not_claim_tasks_run() {
    let s = Scenario::start(&["node-1"]).await;
    let web = s.app_id("web");
    s.create_app(docker_app(&web)).await;
    s.wait_app_settled(&web).await;
    let idle = s.app_id("idle");
    let mut app = docker_app(&idle);
    app["instances"] = json!(0);
    s.create_app(app).await;
    let _ctl = s.stack.controller(&s.ns, &["--outage-grace", "60s"]).await;
    s.apply(
        "data",
        json!({"app": web, "containerPath": "/data", "hostPath": "/data"}),
    )
    .await;
    s.apply(
        "idle",
        json!({"app": idle, "containerPath": "/data", "hostPath": "/idle"}),
    )
    .await;
    s.wait_bound("data").await;
    // The idle app has its volume mounted and pinned: Ready; and it says no task runs.
    let v = s.wait_bound("idle").await;
    let running = v
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "AppRunning")
        .unwrap();
    assert_eq!(
        (running.status.as_str(), running.reason.as_str()),
        ("False", "NoTasks"),
        "{}",
        running.message
    );
    let before = s.api.get("data").await.unwrap().metadata.resource_version;

    // Marathon answers 503 to everything for 25 s.
    s.stack.sim.inject_faults(100_000, Some(503), Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(25)).await;
    let during = s.api.get("data").await.unwrap();
    assert_eq!(
        ready(during.clone()).status,
        "True",
        "a blip does not flag healthy volumes"
    );
    assert_eq!(
        during.metadata.resource_version, before,
        "nothing was written during the blip"
    );
    s.stack.sim.inject_faults(0, None, Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_gets_the_data_and_the_event_says_how_much() {
    let (s, web, _ctl) = Scenario::with_running_app(&["node-1"], "web").await;
    s.apply("data", json!({"app": web, "containerPath": "/data", "hostPath": "/data", "owner": {"uid": 1000, "gid": 1000}}))
        .await;
    s.wait_bound("data").await;
    let dir = s.stack.host("node-1").tenant_path(&s.ns, "/data");
    // What the app wrote as uid 1000.
    std::fs::create_dir_all(dir.join("db")).unwrap();
    std::fs::write(dir.join("db/table"), b"rows").unwrap();
    for p in ["db", "db/table"] {
        std::os::unix::fs::chown(dir.join(p), Some(REMAP_BASE + 1000), Some(REMAP_BASE + 1000)).unwrap();
    }
    kubectl(
        &s,
        &[
            "patch",
            "slv",
            "data",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"owner":{"uid":2000,"gid":2000}}}"#,
        ],
    );
    let note = eventually(30, "an OwnerChanged event", || async {
        events_of(&s, "data")
            .into_iter()
            .find(|(_, r, _)| r == "OwnerChanged")
            .map(|(_, _, n)| n)
    })
    .await;
    assert!(
        note.contains("2 entries") && note.contains("container 2000:2000"),
        "{note}"
    );
    for p in ["", "db", "db/table"] {
        let m = std::fs::metadata(dir.join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (REMAP_BASE + 2000, REMAP_BASE + 2000), "{p}");
    }
    let explain = kubectl(&s, &["explain", "slv.spec.owner"]);
    assert!(explain.contains("re-owns"), "{explain}");
}
