//! The last decision of a pass: what each volume's status and events say, which leaving volumes
//! to release, and when to look again. Statuses and events say what happened in this pass; a
//! volume whose state did not change gets no write.

use std::time::Duration;

use super::{
    AppAction, DataRef, Provision, Provisioned, Release, Report, Requeue, VolumeReport, found_app,
    running_tasks,
};
use crate::{
    agent::api::VolumeState,
    controller::{
        conditions::{self, Binding, Check, Outcome, Reason},
        context::Settings,
        diagnosis,
        failure::{Failure, Kind},
        pass::{AppRead, Observed, Role, Vol, plan::app::existing_mount},
        ports::VolumeEvent,
        usage::{self, Learnt},
    },
    crd::{Phase, ReclaimPolicy},
    marathon::{App, responses::DeploymentResult},
};

/// How soon to look again while a deployment berth started runs.
const DEPLOYING: Duration = Duration::from_secs(2);
/// How soon to look again while the app is locked by someone else's deployment.
const LOCKED: Duration = Duration::from_secs(3);
/// How soon to look for an app that does not exist yet.
const APP_MISSING: Duration = Duration::from_secs(30);

pub fn report(
    obs: &Observed,
    prov: &Provision,
    done: &Provisioned,
    action: &AppAction,
    app_result: Option<&Result<DeploymentResult, Failure>>,
    settings: &Settings,
) -> Report {
    let ctx = Ctx {
        obs,
        prov,
        done,
        action,
        app_result,
        settings,
    };
    let mut requeue = Requeue::default();
    let mut volumes: Vec<VolumeReport> = obs
        .volumes
        .iter()
        .enumerate()
        .map(|(i, v)| match &v.role {
            Role::Active(_) => {
                let mut r = ctx.active(i, v);
                ctx.host_facts(&mut r, i, v);
                r
            }
            Role::Held(msg) => ctx.held(i, v, msg),
            Role::Refused(msg) => ctx.refused(i, v, msg),
            Role::Leaving => ctx.leaving(i, v, &mut requeue),
        })
        .collect();
    match (action, app_result) {
        (AppAction::Update { .. } | AppAction::Restart { .. }, Some(Ok(_))) => requeue.after(DEPLOYING),
        (AppAction::Update { .. } | AppAction::Restart { .. }, Some(Err(_))) => requeue.backoff = true,
        (AppAction::Wait(_), _) => requeue.after(LOCKED),
        _ => {}
    }
    match &obs.app {
        AppRead::Failed(_) => requeue.backoff = true,
        AppRead::Missing if obs.volumes.iter().any(|v| v.request().is_some()) => requeue.after(APP_MISSING),
        AppRead::Found(app) if app.deployments.as_ref().is_some_and(|d| !d.is_empty()) => {
            requeue.after(DEPLOYING)
        }
        _ => {}
    }
    if !done.unrecorded.is_empty()
        || done
            .ensured
            .values()
            .any(|r| r.as_ref().is_err_and(|f| f.kind != Kind::Refused))
    {
        requeue.backoff = true;
    }
    if let Some(note) = &obs.move_waiting {
        // Ready where they are; the spec's host is not met yet, and this says why.
        for r in &mut volumes {
            if let Some((report, _)) = &mut r.status {
                report.waiting = Some(Check::failed(Reason::MoveWaiting, note.clone()));
            }
        }
    }
    Report { volumes, requeue }
}

struct Ctx<'a> {
    obs: &'a Observed,
    prov: &'a Provision,
    done: &'a Provisioned,
    action: &'a AppAction,
    app_result: Option<&'a Result<DeploymentResult, Failure>>,
    settings: &'a Settings,
}

fn checked() -> Check {
    Check::ok(
        Reason::Checked,
        "berth's last pass reached Marathon and the host's agent",
    )
}

