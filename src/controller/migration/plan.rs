//! The decisions of a move (pure): whether the app's data must move, and the next step.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::{
    agent::api::{TransferState, TransferStatus},
    controller::{
        failure::Failure,
        pass::{AppRead, Observed, Role, plan::running_tasks},
        placement::{self, Candidate, Placement, PlacementInput},
        usage::human_bytes,
    },
    crd::{MigrationStatus, MigrationStep, ReclaimPolicy},
    marathon::App,
};

/// One volume of a moving app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moving {
    /// Index into [`Observed::volumes`].
    pub index: usize,
    pub identity: String,
    pub tenant: String,
    /// The path below the tenant's root (the same on both hosts).
    pub rel_path: String,
    pub reclaim: ReclaimPolicy,
    /// This volume's part of the move, as berth sealed it (or will write it), at the app's step.
    pub status: MigrationStatus,
    /// Its own record is a step behind the app's (a crash came between the volumes' writes):
    /// that step's work is still to be done for it.
    pub behind: bool,
}

/// An app's move: the same hosts and step for every volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppMove {
    pub from: String,
    pub to: String,
    pub step: MigrationStep,
    /// The app's instance count before berth stopped it.
    pub instances: Option<i64>,
    pub stopped_at: Option<String>,
    pub volumes: Vec<Moving>,
}

/// Whether a pass is a move's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// No move: the ordinary pass.
    None,
    /// The data must leave `from` (in `placement.avoidHosts`) for a host berth chooses: the
    /// agents' free space is needed.
    Choose { from: String },
    /// A move to begin.
    Start(AppMove),
    /// A move under way.
    Continue(AppMove),
}

/// Where the app's data should be, by the volumes' specs: `Some(host)` when it must move there.
fn wanted_host(obs: &Observed, recorded: &str) -> Option<Result<String, ()>> {
    let mut requested: Vec<&str> = obs
        .volumes
        .iter()
        .filter_map(|v| v.request()?.host.as_deref())
        .collect();
    requested.sort_unstable();
    requested.dedup();
    match requested.as_slice() {
        [one] if *one != recorded => Some(Ok((*one).to_owned())),
        [_] => None,
        [] => avoided(obs, recorded).then_some(Err(())),
        _ => None, // volumes disagree: placement reports the conflict
    }
}

fn avoided(obs: &Observed, host: &str) -> bool {
    avoided_hosts(obs).contains(&host)
}

/// Why the app's data cannot move now, when a move is asked for but not possible.
pub fn blocked(obs: &Observed) -> Option<String> {
    let recorded = obs.volumes.iter().find_map(|v| v.record.as_ref())?.host.clone();
    let _asked = wanted_host(obs, &recorded)?;
    precondition(obs, &recorded).err()
}

/// What must hold before a move starts: every volume of the app bound on `from`, admitted,
/// read-write and carrying berth's identity.
fn precondition(obs: &Observed, from: &str) -> Result<Vec<Moving>, String> {
    let mut out = Vec::new();
    for (i, v) in obs.volumes.iter().enumerate() {
        let req = match &v.role {
            Role::Active(req) => req,
            Role::Held(why) => return Err(format!("the spec of volume {} is refused ({why})", v.name)),
            Role::Leaving => return Err(format!("volume {} is being deleted", v.name)),
            Role::Refused(_) => continue,
        };
        let Some(r) = v
            .record
            .as_ref()
            .filter(|r| r.host == from && r.host_path.is_some())
        else {
            return Err(format!("volume {} is not bound on {from} yet", v.name));
        };
        if req.read_only {
            return Err(format!(
                "volume {} is read-only and may share its data with other volumes; berth moves read-write volumes only",
                v.name
            ));
        }
        let marked = v.obj.status.as_ref().and_then(|s| s.data_marked) == Some(true);
        let (Some(uid), Some(rel), true) = (v.obj.metadata.uid.clone(), r.rel_path.clone(), marked) else {
            return Err(format!(
                "the data of volume {} does not carry berth's identity yet; berth marks it in its next pass",
                v.name
            ));
        };
        out.push(Moving {
            index: i,
            identity: uid,
            tenant: req.tenant.to_string(),
            rel_path: rel,
            reclaim: req.reclaim,
            status: MigrationStatus::default(),
            behind: false,
        });
    }
    if out.is_empty() {
        return Err("the app has no volume berth can move".into());
    }
    Ok(out)
}

