//! Every branch of a pass and the order of its writes, against mocked Marathon, agents and
//! Kubernetes (`mocks.rs`). The real-stack scenarios in `tests/controller_scenarios.rs` cover
//! the same paths end to end.

mod mocks;

use std::{sync::Arc, time::Duration};

use serde_json::json;

use self::mocks::{Call, World, context, docker_app, volume};
use crate::{
    controller::{
        context::Context,
        failure::{Failure, Kind},
    },
    crd::StatefulLocalVolumeStatus,
    marathon::MarathonError,
    tenant::NamespaceMapping,
};

const APP: &str = "/toto/web";

async fn pass(ctx: &Context) -> Duration {
    super::run(ctx, APP).await
}

fn spec(container: &str, host: &str) -> serde_json::Value {
    json!({"app": APP, "containerPath": container, "hostPath": host})
}

fn statuses(calls: &[Call]) -> Vec<(String, StatefulLocalVolumeStatus)> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Status(n, s) => Some((n.clone(), (**s).clone())),
            _ => None,
        })
        .collect()
}

fn ready(s: &StatefulLocalVolumeStatus) -> (String, String) {
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("a Ready condition");
    (c.status.clone(), c.reason.clone())
}

fn events(calls: &[Call]) -> Vec<(String, String)> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Event(n, e) => Some((n.clone(), e.reason.clone())),
            _ => None,
        })
        .collect()
}

fn count(calls: &[Call], f: impl Fn(&Call) -> bool) -> usize {
    calls.iter().filter(|c| f(c)).count()
}

fn position(calls: &[Call], f: impl Fn(&Call) -> bool) -> usize {
    calls.iter().position(f).expect("the call was made")
}

/// Two volumes of one app, bound and at rest.
async fn bound_pair() -> (Arc<World>, Context) {
    let world = World::new(Some(docker_app(APP, None)));
    world.apply(volume("toto", "a", spec("/a", "/data/a")));
    world.apply(volume("toto", "b", spec("/b", "/data/b")));
    let ctx = context(&world, NamespaceMapping::default());
    pass(&ctx).await;
    world.finish_deployments();
    pass(&ctx).await;
    world.take();
    (world, ctx)
}