/// The binding a volume keeps when nothing new was learnt: its sealed record as it is.
pub(crate) fn kept_binding(v: &Vol) -> Binding {
    match &v.record {
        Some(r) => Binding {
            host: Some(r.host.clone()),
            host_path: r.host_path.clone(),
            app: Some(r.app.clone()),
            tenant: Some(r.tenant.to_string()),
            ..Default::default()
        },
        None => Binding::default(),
    }
}

/// The Ready outcome the volume showed before this pass.
fn previous_ready(v: &Vol) -> Option<Outcome> {
    let s = v.obj.status.as_ref()?;
    let c = s.ready()?;
    Some(Outcome::new(
        s.phase.unwrap_or(Phase::Pending),
        Reason::parse(&c.reason)?,
        c.message.clone(),
    ))
}

/// A warning when the volume has a new problem (a new reason or message).
fn problem_event(v: &Vol, o: &Outcome) -> Option<VolumeEvent> {
    if o.is_ready() {
        return None;
    }
    let same = previous_ready(v).is_some_and(|p| p.reason == o.reason && p.message == o.message);
    let worth = o.is_stalled()
        || matches!(
            o.reason,
            Reason::HostUnavailable
                | Reason::Unschedulable
                | Reason::AppNotFound
                | Reason::NoSuitableHost
                | Reason::MarathonUnavailable
        );
    (!same && worth).then(|| VolumeEvent::warning(&o.reason.to_string(), o.message.clone()))
}

fn with_status(index: usize, report: conditions::Report, binding: Binding, v: &Vol) -> VolumeReport {
    let events = problem_event(v, &report.ready).into_iter().collect();
    VolumeReport {
        index,
        status: Some((report, binding)),
        usage: None,
        marked: false,
        events,
        release: None,
    }
}

fn unchanged(index: usize) -> VolumeReport {
    VolumeReport {
        index,
        status: None,
        usage: None,
        marked: false,
        events: Vec::new(),
        release: None,
    }
}

/// The reason for an agent's refusal to bind the volume to the data it found, if it is one.
fn identity_refusal(f: &Failure) -> Option<Reason> {
    match f.code.as_deref()? {
        "data_missing" => Some(Reason::DataMissing),
        "identity_mismatch" | "released_data" | "unstamped_data" | "identity_missing" => {
            Some(Reason::WrongData)
        }
        _ => None,
    }
}

/// The conditions the volume shows now, to write again with a new usage section.
fn kept_report(v: &Vol) -> Option<conditions::Report> {
    let ready = previous_ready(v)?;
    let check = |type_: &str| {
        let s = v.obj.status.as_ref()?;
        let c = s.conditions.iter().find(|c| c.type_ == type_)?;
        Some(Check {
            ok: c.status == "True",
            reason: Reason::parse(&c.reason)?,
            message: c.message.clone(),
        })
    };
    Some(conditions::Report {
        ready,
        synced: check("Synced")?,
        running: check("AppRunning"),
        waiting: None,
    })
}

