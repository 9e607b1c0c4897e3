//! Carrying out a move's step: statuses first, then the agents' or Marathon's work.

use std::{collections::HashMap, time::Duration};

use futures::future::join_all;
use k8s_openapi::jiff::Timestamp;
use tracing::{info, warn};

use super::{
    POLL, RETRY,
    plan::{self, AppMove, Moving, Next, Seen},
};
use crate::{
    agent::api::{CommitRequest, TransferState},
    controller::{
        app_patch::{self, MountedVolume},
        conditions::{Binding, Check, Outcome, Reason, Report},
        context::Context,
        failure::{Failure, Kind},
        pass::{AppRead, Observed, act::write_status, observe::reread_app, plan::DataRef},
        ports::{TransferOrder, VolumeEvent},
    },
    crd::{MigrationStatus, MigrationStep, Phase, ReclaimPolicy},
    marathon::AppUpdate,
};

/// Looks at the move, decides its next step and takes it; returns when to look again.
pub async fn step(ctx: &Context, obs: &mut Observed, mut m: AppMove) -> Duration {
    let watching = matches!(m.step, MigrationStep::Copying | MigrationStep::FinalCopy);
    let seen = if watching {
        transfers(ctx, &m).await
    } else {
        Vec::new()
    };
    let now = Timestamp::now();
    let next = plan::next(obs, &m, &seen, now, ctx.settings.migration_stop_limit);
    match next {
        Next::Progress => {
            for (i, mv) in m.volumes.iter().enumerate() {
                let shown = plan::with_progress(&mv.status, seen.get(i));
                if shown != mv.status {
                    record(ctx, obs, &m, mv, shown, None).await;
                }
            }
            POLL * 2
        }
        Next::Send(list) => {
            // A pass that failed, or could not start, is retried after a while, not at every
            // poll (each attempt writes the volume's status).
            let mut retry_soon = true;
            for i in list {
                let failed = matches!(seen.get(i), Some(Seen::Status(t)) if t.state == TransferState::Failed);
                retry_soon &= send(ctx, obs, &mut m, i).await && !failed;
            }
            if retry_soon { POLL } else { RETRY }
        }
        Next::Stop { instances } => {
            if m.step == MigrationStep::Copying {
                for s in &seen {
                    if let Seen::Status(t) = s {
                        ctx.metrics.migration_bytes.inc_by(t.bytes_done);
                    }
                }
                m.step = MigrationStep::Stopping;
                m.instances = Some(instances);
                m.stopped_at = Some(now.to_string());
                for (i, mv) in m.volumes.iter_mut().enumerate() {
                    // What the live copy did, shown while the app is stopped.
                    mv.status = plan::with_progress(&mv.status, seen.get(i));
                    mv.status.step = MigrationStep::Stopping;
                    mv.status.instances = m.instances;
                    mv.status.stopped_at = m.stopped_at.clone();
                }
                if !record_all(ctx, obs, &m).await {
                    return POLL;
                }
                let note = format!(
                    "stopped app {} ({instances} → 0 instances) for the last copy to {}",
                    obs.app_id, m.to
                );
                publish_all(ctx, obs, &m, VolumeEvent::normal("AppStopped", note)).await;
            }
            if write_app(
                ctx,
                obs,
                AppUpdate {
                    instances: Some(0),
                    ..Default::default()
                },
            )
            .await
            {
                crate::controller::faults::crash_point("after-migration-stop");
            }
            POLL
        }
        Next::WaitStopped | Next::WaitRunning => POLL,
        Next::FinalCopy => {
            m.step = MigrationStep::FinalCopy;
            for mv in &mut m.volumes {
                mv.status.step = MigrationStep::FinalCopy;
            }
            let mut started = true;
            for i in 0..m.volumes.len() {
                started &= send(ctx, obs, &mut m, i).await;
            }
            if started { POLL } else { RETRY }
        }
        Next::Commit => commit(ctx, obs, m, &seen).await,
        Next::Switch => {
            let paths: HashMap<usize, String> = m
                .volumes
                .iter()
                .filter_map(|mv| {
                    Some((
                        mv.index,
                        obs.volumes[mv.index].record.as_ref()?.host_path.clone()?,
                    ))
                })
                .collect();
            switch(ctx, obs, &m, &paths).await;
            POLL
        }
        Next::Reclaim => reclaim(ctx, obs, &m, now).await,
        Next::Abandon(why) => abandon(ctx, obs, &m, &why).await,
    }
}