/// Whether this pass belongs to a move. `target`: the host berth chose for [`Intent::Choose`].
pub fn intent(obs: &Observed, target: Option<&str>, now: Timestamp) -> Intent {
    if let Some(m) = under_way(obs, now) {
        return Intent::Continue(m);
    }
    let Some(from) = obs
        .volumes
        .iter()
        .filter(|v| v.request().is_some())
        .find_map(|v| v.record.as_ref().filter(|r| r.host_path.is_some()))
        .map(|r| r.host.clone())
    else {
        return Intent::None;
    };
    let to = match wanted_host(obs, &from) {
        None => return Intent::None,
        Some(Ok(to)) => to,
        Some(Err(())) => match target {
            Some(t) => t.to_owned(),
            None => return Intent::Choose { from },
        },
    };
    let Ok(mut volumes) = precondition(obs, &from) else {
        return Intent::None;
    };
    let started = now.to_string();
    for v in &mut volumes {
        v.status = MigrationStatus {
            from: from.clone(),
            to: to.clone(),
            id: transfer_id(&v.identity, now),
            step: MigrationStep::Copying,
            pass: 0,
            started_at: Some(started.clone()),
            ..Default::default()
        };
    }
    Intent::Start(AppMove {
        from,
        to,
        step: MigrationStep::Copying,
        instances: None,
        stopped_at: None,
        volumes,
    })
}

/// A transfer id of its own for every move of a volume (a staging area left by an abandoned
/// move is never mistaken for this one's).
pub fn transfer_id(uid: &str, now: Timestamp) -> String {
    let short: String = uid.chars().filter(char::is_ascii_alphanumeric).take(40).collect();
    format!("{short}-{:x}", now.as_millisecond())
}

/// The move recorded in the volumes' sealed statuses: the furthest step any of them reached
/// (every step is written to all volumes before it is acted on, so a later step in one volume
/// means the decision was taken). While it copies, the app's other volumes on the same host
/// join it (a crash may have come before their first record): the app moves whole or not at
/// all.
fn under_way(obs: &Observed, now: Timestamp) -> Option<AppMove> {
    let recorded: Vec<(usize, &MigrationStatus)> = obs
        .volumes
        .iter()
        .enumerate()
        .filter_map(|(i, v)| Some((i, v.record.as_ref()?.migration.as_ref()?)))
        .collect();
    let (_, lead) = recorded.iter().max_by_key(|(_, m)| m.step as u8)?;
    let volumes = recorded
        .iter()
        .filter(|(_, m)| m.from == lead.from && m.to == lead.to)
        .filter_map(|&(i, m)| {
            let v = &obs.volumes[i];
            let r = v.record.as_ref()?;
            Some(Moving {
                index: i,
                identity: v.obj.metadata.uid.clone()?,
                tenant: r.tenant.to_string(),
                rel_path: r.rel_path.clone()?,
                reclaim: v.obj.spec.reclaim_policy,
                status: MigrationStatus {
                    step: lead.step,
                    instances: lead.instances,
                    stopped_at: lead.stopped_at.clone(),
                    ..m.clone()
                },
                behind: m.step != lead.step,
            })
        })
        .collect::<Vec<Moving>>();
    let mut volumes = volumes;
    if lead.step == MigrationStep::Copying
        && let Ok(all) = precondition(obs, &lead.from)
    {
        for mut v in all {
            if volumes.iter().any(|m| m.index == v.index) {
                continue;
            }
            v.status = MigrationStatus {
                from: lead.from.clone(),
                to: lead.to.clone(),
                id: transfer_id(&v.identity, now),
                step: MigrationStep::Copying,
                pass: 0,
                started_at: lead.started_at.clone(),
                ..Default::default()
            };
            volumes.push(v);
        }
        volumes.sort_by_key(|v| v.index);
    }
    Some(AppMove {
        from: lead.from.clone(),
        to: lead.to.clone(),
        step: lead.step,
        instances: lead.instances,
        stopped_at: lead.stopped_at.clone(),
        volumes,
    })
}

/// Picks the host the data moves to when the spec names none: the most room that the app's
/// constraints allow, never an avoided host.
pub fn choose_target(
    obs: &Observed,
    from: &str,
    need: u64,
    candidates: &[Candidate],
) -> Result<String, String> {
    let Some(app) = crate::controller::pass::plan::found_app(obs) else {
        return Err("the app cannot be read from Marathon".into());
    };
    let mut avoid = avoided_hosts(obs);
    avoid.push(from);
    let input = PlacementInput {
        capacity_bytes: need,
        avoid,
        ..Default::default()
    };
    let constraints = app_constraints(app);
    match placement::place(&input, candidates, |c| {
        placement::constraints_allow(&constraints, c)
    }) {
        Placement::Host { host, .. } => Ok(host),
        Placement::NoHost(m) | Placement::Conflict(m) => Err(m),
    }
}

/// The app's own constraints, without berth's pin to the host its data is on now (which the
/// move replaces).
/// Every host the app's admitted volumes list in `placement.avoidHosts`.
pub fn avoided_hosts(obs: &Observed) -> Vec<&str> {
    obs.volumes
        .iter()
        .filter_map(|v| v.request())
        .flat_map(|r| r.avoid_hosts.iter().map(String::as_str))
        .collect()
}

