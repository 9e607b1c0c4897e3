//! The second decision of a pass: the one write to the app, if any.
//!
//! The desired app is computed from all of the app's volumes at once: the ones the agent
//! provisioned in this pass are mounted at the path it reported; a volume that could not be
//! provisioned, and a held one, keep whatever mount they have; a leaving one is taken out. An
//! update waits while a deployment runs (berth never forces), and while a volume of the app is
//! not ready (one write per change, not one per volume), unless a leaving volume must go.

use std::collections::BTreeSet;

use super::{AppAction, Provision, Provisioned, found_app};
use crate::{
    controller::{
        app_patch::{self, MountedVolume},
        app_policy,
        conditions::{Outcome, Reason},
        pass::{Observed, Role, Vol},
    },
    crd::{Phase, validate::VolumeRequest},
    marathon::{App, AppUpdate, app::VolumeMode},
};

pub fn app_action(obs: &Observed, prov: &Provision, done: &Provisioned) -> AppAction {
    let Some(app) = found_app(obs) else {
        return AppAction::Keep;
    };
    if app_policy::refusal(app, obs.agent_app.as_deref()).is_some() {
        return AppAction::Keep;
    }
    let mut mounts = Vec::new();
    let mut not_ready = Vec::new();
    for (i, v) in obs.volumes.iter().enumerate() {
        match &v.role {
            Role::Active(req) => match done.ok(i) {
                Some(state) => mounts.push(mount(req, state.absolute_path.clone())),
                None => {
                    not_ready.push(v.name.as_str());
                    mounts.extend(existing_mount(app, v));
                }
            },
            Role::Held(_) => mounts.extend(existing_mount(app, v)),
            Role::Refused(_) | Role::Leaving => {}
        }
    }
    let pin = prov.host.clone().or_else(|| {
        app.labels
            .as_ref()
            .and_then(|l| l.get(app_patch::LABEL_HOST))
            .cloned()
    });
    let pin = if mounts.is_empty() { None } else { pin };
    let desired = match app_patch::desired_app(app, &mounts, pin.as_deref()) {
        Ok(d) => d,
        Err(e) => {
            return AppAction::Reject(Outcome::new(
                Phase::Failed,
                Reason::AppUpdateRejected,
                e.to_string(),
            ));
        }
    };
    let deployments: Vec<&str> = app.deployments.iter().flatten().map(|d| d.id.as_str()).collect();
    let Some(update) = AppUpdate::between(app, &desired) else {
        return match (pin, deployments.is_empty()) {
            (Some(host), true) => {
                let elsewhere: BTreeSet<String> = app
                    .tasks
                    .iter()
                    .flatten()
                    .map(|t| t.host.clone())
                    .filter(|h| *h != host)
                    .collect();
                if elsewhere.is_empty() {
                    AppAction::Keep
                } else {
                    AppAction::Restart {
                        elsewhere: elsewhere.into_iter().collect(),
                    }
                }
            }
            _ => AppAction::Keep,
        };
    };
    if !deployments.is_empty() {
        return AppAction::Wait(Outcome::new(
            Phase::Provisioning,
            Reason::AppLocked,
            format!(
                "app {} is being deployed ({}); berth updates it when that deployment ends",
                obs.app_id,
                deployments.join(", ")
            ),
        ));
    }
    let removes_leaving = obs
        .volumes
        .iter()
        .any(|v| matches!(v.role, Role::Leaving) && existing_mount(app, v).is_some());
    if !not_ready.is_empty() && !removes_leaving {
        return AppAction::Wait(Outcome::new(
            Phase::Provisioning,
            Reason::WaitingForVolume,
            format!(
                "app {} is updated once every volume of it is ready; waiting for {}",
                obs.app_id,
                not_ready.join(", ")
            ),
        ));
    }
    let fields = changed_fields(&update);
    AppAction::Update {
        update: Box::new(update),
        fields,
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

/// berth's current mount of the volume in the app, as it is: at the volume's container path, in
/// the paths berth's label lists, and — when berth recorded where the data is — of that path.
pub(crate) fn existing_mount(app: &App, v: &Vol) -> Option<MountedVolume> {
    let path = &v.obj.spec.container_path;
    let managed = app_patch::managed_paths(app);
    if !managed.contains(path) {
        return None;
    }
    let recorded = v.record.as_ref().and_then(|r| r.host_path.as_deref());
    app.host_volumes()
        .find(|h| &h.container_path == path && recorded.is_none_or(|r| r == h.host_path))
        .map(|h| MountedVolume {
            container_path: h.container_path.clone(),
            host_path: h.host_path.clone(),
            read_only: h.mode == VolumeMode::ReadOnly,
            allow_concurrent_writers: v.obj.spec.allow_concurrent_writers,
        })
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
