//! Making one Marathon app, and the host its data lives on, match all of the app's volumes.
//!
//! Every volume of an app is reconciled through the app: the pass places the app's volumes (on
//! one host, recorded in status before anything is created), has the host's agent create each
//! one, then computes the whole desired app and writes it in one update only when it differs.
//! A second volume of the same app, reconciled right after, finds everything in place and writes
//! nothing. The caller holds the app's lock.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use kube::ResourceExt;
use tracing::{info, warn};

use super::{
    admission,
    app_patch::{self, MountedVolume},
    conditions::{Outcome, Reason},
    context::Context,
    error::Error,
    metrics::{agent_code, marathon_code as code},
    placement::{self, Placement, PlacementInput},
    running, status,
};
use crate::{
    agent::{
        api::{ContainerOwner, EnsureVolumeRequest, Seed, VolumeType as WireType},
        client::AgentClientError,
    },
    crd::{
        Phase, StatefulLocalVolume, VolumeType,
        validate::{SeedSource, VolumeRequest},
    },
    marathon::{App, AppUpdate, MarathonError, app::VolumeMode},
    tenant::MarathonAppId,
};

/// A volume of the app that passed validation.
pub struct Member {
    pub obj: Arc<StatefulLocalVolume>,
    pub req: VolumeRequest,
}

/// What the pass concluded for one volume.
pub struct Report {
    pub obj: Arc<StatefulLocalVolume>,
    pub outcome: Outcome,
    pub host: Option<String>,
    pub host_path: Option<String>,
    /// Things that happened to this volume, for Kubernetes events: (reason, note).
    pub events: Vec<(&'static str, String)>,
}

/// What happened to the Marathon app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppState {
    /// The app does not exist.
    Missing,
    /// berth's fields already matched; nothing was written.
    Matches,
    /// One update was sent.
    Updated,
    /// The app still differs (locked, rejected, unreachable, or nothing could be placed).
    NotUpdated,
}

pub struct Sync {
    pub reports: Vec<Report>,
    pub app: AppState,
    /// When to look again.
    pub requeue: Duration,
}

/// A volume of the app whose spec was refused after it had been mounted (an edit the controller
/// cannot accept, or a changed tenant policy). Its mount and the app's pin stay exactly as they
/// are: restarting the app without its data would be worse than keeping the last good state.
/// Deleting the volume, or fixing its spec, is how it leaves.
pub struct Held {
    pub host: Option<String>,
    /// Where its data is (`status.hostPath`).
    pub host_path: String,
    pub allow_concurrent_writers: bool,
}

/// The volumes of one app, as a pass over the app sees them.
#[derive(Default)]
pub struct AppVolumes {
    pub members: Vec<Member>,
    pub held: Vec<Held>,
}

/// Volumes of `app` that are not being deleted, validated; `leaving` is left out.
pub fn members(
    ctx: &Context,
    app: &MarathonAppId,
    fresh_obj: Option<&Arc<StatefulLocalVolume>>,
    leaving: Option<&str>,
) -> AppVolumes {
    let mut objs = ctx.volumes.of_app(app.as_str());
    if let Some(obj) = fresh_obj {
        objs.retain(|v| v.uid() != obj.uid());
        objs.push(obj.clone());
    }
    objs.retain(|v| v.metadata.deletion_timestamp.is_none() && v.uid().as_deref() != leaving);
    objs.sort_by_key(|v| (v.namespace(), v.name_any()));
    let mut volumes = AppVolumes::default();
    for obj in objs {
        let obj = status::fresh(ctx, &obj);
        match admission::admit(ctx, &obj) {
            Ok(req) => volumes.members.push(Member { obj, req }),
            Err(_) => {
                let status = obj.status.clone().unwrap_or_default();
                if let Some(host_path) = status.host_path {
                    volumes.held.push(Held {
                        host: status.host,
                        host_path,
                        allow_concurrent_writers: obj.spec.allow_concurrent_writers,
                    });
                }
            }
        }
    }
    volumes
}

