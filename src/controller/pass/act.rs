//! Carrying out a pass's decisions, in their order: finalizers and placement records before
//! anything is created, the agents' work, the one write to the app, then statuses, events and
//! releases. Every write goes through the ports of [`Context`].

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use tracing::{info, warn};

use super::{
    Observed, Vol,
    plan::{AppAction, Provision, Provisioned, Release, Report},
};
use crate::{
    agent::api::{EnsureBody, EnsuredVolume, EntryType, OwnerState, VolumeState},
    controller::{
        conditions::{self, Binding, Check, Outcome, Reason},
        context::Context,
        failure::{Failure, Kind},
        ports::VolumeEvent,
        seal::Record,
    },
    crd::{Phase, VolumeUsage},
    marathon::responses::DeploymentResult,
};

fn kube_failure(ctx: &Context, what: &str, e: kube::Error) -> Failure {
    let f = Failure::new(
        Kind::Transient,
        format!("cannot {what} in Kubernetes ({e}); berth retries"),
    );
    ctx.metrics.failure("kube", &f);
    f
}

/// Seals the binding and server-side applies the status, unless it is what berth last wrote.
pub async fn write_status(
    ctx: &Context,
    v: &Vol,
    report: &conditions::Report,
    mut binding: Binding,
    usage: Option<&VolumeUsage>,
    marked: bool,
) -> Result<(), kube::Error> {
    let uid = v.obj.uid().unwrap_or_default();
    // Only what berth sealed before is carried over: never a list a tenant wrote.
    if binding.orphaned.is_none() {
        binding.orphaned = v.record.as_ref().map(|r| r.orphaned.clone());
    }
    let extra = crate::controller::seal::extra(
        binding.migration.as_ref(),
        binding.orphaned.as_deref().unwrap_or_default(),
    );
    binding.seal = match (&binding.app, &binding.tenant, &binding.host) {
        (Some(app), Some(tenant), Some(host)) => Some(ctx.sealer.seal(&Record {
            uid: &uid,
            app,
            tenant,
            host,
            host_path: binding.host_path.as_deref(),
            extra: extra.as_deref(),
        })),
        _ => None,
    };
    let previous = ctx.written.current(&v.obj);
    let mut status = conditions::status(
        report,
        v.obj.metadata.generation,
        binding,
        previous.as_ref(),
        Timestamp::now(),
    );
    // A new usage section, or the one shown (server-side apply drops what berth leaves out).
    status.usage = match usage {
        Some(u) => Some(u.clone()).filter(|u| *u != VolumeUsage::default()),
        None => previous.as_ref().and_then(|p| p.usage.clone()),
    };
    let was_marked = previous.as_ref().and_then(|p| p.data_marked) == Some(true);
    status.data_marked = (marked || was_marked).then_some(true);
    if previous.as_ref() == Some(&status) {
        return Ok(());
    }
    ctx.kube.apply_status(&v.obj, &status).await?;
    ctx.written.put(&v.obj, status);
    Ok(())
}