#[tokio::test]
async fn an_apps_volumes_bind_in_one_pass_with_one_write_and_records_before_anything() {
    let world = World::new(Some(docker_app(APP, None)));
    world.apply(volume("toto", "a", spec("/a", "/data/a")));
    world.apply(volume("toto", "b", spec("/b", "/data/b")));
    let ctx = context(&world, NamespaceMapping::default());
    let requeue = pass(&ctx).await;
    let calls = world.take();

    assert_eq!(count(&calls, |c| *c == Call::GetApp), 1, "{calls:#?}");
    assert_eq!(
        count(&calls, |c| matches!(c, Call::UpdateApp(_))),
        1,
        "{calls:#?}"
    );
    assert_eq!(count(&calls, |c| matches!(c, Call::Ensure(..))), 2);
    // Finalizer, then the placement record, then anything else, for every volume.
    let last_record = calls.iter().rposition(|c| matches!(c, Call::Status(..))).unwrap();
    let first_finalizer = position(&calls, |c| matches!(c, Call::AddFinalizer(_)));
    let first_ensure = position(&calls, |c| matches!(c, Call::Ensure(..)));
    assert!(
        first_finalizer < last_record && last_record < first_ensure,
        "{calls:#?}"
    );
    for (_, s) in statuses(&calls) {
        assert_eq!(ready(&s), ("False".into(), "Provisioning".into()));
        assert_eq!(s.host.as_deref(), Some("node-3"), "the most free space");
        assert!(s.seal.is_some(), "the record carries berth's seal");
    }
    assert_eq!(
        events(&calls),
        [
            ("toto/a".into(), "Provisioned".into()),
            ("toto/b".into(), "Provisioned".into())
        ]
    );
    assert!(
        requeue <= Duration::from_secs(2),
        "back soon while the deployment runs"
    );
    let app = world.app();
    assert_eq!(app.host_volumes().count(), 2);
    assert_eq!(app.constraints.unwrap().pinned_hosts(), ["node-3"]);

    // While the deployment runs, nothing is written.
    pass(&ctx).await;
    let calls = world.take();
    assert_eq!(count(&calls, Call::is_write), 0, "{calls:#?}");

    // Once it is done: Bound, one event each, still no Marathon write.
    world.finish_deployments();
    pass(&ctx).await;
    let calls = world.take();
    assert_eq!(
        count(&calls, |c| matches!(c, Call::UpdateApp(_) | Call::RestartApp)),
        0
    );
    let s = statuses(&calls);
    assert_eq!(s.len(), 2);
    for (_, s) in &s {
        assert_eq!(ready(s), ("True".into(), "Bound".into()));
        assert!(
            s.host_path.as_deref().unwrap().ends_with("/data/a")
                || s.host_path.as_deref().unwrap().ends_with("/data/b")
        );
        let running = s.conditions.iter().find(|c| c.type_ == "AppRunning").unwrap();
        assert_eq!(running.status, "True");
    }
    // Becoming Ready is in the conditions; the binding's one event came with the placement.
    assert_eq!(events(&calls), []);

    // At rest: one read, no agent call (the data was confirmed in this resync period), no
    // write at all.
    let requeue = pass(&ctx).await;
    let calls = world.take();
    assert_eq!(count(&calls, Call::is_write), 0, "{calls:#?}");
    assert_eq!(count(&calls, |c| matches!(c, Call::Ensure(..))), 0, "{calls:#?}");
    assert_eq!(requeue, Duration::from_secs(300));

    // A spec edit is asked about again, whatever the last confirmation.
    let mut edited = volume("toto", "a", spec("/a", "/data/a"));
    edited.spec.owner = Some(crate::crd::Owner { uid: 1000, gid: 1000 });
    world.apply(edited);
    pass(&ctx).await;
    let calls = world.take();
    assert_eq!(
        calls
            .iter()
            .filter(|c| matches!(c, Call::Ensure(_, p) if p == "/data/a"))
            .count(),
        1
    );
    assert_eq!(count(&calls, |c| matches!(c, Call::Ensure(..))), 1, "{calls:#?}");
}

#[tokio::test]
async fn a_placement_record_that_cannot_be_written_stops_everything_after_it() {
    let world = World::new(Some(docker_app(APP, None)));
    world.apply(volume("toto", "a", spec("/a", "/data/a")));
    let ctx = context(&world, NamespaceMapping::default());
    *world.status_fails.lock().unwrap() = true;
    pass(&ctx).await;
    let calls = world.take();
    assert_eq!(count(&calls, |c| matches!(c, Call::Ensure(..))), 0, "{calls:#?}");
    assert_eq!(count(&calls, |c| matches!(c, Call::UpdateApp(_))), 0);
}

#[tokio::test]
async fn a_refusal_by_the_agent_holds_the_apps_update_and_is_stalled() {
    let world = World::new(Some(docker_app(APP, None)));
    world.apply(volume("toto", "a", spec("/a", "/data/a")));
    world.apply(volume("toto", "b", spec("/b", "/data/b")));
    world.agent.lock().unwrap().fail.insert(
        "/data/b".into(),
        Failure {
            kind: Kind::Refused,
            message: "/data/b exists as a regular file but the volume is declared Directory".into(),
            code: Some("type_mismatch".into()),
        },
    );
    let ctx = context(&world, NamespaceMapping::default());
    pass(&ctx).await;
    let calls = world.take();
    assert_eq!(
        count(&calls, |c| matches!(c, Call::UpdateApp(_))),
        0,
        "nothing is written after a refusal"
    );
    let s = statuses(&calls);
    let b = s.iter().rev().find(|(n, _)| n == "toto/b").unwrap();
    assert_eq!(ready(&b.1), ("False".into(), "ProvisioningFailed".into()));
    assert!(
        b.1.conditions
            .iter()
            .any(|c| c.type_ == "Stalled" && c.status == "True")
    );
    let a = s.iter().rev().find(|(n, _)| n == "toto/a").unwrap();
    assert_eq!(ready(&a.1).1, "WaitingForVolume", "{s:#?}");

    // Fixed on the host: one write mounts both.
    world.agent.lock().unwrap().fail.clear();
    pass(&ctx).await;
    let calls = world.take();
    assert_eq!(count(&calls, |c| matches!(c, Call::UpdateApp(_))), 1);
    assert_eq!(world.app().host_volumes().count(), 2);
}

