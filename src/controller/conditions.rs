//! The status a pass writes: phase, where the data is, and conditions (pure).
//!
//! - `Ready` says whether the volume's data exists on its host and the app mounts it there and is
//!   pinned to that host. It does not flicker with Marathon or an agent being briefly away: a
//!   controller that cannot check keeps the last known `Ready` and says so in `Synced`.
//! - `Reconciling=True` while berth works towards the spec, `Stalled=True` when it cannot go on
//!   without a change by the user (kstatus: InProgress and Failed; both absent otherwise). A
//!   ready volume whose move waits is `Reconciling` too: the spec is not met yet, and the
//!   condition says what the move waits for.
//! - `Synced` says whether berth could check the volume in its last pass (Marathon and the
//!   host's agent answered).
//! - `AppRunning` (once bound) says whether the app's tasks run on the volume's host.
//!
//! `lastTransitionTime` changes only when a condition's status flips, so writing the same
//! outcome twice produces an identical status, which is then not written at all.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

use crate::crd::{Phase, StatefulLocalVolumeStatus};

/// Why a volume is (not) ready, or a check did (not) pass. The names are the condition reasons
/// users see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Provisioned, mounted and pinned.
    Bound,
    /// The spec breaks a rule; the message names the field.
    InvalidSpec,
    /// Volumes of one app ask for different hosts.
    ConflictingPlacement,
    /// No agent fits the volume's capacity and the app's constraints.
    NoSuitableHost,
    /// Placed on a host (recorded before anything is created); being created and mounted.
    Provisioning,
    /// The agent of the volume's host cannot be reached; nothing was changed.
    HostUnavailable,
    /// The agent refused the volume (e.g. the path exists with the other type).
    ProvisioningFailed,
    /// The Marathon app does not exist.
    AppNotFound,
    /// berth never manages this app (its own agent app, or an app with host access).
    AppNotAllowed,
    /// Marathon could not be reached or answered with a server error.
    MarathonUnavailable,
    /// Marathon refused berth's update (422), or the app cannot carry host volumes.
    AppUpdateRejected,
    /// The app is locked by a deployment; berth waits.
    AppLocked,
    /// Another volume of the app must be fixed before the app is updated.
    WaitingForVolume,
    /// A Marathon deployment of the app is running.
    Deploying,
    /// The app's tasks run on another host than the data.
    TasksElsewhere,
    /// Docker could not mount the volume because its type differs from the image's path.
    MountTypeMismatch,
    /// The task failed with a permission error on the volume.
    PermissionDenied,
    /// Marathon cannot place the app: no offer matches its constraints.
    Unschedulable,
    /// The app's tasks run on the volume's host.
    Running,
    /// The app runs no task (scaled to 0, or its tasks are gone).
    NoTasks,
    /// berth's last pass could check the volume.
    Checked,
    /// The volume is being removed from its app, or its data deleted.
    Deleting,
    /// The agent refused to delete the data (e.g. a mount point inside it).
    DeleteFailed,
    /// The data berth created for the volume on its host is gone (absent, or empty and
    /// unmarked): a rebuilt host, a wiped disk.
    DataMissing,
    /// The data at the volume's path is not the volume's: another volume's, released by a
    /// deleted volume, or of unknown origin; berth does not bind to it.
    WrongData,
    /// The data is moving to another host and the app is stopped for the last copy.
    Migrating,
    /// The host was lost and the volume was given new, empty data elsewhere
    /// (`hostLoss: Reprovision`).
    Reprovisioned,
    /// The spec asks for another host, and the move waits for something berth cannot change
    /// (the target's agent, its room, the app's constraints); the data stays where it is.
    MoveWaiting,
}

impl Reason {
    /// Every reason, for parsing what berth wrote before.
    pub const ALL: [Reason; 28] = [
        Reason::Bound,
        Reason::InvalidSpec,
        Reason::ConflictingPlacement,
        Reason::NoSuitableHost,
        Reason::Provisioning,
        Reason::HostUnavailable,
        Reason::ProvisioningFailed,
        Reason::AppNotFound,
        Reason::AppNotAllowed,
        Reason::MarathonUnavailable,
        Reason::AppUpdateRejected,
        Reason::AppLocked,
        Reason::WaitingForVolume,
        Reason::Deploying,
        Reason::TasksElsewhere,
        Reason::MountTypeMismatch,
        Reason::PermissionDenied,
        Reason::Unschedulable,
        Reason::Running,
        Reason::NoTasks,
        Reason::Checked,
        Reason::Deleting,
        Reason::DeleteFailed,
        Reason::DataMissing,
        Reason::WrongData,
        Reason::Migrating,
        Reason::Reprovisioned,
        Reason::MoveWaiting,
    ];

