//! The decisions of a pass, as pure functions of what it observed (and of what the steps before
//! them did): [`provision`] → [`app_action`] → [`report`].

mod app;
mod provision;
mod report;

use std::{collections::HashMap, time::Duration};

pub use app::app_action;
pub use provision::{ensure_request, needs_candidates, provision};
pub(crate) use report::kept_binding;
pub use report::report;

use super::Observed;
use crate::{
    agent::api::{EnsureBody, EnsuredVolume, LimitState, VolumeState},
    controller::{
        conditions::{self, Outcome},
        failure::Failure,
        placement::PlacementReason,
        ports::VolumeEvent,
    },
    crd::VolumeUsage,
    marathon::{App, AppUpdate},
};

/// The app's host and what to write and create before the app is touched.
#[derive(Debug, Clone, Default)]
pub struct Provision {
    /// The app's one host, when one could be chosen.
    pub host: Option<String>,
    pub reason: Option<PlacementReason>,
    /// Why the app's active volumes cannot be provisioned now.
    pub stop: Option<Outcome>,
    /// Active volumes (indexes into [`Observed::volumes`]) to give berth's finalizer first.
    pub finalize: Vec<usize>,
    /// Active volumes whose placement on `host` is recorded before anything is created.
    pub record: Vec<usize>,
    /// Volumes to create or converge on `host`.
    pub ensure: Vec<(usize, EnsureBody)>,
    /// Bound volumes the host's agent confirmed lately, with where their data is: not asked
    /// again in this pass.
    pub verified: Vec<(usize, String)>,
}

/// What [`super::act::provision`] did.
#[derive(Debug, Clone, Default)]
pub struct Provisioned {
    /// The agent's answer for each volume it was asked about.
    pub ensured: HashMap<usize, Result<EnsuredVolume, Failure>>,
    /// Volumes whose finalizer or placement record could not be written: nothing was created
    /// for them.
    pub unrecorded: HashMap<usize, Failure>,
    /// How long the host's agent has not answered, when it does not.
    pub host_down_for: Option<Duration>,
}

impl Provisioned {
    /// The agent created or found the volume.
    pub fn ok(&self, i: usize) -> Option<&VolumeState> {
        self.ensured.get(&i)?.as_ref().ok().map(|e| &e.state)
    }

    /// How the agent holds the volume to its capacity, as it answered in this pass.
    pub fn limit(&self, i: usize) -> Option<&LimitState> {
        self.ensured.get(&i)?.as_ref().ok()?.limit.as_ref()
    }

    /// Why the volume is not provisioned, if it was to be.
    pub fn failure(&self, i: usize) -> Option<&Failure> {
        self.unrecorded
            .get(&i)
            .or_else(|| self.ensured.get(&i)?.as_ref().err())
    }
}

/// The one write to the app a pass makes, if any.
#[derive(Debug, Clone)]
pub enum AppAction {
    /// Nothing to write: the app matches, or cannot be looked at.
    Keep,
    /// berth's share of the app differs: one partial update.
    Update {
        update: Box<AppUpdate>,
        /// Which fields change, for events: `volumes`, `constraints`, ...
        fields: Vec<&'static str>,
    },
    /// The app matches, but its tasks run away from the data: a restart brings them back.
    Restart { elsewhere: Vec<String> },
    /// A change is due but waits (a deployment runs, another volume must be fixed first).
    Wait(Outcome),
    /// berth cannot put its volumes into the app as it is.
    Reject(Outcome),
}

impl AppAction {
    pub fn writes(&self) -> bool {
        matches!(self, AppAction::Update { .. } | AppAction::Restart { .. })
    }
}

/// When to pass the app again: at the next resync, unless something is under way (`after`) or
/// a call failed and must be retried with back-off (`backoff`); the sooner wins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requeue {
    pub after: Option<Duration>,
    pub backoff: bool,
}

impl Requeue {
    pub fn after(&mut self, d: Duration) {
        self.after = Some(self.after.map_or(d, |a| a.min(d)));
    }
}

/// Data to release once a leaving volume is out of its app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// Keep the data (marked as released, when it carries the volume's identity, so that no
    /// other volume takes it over unasked); remove berth's finalizer.
    Retain { marked: Option<DataRef> },
    /// Delete the data on its host, then remove the finalizer.
    Delete(DataRef),
}

/// A volume's data on its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRef {
    pub host: String,
    pub tenant: String,
    pub host_path: String,
    /// The identity the data carries: the agent deletes or releases only data with it.
    pub identity: Option<String>,
}

/// What a pass writes about one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeReport {
    /// Index into [`Observed::volumes`].
    pub index: usize,
    /// The status to write; `None` leaves it as it is.
    pub status: Option<(conditions::Report, conditions::Binding)>,
    /// The usage section to write (with the status, or alone); `None` keeps what it shows.
    pub usage: Option<VolumeUsage>,
    /// The data on the host carries the volume's identity (`status.dataMarked`).
    pub marked: bool,
    pub events: Vec<VolumeEvent>,
    pub release: Option<Release>,
}

/// Everything a pass writes after the app.
#[derive(Debug, Clone)]
pub struct Report {
    pub volumes: Vec<VolumeReport>,
    pub requeue: Requeue,
}

/// Tasks of the app that run the current version in state TASK_RUNNING.
pub(crate) fn running_tasks(app: &App) -> usize {
    app.tasks
        .iter()
        .flatten()
        .filter(|t| t.state.as_deref() == Some("TASK_RUNNING"))
        .count()
}

/// Whether the launch queue must be read to understand the app: a deployment runs, or tasks
/// are missing.
pub fn needs_launch_queue(app: &App) -> bool {
    let deploying = app.deployments.as_ref().is_some_and(|d| !d.is_empty());
    let wanted = usize::try_from(app.instances.unwrap_or(1)).unwrap_or(usize::MAX);
    deploying || wanted > running_tasks(app)
}

/// Observed state shared by the planning steps.
pub(crate) fn found_app(obs: &Observed) -> Option<&App> {
    match &obs.app {
        super::AppRead::Found(app) => Some(app),
        _ => None,
    }
}