#[tokio::test]
async fn an_agents_race_is_retried_soon_and_never_stalls_the_volume() {
    let world = World::new(Some(docker_app(APP, None)));
    world.apply(volume("toto", "a", spec("/a", "/data/a")));
    world.agent.lock().unwrap().fail.insert(
        "/data/a".into(),
        Failure {
            kind: Kind::Transient,
            message: "/data/a changed while berth was working on it".into(),
            code: Some("concurrent_change".into()),
        },
    );
    let ctx = context(&world, NamespaceMapping::default());
    let requeue = pass(&ctx).await;
    let calls = world.take();
    for (_, s) in statuses(&calls) {
        assert!(!s.conditions.iter().any(|c| c.type_ == "Stalled"), "{s:?}");
    }
    assert!(
        requeue <= Duration::from_secs(5),
        "retried with back-off, not at the resync: {requeue:?}"
    );
}

#[tokio::test]
async fn no_update_while_a_deployment_runs() {
    let (world, ctx) = bound_pair().await;
    world.apply(volume("toto", "c", spec("/c", "/data/c")));
    world.app.lock().unwrap().as_mut().unwrap().deployments = Some(vec![
        serde_json::from_value(json!({"id": "users-deployment"})).unwrap(),
    ]);
    pass(&ctx).await;
    let calls = world.take();
    assert_eq!(count(&calls, |c| matches!(c, Call::UpdateApp(_))), 0);
    let (_, c) = statuses(&calls)
        .into_iter()
        .rev()
        .find(|(n, _)| n == "toto/c")
        .unwrap();
    assert_eq!(ready(&c).1, "AppLocked");
    assert!(
        c.conditions
            .iter()
            .any(|x| x.message.contains("users-deployment"))
    );
}

#[tokio::test]
async fn tasks_elsewhere_get_one_restart_and_no_update() {
    let (world, ctx) = bound_pair().await;
    {
        let mut app = world.app.lock().unwrap();
        let app = app.as_mut().unwrap();
        for t in app.tasks.iter_mut().flatten() {
            t.host = "node-9".into();
        }
    }
    pass(&ctx).await;
    let calls = world.take();
    assert_eq!(count(&calls, |c| *c == Call::RestartApp), 1);
    assert_eq!(count(&calls, |c| matches!(c, Call::UpdateApp(_))), 0);
}

#[tokio::test]
async fn delete_removes_the_mount_first_and_the_data_once_the_app_no_longer_has_it() {
    let (world, ctx) = bound_pair().await;
    let mut a = volume("toto", "a", spec("/a", "/data/a"));
    a.spec.reclaim_policy = crate::crd::ReclaimPolicy::Delete;
    world.apply(a);
    pass(&ctx).await;
    world.finish_deployments();
    world.take();
    world.delete("a");
    pass(&ctx).await;
    let calls = world.take();
    assert_eq!(
        count(&calls, |c| matches!(c, Call::UpdateApp(_))),
        1,
        "{calls:#?}"
    );
    assert_eq!(
        count(&calls, |c| matches!(c, Call::Delete(..))),
        0,
        "not while the app mounts it"
    );
    assert_eq!(world.app().host_volumes().count(), 1);
    world.finish_deployments();
    pass(&ctx).await;
    let calls = world.take();
    let delete = position(&calls, |c| matches!(c, Call::Delete(..)));
    let unfinalize = position(&calls, |c| matches!(c, Call::RemoveFinalizer(_)));
    assert!(delete < unfinalize);
    assert_eq!(
        calls[delete],
        Call::Delete("node-3".into(), "toto".into(), "/data/a".into())
    );
    assert!(world.get("a").is_none(), "gone once the finalizer is");
    assert!(events(&calls).contains(&("toto/a".into(), "Released".into())));
}