/// One pass over the app, given its volumes (those being deleted are simply absent).
pub async fn sync_app(ctx: &Context, app_id: &MarathonAppId, volumes: AppVolumes) -> Result<Sync, Error> {
    let AppVolumes { members, held } = volumes;
    let app = match ctx.marathon.get_app(app_id.as_str()).await {
        Ok(app) => {
            ctx.metrics.marathon("get_app", "200");
            app
        }
        Err(MarathonError::NotFound { .. }) => {
            ctx.metrics.marathon("get_app", "404");
            let msg = format!(
                "Marathon has no app {app_id}; create the app and berth will mount the volume into it"
            );
            return Ok(all(
                members,
                Phase::Pending,
                Reason::AppNotFound,
                &msg,
                AppState::Missing,
                Duration::from_secs(30),
            ));
        }
        Err(e) => {
            ctx.metrics.marathon("get_app", code(&e));
            let msg = format!("cannot read app {app_id} from Marathon: {e}");
            let wait = ctx.backoff(app_id.as_str());
            return Ok(all(
                members,
                Phase::Pending,
                Reason::MarathonUnavailable,
                &msg,
                AppState::NotUpdated,
                wait,
            ));
        }
    };

    // Placement: one host for the whole app, the held volumes' host included.
    let held_host = held.iter().find_map(|h| h.host.clone());
    let host = if members.is_empty() {
        held_host.clone()
    } else {
        match choose_host(ctx, &app, &members, held_host.as_deref()).await {
            Ok(host) => Some(host),
            Err(outcome) => {
                let wait = if outcome.is_stalled() {
                    ctx.resync
                } else {
                    Duration::from_secs(30)
                };
                let reports = members
                    .into_iter()
                    .map(|m| {
                        // Whatever was placed and created before stays as it is.
                        let known = m.obj.status.clone().unwrap_or_default();
                        report(m.obj.clone(), outcome.clone(), known.host, known.host_path)
                    })
                    .collect();
                return Ok(Sync {
                    reports,
                    app: AppState::NotUpdated,
                    requeue: wait,
                });
            }
        }
    };

    // The placement is recorded before anything is created, so that a crash from here on can
    // only ever resume on the same host.
    let mut newly_placed = BTreeSet::new();
    if let Some(host) = &host {
        for m in &members {
            if m.obj.status.as_ref().and_then(|s| s.host.as_deref()) != Some(host.as_str()) {
                newly_placed.extend(m.obj.uid());
                let placed = Outcome::new(
                    Phase::Provisioning,
                    Reason::Provisioning,
                    format!("placed on {host}; creating the volume"),
                );
                status::write(ctx, &m.obj, &placed, Some(host.clone()), None).await?;
            }
        }
    }

    // Provisioning on that host.
    let mut reports = Vec::new();
    let mut mounted = Vec::new();
    let mut host_trouble = false;
    if let Some(host) = &host {
        let agent = agent_for(ctx, host).await;
        for m in &members {
            let existing = existing_mount(&app, &m.req);
            let mut r = report(
                m.obj.clone(),
                Outcome::new(Phase::Provisioning, Reason::Deploying, ""),
                Some(host.clone()),
                None,
            );
            if m.obj.uid().is_some_and(|u| newly_placed.contains(&u)) {
                r.events.push(("Placed", format!("placed on {host}")));
            }
            let result = match &agent {
                Ok(client) => {
                    let res = client.ensure_volume(&ensure_request(&m.req)).await;
                    ctx.metrics.agent("ensure_volume", agent_code(&res));
                    res.map_err(|e| {
                        (
                            e.is_unreachable() || matches!(e, AgentClientError::AgentFailed { .. }),
                            e.to_string(),
                        )
                    })
                }
                Err(msg) => Err((true, msg.clone())),
            };
            match result {
                Ok(state) => {
                    if state.created {
                        r.events.push((
                            "Provisioned",
                            format!("created {} on {host}", state.absolute_path),
                        ));
                    } else if state.changed {
                        r.events.push((
                            "HostRepaired",
                            format!("restored owner or mode of {} on {host}", state.absolute_path),
                        ));
                    }
                    r.host_path = Some(state.absolute_path.clone());
                    mounted.push(mount(&m.req, state.absolute_path));
                }
                Err((unreachable, msg)) => {
                    // Whatever is mounted now stays: a host that cannot answer, or a refusal the
                    // user must fix, is no reason to touch the app or the data.
                    if let Some(existing) = &existing {
                        r.host_path = Some(existing.host_path.clone());
                        mounted.push(existing.clone());
                    }
                    r.outcome = if unreachable {
                        host_trouble = true;
                        Outcome::new(
                            Phase::Provisioning,
                            Reason::HostUnavailable,
                            format!(
                                "the agent of {host} cannot be reached ({msg}); the app stays pinned to {host} and no data is touched; berth retries"
                            ),
                        )
                    } else {
                        Outcome::new(
                            Phase::Failed,
                            Reason::ProvisioningFailed,
                            format!("the agent of {host} refused the volume: {msg}"),
                        )
                    };
                }
            }
            reports.push(r);
        }
    }

    // Held volumes stay mounted as the app has them, unless a valid volume now claims the place.
    let managed = app_patch::managed_paths(&app);
    for h in &held {
        let kept = app.host_volumes().find(|v| {
            v.host_path == h.host_path
                && managed.contains(&v.container_path)
                && mounted.iter().all(|m| m.container_path != v.container_path)
        });
        if let Some(v) = kept {
            mounted.push(MountedVolume {
                container_path: v.container_path.clone(),
                host_path: v.host_path.clone(),
                read_only: v.mode == VolumeMode::ReadOnly,
                allow_concurrent_writers: h.allow_concurrent_writers,
            });
        }
    }

    // The app.
    let pin = if mounted.is_empty() { None } else { host.as_deref() };
    let desired = match app_patch::desired_app(&app, &mounted, pin) {
        Ok(d) => d,
        Err(e) => {
            let o = Outcome::new(Phase::Failed, Reason::AppUpdateRejected, e.to_string());
            return Ok(finish(reports, Some(o), AppState::NotUpdated, ctx.resync));
        }
    };
    let mut app_state = AppState::Matches;
    let mut app_outcome = None;
    let mut requeue = ctx.resync;
    if let Some(update) = AppUpdate::between(&app, &desired) {
        app_state = AppState::NotUpdated;
        let running = app
            .deployments
            .iter()
            .flatten()
            .map(|d| d.id.as_str())
            .collect::<Vec<_>>();
        if !running.is_empty() {
            app_outcome = Some(Outcome::new(
                Phase::Provisioning,
                Reason::AppLocked,
                format!(
                    "app {app_id} is being deployed ({}); berth updates it when that deployment ends",
                    running.join(", ")
                ),
            ));
            requeue = Duration::from_secs(3);
        } else {
            match ctx.marathon.update_app(app_id.as_str(), &update, false).await {
                Ok(res) => {
                    ctx.metrics.marathon("update_app", "200");
                    ctx.metrics.marathon_writes.inc();
                    ctx.succeeded(app_id.as_str());
                    info!(app = %app_id, deployment = %res.deployment_id, fields = ?changed_fields(&update), "updated the Marathon app");
                    let note = format!(
                        "updated Marathon app {app_id} ({}), deployment {}",
                        changed_fields(&update).join(", "),
                        res.deployment_id
                    );
                    for r in &mut reports {
                        r.events.push(("AppUpdated", note.clone()));
                    }
                    app_state = AppState::Updated;
                    app_outcome = Some(Outcome::new(
                        Phase::Provisioning,
                        Reason::Deploying,
                        format!(
                            "deployment {} is restarting the app's tasks on {}",
                            res.deployment_id,
                            host.as_deref().unwrap_or("its hosts")
                        ),
                    ));
                    requeue = Duration::from_secs(2);
                }
                Err(e) => {
                    ctx.metrics.marathon("update_app", code(&e));
                    let (reason, phase) = match &e {
                        MarathonError::Locked { .. } => (Reason::AppLocked, Phase::Provisioning),
                        MarathonError::Validation { .. } => (Reason::AppUpdateRejected, Phase::Failed),
                        MarathonError::NotFound { .. } => (Reason::AppNotFound, Phase::Pending),
                        _ => (Reason::MarathonUnavailable, Phase::Provisioning),
                    };
                    warn!(app = %app_id, error = %e, "Marathon did not take the update");
                    app_outcome = Some(Outcome::new(phase, reason, format!("updating app {app_id}: {e}")));
                    requeue = if reason == Reason::AppUpdateRejected {
                        ctx.resync
                    } else {
                        ctx.backoff(app_id.as_str())
                    };
                }
            }
        }
    } else if let Some(host) = pin {
        let (outcome, wait) = running::running_state(ctx, &app, app_id, host, &mounted).await;
        app_outcome = outcome;
        requeue = wait;
    }
    if host_trouble {
        requeue = requeue.min(ctx.backoff(app_id.as_str()));
    } else if app_outcome.is_none() {
        ctx.succeeded(app_id.as_str());
    }
    Ok(finish(reports, app_outcome, app_state, requeue))
}

