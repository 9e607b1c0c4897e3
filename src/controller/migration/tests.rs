//! The decisions of a move, step by step (pure). The real-stack scenario with each agent in its
//! own container is `tests/controller_migration.rs`.

use std::{sync::Arc, time::Duration};

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::plan::{self, Intent, Next, Seen};
use crate::{
    agent::api::{ManifestSummary, PassMode, TransferState, TransferStatus},
    controller::{
        failure::{Failure, Kind},
        pass::{AppRead, Observed, Recorded, Role, Vol},
        placement::Candidate,
        usage::Learnt,
    },
    crd::{
        MigrationStatus, MigrationStep, StatefulLocalVolume,
        validate::{TenantPolicy, validate},
    },
    marathon::App,
    tenant::TenantId,
};

pub(crate) const APP: &str = "/toto/web";

pub(crate) fn spec(path: &str, placement: Value) -> Value {
    json!({"app": APP, "containerPath": path, "hostPath": path, "placement": placement})
}

pub(crate) fn vol(
    name: &str,
    spec: Value,
    host: Option<&str>,
    marked: bool,
    migration: Option<MigrationStatus>,
) -> Vol {
    let obj: StatefulLocalVolume = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "StatefulLocalVolume",
        "metadata": {"name": name, "namespace": "toto", "uid": format!("0b0e7c3e-59a1-4b7e-9a51-2f0d8c7e1a0{}", name.len() % 10), "generation": 1},
        "spec": spec,
        "status": {"dataMarked": marked},
    }))
    .unwrap();
    let tenant = TenantId::parse("toto").unwrap();
    let req = validate(&obj.spec, &tenant, &TenantPolicy::default()).unwrap();
    let record = host.map(|h| Recorded {
        app: APP.into(),
        tenant: tenant.clone(),
        host: h.into(),
        host_path: Some(format!("/containerdata/user-toto{}", obj.spec.host_path)),
        rel_path: Some(obj.spec.host_path.clone()),
        migration,
        orphaned: Vec::new(),
    });
    Vol {
        obj: Arc::new(obj),
        name: format!("toto/{name}"),
        role: Role::Active(Box::new(req)),
        record,
        finalized: true,
        verified: false,
        learnt: Learnt::default(),
    }
}

pub(crate) fn app(value: Value) -> App {
    serde_json::from_value(value).unwrap()
}

pub(crate) fn running_on(host: &str, instances: u32) -> App {
    app(
        json!({"id": APP, "instances": instances, "labels": {"berth.dev/host": host},
               "constraints": [["hostname", "CLUSTER", host]],
               "tasks": [{"id": "t1", "host": host, "state": "TASK_RUNNING"}], "deployments": []}),
    )
}

pub(crate) fn observed(volumes: Vec<Vol>, app: App) -> Observed {
    Observed {
        app_id: APP.into(),
        app: AppRead::Found(Arc::new(app)),
        app_cached: false,
        volumes,
        candidates: Vec::new(),
        launch_blocked: None,
        agent_app: None,
        marathon_down_for: None,
        move_blocked: None,
        move_waiting: None,
    }
}

fn now() -> Timestamp {
    "2026-11-30T12:00:00Z".parse().unwrap()
}

fn moving(step: MigrationStep, pass: u32) -> MigrationStatus {
    MigrationStatus {
        from: "node-1".into(),
        to: "node-2".into(),
        id: format!("x-{pass}"),
        step,
        pass,
        instances: Some(2),
        stopped_at: (step != MigrationStep::Copying).then(|| now().to_string()),
        ..Default::default()
    }
}

fn transfer(pass: u32, state: TransferState, done: u64, total: u64) -> Seen {
    Seen::Status(Box::new(TransferStatus {
        id: "x".into(),
        tenant: "toto".into(),
        host_path: "/data".into(),
        pass,
        mode: PassMode::Full,
        state,
        files_total: 10,
        bytes_total: total,
        files_done: 5,
        bytes_done: done,
        entries_sent: 0,
        deleted: 0,
        raw_bytes: 0,
        wire_bytes: 0,
        setid_stripped: 0,
        elapsed_ms: 0,
        manifest: (state == TransferState::Succeeded).then(|| ManifestSummary {
            digest: format!("digest-{pass}"),
            ..Default::default()
        }),
        received: None,
        error: None,
    }))
}