/// Finalizers, then placement records, then the agent's work: nothing is created for a volume
/// whose placement is not recorded.
pub async fn provision(ctx: &Context, obs: &Observed, plan: &Provision) -> Provisioned {
    let mut done = Provisioned::default();
    let Some(host) = &plan.host else {
        return done;
    };
    for &i in &plan.finalize {
        if let Err(e) = ctx.kube.add_finalizer(&obs.volumes[i].obj).await {
            done.unrecorded
                .insert(i, kube_failure(ctx, "add berth's finalizer", e));
        }
    }
    let why = plan
        .reason
        .map(|r| r.describe())
        .unwrap_or("where the app's data is");
    for &i in &plan.record {
        if done.unrecorded.contains_key(&i) {
            continue;
        }
        let v = &obs.volumes[i];
        let report = conditions::Report {
            ready: Outcome::new(
                Phase::Provisioning,
                Reason::Provisioning,
                format!(
                    "placed on {host} ({why}); creating the volume and mounting it into {}",
                    obs.app_id
                ),
            ),
            synced: Check::ok(
                Reason::Checked,
                "berth's last pass reached Marathon and the host's agent",
            ),
            running: None,
            waiting: None,
        };
        let binding = Binding {
            host: Some(host.clone()),
            host_path: None,
            app: Some(obs.app_id.clone()),
            tenant: v.request().map(|r| r.tenant.to_string()),
            ..Default::default()
        };
        if let Err(e) = write_status(ctx, v, &report, binding, None, false).await {
            done.unrecorded
                .insert(i, kube_failure(ctx, "record the placement", e));
        }
    }
    crate::controller::faults::crash_point("after-placement-record");
    // Volumes the host's verification confirmed lately: where their data is, and what that
    // verification repaired, if anything.
    for (i, path) in &plan.verified {
        let v = &obs.volumes[*i];
        let repaired = v.obj.metadata.uid.as_deref().and_then(|uid| ctx.take_repair(uid));
        let state = repaired.unwrap_or_else(|| confirmed_state(v, path));
        done.ensured.insert(
            *i,
            Ok(EnsuredVolume {
                state,
                limit: v.learnt.limit.clone(),
                identity: None,
                adopted: false,
            }),
        );
    }
    let (indexes, requests): (Vec<usize>, Vec<EnsureBody>) = plan
        .ensure
        .iter()
        .filter(|(i, _)| !done.unrecorded.contains_key(i))
        .map(|(i, r)| (*i, r.clone()))
        .unzip();
    if !requests.is_empty() {
        let answers = match ctx.agents.ensure(host, &requests).await {
            Ok(answers) => {
                ctx.host_reachable(host, true);
                answers
            }
            Err(f) => {
                ctx.host_reachable(host, f.kind != Kind::Unreachable);
                vec![Err(f); requests.len()]
            }
        };
        for (i, result) in indexes.into_iter().zip(answers) {
            match &result {
                Err(f) => ctx.metrics.failure("agent", f),
                Ok(answer) => {
                    let v = &obs.volumes[i];
                    if let Some(uid) = v.obj.metadata.uid.as_deref() {
                        ctx.mark_verified(uid, v.obj.metadata.generation, answer, false);
                    }
                }
            }
            done.ensured.insert(i, result);
        }
    }
    done.host_down_for = ctx.host_down_for(host);
    done
}

/// A bound volume's state as berth recorded it (the agent confirmed it lately).
fn confirmed_state(v: &Vol, path: &str) -> VolumeState {
    VolumeState {
        tenant: v
            .record
            .as_ref()
            .map(|r| r.tenant.to_string())
            .unwrap_or_default(),
        host_path: v.obj.spec.host_path.clone(),
        absolute_path: path.to_owned(),
        entry_type: match v.obj.spec.type_ {
            crate::crd::VolumeType::Directory => EntryType::Directory,
            crate::crd::VolumeType::File => EntryType::File,
        },
        owner: OwnerState {
            host_uid: 0,
            host_gid: 0,
            container_uid: None,
            container_gid: None,
        },
        mode: String::new(),
        size_bytes: 0,
        created: false,
        changed: false,
        reowned: None,
    }
}

/// The one write to the app.
pub async fn app(
    ctx: &Context,
    obs: &Observed,
    action: &AppAction,
) -> Option<Result<DeploymentResult, Failure>> {
    let result = match action {
        AppAction::Update { update, fields } => {
            let r = ctx.marathon.update_app(&obs.app_id, update).await;
            if let Ok(res) = &r {
                info!(deployment = %res.deployment_id, ?fields, "updated the Marathon app");
            }
            r
        }
        AppAction::Restart { elsewhere } => {
            let r = ctx.marathon.restart_app(&obs.app_id).await;
            if let Ok(res) = &r {
                info!(deployment = %res.deployment_id, ?elsewhere, "restarted the app: its tasks ran away from the data");
            }
            r
        }
        _ => return None,
    };
    ctx.apps.invalidate(&obs.app_id);
    crate::controller::faults::crash_point("after-app-write");
    Some(result.map_err(|e| {
        warn!(error = %e, "Marathon did not take the write");
        let f = Failure::marathon(&e);
        ctx.metrics.failure("marathon", &f);
        f
    }))
}

/// Statuses, events and releases; returns when to pass the app again.
pub async fn report(ctx: &Context, obs: &Observed, report: &Report) -> Duration {
    let mut backoff = report.requeue.backoff;
    for r in &report.volumes {
        let v = &obs.volumes[r.index];
        if let Some((status, binding)) = &r.status
            && let Err(e) = write_status(ctx, v, status, binding.clone(), r.usage.as_ref(), r.marked).await
        {
            kube_failure(ctx, "write the status", e);
            backoff = true;
            continue; // events describe a status that was written
        }
        for ev in &r.events {
            ctx.kube.publish(&v.obj, ev).await;
        }
        if let Some(release) = &r.release
            && !self::release(ctx, obs, v, release).await
        {
            backoff = true;
        }
    }
    let mut wait = report.requeue.after.unwrap_or(ctx.settings.resync);
    if backoff {
        wait = wait.min(ctx.backoff(&obs.app_id));
    } else {
        ctx.succeeded(&obs.app_id);
    }
    wait
}