/// Chooses the app's host, or says why none can be chosen.
async fn choose_host(
    ctx: &Context,
    app: &App,
    members: &[Member],
    held_host: Option<&str>,
) -> Result<String, Outcome> {
    let recorded: BTreeSet<&str> = members
        .iter()
        .filter_map(|m| m.obj.status.as_ref()?.host.as_deref())
        .chain(held_host)
        .collect();
    let requested: BTreeSet<&str> = members.iter().filter_map(|m| m.req.host.as_deref()).collect();
    let task_hosts: Vec<&str> = app.tasks.iter().flatten().map(|t| t.host.as_str()).collect();
    let input = PlacementInput {
        recorded: None,
        requested: None,
        siblings_recorded: recorded.clone(),
        siblings_requested: requested.clone(),
        task_hosts: task_hosts.clone(),
        capacity_bytes: members.iter().filter_map(|m| m.req.capacity_bytes).sum(),
    };
    // Asking every agent for its free space is only needed for a fresh placement.
    let candidates = if recorded.is_empty() && requested.is_empty() && task_hosts.is_empty() {
        let agent_app_hosts = agent_app_hosts(ctx).await;
        ctx.agents.candidates(&agent_app_hosts).await
    } else {
        Vec::new()
    };
    let user_constraints: Vec<(String, String, Option<String>)> = app
        .constraints
        .iter()
        .flat_map(|c| c.iter())
        .map(|c| (c.field.clone(), c.operator.clone(), c.value.clone()))
        .collect();
    match placement::place(&input, &candidates, |c| {
        placement::constraints_allow(&user_constraints, c)
    }) {
        Placement::Host { host, .. } => Ok(host),
        Placement::Conflict(msg) => Err(Outcome::new(Phase::Failed, Reason::ConflictingPlacement, msg)),
        Placement::NoHost(msg) => Err(Outcome::new(Phase::Pending, Reason::NoSuitableHost, msg)),
    }
}

