use serde_json::{Value, json};

use super::*;

/// Volume toto/db at generation 3 with this status.
fn volume(status: Value) -> StatefulLocalVolume {
    serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "StatefulLocalVolume",
        "metadata": {"name": "db", "namespace": "toto", "generation": 3},
        "spec": {"app": "/toto/db", "containerPath": "/data", "hostPath": "/db"},
        "status": status,
    }))
    .unwrap()
}

fn condition(type_: &str, status: &str, reason: &str, message: &str, generation: i64) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "observedGeneration": generation, "lastTransitionTime": "2026-01-01T00:00:00Z"})
}

fn ready_on(host: &str, generation: i64) -> StatefulLocalVolume {
    volume(json!({
        "phase": "Bound", "host": host, "observedGeneration": generation,
        "conditions": [condition("Ready", "True", "Bound", "mounted", generation)],
    }))
}

fn copying() -> Value {
    json!({"from": "node-1", "to": "node-2", "id": "m1", "step": "Copying", "pass": 1,
           "bytesDone": 432013312_i64, "bytesTotal": 1073741824_i64, "filesDone": 1200, "filesTotal": 3000})
}

#[test]
fn a_volume_is_done_when_ready_on_the_target_without_a_move() {
    assert_eq!(
        volume_state(&ready_on("node-2", 3), Target::On("node-2")),
        VolumeState::Done
    );
    assert_eq!(
        volume_state(&ready_on("node-1", 3), Target::On("node-2")),
        VolumeState::Waiting
    );
    assert_eq!(
        volume_state(&ready_on("node-2", 3), Target::AwayFrom("node-1")),
        VolumeState::Done
    );
    assert_eq!(
        volume_state(&ready_on("node-1", 3), Target::AwayFrom("node-1")),
        VolumeState::Waiting
    );
    // Still moving.
    let mut v = ready_on("node-2", 3);
    v.status.as_mut().unwrap().migration = serde_json::from_value(copying()).unwrap();
    assert_eq!(volume_state(&v, Target::On("node-2")), VolumeState::Waiting);
    // No status, or not ready.
    assert_eq!(
        volume_state(&volume(Value::Null), Target::On("node-2")),
        VolumeState::Waiting
    );
    let v = volume(json!({"host": "node-2", "conditions": [condition("Ready", "False", "Placing", "", 3)]}));
    assert_eq!(volume_state(&v, Target::On("node-2")), VolumeState::Waiting);
}

#[test]
fn a_status_written_for_an_older_spec_decides_nothing() {
    // Ready on the target, but for generation 2: the patch (generation 3) is not seen yet.
    assert_eq!(
        volume_state(&ready_on("node-2", 2), Target::On("node-2")),
        VolumeState::Waiting
    );
    // A Stalled condition of the spec before the patch does not end the wait.
    let v = volume(json!({
        "host": "node-1", "observedGeneration": 3,
        "conditions": [condition("Ready", "False", "NoRoom", "no room", 3),
                       condition("Stalled", "True", "NoRoom", "no room", 2)],
    }));
    assert_eq!(volume_state(&v, Target::On("node-2")), VolumeState::Waiting);
}

#[test]
fn a_stalled_volume_ends_the_wait_with_its_message() {
    let stalled = volume(json!({
        "host": "node-1", "observedGeneration": 3, "migration": copying(),
        "conditions": [condition("Ready", "False", "MigrationFailed", "node-2 has no room", 3),
                       condition("Stalled", "True", "MigrationFailed", "node-2 has no room", 3)],
    }));
    assert_eq!(
        volume_state(&stalled, Target::On("node-2")),
        VolumeState::Stalled("node-2 has no room".into())
    );
    let done = ready_on("node-2", 3);
    assert_eq!(
        wait_state([&done, &stalled], Target::On("node-2")),
        WaitState::Stalled(vec![("toto/db".into(), "node-2 has no room".into())])
    );
    assert_eq!(wait_state([&done, &done], Target::On("node-2")), WaitState::Done);
    assert_eq!(
        wait_state([&done, &ready_on("node-1", 3)], Target::On("node-2")),
        WaitState::Waiting
    );
}

