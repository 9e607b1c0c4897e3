//! One reconcile of one volume: finalizer, validation, the app pass, status and events.

use std::sync::Arc;

use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        controller::Action,
        events::{Event, EventType},
        finalizer::{Event as Finalizer, finalizer},
    },
};
use tracing::{Instrument, info, info_span, warn};

use super::{
    admission,
    app_sync::{self, AppState, Report},
    conditions::{Outcome, Reason},
    context::Context,
    error::Error,
    status,
};
use crate::{
    crd::{FINALIZER, Phase, ReclaimPolicy, StatefulLocalVolume, StatefulLocalVolumeStatus},
    tenant::{MarathonAppId, TenantId},
};

pub async fn reconcile(obj: Arc<StatefulLocalVolume>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = obj
        .namespace()
        .ok_or_else(|| Error::NoNamespace(obj.name_any()))?;
    let span = info_span!("reconcile", volume = %format!("{ns}/{}", obj.name_any()), app = %obj.spec.app);
    async move {
        let _timer = ctx.metrics.reconcile();
        let api: Api<StatefulLocalVolume> = Api::namespaced(ctx.kube.clone(), &ns);
        finalizer(&api, FINALIZER, obj, |event| async {
            match event {
                Finalizer::Apply(v) => apply(v, &ctx).await,
                Finalizer::Cleanup(v) => cleanup(v, &ctx, &ns).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))
    }
    .instrument(span)
    .await
}

pub fn error_policy(obj: Arc<StatefulLocalVolume>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .errors
        .get_or_create(&super::metrics::ErrorLabels {
            kind: err.metric_label(),
        })
        .inc();
    let wait = ctx.backoff(&obj.spec.app);
    warn!(volume = %obj.name_any(), error = %err, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

async fn apply(obj: Arc<StatefulLocalVolume>, ctx: &Context) -> Result<Action, Error> {
    let obj = status::fresh(ctx, &obj);
    let req = match admission::admit(ctx, &obj) {
        Ok(v) => v,
        Err(msg) => {
            let status = obj.status.clone().unwrap_or_default();
            // A volume that holds data keeps its mount and pin (see `app_sync::Held`); say so.
            let outcome = match &status.host_path {
                Some(path) => Outcome::new(
                    status.phase.unwrap_or(Phase::Failed),
                    Reason::InvalidSpec,
                    format!(
                        "{msg}; until the spec is fixed, {} keeps {path} mounted as before and berth changes nothing",
                        obj.spec.app
                    ),
                ),
                None => Outcome::new(Phase::Failed, Reason::InvalidSpec, msg),
            };
            status::write(ctx, &obj, &outcome, status.host, status.host_path).await?;
            return Ok(Action::await_change());
        }
    };
    let _lock = ctx.lock_app(req.app.as_str()).await;
    let members = app_sync::members(ctx, &req.app, Some(&obj), None);
    let sync = app_sync::sync_app(ctx, &req.app, members).await?;
    publish(ctx, &sync.reports).await?;
    Ok(Action::requeue(sync.requeue))
}

/// Takes the volume out of its app (one write, together with any change the app's other
/// volumes need), then deletes the host data only for `reclaimPolicy: Delete`.
async fn cleanup(obj: Arc<StatefulLocalVolume>, ctx: &Context, ns: &str) -> Result<Action, Error> {
    let tenant = ctx.tenants.tenant(ns).ok();
    let app = tenant
        .as_ref()
        .and_then(|t| ctx.policy.apps.check(t, &obj.spec.app).ok())
        .or_else(|| MarathonAppId::parse(&obj.spec.app).ok());
    if let Some(app) = &app {
        let _lock = ctx.lock_app(app.as_str()).await;
        let uid = obj.uid();
        let members = app_sync::members(ctx, app, None, uid.as_deref());
        let sync = app_sync::sync_app(ctx, app, members).await?;
        publish(ctx, &sync.reports).await?;
        if !matches!(
            sync.app,
            AppState::Matches | AppState::Updated | AppState::Missing
        ) {
            let why = "the volume is still mounted in its Marathon app; berth retries removing it";
            let outcome = Outcome::new(Phase::Released, Reason::Deleting, why);
            let status = obj.status.clone().unwrap_or_default();
            status::write(ctx, &obj, &outcome, status.host, status.host_path).await?;
            return Err(Error::Retry(format!("{}: {why}", obj.name_any())));
        }
    }
    let status = obj.status.clone().unwrap_or_default();
    if obj.spec.reclaim_policy == ReclaimPolicy::Delete
        && let (Some(host), Some(tenant)) = (status.host.as_deref(), tenant.as_ref())
    {
        delete_data(ctx, &obj, host, tenant).await?;
    }
    ctx.recorder
        .publish(
            &Event {
                type_: EventType::Normal,
                reason: "Released".into(),
                note: Some(match obj.spec.reclaim_policy {
                    ReclaimPolicy::Retain => format!(
                        "removed from {}; the data stays on {}",
                        obj.spec.app,
                        status.host.as_deref().unwrap_or("its host")
                    ),
                    ReclaimPolicy::Delete => format!("removed from {} and its data deleted", obj.spec.app),
                }),
                action: "Delete".into(),
                secondary: None,
            },
            &obj.object_ref(&()),
        )
        .await
        .map_err(Error::Kube)?;
    ctx.written.forget(&obj);
    Ok(Action::await_change())
}

async fn delete_data(
    ctx: &Context,
    obj: &StatefulLocalVolume,
    host: &str,
    tenant: &TenantId,
) -> Result<(), Error> {
    let app_hosts = Vec::new();
    let url = ctx.agents.discovery().url(host, &app_hosts);
    let client = url.as_deref().map(|u| ctx.agents.client(u));
    let result = match client {
        Some(Ok(c)) => c
            .delete(tenant.as_str(), &obj.spec.host_path)
            .await
            .map_err(|e| e.to_string()),
        Some(Err(e)) => Err(e.to_string()),
        None => Err(format!("no berth agent is known for host {host}")),
    };
    match result {
        Ok(res) => {
            info!(host, path = %obj.spec.host_path, removed = res.removed_entries, "deleted the volume's data");
            Ok(())
        }
        Err(msg) => {
            // Never give up on a Delete by skipping it: the finalizer stays until the data is
            // gone, so nothing is left behind silently, and nothing is deleted by guesswork.
            let why =
                format!("cannot delete the data on {host} yet ({msg}); berth retries while the host is away");
            let outcome = Outcome::new(Phase::Released, Reason::HostUnavailable, why.clone());
            let status = obj.status.clone().unwrap_or_default();
            status::write(ctx, obj, &outcome, status.host, status.host_path).await?;
            Err(Error::Retry(why))
        }
    }
}

/// Writes each volume's status (only where it changed) and its events.
async fn publish(ctx: &Context, reports: &[Report]) -> Result<(), Error> {
    for r in reports {
        let previous = status::write(ctx, &r.obj, &r.outcome, r.host.clone(), r.host_path.clone()).await?;
        let previous_reason = previous.as_ref().and_then(ready_reason);
        let mut events: Vec<(EventType, String, String)> = r
            .events
            .iter()
            .map(|(reason, note)| (EventType::Normal, reason.to_string(), note.clone()))
            .collect();
        // A new problem is a warning once, when the reason first appears; a recovery is news too.
        let reason = r.outcome.reason.to_string();
        if previous_reason.as_deref() != Some(reason.as_str()) {
            let type_ = if r.outcome.is_ready() {
                EventType::Normal
            } else {
                EventType::Warning
            };
            let interesting = r.outcome.is_ready()
                || r.outcome.is_stalled()
                || !matches!(r.outcome.reason, Reason::Deploying);
            if interesting {
                events.push((type_, reason, r.outcome.message.clone()));
            }
        }
        for (type_, reason, note) in events {
            let ev = Event {
                type_,
                reason,
                note: Some(note),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder.publish(&ev, &r.obj.object_ref(&())).await {
                warn!(volume = %r.obj.name_any(), error = %e, "cannot record an event");
            }
        }
    }
    Ok(())
}

fn ready_reason(status: &StatefulLocalVolumeStatus) -> Option<String> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.clone())
}

pub fn phase_label(p: Phase) -> &'static str {
    match p {
        Phase::Pending => "Pending",
        Phase::Provisioning => "Provisioning",
        Phase::Bound => "Bound",
        Phase::Migrating => "Migrating",
        Phase::Released => "Released",
        Phase::Failed => "Failed",
    }
}
