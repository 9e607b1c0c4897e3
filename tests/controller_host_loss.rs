//! A host that never comes back: each host's agent runs in a Docker container of its own and is
//! lost with `docker kill`. With `hostLoss: Reprovision` the volume gets new, empty data on
//! another host after `after`, and the old data is reported (never deleted) when the host
//! returns; with the default `Wait` the volume stays pinned and nothing changes.
mod support;
mod support_helm;
mod support_scenario;

use std::time::Duration;

use serde_json::json;
use support::stack::{StackOptions, eventually};
use support_scenario::{Scenario, docker_app, ready};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_host_is_waited_for_or_its_scratch_volume_reprovisioned_and_its_old_data_reported_on_return() {
    let mut s = Scenario::start_with(
        &["node-1", "node-2"],
        StackOptions {
            docker_hosts: true,
            ..Default::default()
        },
    )
    .await;
    let cache_app = s.app_id("cache");
    let db_app = s.app_id("db");
    for id in [&cache_app, &db_app] {
        s.create_app(docker_app(id)).await;
        s.wait_app_settled(id).await;
    }
    let ctl = s.controller().await;
    // Both on node-1 (where the apps' tasks run, or the chosen host): avoidHosts keeps them off
    // node-2 at first, then is lifted so that the cache may go there.
    s.apply(
        "scratch",
        json!({"app": cache_app, "containerPath": "/cache", "hostPath": "/cache",
               "placement": {"avoidHosts": ["node-2"]},
               "hostLoss": {"policy": "Reprovision", "after": "1m"}}),
    )
    .await;
    s.apply(
        "rows",
        json!({"app": db_app, "containerPath": "/data", "hostPath": "/rows",
               "placement": {"host": "node-1"}}),
    )
    .await;
    s.wait_bound("scratch").await;
    s.wait_bound("rows").await;
    let old_cache = s.stack.host("node-1").tenant_path(&s.ns, "/cache");
    std::fs::write(old_cache.join("warm"), "cached bytes").unwrap();
    s.api
        .patch(
            "scratch",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"placement": null}})),
        )
        .await
        .unwrap();

    s.stack.host_mut("node-1").kill();
    let lost_at = std::time::Instant::now();
    let v = eventually(
        240,
        "the scratch volume to be reprovisioned on node-2",
        || async {
            let v = s.api.get("scratch").await.ok()?;
            let st = v.status.as_ref()?;
            (st.host.as_deref() == Some("node-2") && st.is_ready()).then_some(v)
        },
    )
    .await;
    let waited = lost_at.elapsed();
    println!(
        "reprovisioned {:.1}s after the host was lost",
        waited.as_secs_f64()
    );
    assert!(
        waited >= Duration::from_secs(60),
        "not before `after`: {waited:?}"
    );
    let st = v.status.unwrap();
    assert_eq!(st.orphaned.len(), 1, "{:?}", st.orphaned);
    assert_eq!(st.orphaned[0].host, "node-1");
    assert!(!st.orphaned[0].found);
    let new_cache = s.stack.host("node-2").tenant_path(&s.ns, "/cache");
    assert_eq!(
        std::fs::read_dir(&new_cache).unwrap().count(),
        0,
        "new, empty data"
    );
    let ev = s.events("scratch").await;
    let note = &ev
        .iter()
        .find(|(r, _)| r == "Reprovisioned")
        .expect("a Reprovisioned event")
        .1;
    assert!(note.contains("node-1") && note.contains("abandoned"), "{note}");
    let app = s.wait_app_settled(&cache_app).await;
    assert!(
        app["constraints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c[2] == "node-2"),
        "the app is pinned to the new data: {app}"
    );
    assert_eq!(ctl.metric("berth_reprovisions_total").await, Some(1.0));

    // The default policy waits: the db stays on node-1, said to be unavailable.
    let rows = s.api.get("rows").await.unwrap();
    let rst = rows.status.as_ref().unwrap();
    assert_eq!(rst.host.as_deref(), Some("node-1"));
    assert!(rst.orphaned.is_empty());
    let synced = rst.conditions.iter().find(|c| c.type_ == "Synced").unwrap();
    assert_eq!(
        (synced.status.as_str(), synced.reason.as_str()),
        ("False", "HostUnavailable")
    );

    // node-1 comes back: the old cache is reported and kept; the db is back as it was.
    s.stack.host_mut("node-1").start().await;
    let v = eventually(120, "the old data to be reported", || async {
        let v = s.api.get("scratch").await.ok()?;
        v.status.as_ref()?.orphaned.first()?.found.then_some(v)
    })
    .await;
    assert_eq!(v.status.unwrap().host.as_deref(), Some("node-2"));
    assert_eq!(
        std::fs::read_to_string(old_cache.join("warm")).unwrap(),
        "cached bytes",
        "never deleted"
    );
    let ev = s.events("scratch").await;
    assert!(
        ev.iter()
            .any(|(r, n)| r == "OrphanedData" && n.contains("never deletes")),
        "{ev:?}"
    );
    eventually(60, "the db to be synced again", || async {
        let (st, _, _) = s.condition("rows", "Synced").await?;
        (st == "True").then_some(())
    })
    .await;
    assert_eq!(ready(s.api.get("rows").await.unwrap()).reason, "Bound");
}
