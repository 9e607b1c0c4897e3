use super::*;

fn at(s: i64) -> Timestamp {
    Timestamp::from_second(s).unwrap()
}

fn synced() -> Check {
    Check::ok(Reason::Checked, "checked")
}

fn report(ready: Outcome) -> Report {
    Report {
        ready,
        synced: synced(),
        running: None,
        waiting: None,
    }
}

fn bound() -> Outcome {
    Outcome::new(Phase::Bound, Reason::Bound, "mounted at /data on node-1")
}

fn types(s: &StatefulLocalVolumeStatus) -> Vec<(&str, &str)> {
    s.conditions
        .iter()
        .map(|c| (c.type_.as_str(), c.status.as_str()))
        .collect()
}

#[test]
fn counts_phases_and_stalled_volumes() {
    let held = Outcome::new(
        Phase::Bound,
        Reason::InvalidSpec,
        "spec.hostPath cannot change ...",
    );
    let statuses = [
        status(&report(bound()), Some(1), Binding::default(), None, at(1)),
        status(&report(held), Some(2), Binding::default(), None, at(1)),
        status(
            &report(Outcome::new(
                Phase::Provisioning,
                Reason::HostUnavailable,
                "agent down",
            )),
            Some(1),
            Binding::default(),
            None,
            at(1),
        ),
    ];
    let counts = VolumeCounts::of(statuses.iter().map(Some).chain([None]));
    let n = |p: Phase| counts.in_phase(p);
    assert_eq!(
        (n(Phase::Bound), n(Phase::Provisioning), n(Phase::Failed)),
        (2, 1, 0)
    );
    assert_eq!(counts.by_phase[&("Bound", "InvalidSpec".to_owned())], 1);
    assert_eq!(
        counts.by_phase[&("Provisioning", "HostUnavailable".to_owned())],
        1
    );
    assert_eq!(
        counts.by_phase[&("Failed", String::new())],
        0,
        "every phase is there, at 0"
    );
    assert_eq!(counts.stalled, 1, "the held volume is Bound but needs a person");
}

#[test]
fn a_ready_volume_has_ready_synced_and_app_running() {
    let r = Report {
        ready: bound(),
        synced: synced(),
        running: Some(Check::ok(Reason::Running, "1 task runs on node-1")),
        waiting: None,
    };
    let s = status(
        &r,
        Some(3),
        Binding {
            host: Some("node-1".into()),
            ..Default::default()
        },
        None,
        at(100),
    );
    assert_eq!(
        types(&s),
        [("Ready", "True"), ("Synced", "True"), ("AppRunning", "True")]
    );
    assert_eq!(s.conditions[0].reason, "Bound");
    assert_eq!(s.observed_generation, Some(3));
    assert_eq!(s.conditions[0].observed_generation, Some(3));
    assert_eq!(s.host.as_deref(), Some("node-1"));
}

#[test]
fn waiting_is_reconciling_and_user_errors_are_stalled() {
    let waiting = Outcome::new(Phase::Provisioning, Reason::HostUnavailable, "agent down");
    let s = status(&report(waiting), Some(1), Binding::default(), None, at(100));
    assert_eq!(
        types(&s),
        [("Ready", "False"), ("Reconciling", "True"), ("Synced", "True")]
    );
    let invalid = Outcome::new(Phase::Failed, Reason::InvalidSpec, "spec.hostPath: ...");
    let s = status(&report(invalid), Some(1), Binding::default(), None, at(100));
    assert_eq!(
        types(&s),
        [("Ready", "False"), ("Stalled", "True"), ("Synced", "True")]
    );
    assert_eq!(s.conditions[1].reason, "InvalidSpec");
}

#[test]
fn a_ready_volume_whose_move_waits_is_ready_and_reconciling_with_the_reason() {
    let r = Report {
        waiting: Some(Check::failed(
            Reason::MoveWaiting,
            "cannot move to node-2 yet: the berth agent of node-2 does not answer",
        )),
        ..report(bound())
    };
    let s = status(&r, Some(2), Binding::default(), None, at(100));
    assert_eq!(
        types(&s),
        [("Ready", "True"), ("Reconciling", "True"), ("Synced", "True")]
    );
    assert_eq!(s.conditions[1].reason, "MoveWaiting");
    assert!(s.conditions[1].message.contains("does not answer"));
    // Once the move no longer waits, the condition goes.
    let s = status(&report(bound()), Some(2), Binding::default(), Some(&s), at(200));
    assert_eq!(types(&s), [("Ready", "True"), ("Synced", "True")]);
    // A volume that is not ready says what it waits for itself.
    let r = Report {
        waiting: Some(Check::failed(Reason::MoveWaiting, "x")),
        ..report(Outcome::new(
            Phase::Provisioning,
            Reason::HostUnavailable,
            "agent down",
        ))
    };
    let s = status(&r, Some(2), Binding::default(), None, at(100));
    assert_eq!(s.conditions[1].reason, "HostUnavailable");
}

#[test]
fn a_ready_volume_that_cannot_be_checked_stays_ready() {
    let r = Report {
        ready: bound(),
        synced: Check::failed(Reason::MarathonUnavailable, "Marathon is unreachable since 12:00"),
        running: None,
        waiting: None,
    };
    let s = status(&r, Some(1), Binding::default(), None, at(100));
    assert_eq!(types(&s), [("Ready", "True"), ("Synced", "False")]);
}

#[test]
fn same_outcome_twice_is_the_same_status() {
    let b = Binding {
        host: Some("n".into()),
        ..Default::default()
    };
    let first = status(&report(bound()), Some(1), b.clone(), None, at(100));
    let second = status(&report(bound()), Some(1), b, Some(&first), at(500));
    assert_eq!(first, second);
}

#[test]
fn transition_time_moves_only_when_status_flips() {
    let first = status(&report(bound()), Some(1), Binding::default(), None, at(100));
    let other_reason = Outcome::new(Phase::Bound, Reason::Bound, "different message");
    let same = status(
        &report(other_reason),
        Some(2),
        Binding::default(),
        Some(&first),
        at(200),
    );
    assert_eq!(same.conditions[0].last_transition_time, Time(at(100)));
    let down = Outcome::new(Phase::Bound, Reason::HostUnavailable, "agent down");
    let flipped = status(&report(down), Some(2), Binding::default(), Some(&same), at(300));
    assert_eq!(flipped.conditions[0].last_transition_time, Time(at(300)));
    assert_eq!(flipped.conditions[1].last_transition_time, Time(at(300)));
    let back = status(
        &report(bound()),
        Some(2),
        Binding::default(),
        Some(&flipped),
        at(400),
    );
    assert_eq!(back.conditions[0].last_transition_time, Time(at(400)));
}
