//! The status a reconcile writes: phase, host, and kstatus conditions (pure).
//!
//! `Ready` is always present; `Reconciling=True` while berth is still working towards the spec,
//! `Stalled=True` when it cannot go on without a change by the user (both are left out
//! otherwise). `lastTransitionTime` changes only when a condition's status flips, so writing the
//! same outcome twice produces an identical status, which server-side apply turns into a no-op.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

use crate::crd::{Phase, StatefulLocalVolumeStatus};

/// Why a volume is (not) ready. The names are the condition reasons users see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Provisioned, mounted, pinned, and the app's tasks run on the bound host.
    Bound,
    /// The spec breaks a rule; the message names the field.
    InvalidSpec,
    /// Volumes of one app ask for different hosts.
    ConflictingPlacement,
    /// No agent fits the volume's capacity and the app's constraints.
    NoSuitableHost,
    /// Placed on a host (recorded before anything is created); the agent is creating it.
    Provisioning,
    /// The agent of the bound host cannot be reached; nothing was changed.
    HostUnavailable,
    /// The agent refused the volume (e.g. the path exists with the other type).
    ProvisioningFailed,
    /// The Marathon app does not exist.
    AppNotFound,
    /// Marathon could not be reached or answered with a server error.
    MarathonUnavailable,
    /// Marathon refused berth's update (422), or the app cannot carry host volumes.
    AppUpdateRejected,
    /// The app is locked by a deployment berth did not start; berth waits.
    AppLocked,
    /// A Marathon deployment for the app is running.
    Deploying,
    /// The app's tasks run on another host than the data.
    TasksElsewhere,
    /// Docker could not mount the volume because its type differs from the image's path.
    MountTypeMismatch,
    /// The task failed with a permission error on the volume.
    PermissionDenied,
    /// Marathon cannot place the app: no offer matches its constraints.
    Unschedulable,
    /// The volume is being removed from its app.
    Deleting,
}

impl std::fmt::Display for Reason {
    /// The variant name is the CamelCase reason Kubernetes conventions ask for.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// What a reconcile concluded about one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub phase: Phase,
    pub reason: Reason,
    pub message: String,
}

impl Outcome {
    pub fn new(phase: Phase, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            phase,
            reason,
            message: message.into(),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.reason == Reason::Bound
    }

    /// Needs a change by the user (kstatus `Stalled`), as opposed to waiting for something.
    pub fn is_stalled(&self) -> bool {
        matches!(
            self.reason,
            Reason::InvalidSpec
                | Reason::ConflictingPlacement
                | Reason::ProvisioningFailed
                | Reason::AppUpdateRejected
                | Reason::MountTypeMismatch
                | Reason::PermissionDenied
        )
    }
}

/// The status to write for `outcome`, keeping transition times from `previous`.
pub fn status(
    outcome: &Outcome,
    generation: Option<i64>,
    host: Option<String>,
    host_path: Option<String>,
    previous: Option<&StatefulLocalVolumeStatus>,
    now: Timestamp,
) -> StatefulLocalVolumeStatus {
    let before = previous.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let make = |type_: &str, status: bool, reason: Reason, message: &str| {
        let status = if status { "True" } else { "False" };
        let since = before
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_string(),
            message: message.to_owned(),
            observed_generation: generation,
            last_transition_time: since,
        }
    };
    let mut conditions = vec![make(
        "Ready",
        outcome.is_ready(),
        outcome.reason,
        &outcome.message,
    )];
    if outcome.is_stalled() {
        conditions.push(make("Stalled", true, outcome.reason, &outcome.message));
    } else if !outcome.is_ready() {
        conditions.push(make("Reconciling", true, outcome.reason, &outcome.message));
    }
    StatefulLocalVolumeStatus {
        phase: Some(outcome.phase),
        host,
        host_path,
        observed_generation: generation,
        conditions,
    }
}

/// How many volumes are in each phase, and how many need a person (`Stalled=True`), for the
/// metrics. A held volume keeps its phase (its data is still mounted) but is stalled, so an
/// alert on the phase alone would miss it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct VolumeCounts {
    /// Every phase, zero included, so a gauge goes back to 0.
    pub by_phase: Vec<(Phase, usize)>,
    pub stalled: usize,
}