#[tokio::test]
async fn delete_happens_by_the_sealed_record_even_when_the_namespace_lost_its_tenant() {
    let (world, ctx) = bound_pair().await;
    let mut a = volume("toto", "a", spec("/a", "/data/a"));
    a.spec.reclaim_policy = crate::crd::ReclaimPolicy::Delete;
    world.apply(a);
    pass(&ctx).await;
    world.finish_deployments();
    pass(&ctx).await;
    world.take();
    // The operator maps only other namespaces now: toto has no tenant.
    let ctx = context(
        &world,
        NamespaceMapping::new(&[("other".into(), "other".into())], true).unwrap(),
    );
    world.delete("a");
    pass(&ctx).await;
    world.finish_deployments();
    pass(&ctx).await;
    let calls = world.take();
    assert!(
        calls.contains(&Call::Delete("node-3".into(), "toto".into(), "/data/a".into())),
        "{calls:#?}"
    );
    assert!(world.get("a").is_none());
}

#[tokio::test]
async fn another_tenants_volume_and_a_forged_status_take_no_part() {
    let (world, ctx) = bound_pair().await;
    // An admin of namespace evil names toto's app and writes a status berth did not write.
    let mut evil = volume(
        "evil",
        "x",
        json!({"app": APP, "containerPath": "/x", "hostPath": "/data/a"}),
    );
    evil.status = Some(StatefulLocalVolumeStatus {
        host: Some("node-9".into()),
        host_path: Some("/containerdata/user-toto/data/a".into()),
        app: Some(APP.into()),
        tenant: Some("toto".into()),
        seal: Some("00".repeat(32)),
        ..Default::default()
    });
    world.apply(evil);
    pass(&ctx).await;
    let calls = world.take();
    assert_eq!(
        count(&calls, |c| matches!(c, Call::UpdateApp(_) | Call::RestartApp)),
        0,
        "{calls:#?}"
    );
    let s = statuses(&calls);
    assert!(
        s.iter().all(|(n, _)| n == "evil/x"),
        "toto's volumes are untouched: {s:#?}"
    );
    assert_eq!(ready(&s[0].1).1, "InvalidSpec");
    assert!(s[0].1.host.is_none(), "the forged record is not kept");
    assert_eq!(world.app().constraints.unwrap().pinned_hosts(), ["node-3"]);
}

#[tokio::test]
async fn a_move_to_a_host_without_an_agent_waits_and_the_volumes_say_why() {
    let (world, ctx) = bound_pair().await;
    for (name, container, path) in [("a", "/a", "/data/a"), ("b", "/b", "/data/b")] {
        let mut spec = spec(container, path);
        spec["placement"] = json!({"host": "node-9"});
        world.apply(volume("toto", name, spec));
    }
    pass(&ctx).await;
    let calls = world.take();
    assert_eq!(
        count(&calls, |c| matches!(c, Call::UpdateApp(_) | Call::RestartApp)),
        0,
        "{calls:#?}"
    );
    for (name, s) in statuses(&calls) {
        assert_eq!(ready(&s), ("True".into(), "Bound".into()), "{name}");
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Reconciling")
            .unwrap_or_else(|| panic!("{name}: no Reconciling in {:?}", s.conditions));
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "MoveWaiting"));
        assert!(c.message.contains("node-9 does not answer"), "{}", c.message);
    }
    assert_eq!(statuses(&calls).len(), 2, "{calls:#?}");
    // While it waits nothing is written again: the same status, one event counted up.
    pass(&ctx).await;
    let calls = world.take();
    assert_eq!(statuses(&calls).len(), 0, "{calls:#?}");
    assert_eq!(
        count(&calls, |c| matches!(c, Call::UpdateApp(_) | Call::RestartApp)),
        0
    );
}