pub fn app_constraints(app: &App) -> Vec<(String, String, Option<String>)> {
    let pin = app
        .labels
        .as_ref()
        .and_then(|l| l.get(crate::controller::app_patch::LABEL_HOST))
        .map(|h| crate::marathon::Constraint::hostname_cluster(h));
    app.constraints
        .iter()
        .flat_map(|c| c.iter())
        .filter(|c| Some(*c) != pin.as_ref())
        .map(|c| (c.field.clone(), c.operator.clone(), c.value.clone()))
        .collect()
}

/// Whether the target can take the app: its agent answers, the app's constraints allow it,
/// and it has room for what the volumes hold.
pub fn check_target(app: &App, to: &str, need: u64, candidates: &[Candidate]) -> Result<(), String> {
    let Some(c) = candidates.iter().find(|c| c.host == to) else {
        return Err(format!("the berth agent of {to} does not answer"));
    };
    if !placement::constraints_allow(&app_constraints(app), c) {
        return Err(format!("the app's constraints do not allow host {to}"));
    }
    if c.free_bytes < need {
        return Err(format!(
            "{to} has {} free, the app's volumes hold {}",
            human_bytes(c.free_bytes),
            human_bytes(need)
        ));
    }
    Ok(())
}

/// What the source said of one volume's transfer in this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Status(Box<TransferStatus>),
    /// The source knows no such transfer (never started, or it restarted).
    Unknown,
    Failed(Failure),
}

/// The next thing a move does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// (Re)start these volumes' passes: their statuses get the new pass number first.
    Send(Vec<usize>),
    /// Passes run: show how far they got.
    Progress,
    /// Every live pass is done: stop the app (remember its instance count first).
    Stop { instances: i64 },
    /// Berth stopped the app; its tasks are still going.
    WaitStopped,
    /// The app is stopped: send what changed since the live pass.
    FinalCopy,
    /// Every final pass is done: verify and put each copy in place, then pin the app there.
    Commit,
    /// The data is in place on the new host: pin the app there and start it (one write).
    Switch,
    /// The app was switched; wait for it to run on the new host.
    WaitRunning,
    /// The app runs on the new host: release or delete the old copies, then end the move.
    Reclaim,
    /// Give up before the switch: the app goes back to its old host, its data untouched.
    Abandon(String),
}

/// Decides the next step of a move. `seen`: one entry per volume of `m` (in order) for the
/// steps that watch transfers, empty otherwise.
pub fn next(obs: &Observed, m: &AppMove, seen: &[Seen], now: Timestamp, stop_limit: Duration) -> Next {
    let app = match &obs.app {
        AppRead::Found(app) => app,
        AppRead::Missing => return Next::Abandon(format!("Marathon has no app {} any more", obs.app_id)),
        AppRead::Failed(_) => return Next::Progress,
    };
    if m.step != MigrationStep::Switching
        && let Some(why) = abandon_reason(obs, m, now, stop_limit)
    {
        return Next::Abandon(why);
    }
    match m.step {
        MigrationStep::Copying | MigrationStep::FinalCopy => {
            let final_copy = m.step == MigrationStep::FinalCopy;
            let restart: Vec<usize> = seen
                .iter()
                .enumerate()
                .filter(|(i, s)| {
                    let v = &m.volumes[*i];
                    // A live pass does not count as the final one.
                    (final_copy && v.behind) || needs_send(s, v.status.pass)
                })
                .map(|(i, _)| i)
                .collect();
            if !restart.is_empty() {
                return Next::Send(restart);
            }
            let all_done = seen.len() == m.volumes.len() && seen.iter().all(|s| succeeded(s).is_some());
            match (all_done, m.step) {
                (true, MigrationStep::Copying) => Next::Stop {
                    instances: i64::from(app.instances.unwrap_or(1)),
                },
                (true, _) => Next::Commit,
                (false, _) => Next::Progress,
            }
        }
        MigrationStep::Stopping => {
            let busy = app.deployments.as_ref().is_some_and(|d| !d.is_empty());
            let tasks = app.tasks.as_ref().is_some_and(|t| !t.is_empty());
            if app.instances != Some(0) && !busy {
                Next::Stop {
                    instances: m.instances.unwrap_or(1),
                }
            } else if busy || tasks {
                Next::WaitStopped
            } else {
                Next::FinalCopy
            }
        }
        MigrationStep::Switching if m.volumes.iter().any(|v| v.behind) => Next::Commit,
        MigrationStep::Switching => {
            let pinned = app
                .labels
                .as_ref()
                .and_then(|l| l.get(crate::controller::app_patch::LABEL_HOST))
                .is_some_and(|h| *h == m.to);
            let wanted = u32::try_from(m.instances.unwrap_or(1)).unwrap_or(1);
            if !pinned || app.instances != Some(wanted) {
                return if app.deployments.as_ref().is_some_and(|d| !d.is_empty()) {
                    Next::WaitRunning
                } else {
                    Next::Switch
                };
            }
            let on_target = app
                .tasks
                .iter()
                .flatten()
                .filter(|t| t.host == m.to && t.state.as_deref() == Some("TASK_RUNNING"))
                .count();
            if wanted == 0 || (on_target > 0 && running_tasks(app) >= 1) {
                Next::Reclaim
            } else {
                Next::WaitRunning
            }
        }
    }
}