fn under_way(obs: &Observed) -> plan::AppMove {
    match plan::intent(obs, None, now()) {
        Intent::Continue(m) => m,
        other => panic!("expected a move under way, got {other:?}"),
    }
}

#[test]
fn a_new_host_for_bound_marked_data_starts_a_move_of_every_volume_of_the_app() {
    let obs = observed(
        vec![
            vol(
                "a",
                spec("/a", json!({"host": "node-2"})),
                Some("node-1"),
                true,
                None,
            ),
            vol("bb", spec("/b", json!({})), Some("node-1"), true, None),
        ],
        running_on("node-1", 2),
    );
    let Intent::Start(m) = plan::intent(&obs, None, now()) else {
        panic!("a move starts")
    };
    assert_eq!((m.from.as_str(), m.to.as_str()), ("node-1", "node-2"));
    assert_eq!(
        m.volumes.len(),
        2,
        "the volume without placement.host moves with its app"
    );
    assert!(
        m.volumes
            .iter()
            .all(|v| v.status.step == MigrationStep::Copying && v.status.pass == 0)
    );
    assert_ne!(m.volumes[0].status.id, m.volumes[1].status.id);
    // Nothing asked: no move.
    let still = observed(
        vec![vol(
            "a",
            spec("/a", json!({"host": "node-1"})),
            Some("node-1"),
            true,
            None,
        )],
        running_on("node-1", 1),
    );
    assert_eq!(plan::intent(&still, None, now()), Intent::None);
    assert_eq!(plan::blocked(&still), None);
}

#[test]
fn a_move_waits_for_what_it_needs_and_says_why() {
    let cases = [
        (
            vol(
                "a",
                spec("/a", json!({"host": "node-2"})),
                Some("node-1"),
                false,
                None,
            ),
            "identity",
        ),
        (
            vol(
                "a",
                json!({"app": APP, "containerPath": "/a", "hostPath": "/a", "readOnly": true, "placement": {"host": "node-2"}}),
                Some("node-1"),
                true,
                None,
            ),
            "read-only",
        ),
    ];
    for (v, why) in cases {
        let obs = observed(vec![v], running_on("node-1", 1));
        assert_eq!(plan::intent(&obs, None, now()), Intent::None);
        let msg = plan::blocked(&obs).expect("a reason");
        assert!(msg.contains(why), "{msg}");
    }
    let mut leaving = vol("b", spec("/b", json!({})), Some("node-1"), true, None);
    leaving.role = Role::Leaving;
    let obs = observed(
        vec![
            vol(
                "a",
                spec("/a", json!({"host": "node-2"})),
                Some("node-1"),
                true,
                None,
            ),
            leaving,
        ],
        running_on("node-1", 1),
    );
    assert!(plan::blocked(&obs).unwrap().contains("being deleted"));
}

#[test]
fn leaving_an_avoided_host_needs_a_choice_among_the_hosts_the_app_allows() {
    let obs = observed(
        vec![vol(
            "a",
            spec("/a", json!({"avoidHosts": ["node-1"]})),
            Some("node-1"),
            true,
            None,
        )],
        running_on("node-1", 1),
    );
    assert_eq!(
        plan::intent(&obs, None, now()),
        Intent::Choose {
            from: "node-1".into()
        }
    );
    let candidate = |host: &str, free: u64, rack: &str| Candidate {
        host: host.into(),
        free_bytes: free,
        total_bytes: 0,
        promised_bytes: 0,
        room_bytes: free,
        attributes: [("rack".to_owned(), rack.to_owned())].into(),
    };
    let mut obs_racked = obs.clone();
    let mut a = running_on("node-1", 1);
    a.constraints = serde_json::from_value(json!([
        ["hostname", "CLUSTER", "node-1"],
        ["rack", "CLUSTER", "r1"]
    ]))
    .unwrap();
    obs_racked.app = AppRead::Found(Arc::new(a));
    let hosts = [
        candidate("node-1", 900, "r1"),
        candidate("node-2", 500, "r1"),
        candidate("node-3", 800, "r2"),
    ];
    // node-3 has more room but the app's rack constraint rules it out; node-1 is avoided.
    assert_eq!(
        plan::choose_target(&obs_racked, "node-1", 100, &hosts).as_deref(),
        Ok("node-2")
    );
    assert!(plan::choose_target(&obs_racked, "node-1", 600, &hosts).is_err());
    let Intent::Start(m) = plan::intent(&obs, Some("node-2"), now()) else {
        panic!()
    };
    assert_eq!(m.to, "node-2");
}