impl Ctx<'_> {
    /// What the host's agent told berth of the volume's data that the status should show: its
    /// usage and limit, when they changed enough to show (a warning when it passed the
    /// threshold of its capacity), and that the data carries the volume's identity.
    fn host_facts(&self, r: &mut VolumeReport, i: usize, v: &Vol) {
        let Some(req) = v.request() else {
            return;
        };
        if v.record.is_none() && !self.prov.record.contains(&i) {
            return; // not placed: nothing to measure
        }
        let answer = self.done.ensured.get(&i).and_then(|a| a.as_ref().ok());
        let learnt = Learnt {
            limit: self.done.limit(i).cloned().or_else(|| v.learnt.limit.clone()),
            measured: v.learnt.measured.clone(),
            created: answer.is_some_and(|a| usage::made_empty(&a.state)) || v.learnt.created,
            marked: answer.is_some_and(|a| a.identity.is_some()) || v.learnt.marked,
        };
        let warn = self.settings.usage_warning;
        let shown = v.obj.status.as_ref();
        let previous = shown.and_then(|s| s.usage.as_ref());
        let next = usage::next(previous, req.capacity_bytes, &learnt, warn);
        let newly_marked = learnt.marked && shown.and_then(|s| s.data_marked) != Some(true);
        r.marked = learnt.marked;
        if next.as_ref() == previous && !newly_marked {
            return;
        }
        if r.status.is_none() {
            if !v.was_ready() {
                return; // the status that binds it carries these: no write of its own
            }
            match kept_report(v) {
                Some(kept) => r.status = Some((kept, kept_binding(v))),
                // Not reported yet: the pass that reports it shows them too.
                None => return,
            }
        }
        if let Some(note) = usage::nearly_full_note(previous, next.as_ref(), req.capacity_bytes, warn) {
            r.events.push(VolumeEvent::warning("NearlyFull", note));
        }
        r.usage = Some(next.unwrap_or_default());
    }

    fn refused(&self, i: usize, v: &Vol, msg: &str) -> VolumeReport {
        let ready = Outcome::new(Phase::Failed, Reason::InvalidSpec, msg);
        let report = conditions::Report {
            ready,
            synced: checked(),
            running: None,
            waiting: None,
        };
        with_status(i, report, kept_binding(v), v)
    }

    fn held(&self, i: usize, v: &Vol, msg: &str) -> VolumeReport {
        let path = v
            .record
            .as_ref()
            .and_then(|r| r.host_path.clone())
            .unwrap_or_default();
        let phase = v
            .obj
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or(Phase::Bound);
        let ready = Outcome::new(
            phase,
            Reason::InvalidSpec,
            format!(
                "{msg}; until the spec is fixed, {} keeps {path} mounted as before and berth changes nothing",
                self.obs.app_id
            ),
        );
        let report = conditions::Report {
            ready,
            synced: checked(),
            running: None,
            waiting: None,
        };
        with_status(i, report, kept_binding(v), v)
    }

    /// Ready volumes keep Ready while berth cannot check them; after the grace period, they say
    /// so in `Synced` (a blip writes nothing at all).
    fn unchecked(&self, i: usize, v: &Vol, down_for: Option<Duration>, synced: Check) -> VolumeReport {
        if v.was_ready()
            && let Some(ready) = previous_ready(v)
        {
            if down_for.is_some_and(|d| d < self.settings.outage_grace) {
                return unchanged(i);
            }
            let running = v.obj.status.as_ref().and_then(|s| {
                let c = s.conditions.iter().find(|c| c.type_ == "AppRunning")?;
                Some(Check {
                    ok: c.status == "True",
                    reason: Reason::parse(&c.reason)?,
                    message: c.message.clone(),
                })
            });
            let report = conditions::Report {
                ready,
                synced,
                running,
                waiting: None,
            };
            return with_status(i, report, kept_binding(v), v);
        }
        let phase = v
            .obj
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or(Phase::Pending);
        let ready = Outcome::new(phase, synced.reason, synced.message.clone());
        let report = conditions::Report {
            ready,
            synced,
            running: None,
            waiting: None,
        };
        with_status(i, report, kept_binding(v), v)
    }

    fn active(&self, i: usize, v: &Vol) -> VolumeReport {
        if let Some(stop) = &self.prov.stop {
            if stop.reason == Reason::MarathonUnavailable {
                let synced = Check::failed(Reason::MarathonUnavailable, stop.message.clone());
                return self.unchecked(i, v, self.obs.marathon_down_for, synced);
            }
            let report = conditions::Report {
                ready: stop.clone(),
                synced: checked(),
                running: None,
                waiting: None,
            };
            return with_status(i, report, kept_binding(v), v);
        }
        let host = self.prov.host.clone().unwrap_or_default();
        let state = match (self.done.ok(i), self.done.failure(i)) {
            (Some(state), _) => state,
            (None, Some(f)) => return self.not_provisioned(i, v, &host, f),
            (None, None) => return unchanged(i),
        };
        let mut events = Vec::new();
        // One event tells the story of a binding (as Kubernetes' own provisioner does): where
        // the data is and why there, and where the app mounts it. Becoming Ready is in the
        // conditions; a second event for it would cost every volume one more apiserver write.
        if state.created || self.prov.record.contains(&i) {
            let why = self
                .prov
                .reason
                .map(|r| r.describe())
                .unwrap_or("where the app's data is");
            events.push(VolumeEvent::normal(
                "Provisioned",
                format!(
                    "{} {} on {host}, {why}; {} mounts it at {}",
                    if state.created { "created" } else { "found" },
                    state.absolute_path,
                    self.obs.app_id,
                    v.obj.spec.container_path
                ),
            ));
        } else if let Some(r) = state.reowned {
            let who = v
                .request()
                .and_then(|req| req.owner)
                .map(|o| {
                    format!(
                        "container {}:{} (host {}:{})",
                        o.uid, o.gid, state.owner.host_uid, state.owner.host_gid
                    )
                })
                .unwrap_or_else(|| format!("host {}:{}", state.owner.host_uid, state.owner.host_gid));
            let mut note = format!(
                "gave {} and {} entr{} below it that the previous owner held to {who}",
                state.absolute_path,
                r.entries,
                if r.entries == 1 { "y" } else { "ies" }
            );
            if r.skipped_hard_links > 0 {
                note.push_str(&format!(
                    "; {} hard-linked file(s) left as they were (another link may be outside the volume)",
                    r.skipped_hard_links
                ));
            }
            if r.skipped_mounts > 0 {
                note.push_str(&format!("; {} mount point(s) not entered", r.skipped_mounts));
            }
            if r.depth_limited {
                note.push_str("; directories nested deeper than 256 levels were not re-owned");
            }
            events.push(VolumeEvent::normal("OwnerChanged", note));
        } else if state.changed {
            events.push(VolumeEvent::normal(
                "HostRepaired",
                format!("restored the owner or mode of {} on {host}", state.absolute_path),
            ));
        }
        let binding = Binding {
            host: Some(host.clone()),
            host_path: Some(state.absolute_path.clone()),
            app: Some(self.obs.app_id.clone()),
            tenant: v.request().map(|r| r.tenant.to_string()),
            ..Default::default()
        };
        let mut out = match self.app_outcome(i, v, &host, state, &mut events) {
            Some(report) => with_status(i, report, binding, v),
            None => unchanged(i),
        };
        out.events.splice(0..0, events);
        out
    }

    /// The agent did not provision the volume (or its record could not be written).
    fn not_provisioned(&self, i: usize, v: &Vol, host: &str, f: &Failure) -> VolumeReport {
        let bound_data = v.record.as_ref().is_some_and(|r| r.host_path.is_some());
        match f.kind {
            Kind::Unreachable => {
                let synced = Check::failed(
                    Reason::HostUnavailable,
                    format!(
                        "{}; the app stays pinned to {host} and no data is touched; berth retries",
                        f.message
                    ),
                );
                self.unchecked(i, v, self.done.host_down_for, synced)
            }
            Kind::Transient => {
                let phase = v
                    .obj
                    .status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .unwrap_or(Phase::Provisioning);
                let ready = Outcome::new(
                    phase,
                    Reason::Provisioning,
                    format!("{}; berth retries", f.message),
                );
                if v.was_ready() {
                    return unchanged(i);
                }
                let report = conditions::Report {
                    ready,
                    synced: checked(),
                    running: None,
                    waiting: None,
                };
                with_status(i, report, kept_binding(v), v)
            }
            Kind::Refused if bound_data && f.code.as_deref() == Some("type_mismatch") => {
                let path = v
                    .record
                    .as_ref()
                    .and_then(|r| r.host_path.clone())
                    .unwrap_or_default();
                let ready = Outcome::new(
                    Phase::Bound,
                    Reason::InvalidSpec,
                    format!(
                        "spec.type cannot change once the volume holds data ({}); put spec.type back, or create \
                         another volume; until then {} keeps {path} mounted as before",
                        f.message, self.obs.app_id
                    ),
                );
                let report = conditions::Report {
                    ready,
                    synced: checked(),
                    running: None,
                    waiting: None,
                };
                with_status(i, report, kept_binding(v), v)
            }
            Kind::Refused if identity_refusal(f).is_some() => {
                // The data at the path is not the volume's, or is gone: berth does not bind to
                // it. A bound volume keeps its phase (its app still mounts what is there).
                let reason = identity_refusal(f).unwrap_or(Reason::WrongData);
                let phase = if bound_data { Phase::Bound } else { Phase::Failed };
                let ready = Outcome::new(phase, reason, format!("on {host}: {}", f.message));
                let report = conditions::Report {
                    ready,
                    synced: checked(),
                    running: None,
                    waiting: None,
                };
                with_status(i, report, kept_binding(v), v)
            }
            Kind::Refused => {
                let ready = Outcome::new(
                    Phase::Failed,
                    Reason::ProvisioningFailed,
                    format!("the agent of {host} refused the volume: {}", f.message),
                );
                let report = conditions::Report {
                    ready,
                    synced: checked(),
                    running: None,
                    waiting: None,
                };
                with_status(i, report, kept_binding(v), v)
            }
        }
    }

    /// The status of a provisioned volume after the app action. `None`: nothing to write.
    fn app_outcome(
        &self,
        i: usize,
        v: &Vol,
        host: &str,
        state: &VolumeState,
        events: &mut Vec<VolumeEvent>,
    ) -> Option<conditions::Report> {
        let app = found_app(self.obs)?;
        let report = |ready: Outcome| conditions::Report {
            ready,
            synced: checked(),
            running: None,
            waiting: None,
        };
        match (self.action, self.app_result) {
            (AppAction::Update { fields, .. }, Some(Ok(res))) => {
                if v.was_ready() {
                    events.push(VolumeEvent::normal(
                        "AppUpdated",
                        format!(
                            "updated Marathon app {} ({}); deployment {} restarts its tasks",
                            self.obs.app_id,
                            fields.join(", "),
                            res.deployment_id
                        ),
                    ));
                    return None;
                }
                if v.ready_reason() == Some("Provisioning") || self.prov.record.contains(&i) {
                    return None; // the placement record says so already
                }
                Some(report(Outcome::new(
                    Phase::Provisioning,
                    Reason::Deploying,
                    format!(
                        "deployment {} is restarting the app's tasks on {host} with the volume",
                        res.deployment_id
                    ),
                )))
            }
            (AppAction::Update { .. } | AppAction::Restart { .. }, Some(Err(f))) => {
                let ready = match f.kind {
                    Kind::Refused => Outcome::new(
                        Phase::Failed,
                        Reason::AppUpdateRejected,
                        format!("updating app {}: {}", self.obs.app_id, f.message),
                    ),
                    Kind::Transient if f.message.contains("locked") => Outcome::new(
                        Phase::Provisioning,
                        Reason::AppLocked,
                        format!("updating app {}: {}", self.obs.app_id, f.message),
                    ),
                    _ => Outcome::new(
                        Phase::Provisioning,
                        Reason::MarathonUnavailable,
                        format!("updating app {}: {}", self.obs.app_id, f.message),
                    ),
                };
                if v.was_ready() && !ready.is_stalled() {
                    return None;
                }
                Some(report(ready))
            }
            (AppAction::Wait(o), _) => {
                if v.was_ready() {
                    return None;
                }
                Some(report(o.clone()))
            }
            (AppAction::Reject(o), _) => Some(report(o.clone())),
            _ => self.running_state(v, app, host, state),
        }
    }

    /// The app already matches: is it running where the data is?
    fn running_state(
        &self,
        v: &Vol,
        app: &App,
        host: &str,
        state: &VolumeState,
    ) -> Option<conditions::Report> {
        let path = &v.obj.spec.container_path;
        if let Some(d) = diagnosis::mount_failure(app, std::slice::from_ref(path)) {
            return Some(conditions::Report {
                ready: Outcome::new(Phase::Failed, d.reason, d.message),
                synced: checked(),
                running: Some(Check::failed(Reason::NoTasks, "the app's tasks fail to start")),
                waiting: None,
            });
        }
        let deploying: Vec<&str> = app.deployments.iter().flatten().map(|d| d.id.as_str()).collect();
        let blocked = self.obs.launch_blocked == Some(true);
        let running = if let AppAction::Restart { elsewhere } = self.action {
            Check::failed(
                Reason::TasksElsewhere,
                format!(
                    "tasks ran on {} instead of {host}; berth restarted the app to bring them back to the data",
                    elsewhere.join(", ")
                ),
            )
        } else if blocked {
            let d = diagnosis::unschedulable(host);
            Check::failed(d.reason, d.message)
        } else if !deploying.is_empty() {
            Check::failed(
                Reason::Deploying,
                format!(
                    "deployment {} is restarting the app's tasks",
                    deploying.join(", ")
                ),
            )
        } else {
            let n = running_tasks(app);
            if n > 0 {
                Check::ok(
                    Reason::Running,
                    format!(
                        "{n} task{} of the app run{} on {host}",
                        if n == 1 { "" } else { "s" },
                        if n == 1 { "s" } else { "" }
                    ),
                )
            } else if app.instances == Some(0) {
                Check::failed(Reason::NoTasks, "the app is scaled to 0 instances")
            } else {
                Check::failed(Reason::NoTasks, "no task of the app runs")
            }
        };
        if !v.was_ready() && !deploying.is_empty() {
            // Not bound yet: the deployment that mounts it is still running.
            if blocked {
                return Some(conditions::Report {
                    ready: Outcome::new(Phase::Provisioning, running.reason, running.message.clone()),
                    synced: checked(),
                    running: None,
                    waiting: None,
                });
            }
            return None;
        }
        Some(conditions::Report {
            ready: Outcome::new(
                Phase::Bound,
                Reason::Bound,
                format!(
                    "{} is mounted at {path} in {} and the app is pinned to {host}",
                    state.absolute_path, self.obs.app_id
                ),
            ),
            synced: checked(),
            running: Some(running),
            waiting: None,
        })
    }

    fn leaving(&self, i: usize, v: &Vol, requeue: &mut Requeue) -> VolumeReport {
        let app = match &self.obs.app {
            AppRead::Failed(_) => return unchanged(i),
            AppRead::Missing => None,
            AppRead::Found(app) => Some(app),
        };
        let mounted = app.is_some_and(|a| existing_mount(a, v).is_some());
        let deploying = app.is_some_and(|a| a.deployments.as_ref().is_some_and(|d| !d.is_empty()));
        if mounted || (deploying && v.obj.spec.reclaim_policy == ReclaimPolicy::Delete) {
            requeue.after(DEPLOYING);
            let why = if mounted {
                "the volume is still mounted in its Marathon app; berth removes it and retries"
            } else {
                "the deployment that removed the volume from its app is still running; the data is deleted once it ends"
            };
            let ready = Outcome::new(Phase::Released, Reason::Deleting, why);
            let report = conditions::Report {
                ready,
                synced: checked(),
                running: None,
                waiting: None,
            };
            let mut out = with_status(i, report, kept_binding(v), v);
            out.events.clear();
            return out;
        }
        let marked = v.obj.status.as_ref().and_then(|s| s.data_marked) == Some(true);
        let data = v
            .record
            .as_ref()
            .filter(|r| r.host_path.is_some() && r.rel_path.is_some())
            .map(|r| DataRef {
                host: r.host.clone(),
                tenant: r.tenant.to_string(),
                host_path: r.rel_path.clone().unwrap_or_default(),
                identity: v.obj.metadata.uid.clone().filter(|_| marked),
            });
        let release = match (v.obj.spec.reclaim_policy, data) {
            (ReclaimPolicy::Delete, Some(data)) => Release::Delete(data),
            (_, data) => Release::Retain {
                marked: data.filter(|d| d.identity.is_some()),
            },
        };
        VolumeReport {
            index: i,
            status: None,
            usage: None,
            marked: false,
            events: Vec::new(),
            release: Some(release),
        }
    }
}
