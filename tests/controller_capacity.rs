//! Capacities through the whole stack: a volume's `spec.capacity` becomes a limit the host's
//! kernel enforces (btrfs in a loop-mounted file, quota on), its usage shows in status and
//! metrics and warns once past 90%, the capacity grows in place, and placement never promises a
//! host more than its disk. Where the filesystem cannot limit, the status says the capacity is
//! advisory.
mod support;
mod support_helm;
mod support_scenario;

use std::time::Duration;

use berth::crd::{LimitMode, StatefulLocalVolume};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use serde_json::json;
use support::{
    admin_client,
    loopfs::fill,
    stack::{ControllerProcess, StackOptions, eventually},
};
use support_scenario::{Scenario, docker_app};

const MIB: u64 = 1 << 20;

async fn btrfs_scenario(hosts: &[&str], mib: u64) -> Scenario {
    Scenario::start_with(
        hosts,
        StackOptions {
            btrfs_mib: Some(mib),
            ..Default::default()
        },
    )
    .await
}

fn usage(v: &StatefulLocalVolume) -> berth::crd::VolumeUsage {
    v.status
        .as_ref()
        .and_then(|s| s.usage.clone())
        .unwrap_or_default()
}

async fn events(s: &Scenario, reason: &str) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(admin_client().await, &s.ns);
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.note)
        .collect()
}

/// The controller's metric line for the volume, if any.
async fn metric(ctl: &ControllerProcess, name: &str, volume: &str) -> Option<f64> {
    let text = ctl.metrics_text().await?;
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("volume=\"{volume}\"")))
        .find_map(|l| l.rsplit_once(' ')?.1.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capacity_is_enforced_measured_warned_and_grown_in_place() {
    let s = btrfs_scenario(&["node-1"], 320).await;
    let id = s.app_id("db");
    s.create_app(docker_app(&id)).await;
    s.wait_app_settled(&id).await;
    let ctl = s.controller().await;
    s.apply(
        "data",
        json!({"app": id, "containerPath": "/data", "hostPath": "/db", "capacity": "16Mi"}),
    )
    .await;
    let v = s.wait_bound("data").await;
    let u = usage(&v);
    assert_eq!(u.limit, Some(LimitMode::Enforced), "{u:?}");
    assert_eq!(
        (u.used.as_deref(), u.used_percent),
        (Some("0"), Some(0)),
        "a new volume holds nothing"
    );

    // The tenant fills 15 of its 16 MiB: the next verification measures it, the status shows
    // it, and one warning says so.
    let dir = s.stack.host("node-1").tenant_path(&s.ns, "/db");
    let (written, err) = fill(&dir.join("a"), 15 * MIB);
    assert!(err.is_none() && written == 15 * MIB, "{err:?}");
    s.stack.host("node-1").fs.as_ref().unwrap().sync();
    let v = eventually(60, "the usage in the status", || async {
        let v = s.api.get("data").await.ok()?;
        (usage(&v).used_percent? >= 90).then_some(v)
    })
    .await;
    let u = usage(&v);
    assert!(u.used_bytes.unwrap() >= (15 * MIB) as i64, "{u:?}");
    assert!(u.measured_at.is_some());
    let warned = eventually(20, "the NearlyFull warning", || async {
        let e = events(&s, "NearlyFull").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("of its 16Mi capacity"), "{warned:?}");
    assert_eq!(
        metric(&ctl, "berth_volume_limit_enforced", "data").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&ctl, "berth_volume_capacity_bytes", "data").await,
        Some((16 * MIB) as f64)
    );
    let used = metric(&ctl, "berth_volume_used_bytes", "data").await.unwrap();
    assert!(used >= (15 * MIB) as f64, "{used}");

    // Several verifications later the limit still holds: writing past it fails.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (_, err) = fill(&dir.join("b"), 8 * MIB);
    let err = err.expect("a write past the capacity fails");
    assert!(
        matches!(err.raw_os_error(), Some(libc::EDQUOT) | Some(libc::ENOSPC)),
        "{err}"
    );
    std::fs::remove_file(dir.join("b")).unwrap();

    // At rest nothing is written: the status stays as it is over several verifications.
    let before = s.api.get("data").await.unwrap().metadata.resource_version;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(s.api.get("data").await.unwrap().metadata.resource_version, before);

    // The capacity grows in place: same data, the new limit holds, the warning clears.
    s.api
        .patch(
            "data",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"capacity": "64Mi"}})),
        )
        .await
        .unwrap();
    let v = eventually(60, "the grown capacity in the status", || async {
        let v = s.api.get("data").await.ok()?;
        (usage(&v).used_percent? < 50).then_some(v)
    })
    .await;
    assert_eq!(usage(&v).limit, Some(LimitMode::Enforced));
    let (written, err) = fill(&dir.join("c"), 20 * MIB);
    assert!(
        err.is_none() && written == 20 * MIB,
        "room after the capacity grew: {err:?}"
    );
    assert_eq!(
        std::fs::metadata(dir.join("a")).unwrap().len(),
        15 * MIB,
        "data kept"
    );
    drop(ctl);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_never_promises_a_host_more_than_its_disk() {
    // Two hosts of 320 MiB each: a 200 MiB capacity fits on each once, not twice.
    let s = btrfs_scenario(&["node-1", "node-2"], 320).await;
    let ids: Vec<String> = ["a", "b", "c"].iter().map(|n| s.app_id(n)).collect();
    for id in &ids {
        s.create_app(docker_app(id)).await;
        s.wait_app_settled(id).await;
    }
    let _ctl = s.controller().await;
    let mut hosts = Vec::new();
    for (i, id) in ids.iter().take(2).enumerate() {
        let name = format!("v{i}");
        s.apply(
            &name,
            json!({"app": id, "containerPath": "/data", "hostPath": format!("/v{i}"), "capacity": "200Mi"}),
        )
        .await;
        let v = s.wait_reason(&name, "Bound", 60).await;
        hosts.push(v.status.unwrap().host.unwrap());
    }
    hosts.sort();
    assert_eq!(
        hosts,
        ["node-1", "node-2"],
        "the second volume goes where room is left"
    );
    s.apply(
        "v2",
        json!({"app": ids[2], "containerPath": "/data", "hostPath": "/v2", "capacity": "200Mi"}),
    )
    .await;
    let v = s.wait_reason("v2", "NoSuitableHost", 60).await;
    let msg = support_scenario::ready(v).message;
    assert!(msg.contains("promised to other volumes"), "{msg}");
    // Both disks are still nearly empty: without the promises, the volume would have fitted.
    for h in &s.stack.hosts {
        let free = rustix::fs::statvfs(&h.root).unwrap();
        assert!(free.f_bavail * free.f_frsize > 200 * MIB, "{}", h.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_the_filesystem_cannot_limit_the_capacity_is_advisory_and_says_why() {
    let (s, id, _ctl) = Scenario::with_running_app(&["node-1"], "web").await;
    s.apply(
        "data",
        json!({"app": id, "containerPath": "/data", "hostPath": "/web", "capacity": "16Mi"}),
    )
    .await;
    let v = s.wait_bound("data").await;
    let u = usage(&v);
    assert_eq!(u.limit, Some(LimitMode::Advisory), "{u:?}");
    let why = u.limit_message.unwrap_or_default();
    assert!(
        !why.is_empty(),
        "the status says why the capacity is not enforced"
    );
    assert!(!why.contains("/tmp/"), "the reason names no host path: {why}");
}