#[tokio::test]
async fn changing_the_app_of_a_bound_volume_holds_it_where_it_is() {
    let (world, ctx) = bound_pair().await;
    let before = world.app();
    world.apply(volume(
        "toto",
        "a",
        json!({"app": "/toto/batch", "containerPath": "/a", "hostPath": "/data/a"}),
    ));
    pass(&ctx).await;
    let calls = world.take();
    assert_eq!(
        count(&calls, |c| matches!(c, Call::UpdateApp(_) | Call::RestartApp)),
        0,
        "{calls:#?}"
    );
    assert_eq!(world.app().container, before.container, "the data stays mounted");
    let (_, a) = statuses(&calls).into_iter().find(|(n, _)| n == "toto/a").unwrap();
    assert_eq!(ready(&a).1, "InvalidSpec");
    assert!(
        a.conditions[0].message.contains("spec.app cannot change"),
        "{:?}",
        a.conditions
    );
    // The pass of the app it names now does not take it.
    super::run(&ctx, "/toto/batch").await;
    assert_eq!(count(&world.take(), Call::is_write), 0);
}

#[tokio::test]
async fn a_second_volume_at_the_same_container_path_is_refused_and_the_first_kept() {
    let (world, ctx) = bound_pair().await;
    world.apply(volume("toto", "c", spec("/a", "/data/c")));
    pass(&ctx).await;
    let calls = world.take();
    assert_eq!(count(&calls, |c| matches!(c, Call::UpdateApp(_))), 0);
    let s = statuses(&calls);
    assert_eq!(s.len(), 1, "{s:#?}");
    assert_eq!(s[0].0, "toto/c");
    assert!(
        s[0].1.conditions[0]
            .message
            .contains("already the mount point of volume toto/a")
    );
}

#[tokio::test]
async fn a_marathon_blip_writes_nothing_and_ready_stays() {
    let (world, ctx) = bound_pair().await;
    *world.marathon_down.lock().unwrap() = true;
    let requeue = pass(&ctx).await;
    let calls = world.take();
    assert_eq!(count(&calls, Call::is_write), 0, "{calls:#?}");
    assert!(requeue < Duration::from_secs(300));
    assert_eq!(ready(world.get("a").unwrap().status.as_ref().unwrap()).0, "True");
}

#[tokio::test]
async fn an_app_read_from_the_cache_is_read_again_before_a_write() {
    let (world, ctx) = bound_pair().await;
    ctx.apps.stream_connected();
    let t = ctx.apps.ticket();
    ctx.apps.store(t, APP, Arc::new(world.app()));
    pass(&ctx).await;
    assert_eq!(
        count(&world.take(), |c| *c == Call::GetApp),
        0,
        "a fresh cache costs no read"
    );
    world.apply(volume("toto", "c", spec("/c", "/data/c")));
    pass(&ctx).await;
    let calls = world.take();
    assert_eq!(count(&calls, |c| *c == Call::GetApp), 1, "{calls:#?}");
    let read = position(&calls, |c| *c == Call::GetApp);
    let write = position(&calls, |c| matches!(c, Call::UpdateApp(_)));
    assert!(read < write);
}

#[tokio::test]
async fn a_privileged_app_is_never_given_a_volume() {
    let mut app = docker_app(APP, None);
    app["container"]["docker"]["privileged"] = json!(true);
    let world = World::new(Some(app));
    world.apply(volume("toto", "a", spec("/a", "/data/a")));
    let ctx = context(&world, NamespaceMapping::default());
    pass(&ctx).await;
    let calls = world.take();
    assert_eq!(
        count(&calls, |c| matches!(
            c,
            Call::UpdateApp(_) | Call::Ensure(..) | Call::AddFinalizer(_)
        )),
        0
    );
    let (_, s) = &statuses(&calls)[0];
    assert_eq!(ready(s).1, "AppNotAllowed");
}

