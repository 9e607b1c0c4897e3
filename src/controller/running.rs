//! After berth's fields match: is the app running where its data is? Deployments in progress,
//! a launch Marathon cannot place, a Docker error in `lastTaskFailure`, or tasks on another host
//! (restarted once, so they come back to the data).

use std::{collections::BTreeSet, time::Duration};

use super::{
    app_patch::MountedVolume,
    conditions::{Outcome, Reason},
    context::Context,
    diagnosis,
    metrics::marathon_code as code,
};
use crate::{crd::Phase, marathon::App, tenant::MarathonAppId};

/// The app matches; are its tasks where the data is?
pub async fn running_state(
    ctx: &Context,
    app: &App,
    app_id: &MarathonAppId,
    host: &str,
    mounted: &[MountedVolume],
) -> (Option<Outcome>, Duration) {
    // A task that cannot mount its volume fails on every relaunch, and the deployment that
    // started it never ends: look at the failure first, or it would hide behind "Deploying".
    let tasks = app.tasks.clone().unwrap_or_default();
    let current_running = tasks.iter().any(|t| {
        t.state.as_deref() == Some("TASK_RUNNING") && t.version.is_some() && t.version == app.version
    });
    if let Some(failure) = &app.last_task_failure
        && !current_running
        && failure.version.is_some()
        && failure.version == app.version
    {
        let paths: Vec<String> = mounted.iter().map(|m| m.container_path.clone()).collect();
        if let Some(d) = diagnosis::task_failure(&failure.message, &paths) {
            return (Some(Outcome::new(Phase::Failed, d.reason, d.message)), ctx.resync);
        }
    }
    let deploying: Vec<_> = app.deployments.iter().flatten().map(|d| d.id.clone()).collect();
    if !deploying.is_empty() {
        if let Ok(true) = ctx.marathon.blocked_by_constraints(app_id.as_str()).await {
            let d = diagnosis::unschedulable(host);
            return (
                Some(Outcome::new(Phase::Provisioning, d.reason, d.message)),
                Duration::from_secs(5),
            );
        }
        let msg = format!(
            "deployment {} is restarting the app's tasks on {host}",
            deploying.join(", ")
        );
        return (
            Some(Outcome::new(Phase::Provisioning, Reason::Deploying, msg)),
            Duration::from_secs(2),
        );
    }
    let elsewhere: BTreeSet<&str> = tasks
        .iter()
        .map(|t| t.host.as_str())
        .filter(|h| *h != host)
        .collect();
    if !elsewhere.is_empty() {
        // The pin is in place but tasks run elsewhere (placed before the pin, or moved by hand):
        // a restart brings them back to the data. One write, like any other.
        let hosts: Vec<_> = elsewhere.into_iter().collect();
        let res = ctx.marathon.restart_app(app_id.as_str(), false).await;
        ctx.metrics.marathon(
            "restart_app",
            res.as_ref().map(|_| "200".to_owned()).unwrap_or_else(code),
        );
        let msg = match res {
            Ok(r) => {
                ctx.metrics.marathon_writes.inc();
                format!(
                    "tasks ran on {} instead of {host}; restarted the app (deployment {})",
                    hosts.join(", "),
                    r.deployment_id
                )
            }
            Err(e) => format!(
                "tasks run on {} instead of {host}; restarting the app failed: {e}",
                hosts.join(", ")
            ),
        };
        return (
            Some(Outcome::new(Phase::Provisioning, Reason::TasksElsewhere, msg)),
            Duration::from_secs(2),
        );
    }
    // The launch queue only matters while tasks are missing: a healthy app costs one GET.
    let missing = usize::try_from(app.instances.unwrap_or(1)).unwrap_or(usize::MAX) > tasks.len();
    if missing && let Ok(true) = ctx.marathon.blocked_by_constraints(app_id.as_str()).await {
        let d = diagnosis::unschedulable(host);
        return (
            Some(Outcome::new(Phase::Provisioning, d.reason, d.message)),
            Duration::from_secs(5),
        );
    }
    (None, ctx.resync)
}