    /// The reason named `s` (as written in a condition).
    pub fn parse(s: &str) -> Option<Reason> {
        Self::ALL.into_iter().find(|r| r.to_string() == s)
    }
}

impl std::fmt::Display for Reason {
    /// The variant name is the CamelCase reason Kubernetes conventions ask for.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// The `Ready` condition and the phase that goes with it.
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
                | Reason::AppNotAllowed
                | Reason::MountTypeMismatch
                | Reason::PermissionDenied
                | Reason::DeleteFailed
                | Reason::DataMissing
                | Reason::WrongData
        )
    }
}

/// A condition other than `Ready`: `Synced` or `AppRunning`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub ok: bool,
    pub reason: Reason,
    pub message: String,
}

impl Check {
    pub fn ok(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            ok: true,
            reason,
            message: message.into(),
        }
    }

    pub fn failed(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            reason,
            message: message.into(),
        }
    }
}

/// Everything the status says about a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub ready: Outcome,
    pub synced: Check,
    pub running: Option<Check>,
    /// What keeps a ready volume from what its spec asks (a move that waits): `Reconciling`.
    pub waiting: Option<Check>,
}

/// Where the data is and what berth bound it to, with berth's seal (see `seal.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binding {
    pub host: Option<String>,
    pub host_path: Option<String>,
    pub app: Option<String>,
    pub tenant: Option<String>,
    pub seal: Option<String>,
    /// The move under way, written (and sealed) with the binding; `None` ends it.
    pub migration: Option<crate::crd::MigrationStatus>,
    /// Data left on lost hosts; `None` keeps what berth sealed before.
    pub orphaned: Option<Vec<crate::crd::OrphanedData>>,
}

/// The status to write, keeping transition times from `previous`.
pub fn status(
    report: &Report,
    generation: Option<i64>,
    binding: Binding,
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
    let ready = &report.ready;
    let mut conditions = vec![make("Ready", ready.is_ready(), ready.reason, &ready.message)];
    if ready.is_stalled() {
        conditions.push(make("Stalled", true, ready.reason, &ready.message));
    } else if !ready.is_ready() {
        conditions.push(make("Reconciling", true, ready.reason, &ready.message));
    } else if let Some(w) = &report.waiting {
        conditions.push(make("Reconciling", true, w.reason, &w.message));
    }
    let s = &report.synced;
    conditions.push(make("Synced", s.ok, s.reason, &s.message));
    if let Some(r) = &report.running {
        conditions.push(make("AppRunning", r.ok, r.reason, &r.message));
    }
    StatefulLocalVolumeStatus {
        phase: Some(ready.phase),
        host: binding.host,
        host_path: binding.host_path,
        app: binding.app,
        tenant: binding.tenant,
        seal: binding.seal,
        observed_generation: generation,
        conditions,
        data_marked: None,
        usage: None,
        migration: binding.migration,
        orphaned: binding.orphaned.unwrap_or_default(),
    }
}

/// How many volumes are in each phase (and with which Ready reason), and how many need a person
/// (`Stalled=True`), for the metrics. A held volume keeps its phase (its data is still mounted)
/// but is stalled, so an alert on the phase alone would miss it; a volume waiting for its app to
/// be created is Pending for a reason berth cannot help, so alerts can leave it out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct VolumeCounts {
    /// (phase, Ready reason) → volumes. Every phase appears (with reason `""` at 0 when no
    /// volume has it), so a gauge goes back to 0.
    pub by_phase: std::collections::BTreeMap<(&'static str, String), usize>,
    pub stalled: usize,
}

impl VolumeCounts {
    pub fn of<'a>(statuses: impl Iterator<Item = Option<&'a StatefulLocalVolumeStatus>>) -> Self {
        use Phase::*;
        let mut by_phase = std::collections::BTreeMap::new();
        for p in [Pending, Provisioning, Bound, Migrating, Released, Failed] {
            by_phase.insert((p.as_str(), String::new()), 0);
        }
        let mut stalled = 0;
        for s in statuses.flatten() {
            if let Some(phase) = s.phase {
                let reason = s.ready().map(|c| c.reason.clone()).unwrap_or_default();
                *by_phase.entry((phase.as_str(), reason)).or_insert(0) += 1;
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

    /// Volumes in `phase`, whatever their reason.
    pub fn in_phase(&self, phase: Phase) -> usize {
        self.by_phase
            .iter()
            .filter(|((p, _), _)| *p == phase.as_str())
            .map(|(_, n)| n)
            .sum()
    }
}

#[cfg(test)]
mod tests;