/// Releases a volume that left its app: deletes its data for `reclaimPolicy: Delete`, then
/// removes berth's finalizer. Returns false when it must be retried.
async fn release(ctx: &Context, obs: &Observed, v: &Vol, release: &Release) -> bool {
    let event = match release {
        Release::Retain { marked } => match &v.record {
            Some(r) => {
                if let Some(data) = marked
                    && let Err(f) = ctx.agents.release(data).await
                {
                    // The data stays either way; only its mark says "bound" a while longer.
                    warn!(volume = %v.name, host = %data.host, error = %f.message, "could not mark the data released; berth retries");
                    return false;
                }
                VolumeEvent::normal(
                    "Released",
                    format!("removed from {}; the data stays on {}", obs.app_id, r.host),
                )
            }
            None if v.obj.spec.reclaim_policy == crate::crd::ReclaimPolicy::Delete => VolumeEvent::warning(
                "Released",
                format!(
                    "removed from {}; berth holds no record of its own of where this volume's data is, so nothing was deleted",
                    obs.app_id
                ),
            ),
            None => VolumeEvent::normal(
                "Released",
                format!("removed from {}; berth had created no data for it", obs.app_id),
            ),
        },
        Release::Delete(data) => {
            let (host, host_path) = (&data.host, &data.host_path);
            match ctx.agents.delete(data).await {
                Ok(res) => {
                    ctx.metrics.delete_result("deleted");
                    info!(volume = %v.name, %host, path = %host_path, removed = res.removed_entries, "deleted the volume's data");
                    VolumeEvent::normal(
                        "Released",
                        if res.existed {
                            format!(
                                "removed from {}; its data on {host} was deleted ({} entries)",
                                obs.app_id, res.removed_entries
                            )
                        } else {
                            format!("removed from {}; its data on {host} was already gone", obs.app_id)
                        },
                    )
                }
                Err(f) => {
                    // Never give up on a Delete by skipping it, and never delete by guesswork: the
                    // finalizer stays until the data is gone.
                    ctx.metrics.failure("agent", &f);
                    let (reason, result, why) = match (f.kind, f.code.as_deref()) {
                        (_, Some("delete_in_progress")) => (
                            Reason::Deleting,
                            "in_progress",
                            format!(
                                "the agent of {host} is deleting the data: {}; berth checks again",
                                f.message
                            ),
                        ),
                        (Kind::Refused, _) => (
                            Reason::DeleteFailed,
                            "failed",
                            format!("the agent of {host} cannot delete the data: {}", f.message),
                        ),
                        (Kind::Unreachable, _) => (
                            Reason::HostUnavailable,
                            "unreachable",
                            format!(
                                "cannot delete the data on {host} yet ({}); berth retries",
                                f.message
                            ),
                        ),
                        (Kind::Transient, _) => (
                            Reason::Deleting,
                            "failed",
                            format!(
                                "deleting the data on {host} failed ({}); berth retries",
                                f.message
                            ),
                        ),
                    };
                    ctx.metrics.delete_result(result);
                    let synced = if reason == Reason::HostUnavailable {
                        Check::failed(Reason::HostUnavailable, why.clone())
                    } else {
                        Check::ok(
                            Reason::Checked,
                            "berth's last pass reached Marathon and the host's agent",
                        )
                    };
                    let report = conditions::Report {
                        ready: Outcome::new(Phase::Released, reason, why),
                        synced,
                        running: None,
                        waiting: None,
                    };
                    let binding = super::plan::kept_binding(v);
                    if let Err(e) = write_status(ctx, v, &report, binding, None, false).await {
                        kube_failure(ctx, "write the status", e);
                    }
                    return false;
                }
            }
        }
    };
    if let Err(e) = ctx.kube.remove_finalizer(&v.obj).await {
        kube_failure(ctx, "remove berth's finalizer", e);
        return false;
    }
    ctx.kube.publish(&v.obj, &event).await;
    ctx.written.forget(&v.obj);
    if let Some(uid) = v.obj.metadata.uid.as_deref() {
        ctx.forget_volume(uid);
    }
    true
}