#[test]
fn the_target_must_answer_allow_the_app_and_have_room() {
    let a = running_on("node-1", 1);
    let c = |host: &str, free: u64| Candidate {
        host: host.into(),
        free_bytes: free,
        total_bytes: 0,
        promised_bytes: 0,
        room_bytes: free,
        attributes: Default::default(),
    };
    assert!(
        plan::check_target(&a, "node-2", 10, &[c("node-1", 99)])
            .unwrap_err()
            .contains("does not answer")
    );
    assert!(
        plan::check_target(&a, "node-2", 10, &[c("node-2", 5)])
            .unwrap_err()
            .contains("free")
    );
    assert_eq!(plan::check_target(&a, "node-2", 10, &[c("node-2", 50)]), Ok(()));
    let mut unlike = a.clone();
    unlike.constraints = serde_json::from_value(json!([["hostname", "UNLIKE", "node-2"]])).unwrap();
    assert!(
        plan::check_target(&unlike, "node-2", 10, &[c("node-2", 50)])
            .unwrap_err()
            .contains("constraints")
    );
}

#[test]
fn live_copies_are_started_watched_and_restarted_then_the_app_is_stopped() {
    let obs = observed(
        vec![
            vol(
                "a",
                spec("/a", json!({"host": "node-2"})),
                Some("node-1"),
                true,
                Some(moving(MigrationStep::Copying, 1)),
            ),
            vol(
                "bb",
                spec("/b", json!({})),
                Some("node-1"),
                true,
                Some(moving(MigrationStep::Copying, 1)),
            ),
        ],
        running_on("node-1", 3),
    );
    let m = under_way(&obs);
    let limit = Duration::from_secs(300);
    let ok = || transfer(1, TransferState::Succeeded, 10, 10);
    let running = || transfer(1, TransferState::Running, 3, 10);
    assert_eq!(
        plan::next(&obs, &m, &[ok(), running()], now(), limit),
        Next::Progress
    );
    assert_eq!(
        plan::next(&obs, &m, &[ok(), Seen::Unknown], now(), limit),
        Next::Send(vec![1])
    );
    assert_eq!(
        plan::next(
            &obs,
            &m,
            &[transfer(1, TransferState::Failed, 3, 10), ok()],
            now(),
            limit
        ),
        Next::Send(vec![0])
    );
    let away = Seen::Failed(Failure::new(
        Kind::Unreachable,
        "the agent of node-1 did not answer",
    ));
    assert_eq!(
        plan::next(&obs, &m, &[ok(), away], now(), limit),
        Next::Progress,
        "an unreachable source is waited for"
    );
    assert_eq!(
        plan::next(&obs, &m, &[ok(), ok()], now(), limit),
        Next::Stop { instances: 3 }
    );
}