/// The source's view of each volume's transfer.
async fn transfers(ctx: &Context, m: &AppMove) -> Vec<Seen> {
    let asks = m.volumes.iter().map(|mv| async move {
        if mv.status.pass == 0 {
            return Seen::Unknown;
        }
        match ctx.agents.transfer_status(&m.from, &mv.status.id).await {
            Ok(Some(t)) => Seen::Status(Box::new(t)),
            Ok(None) => Seen::Unknown,
            Err(f) => Seen::Failed(f),
        }
    });
    join_all(asks).await
}

/// Starts the next pass of one volume: its number is recorded first (a ticket is good for
/// one pass, and the target refuses a pass it has seen).
async fn send(ctx: &Context, obs: &Observed, m: &mut AppMove, i: usize) -> bool {
    let from = m.from.clone();
    let to = m.to.clone();
    let mv = &mut m.volumes[i];
    mv.status.pass += 1;
    mv.status.message = None;
    let status = mv.status.clone();
    let mv = mv.clone();
    if !record(ctx, obs, m, &mv, status, None).await {
        return false;
    }
    let order = TransferOrder {
        from,
        to,
        id: mv.status.id.clone(),
        pass: mv.status.pass,
        tenant: mv.tenant.clone(),
        host_path: mv.rel_path.clone(),
        identity: mv.identity.clone(),
    };
    match ctx.agents.start_transfer(&order).await {
        Ok(t) => {
            info!(volume = %obs.volumes[mv.index].name, pass = t.pass, mode = ?t.mode, "transfer pass started");
            crate::controller::faults::crash_point("after-migration-send");
            true
        }
        Err(f) => {
            warn!(volume = %obs.volumes[mv.index].name, error = %f.message, "cannot start a transfer pass");
            let mut shown = mv.status.clone();
            shown.message = Some(format!("cannot start the copy: {}", f.message));
            record(ctx, obs, m, &mv, shown, None).await;
            false
        }
    }
}

/// Verifies and puts every copy in place, then records the new host and switches the app.
async fn commit(ctx: &Context, obs: &mut Observed, mut m: AppMove, seen: &[Seen]) -> Duration {
    // The digests are recorded first: a commit resumed after a crash does not depend on the
    // source remembering its transfer.
    for i in 0..m.volumes.len() {
        let Some(digest) = plan::digest(&m.volumes[i], seen.get(i)).map(str::to_owned) else {
            return POLL;
        };
        if m.volumes[i].status.manifest.as_deref() != Some(digest.as_str()) {
            let shown = plan::with_progress(&m.volumes[i].status, seen.get(i));
            m.volumes[i].status = MigrationStatus {
                manifest: Some(digest),
                ..shown
            };
            let mv = m.volumes[i].clone();
            if !record(ctx, obs, &m, &mv, mv.status.clone(), None).await {
                return POLL;
            }
        }
    }
    let mut paths = HashMap::new();
    let mut verified = HashMap::new();
    for (i, mv) in m.volumes.iter().enumerate() {
        let Some(digest) = plan::digest(mv, seen.get(i)) else {
            return POLL;
        };
        let req = CommitRequest {
            tenant: mv.tenant.clone(),
            host_path: mv.rel_path.clone(),
            identity: match crate::agent::identity::VolumeIdentity::parse(&mv.identity) {
                Ok(id) => id,
                Err(_) => return POLL,
            },
            manifest: digest.to_owned(),
        };
        match ctx.agents.commit(&m.to, &mv.status.id, &req).await {
            Ok(done) => {
                if let Some(Seen::Status(t)) = seen.get(i)
                    && !done.already_committed
                {
                    ctx.metrics.migration_bytes.inc_by(t.bytes_done);
                }
                paths.insert(mv.index, done.state.absolute_path);
                verified.insert(mv.index, done.manifest);
            }
            Err(f) => {
                warn!(volume = %obs.volumes[mv.index].name, error = %f.message, "the copy was not put in place");
                let mut shown = mv.status.clone();
                shown.message = Some(format!(
                    "the copy on {} was not put in place: {}",
                    m.to, f.message
                ));
                record(ctx, obs, &m, mv, shown, None).await;
                return POLL;
            }
        }
    }
    crate::controller::faults::crash_point("after-migration-commit");
    m.step = MigrationStep::Switching;
    for mv in &mut m.volumes {
        mv.status.step = MigrationStep::Switching;
        mv.status.message = None;
        if let Some(manifest) = verified.get(&mv.index) {
            let (files, bytes) = (
                i64::try_from(manifest.files).ok(),
                i64::try_from(manifest.bytes).ok(),
            );
            (mv.status.files_done, mv.status.files_total) = (files, files);
            (mv.status.bytes_done, mv.status.bytes_total) = (bytes, bytes);
            mv.status.progress = Some(format!(
                "verified {} files, {} on {}",
                manifest.files,
                crate::controller::usage::human_bytes(manifest.bytes),
                m.to
            ));
        }
    }
    for mv in &m.volumes {
        let binding = Some((m.to.clone(), paths.get(&mv.index).cloned()));
        if !record(ctx, obs, &m, mv, mv.status.clone(), binding).await {
            return POLL;
        }
    }
    crate::controller::faults::crash_point("after-migration-switch-record");
    switch(ctx, obs, &m, &paths).await;
    POLL
}