#[tokio::test]
async fn a_missing_app_is_waited_for_and_a_failed_update_is_reported() {
    let world = World::new(None);
    world.apply(volume("toto", "a", spec("/a", "/data/a")));
    let ctx = context(&world, NamespaceMapping::default());
    pass(&ctx).await;
    let (_, s) = statuses(&world.take()).pop().unwrap();
    assert_eq!(ready(&s).1, "AppNotFound");

    *world.app.lock().unwrap() = serde_json::from_value(docker_app(APP, None)).ok();
    *world.update_error.lock().unwrap() = Some(MarathonError::from_response(
        422,
        "u",
        r#"{"message":"Object is not valid","details":[{"path":"/container","errors":["bad"]}]}"#,
    ));
    pass(&ctx).await;
    let (_, s) = statuses(&world.take()).pop().unwrap();
    assert_eq!(ready(&s).1, "AppUpdateRejected");
}

#[tokio::test]
async fn a_new_empty_volume_shows_zero_used_and_a_seeded_file_waits_for_a_measurement() {
    let world = World::new(Some(docker_app(APP, None)));
    world.apply(volume("toto", "empty", spec("/a", "/data/a")));
    world.apply(volume(
        "toto",
        "seeded",
        json!({"app": APP, "containerPath": "/etc/app.conf", "hostPath": "/conf/app.conf",
               "type": "File", "seed": {"content": "listen 80;\n"}}),
    ));
    let ctx = context(&world, NamespaceMapping::default());
    pass(&ctx).await;
    world.finish_deployments();
    pass(&ctx).await;
    let used = |name: &str| {
        world
            .get(name)
            .and_then(|v| v.status)
            .and_then(|s| s.usage)
            .and_then(|u| u.used)
    };
    assert_eq!(used("empty").as_deref(), Some("0"));
    assert_eq!(used("seeded"), None, "a seed is not nothing");
}

#[tokio::test]
async fn apps_that_waited_for_marathon_are_passed_as_soon_as_it_answers_again() {
    use crate::controller::{queue::AppQueue, triggers};

    let world = World::new(Some(docker_app(APP, None)));
    let ctx = Arc::new(context(&world, NamespaceMapping::default()));
    let queue = Arc::new(AppQueue::new(Duration::ZERO));
    tokio::spawn(triggers::marathon_return(ctx.clone(), queue.clone()));

    // Marathon answers without an outage: nothing to catch up on.
    ctx.marathon_reachable(true);
    let idle = tokio::time::timeout(Duration::from_millis(200), queue.next()).await;
    assert!(idle.is_err(), "nothing was waiting: {idle:?}");

    // Two apps failed during an outage and sit in their back-off (the second for minutes).
    ctx.marathon_failed(&Failure::new(
        Kind::Unreachable,
        "Marathon is unavailable (HTTP 503)",
    ));
    ctx.backoff("/toto/a");
    for _ in 0..8 {
        ctx.backoff("/toto/b");
    }
    ctx.marathon_reachable(true);
    let mut passed = Vec::new();
    for _ in 0..2 {
        let app = tokio::time::timeout(Duration::from_secs(2), queue.next())
            .await
            .expect("passed at once, not after the back-off")
            .expect("the queue is open");
        queue.done(&app, None);
        passed.push(app);
    }
    passed.sort();
    assert_eq!(passed, ["/toto/a", "/toto/b"]);
}

#[tokio::test]
async fn a_lost_host_is_reported_with_since_when_and_cleared_when_it_answers() {
    let world = World::new(Some(docker_app(APP, None)));
    let ctx = context(&world, NamespaceMapping::default());
    let series = |ctx: &Context| {
        ctx.metrics
            .render()
            .lines()
            .find(|l| l.starts_with("berth_host_unreachable_since_seconds{host=\"node-2\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<i64>().ok())
    };
    ctx.host_reachable("node-2", true);
    assert_eq!(series(&ctx), Some(0));

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    ctx.host_reachable("node-2", false);
    let since = series(&ctx).unwrap();
    assert!(since >= before && since <= before + 5, "{since} vs {before}");
    // Later failures keep the first moment: it says how long the host has been away.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ctx.host_reachable("node-2", false);
    assert_eq!(series(&ctx), Some(since));

    ctx.host_reachable("node-2", true);
    assert_eq!(series(&ctx), Some(0));
}