#[test]
fn the_app_is_stopped_before_the_final_copy_and_a_live_pass_never_counts_as_final() {
    let limit = Duration::from_secs(300);
    let stopping = |a: App| {
        observed(
            vec![vol(
                "a",
                spec("/a", json!({"host": "node-2"})),
                Some("node-1"),
                true,
                Some(moving(MigrationStep::Stopping, 1)),
            )],
            a,
        )
    };
    let obs = stopping(running_on("node-1", 2));
    assert_eq!(
        plan::next(&obs, &under_way(&obs), &[], now(), limit),
        Next::Stop { instances: 2 }
    );
    let obs = stopping(running_on("node-1", 0));
    assert_eq!(
        plan::next(&obs, &under_way(&obs), &[], now(), limit),
        Next::WaitStopped,
        "its task still runs"
    );
    let obs = stopping(app(
        json!({"id": APP, "instances": 0, "tasks": [], "deployments": []}),
    ));
    assert_eq!(
        plan::next(&obs, &under_way(&obs), &[], now(), limit),
        Next::FinalCopy
    );

    // A crash came between two volumes' records: one is still at Stopping with its live pass.
    let stopped = app(json!({"id": APP, "instances": 0, "tasks": [], "deployments": []}));
    let obs = observed(
        vec![
            vol(
                "a",
                spec("/a", json!({"host": "node-2"})),
                Some("node-1"),
                true,
                Some(moving(MigrationStep::FinalCopy, 2)),
            ),
            vol(
                "bb",
                spec("/b", json!({})),
                Some("node-1"),
                true,
                Some(moving(MigrationStep::Stopping, 1)),
            ),
        ],
        stopped,
    );
    let m = under_way(&obs);
    assert_eq!(m.step, MigrationStep::FinalCopy);
    assert!(!m.volumes[0].behind && m.volumes[1].behind);
    let seen = [
        transfer(2, TransferState::Succeeded, 1, 1),
        transfer(1, TransferState::Succeeded, 9, 9),
    ];
    assert_eq!(plan::next(&obs, &m, &seen, now(), limit), Next::Send(vec![1]));
}

#[test]
fn final_copies_done_are_committed_and_a_switched_app_is_reclaimed_once_it_runs_there() {
    let limit = Duration::from_secs(300);
    let stopped = app(json!({"id": APP, "instances": 0, "tasks": [], "deployments": []}));
    let obs = observed(
        vec![vol(
            "a",
            spec("/a", json!({"host": "node-2"})),
            Some("node-1"),
            true,
            Some(moving(MigrationStep::FinalCopy, 2)),
        )],
        stopped.clone(),
    );
    let m = under_way(&obs);
    let seen = [transfer(2, TransferState::Succeeded, 1, 1)];
    assert_eq!(plan::next(&obs, &m, &seen, now(), limit), Next::Commit);
    assert_eq!(plan::digest(&m.volumes[0], seen.first()), Some("digest-2"));

    let switching = |a: App| {
        observed(
            vec![vol(
                "a",
                spec("/a", json!({"host": "node-2"})),
                Some("node-2"),
                true,
                Some(moving(MigrationStep::Switching, 2)),
            )],
            a,
        )
    };
    let obs = switching(stopped);
    assert_eq!(
        plan::next(&obs, &under_way(&obs), &[], now(), limit),
        Next::Switch
    );
    let mut starting = running_on("node-2", 2);
    starting.tasks = Some(Vec::new());
    let obs = switching(starting);
    assert_eq!(
        plan::next(&obs, &under_way(&obs), &[], now(), limit),
        Next::WaitRunning
    );
    let obs = switching(running_on("node-2", 2));
    assert_eq!(
        plan::next(&obs, &under_way(&obs), &[], now(), limit),
        Next::Reclaim
    );
}