/// Pins the app to the new host with every volume at its new path and restores its instance
/// count: one write.
async fn switch(ctx: &Context, obs: &mut Observed, m: &AppMove, paths: &HashMap<usize, String>) {
    if obs.app_cached {
        reread_app(ctx, obs).await;
    }
    let AppRead::Found(app) = &obs.app else {
        return;
    };
    let mounts: Vec<MountedVolume> = m
        .volumes
        .iter()
        .filter_map(|mv| {
            let v = &obs.volumes[mv.index];
            let req = v.request()?;
            Some(MountedVolume {
                container_path: req.container_path.as_string(),
                host_path: paths.get(&mv.index)?.clone(),
                read_only: req.read_only,
                allow_concurrent_writers: req.allow_concurrent_writers,
            })
        })
        .collect();
    let desired = match app_patch::desired_app(app, &mounts, Some(&m.to)) {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %e, "cannot pin the app to the new host");
            return;
        }
    };
    let mut update = AppUpdate::between(app, &desired).unwrap_or_default();
    let wanted = u32::try_from(m.instances.unwrap_or(1)).unwrap_or(1);
    if app.instances != Some(wanted) {
        update.instances = Some(wanted);
    }
    if !update.is_empty() && write_app(ctx, obs, update).await {
        crate::controller::faults::crash_point("after-migration-switch");
        let note = format!(
            "pinned app {} to {} with its verified copy and started it again ({wanted} instances)",
            obs.app_id, m.to
        );
        publish_all(ctx, obs, m, VolumeEvent::normal("AppMoved", note)).await;
    }
}