fn abandon_reason(obs: &Observed, m: &AppMove, now: Timestamp, stop_limit: Duration) -> Option<String> {
    if let Some(v) = obs.volumes.iter().find(|v| matches!(v.role, Role::Leaving)) {
        return Some(format!("volume {} is being deleted", v.name));
    }
    let recorded = m.from.as_str();
    match wanted_host(obs, recorded) {
        Some(Ok(host)) if host == m.to => {}
        Some(Err(())) if !avoided(obs, &m.to) => {}
        Some(Ok(host)) => return Some(format!("spec.placement.host now asks for {host}")),
        _ => return Some(format!("the volumes' spec no longer asks to leave {recorded}")),
    }
    let stopped = m.stopped_at.as_deref().and_then(|t| t.parse::<Timestamp>().ok());
    if let Some(at) = stopped
        && matches!(m.step, MigrationStep::Stopping | MigrationStep::FinalCopy)
    {
        let limit = k8s_openapi::jiff::SignedDuration::try_from(stop_limit).unwrap_or_default();
        if now.duration_since(at) > limit {
            return Some(format!(
                "the app was stopped for longer than {} and the last copy did not finish",
                humantime::format_duration(stop_limit)
            ));
        }
    }
    None
}

fn needs_send(s: &Seen, pass: u32) -> bool {
    match s {
        Seen::Unknown => true,
        Seen::Status(t) => {
            t.pass != pass || matches!(t.state, TransferState::Failed | TransferState::Cancelled)
        }
        Seen::Failed(_) => false,
    }
}

/// The manifest digest a volume's copy must match: the one recorded at the last copy, else the
/// source's answer for a pass that succeeded.
pub fn digest<'a>(v: &'a Moving, s: Option<&'a Seen>) -> Option<&'a str> {
    s.and_then(succeeded).or(v.status.manifest.as_deref())
}

/// The source's manifest digest when the volume's pass succeeded.
pub fn succeeded(s: &Seen) -> Option<&str> {
    match s {
        Seen::Status(t) if t.state == TransferState::Succeeded => {
            t.manifest.as_ref().map(|m| m.digest.as_str())
        }
        _ => None,
    }
}

/// What a volume's status shows of its transfer: progress in steps of a tenth, so that a
/// long copy writes its status ten times, not on every pass.
pub fn with_progress(status: &MigrationStatus, seen: Option<&Seen>) -> MigrationStatus {
    let mut out = status.clone();
    match seen {
        Some(Seen::Status(t)) => {
            let tenth = |done: u64, total: u64| done.saturating_mul(10).checked_div(total).unwrap_or(10);
            let before = (status.bytes_done.unwrap_or(-1), status.bytes_total.unwrap_or(-1));
            let shown_tenth = tenth(
                u64::try_from(before.0).unwrap_or(0),
                u64::try_from(before.1).unwrap_or(0),
            );
            let now_tenth = tenth(t.bytes_done, t.bytes_total);
            let finished = t.state == TransferState::Succeeded;
            if before.0 < 0 || now_tenth != shown_tenth || finished {
                let (bytes, files) = if finished {
                    (t.bytes_total, t.files_total)
                } else {
                    (t.bytes_done, t.files_done)
                };
                out.bytes_done = i64::try_from(bytes).ok();
                out.bytes_total = i64::try_from(t.bytes_total).ok();
                out.files_done = i64::try_from(files).ok();
                out.files_total = i64::try_from(t.files_total).ok();
                out.progress = Some(if t.files_total == 0 && t.bytes_total == 0 {
                    format!("{}: nothing changed since the last pass", out.step.as_str())
                } else {
                    format!(
                        "{} {} of {}, {files} of {} files",
                        out.step.as_str(),
                        human_bytes(bytes),
                        human_bytes(t.bytes_total),
                        t.files_total
                    )
                });
            }
            out.message = t
                .error
                .as_ref()
                .map(|e| format!("the last pass failed: {}", e.message));
        }
        Some(Seen::Failed(f)) => out.message = Some(f.message.clone()),
        Some(Seen::Unknown) | None => {}
    }
    out
}
