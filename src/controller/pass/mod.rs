//! One pass over one Marathon app: observe → plan → act.
//!
//! The Marathon app is berth's unit of work: its tasks run on one host, every change to it is
//! one write and one restart. A pass therefore takes an app and all of its volumes together:
//!
//! 1. [`observe`] gathers the app (from the app cache, or one `GET`), its volumes as berth
//!    knows them (admitted, held, refused, leaving), and — only for a fresh placement — the
//!    agents' free space;
//! 2. [`plan::provision`] (pure) decides the app's host, the finalizers and placement records
//!    to write, and the volumes to create;
//! 3. [`act::provision`] writes the finalizers and placement records first, then asks the host's
//!    agent to create or converge every volume, concurrently;
//! 4. [`plan::app_action`] (pure) decides the one write to the app, if any: an update, or a
//!    restart that brings tasks back to their data, never both;
//! 5. [`act::app`] makes it (reading the app once more first if the decision rested on the
//!    cache);
//! 6. [`plan::report`] (pure) decides every volume's status and events, the data to release or
//!    delete, and when to look again; [`act::report`] writes them.
//!
//! Nothing is written after a refusal: a placement record that could not be written stops the
//! volume's creation, a volume the agent refused holds the app's update back, and no update is
//! sent while a deployment runs.

pub mod act;
pub mod observe;
pub mod plan;

#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Duration};

use tracing::{Instrument, debug, info_span};

use super::{admission::Bound, context::Context, failure::Failure, placement::Candidate, usage::Learnt};
use crate::{
    crd::{StatefulLocalVolume, validate::VolumeRequest},
    marathon::App,
    tenant::TenantId,
};

/// The app as Marathon showed it.
#[derive(Debug, Clone)]
pub enum AppRead {
    Found(Arc<App>),
    /// Marathon has no such app.
    Missing,
    /// Marathon could not be read.
    Failed(Failure),
}

/// berth's sealed record of a volume's binding (see `seal.rs`): what berth itself wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub app: String,
    pub tenant: TenantId,
    pub host: String,
    /// Where the data is, once the agent reported it.
    pub host_path: Option<String>,
    /// The same path relative to the tenant's root (what the agent is asked about).
    pub rel_path: Option<String>,
    /// A move of the data to another host, under way.
    pub migration: Option<crate::crd::MigrationStatus>,
    /// Data berth left on hosts it lost (`hostLoss: Reprovision`).
    pub orphaned: Vec<crate::crd::OrphanedData>,
}

impl Recorded {
    /// The binding as admission weighs it.
    pub fn bound(&self) -> Bound<'_> {
        Bound {
            app: &self.app,
            tenant: &self.tenant,
            host_path: self.host_path.as_deref(),
        }
    }
}

/// What a volume is to this pass.
#[derive(Debug, Clone)]
pub enum Role {
    /// Admitted: berth makes it real on the app's host and mounts it.
    Active(Box<VolumeRequest>),
    /// Its spec is refused, but berth bound its data to this app before: its mount and the
    /// app's pin stay exactly as they are, and nothing else of it changes.
    Held(String),
    /// Its spec is refused and berth never bound it here: it takes no part in the pass.
    Refused(String),
    /// Deleted by its owner: it leaves the app, then its data goes per reclaimPolicy.
    Leaving,
}

/// One volume as the pass sees it.
#[derive(Debug, Clone)]
pub struct Vol {
    /// The volume, with the status berth last wrote when that is newer than the watch's copy.
    pub obj: Arc<StatefulLocalVolume>,
    /// `namespace/name`, for messages and logs.
    pub name: String,
    pub role: Role,
    /// berth's record of the volume, when it carries berth's seal.
    pub record: Option<Recorded>,
    /// Whether berth's finalizer is on it.
    pub finalized: bool,
    /// Whether its host's agent confirmed its data, at this generation, within the last resync
    /// periods (so this pass need not ask again).
    pub verified: bool,
    /// What its host's agent told berth of its capacity and usage since the status was written.
    pub learnt: Learnt,
}

impl Vol {
    pub fn request(&self) -> Option<&VolumeRequest> {
        match &self.role {
            Role::Active(r) => Some(r),
            _ => None,
        }
    }

    /// Whether berth reported the volume Ready before this pass.
    pub fn was_ready(&self) -> bool {
        self.obj.status.as_ref().is_some_and(|s| s.is_ready())
    }

    /// The reason of the Ready condition berth last wrote.
    pub fn ready_reason(&self) -> Option<&str> {
        self.obj.status.as_ref()?.ready().map(|c| c.reason.as_str())
    }
}

/// Everything a pass knows before it decides.
#[derive(Debug, Clone)]
pub struct Observed {
    pub app_id: String,
    pub app: AppRead,
    /// The app came from the cache: it is read again before berth writes to it.
    pub app_cached: bool,
    pub volumes: Vec<Vol>,
    /// The agents' free space and attributes, read only for a fresh placement.
    pub candidates: Vec<Candidate>,
    /// Whether Marathon's launch queue shows the app declined for its constraints; read only
    /// while a deployment runs or tasks are missing.
    pub launch_blocked: Option<bool>,
    /// The agent app (never managed by berth).
    pub agent_app: Option<String>,
    /// How long Marathon has been unreachable, when it is.
    pub marathon_down_for: Option<Duration>,
    /// Why the app's data cannot move where its volumes ask, when it cannot until the user
    /// changes something (reported as a conflict).
    pub move_blocked: Option<String>,
    /// The app's data waits to move (its target does not answer, has no room, or the last move
    /// was abandoned a moment ago), and why: it stays bound where it is meanwhile, and the
    /// volumes say why (`Reconciling`, reason `MoveWaiting`).
    pub move_waiting: Option<String>,
}

/// Runs one pass over `app_id`; returns when to look at the app again.
pub async fn run(ctx: &Context, app_id: &str) -> Duration {
    let span = info_span!("pass", app = %app_id);
    async move {
        let _timer = ctx.metrics.pass();
        let mut obs = observe::observe(ctx, app_id).await;
        if let Some(requeue) = crate::controller::migration::run(ctx, &mut obs).await {
            return requeue;
        }
        if let Some(requeue) = crate::controller::host_loss::run(ctx, &obs).await {
            return requeue;
        }
        let provision = plan::provision(&obs);
        let provisioned = act::provision(ctx, &obs, &provision).await;
        let mut action = plan::app_action(&obs, &provision, &provisioned);
        if action.writes() && obs.app_cached {
            // Marathon replaces `container` and `constraints` whole: decide on a fresh read.
            observe::reread_app(ctx, &mut obs).await;
            action = plan::app_action(&obs, &provision, &provisioned);
        }
        let result = act::app(ctx, &obs, &action).await;
        let report = plan::report(
            &obs,
            &provision,
            &provisioned,
            &action,
            result.as_ref(),
            &ctx.settings,
        );
        let requeue = act::report(ctx, &obs, &report).await;
        debug!(?requeue, volumes = obs.volumes.len(), "pass done");
        requeue
    }
    .instrument(span)
    .await
}