/// The app runs on the new host: the old copies go per reclaimPolicy, then the move ends.
async fn reclaim(ctx: &Context, obs: &Observed, m: &AppMove, now: Timestamp) -> Duration {
    for mv in &m.volumes {
        let data = DataRef {
            host: m.from.clone(),
            tenant: mv.tenant.clone(),
            host_path: mv.rel_path.clone(),
            identity: Some(mv.identity.clone()),
        };
        let r = match mv.reclaim {
            ReclaimPolicy::Delete => ctx.agents.delete(&data).await.map(|_| ()),
            ReclaimPolicy::Retain => ctx.agents.release(&data).await,
        };
        if let Err(f) = r {
            let mut shown = mv.status.clone();
            shown.message = Some(format!(
                "the app runs on {}; the copy left on {} is not {} yet: {}",
                m.to,
                m.from,
                reclaimed(mv.reclaim),
                f.message
            ));
            record(ctx, obs, m, mv, shown, None).await;
            return if f.kind == Kind::Unreachable {
                POLL * 20
            } else {
                POLL * 4
            };
        }
    }
    let downtime = m
        .stopped_at
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .map(|at| now.duration_since(at).as_secs_f64());
    let message = format!("bound on {}; moved there from {}", m.to, m.from);
    if !end(ctx, obs, m, &m.to, &message).await {
        return POLL;
    }
    let files: i64 = m.volumes.iter().filter_map(|mv| mv.status.files_total).sum();
    let bytes: i64 = m.volumes.iter().filter_map(|mv| mv.status.bytes_total).sum();
    let stopped = downtime.map_or(String::new(), |d| format!("; the app was stopped for {d:.1}s"));
    let note = format!(
        "moved {} volume(s) of {} from {} to {}: {files} files, {}{stopped}; the copy on {} was {}",
        m.volumes.len(),
        obs.app_id,
        m.from,
        m.to,
        crate::controller::usage::human_bytes(u64::try_from(bytes).unwrap_or(0)),
        m.from,
        reclaimed(m.volumes.first().map_or(ReclaimPolicy::Retain, |v| v.reclaim)),
    );
    publish_all(ctx, obs, m, VolumeEvent::normal("Migrated", note)).await;
    if let Some(d) = downtime {
        ctx.metrics.migration_downtime.observe(d);
    }
    ctx.metrics
        .migrations
        .get_or_create(&crate::controller::metrics::ResultLabels { result: "completed" })
        .inc();
    info!(app = %obs.app_id, downtime_s = ?downtime, "move done");
    Duration::ZERO
}

fn reclaimed(p: ReclaimPolicy) -> &'static str {
    match p {
        ReclaimPolicy::Delete => "deleted",
        ReclaimPolicy::Retain => "kept, marked released",
    }
}

/// Gives the move up: transfers stopped, staged copies discarded, the app started again where
/// its data is, the move taken out of the statuses.
async fn abandon(ctx: &Context, obs: &mut Observed, m: &AppMove, why: &str) -> Duration {
    for mv in &m.volumes {
        let _ = ctx.agents.cancel_transfer(&m.from, &mv.status.id).await;
        if let Err(f) = ctx
            .agents
            .discard_incoming(&m.to, &mv.status.id, &mv.tenant)
            .await
        {
            info!(error = %f.message, "the target's staged copy was not discarded (it stays in the tenant's staging area)");
        }
    }
    let stopped = !matches!(m.step, MigrationStep::Copying);
    if stopped
        && let AppRead::Found(app) = &obs.app
        && app.instances == Some(0)
        && m.instances.is_some_and(|n| n > 0)
    {
        let wanted = u32::try_from(m.instances.unwrap_or(1)).unwrap_or(1);
        if !write_app(
            ctx,
            obs,
            AppUpdate {
                instances: Some(wanted),
                ..Default::default()
            },
        )
        .await
        {
            return POLL * 4;
        }
    }
    let message = format!("bound on {}; the move to {} was abandoned: {why}", m.from, m.to);
    if !end(ctx, obs, m, &m.from, &message).await {
        return POLL;
    }
    let note = format!(
        "abandoned the move of app {} to {}: {why}; the app runs on {} with its data untouched",
        obs.app_id, m.to, m.from
    );
    publish_all(ctx, obs, m, VolumeEvent::warning("MigrationAbandoned", note)).await;
    ctx.move_abandoned(&obs.app_id, why);
    ctx.metrics
        .migrations
        .get_or_create(&crate::controller::metrics::ResultLabels { result: "abandoned" })
        .inc();
    Duration::ZERO
}