/// Hosts where the agent app runs, when agents are discovered through Marathon.
async fn agent_app_hosts(ctx: &Context) -> Vec<String> {
    let Some(agent_app) = ctx.agents.discovery().app.clone() else {
        return Vec::new();
    };
    match ctx.marathon.app_tasks(&agent_app).await {
        Ok(tasks) => tasks.into_iter().map(|t| t.host).collect(),
        Err(e) => {
            warn!(app = %agent_app, error = %e, "cannot list the agent app's tasks");
            Vec::new()
        }
    }
}

async fn agent_for(ctx: &Context, host: &str) -> Result<crate::agent::client::AgentClient, String> {
    let app_hosts = if ctx.agents.discovery().fixed.contains_key(host) {
        Vec::new()
    } else {
        agent_app_hosts(ctx).await
    };
    let url = ctx.agents.discovery().url(host, &app_hosts).ok_or_else(|| {
        format!("no berth agent is known for host {host}: add --agent {host}=URL or run the agent app there")
    })?;
    ctx.agents.client(&url).map_err(|e| e.to_string())
}

fn ensure_request(req: &VolumeRequest) -> EnsureVolumeRequest {
    EnsureVolumeRequest {
        tenant: req.tenant.to_string(),
        host_path: req.host_path.as_string(),
        volume_type: match req.kind {
            VolumeType::Directory => WireType::Directory,
            VolumeType::File => WireType::File,
        },
        owner: req.owner.map(|o| ContainerOwner {
            uid: o.uid,
            gid: o.gid,
        }),
        permissions: Some(format!("{:04o}", req.mode)),
        seed: req.seed.as_ref().map(|s| match s {
            SeedSource::Content(c) => Seed::Content(c.clone()),
            SeedSource::CopyFromHost(p) => Seed::CopyFromHost(p.clone()),
        }),
    }
}

