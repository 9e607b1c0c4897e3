//! berth never binds a volume to the wrong data: the data carries the volume's identity
//! (`trusted.berth.volume`, written by the agent), and the controller asks each agent to check
//! it. A wiped host, data of unknown origin and data another volume left are reported, not
//! mounted as the volume's; `spec.adoptData` takes over data deliberately.
mod support;
mod support_helm;
mod support_scenario;

use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use support::stack::eventually;
use support_scenario::{Scenario, ready};

fn stalled(v: &berth::crd::StatefulLocalVolume) -> bool {
    v.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Stalled" && c.status == "True")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_wiped_from_a_host_is_reported_and_not_replaced_by_an_empty_volume() {
    let (s, id, _ctl) = Scenario::with_running_app(&["node-1"], "db").await;
    s.apply(
        "data",
        json!({"app": id, "containerPath": "/data", "hostPath": "/db"}),
    )
    .await;
    let v = s.wait_bound("data").await;
    assert_eq!(
        v.status.as_ref().unwrap().data_marked,
        Some(true),
        "the data carries the mark"
    );
    let dir = s.stack.host("node-1").tenant_path(&s.ns, "/db");
    std::fs::write(dir.join("rows"), "42").unwrap();

    // The disk is replaced: the directory is there again, empty and without the mark.
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    let v = s.wait_reason("data", "DataMissing", 30).await;
    assert!(stalled(&v), "a person must act");
    let msg = ready(v).message;
    assert!(msg.contains("the data is gone"), "{msg}");
    // Nothing was made in its place.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_berth_did_not_make_is_taken_over_only_when_asked() {
    let (s, id, _ctl) = Scenario::with_running_app(&["node-1"], "web").await;
    // Data already at the path, from before berth (or a restored backup).
    let dir = s.stack.host("node-1").tenant_path(&s.ns, "/web");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "hello").unwrap();
    s.apply(
        "site",
        json!({"app": id, "containerPath": "/srv", "hostPath": "/web", "placement": {"host": "node-1"}}),
    )
    .await;
    let v = s.wait_reason("site", "WrongData", 30).await;
    let msg = ready(v).message;
    assert!(msg.contains("no berth volume created"), "{msg}");
    assert_eq!(s.app_writes(&id), 0, "not mounted");

    s.api
        .patch(
            "site",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"adoptData": true}})),
        )
        .await
        .unwrap();
    s.wait_bound("site").await;
    assert_eq!(std::fs::read_to_string(dir.join("index.html")).unwrap(), "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_a_deleted_volume_left_goes_to_a_new_volume_only_when_asked() {
    let (s, id, _ctl) = Scenario::with_running_app(&["node-1"], "app").await;
    s.apply(
        "old",
        json!({"app": id, "containerPath": "/data", "hostPath": "/keep"}),
    )
    .await;
    s.wait_bound("old").await;
    let dir = s.stack.host("node-1").tenant_path(&s.ns, "/keep");
    std::fs::write(dir.join("state"), "v1").unwrap();
    s.api.delete("old", &DeleteParams::default()).await.unwrap();
    eventually(60, "the old volume to go", || async {
        s.api.get_opt("old").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(dir.join("state").exists(), "Retain keeps the data");

    s.apply(
        "new",
        json!({"app": id, "containerPath": "/data", "hostPath": "/keep"}),
    )
    .await;
    let v = s.wait_reason("new", "WrongData", 30).await;
    let msg = ready(v).message;
    assert!(msg.contains("released by the deleted volume"), "{msg}");

    s.api
        .patch(
            "new",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"adoptData": true}})),
        )
        .await
        .unwrap();
    s.wait_bound("new").await;
    assert_eq!(std::fs::read_to_string(dir.join("state")).unwrap(), "v1");
}