#[test]
fn the_progress_line_shows_step_progress_and_hosts() {
    let v = volume(json!({"host": "node-1", "migration": copying()}));
    assert_eq!(
        progress_line(&v),
        "toto/db  Copying  412Mi of 1.0Gi, 1200 of 3000 files  node-1 → node-2"
    );
    // The controller's own progress text wins; later passes and messages are shown.
    let mut m = copying();
    m["progress"] = json!("1.0Gi of 1.0Gi, 3000 of 3000 files");
    m["step"] = json!("FinalCopy");
    m["pass"] = json!(2);
    m["message"] = json!("waiting for node-2's agent");
    let v = volume(json!({"host": "node-1", "migration": m}));
    assert_eq!(
        progress_line(&v),
        "toto/db  FinalCopy  1.0Gi of 1.0Gi, 3000 of 3000 files  node-1 → node-2  pass 2  \
         waiting for node-2's agent"
    );
    assert_eq!(
        progress_line(&ready_on("node-2", 3)),
        "toto/db  Bound  ready  node-2"
    );
    assert_eq!(
        progress_line(&volume(Value::Null)),
        "toto/db  NoStatus  not ready  not bound"
    );
    let v = volume(json!({"phase": "Pending"}));
    assert_eq!(progress_line(&v), "toto/db  Pending  not ready  not bound");
}

#[test]
fn the_progress_line_says_what_a_move_waits_for() {
    let waiting = "cannot move to node-2 yet: the berth agent of node-2 does not answer; the data stays on node-1 meanwhile";
    let v = volume(json!({
        "phase": "Bound", "host": "node-1", "observedGeneration": 3,
        "conditions": [condition("Ready", "True", "Bound", "mounted", 3),
                       condition("Reconciling", "True", "MoveWaiting", waiting, 3)],
    }));
    assert_eq!(
        progress_line(&v),
        format!("toto/db  Bound  ready  node-1  {waiting}")
    );
    assert_eq!(volume_state(&v, Target::On("node-2")), VolumeState::Waiting);
    // One written for the spec before the edit says nothing about this move.
    let v = volume(json!({
        "phase": "Bound", "host": "node-1", "observedGeneration": 2,
        "conditions": [condition("Ready", "True", "Bound", "mounted", 2),
                       condition("Reconciling", "True", "MoveWaiting", waiting, 2)],
    }));
    assert_eq!(progress_line(&v), "toto/db  Bound  ready  node-1");
}

#[test]
fn a_line_is_shown_only_when_it_changes() {
    let mut lines = Lines::default();
    let v = ready_on("node-1", 3);
    assert!(lines.changed(&v).is_some());
    assert_eq!(lines.changed(&v), None);
    assert_eq!(
        lines.changed(&ready_on("node-2", 3)).unwrap(),
        "toto/db  Bound  ready  node-2"
    );
}

#[test]
fn bytes_and_durations_read_as_people_write_them() {
    assert_eq!(human_bytes(0), "0B");
    assert_eq!(human_bytes(1023), "1023B");
    assert_eq!(human_bytes(1536), "1.5Ki");
    assert_eq!(human_bytes(412 << 20), "412Mi");
    assert_eq!(human_bytes(1 << 30), "1.0Gi");
    assert_eq!(human_bytes(i64::MAX), "8.0Ei");
    assert_eq!(elapsed(Duration::from_millis(14_230)), "14.2s");
    assert_eq!(elapsed(Duration::from_secs(192)), "3m12s");
    assert_eq!(elapsed(Duration::from_secs(3900)), "1h05m");
    assert_eq!(count(1, "volume"), "1 volume");
    assert_eq!(count(7, "volume"), "7 volumes");
}