fn mount(req: &VolumeRequest, host_path: String) -> MountedVolume {
    MountedVolume {
        container_path: req.container_path.as_string(),
        host_path,
        read_only: req.read_only,
        allow_concurrent_writers: req.allow_concurrent_writers,
    }
}

/// berth's current mount of this volume in the app, if any.
fn existing_mount(app: &App, req: &VolumeRequest) -> Option<MountedVolume> {
    let path = req.container_path.as_string();
    if !app_patch::managed_paths(app).contains(&path) {
        return None;
    }
    app.host_volumes()
        .find(|v| v.container_path == path)
        .map(|v| mount(req, v.host_path.clone()))
}

fn changed_fields(update: &AppUpdate) -> Vec<&'static str> {
    let mut f = Vec::new();
    if update.container.is_some() {
        f.push("volumes");
    }
    if update.constraints.is_some() {
        f.push("constraints");
    }
    if update.upgrade_strategy.is_some() {
        f.push("upgradeStrategy");
    }
    if update.labels.is_some() {
        f.push("labels");
    }
    f
}

fn report(
    obj: Arc<StatefulLocalVolume>,
    outcome: Outcome,
    host: Option<String>,
    host_path: Option<String>,
) -> Report {
    Report {
        obj,
        outcome,
        host,
        host_path,
        events: Vec::new(),
    }
}

fn all(
    members: Vec<Member>,
    phase: Phase,
    reason: Reason,
    msg: &str,
    app: AppState,
    requeue: Duration,
) -> Sync {
    let reports = members
        .into_iter()
        .map(|m| {
            let status = m.obj.status.clone().unwrap_or_default();
            // A volume that was bound stays bound while Marathon is away: its data and mount are intact.
            let phase = if reason == Reason::MarathonUnavailable {
                status.phase.unwrap_or(phase)
            } else {
                phase
            };
            report(
                m.obj.clone(),
                Outcome::new(phase, reason, msg),
                status.host,
                status.host_path,
            )
        })
        .collect();
    Sync {
        reports,
        app,
        requeue,
    }
}

/// Applies the app-level outcome to every volume that has no worse one of its own.
fn finish(mut reports: Vec<Report>, app_outcome: Option<Outcome>, app: AppState, requeue: Duration) -> Sync {
    for r in &mut reports {
        if r.outcome.reason != Reason::Deploying {
            continue; // the volume's own problem (host down, refused) says more
        }
        r.outcome = match &app_outcome {
            Some(o) => o.clone(),
            None => Outcome::new(
                Phase::Bound,
                Reason::Bound,
                format!(
                    "{} is mounted at {} on {} and the app is pinned there",
                    r.host_path.as_deref().unwrap_or("the volume"),
                    r.obj.spec.container_path,
                    r.host.as_deref().unwrap_or("its host")
                ),
            ),
        };
    }
    Sync {
        reports,
        app,
        requeue,
    }
}