impl VolumeCounts {
    pub fn of<'a>(statuses: impl Iterator<Item = Option<&'a StatefulLocalVolumeStatus>>) -> Self {
        use Phase::*;
        let mut by_phase: Vec<(Phase, usize)> = [Pending, Provisioning, Bound, Migrating, Released, Failed]
            .into_iter()
            .map(|p| (p, 0))
            .collect();
        let mut stalled = 0;
        for s in statuses.flatten() {
            if let Some(entry) = by_phase.iter_mut().find(|(p, _)| Some(*p) == s.phase) {
                entry.1 += 1;
            }
            if s.conditions
                .iter()
                .any(|c| c.type_ == "Stalled" && c.status == "True")
            {
                stalled += 1;
            }
        }
        Self { by_phase, stalled }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_phases_and_stalled_volumes() {
        let held = Outcome::new(
            Phase::Bound,
            Reason::InvalidSpec,
            "spec.hostPath cannot change ...",
        );
        let statuses = [
            status(&bound(), Some(1), None, None, None, at(1)),
            status(&held, Some(2), None, None, None, at(1)),
            status(
                &Outcome::new(Phase::Provisioning, Reason::HostUnavailable, "agent down"),
                Some(1),
                None,
                None,
                None,
                at(1),
            ),
        ];
        let counts = VolumeCounts::of(statuses.iter().map(Some).chain([None]));
        let n = |p: Phase| counts.by_phase.iter().find(|(q, _)| *q == p).unwrap().1;
        assert_eq!(
            (n(Phase::Bound), n(Phase::Provisioning), n(Phase::Failed)),
            (2, 1, 0)
        );
        assert_eq!(counts.by_phase.len(), 6);
        assert_eq!(counts.stalled, 1, "the held volume is Bound but needs a person");
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
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
    fn ready_volume_has_only_ready_true() {
        let s = status(&bound(), Some(3), Some("node-1".into()), None, None, at(100));
        assert_eq!(types(&s), [("Ready", "True")]);
        assert_eq!(s.conditions[0].reason, "Bound");
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.conditions[0].observed_generation, Some(3));
    }

    #[test]
    fn waiting_is_reconciling_and_user_errors_are_stalled() {
        let waiting = Outcome::new(Phase::Provisioning, Reason::HostUnavailable, "agent down");
        let s = status(&waiting, Some(1), None, None, None, at(100));
        assert_eq!(types(&s), [("Ready", "False"), ("Reconciling", "True")]);
        let invalid = Outcome::new(Phase::Failed, Reason::InvalidSpec, "spec.hostPath: ...");
        let s = status(&invalid, Some(1), None, None, None, at(100));
        assert_eq!(types(&s), [("Ready", "False"), ("Stalled", "True")]);
        assert_eq!(s.conditions[1].reason, "InvalidSpec");
    }

    #[test]
    fn same_outcome_twice_is_the_same_status() {
        let first = status(&bound(), Some(1), Some("n".into()), None, None, at(100));
        let second = status(&bound(), Some(1), Some("n".into()), None, Some(&first), at(500));
        assert_eq!(first, second);
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let first = status(&bound(), Some(1), None, None, None, at(100));
        let other_reason = Outcome::new(Phase::Bound, Reason::Bound, "different message");
        let same = status(&other_reason, Some(2), None, None, Some(&first), at(200));
        assert_eq!(same.conditions[0].last_transition_time, Time(at(100)));
        let down = Outcome::new(Phase::Bound, Reason::HostUnavailable, "agent down");
        let flipped = status(&down, Some(2), None, None, Some(&same), at(300));
        assert_eq!(flipped.conditions[0].last_transition_time, Time(at(300)));
        assert_eq!(flipped.conditions[1].last_transition_time, Time(at(300)));
        let back = status(&bound(), Some(2), None, None, Some(&flipped), at(400));
        assert_eq!(back.conditions[0].last_transition_time, Time(at(400)));
    }
}