/// Ends the move in every volume's status: bound on `host`, `status.migration` gone.
async fn end(ctx: &Context, obs: &Observed, m: &AppMove, host: &str, message: &str) -> bool {
    for mv in &m.volumes {
        let v = &obs.volumes[mv.index];
        let report = Report {
            ready: Outcome::new(Phase::Bound, Reason::Bound, message),
            synced: checked(),
            running: None,
            waiting: None,
        };
        let binding = Binding {
            host: Some(host.to_owned()),
            host_path: v.record.as_ref().and_then(|r| r.host_path.clone()),
            app: Some(obs.app_id.clone()),
            tenant: Some(mv.tenant.clone()),
            ..Default::default()
        };
        if let Err(e) = write_status(ctx, v, &report, binding, None, true).await {
            warn!(volume = %v.name, error = %e, "cannot record the end of the move");
            return false;
        }
    }
    true
}

/// One write to the app; `false` when Marathon did not take it.
async fn write_app(ctx: &Context, obs: &Observed, update: AppUpdate) -> bool {
    match ctx.marathon.update_app(&obs.app_id, &update).await {
        Ok(d) => {
            info!(deployment = %d.deployment_id, instances = ?update.instances, "app updated for the move");
            true
        }
        Err(e) => {
            let f = Failure::marathon_outage(&e);
            ctx.metrics.failure("marathon", &f);
            warn!(error = %e, "cannot update the app for the move");
            false
        }
    }
}

fn checked() -> Check {
    Check::ok(
        Reason::Checked,
        "berth's last pass reached Marathon and the host's agent",
    )
}

/// The status a volume shows at this step of the move.
fn step_report(m: &AppMove, status: &MigrationStatus) -> Report {
    let ready = match status.step {
        MigrationStep::Copying => Outcome::new(
            Phase::Migrating,
            Reason::Bound,
            format!("bound on {}; copying to {} while the app runs", m.from, m.to),
        ),
        MigrationStep::Stopping => Outcome::new(
            Phase::Migrating,
            Reason::Migrating,
            format!("moving to {}: the app is stopped for the last copy", m.to),
        ),
        MigrationStep::FinalCopy => Outcome::new(
            Phase::Migrating,
            Reason::Migrating,
            format!("moving to {}: copying what changed since, then verifying", m.to),
        ),
        MigrationStep::Switching => Outcome::new(
            Phase::Migrating,
            Reason::Migrating,
            format!("moved to {}; starting the app there", m.to),
        ),
    };
    Report {
        ready,
        synced: checked(),
        running: None,
        waiting: None,
    }
}

/// Writes one volume's status at this step. `moved`: the new host and path, once the copy is
/// in place there.
async fn record(
    ctx: &Context,
    obs: &Observed,
    m: &AppMove,
    mv: &Moving,
    status: MigrationStatus,
    moved: Option<(String, Option<String>)>,
) -> bool {
    let v = &obs.volumes[mv.index];
    let r = v.record.as_ref();
    let (host, host_path) = match moved {
        Some((host, path)) => (host, path.or_else(|| r.and_then(|r| r.host_path.clone()))),
        None if status.step == MigrationStep::Switching => {
            (m.to.clone(), r.and_then(|r| r.host_path.clone()))
        }
        None => (m.from.clone(), r.and_then(|r| r.host_path.clone())),
    };
    let binding = Binding {
        host: Some(host),
        host_path,
        app: Some(obs.app_id.clone()),
        tenant: Some(mv.tenant.clone()),
        migration: Some(status.clone()),
        ..Default::default()
    };
    match write_status(ctx, v, &step_report(m, &status), binding, None, true).await {
        Ok(()) => true,
        Err(e) => {
            warn!(volume = %v.name, error = %e, "cannot record the move's step");
            false
        }
    }
}

/// Writes every volume's status at the move's step; false when one could not be written.
async fn record_all(ctx: &Context, obs: &Observed, m: &AppMove) -> bool {
    for mv in &m.volumes {
        if !record(ctx, obs, m, mv, mv.status.clone(), None).await {
            return false;
        }
    }
    true
}

async fn publish_all(ctx: &Context, obs: &Observed, m: &AppMove, ev: VolumeEvent) {
    for mv in &m.volumes {
        ctx.kube.publish(&obs.volumes[mv.index].obj, &ev).await;
    }
}