#[test]
fn a_move_is_abandoned_before_the_switch_only() {
    let limit = Duration::from_secs(300);
    let stopped = app(json!({"id": APP, "instances": 0, "tasks": [], "deployments": []}));
    // The spec now asks for another host.
    let obs = observed(
        vec![vol(
            "a",
            spec("/a", json!({"host": "node-3"})),
            Some("node-1"),
            true,
            Some(moving(MigrationStep::Copying, 1)),
        )],
        running_on("node-1", 1),
    );
    let Next::Abandon(why) = plan::next(&obs, &under_way(&obs), &[Seen::Unknown], now(), limit) else {
        panic!()
    };
    assert!(why.contains("node-3"), "{why}");
    // Back to the old host.
    let obs = observed(
        vec![vol(
            "a",
            spec("/a", json!({"host": "node-1"})),
            Some("node-1"),
            true,
            Some(moving(MigrationStep::Copying, 1)),
        )],
        running_on("node-1", 1),
    );
    assert!(matches!(
        plan::next(&obs, &under_way(&obs), &[Seen::Unknown], now(), limit),
        Next::Abandon(_)
    ));
    // Stopped for longer than the limit.
    let obs = observed(
        vec![vol(
            "a",
            spec("/a", json!({"host": "node-2"})),
            Some("node-1"),
            true,
            Some(moving(MigrationStep::FinalCopy, 2)),
        )],
        stopped.clone(),
    );
    let later = now() + k8s_openapi::jiff::SignedDuration::from_secs(301);
    let Next::Abandon(why) = plan::next(&obs, &under_way(&obs), &[Seen::Unknown], later, limit) else {
        panic!()
    };
    assert!(why.contains("stopped for longer than 5m"), "{why}");
    // Once the copy is in place and recorded, the move finishes whatever the spec says.
    let obs = observed(
        vec![vol(
            "a",
            spec("/a", json!({"host": "node-1"})),
            Some("node-2"),
            true,
            Some(moving(MigrationStep::Switching, 2)),
        )],
        stopped,
    );
    assert_eq!(
        plan::next(&obs, &under_way(&obs), &[], later, limit),
        Next::Switch
    );
}

#[test]
fn progress_is_written_in_tenths() {
    let s = moving(MigrationStep::Copying, 1);
    let first = plan::with_progress(&s, Some(&transfer(1, TransferState::Running, 100, 1000)));
    assert_eq!(first.bytes_done, Some(100));
    assert!(
        first
            .progress
            .as_deref()
            .unwrap()
            .starts_with("Copying 100 of 1000"),
        "{:?}",
        first.progress
    );
    let same_tenth = plan::with_progress(&first, Some(&transfer(1, TransferState::Running, 150, 1000)));
    assert_eq!(same_tenth, first, "no new status within the same tenth");
    let next_tenth = plan::with_progress(&first, Some(&transfer(1, TransferState::Running, 200, 1000)));
    assert_eq!(next_tenth.bytes_done, Some(200));
    let done = plan::with_progress(
        &next_tenth,
        Some(&transfer(1, TransferState::Succeeded, 1000, 1000)),
    );
    assert_eq!((done.bytes_done, done.files_done), (Some(1000), Some(10)));
}

#[test]
fn transfer_ids_are_new_for_every_move_and_valid_on_the_agents() {
    let uid = "0b0e7c3e-59a1-4b7e-9a51-2f0d8c7e1a01";
    let a = plan::transfer_id(uid, now());
    let b = plan::transfer_id(uid, now() + k8s_openapi::jiff::SignedDuration::from_millis(1));
    assert_ne!(a, b);
    assert!(crate::agent::transfer::ticket::valid_id(&a), "{a}");
}

#[test]
fn a_volume_whose_first_record_a_crash_prevented_joins_the_move() {
    let obs = observed(
        vec![
            vol(
                "a",
                spec("/a", json!({"host": "node-2"})),
                Some("node-1"),
                true,
                Some(moving(MigrationStep::Copying, 1)),
            ),
            vol("bb", spec("/b", json!({})), Some("node-1"), true, None),
        ],
        running_on("node-1", 1),
    );
    let m = under_way(&obs);
    assert_eq!(m.volumes.len(), 2, "the whole app moves");
    assert_eq!(
        (m.volumes[1].status.pass, m.volumes[1].status.to.as_str()),
        (0, "node-2")
    );
    let seen = [transfer(1, TransferState::Succeeded, 1, 1), Seen::Unknown];
    assert_eq!(
        plan::next(&obs, &m, &seen, now(), Duration::from_secs(300)),
        Next::Send(vec![1])
    );
}
