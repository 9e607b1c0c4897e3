//! berth's share of a Marathon app, computed from all of the app's volumes (pure).
//!
//! berth owns, in an app: the host volumes it mounted (listed in the `berth.dev/volumes` label,
//! so removal is exact), its hostname pin (`["hostname","CLUSTER",<host>]`, remembered in
//! `berth.dev/host`), and the upgrade strategy while it has volumes there (single-writer, the
//! user's previous strategy kept in `berth.dev/upgrade-strategy-before` and restored when the
//! last volume goes). Everything else in the app is the user's and is carried over unchanged.
//! Volumes keep their positions: Marathon compares the list in order, and a reorder alone would
//! restart every task.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Map;

use crate::marathon::{
    app::{App, HostVolume, UpgradeStrategy, Volume, VolumeMode},
    constraint::Constraint,
};

pub const LABEL_VOLUMES: &str = "berth.dev/volumes";
pub const LABEL_HOST: &str = "berth.dev/host";
pub const LABEL_UPGRADE_BEFORE: &str = "berth.dev/upgrade-strategy-before";

/// One of berth's volumes as it must appear in the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountedVolume {
    pub container_path: String,
    /// Absolute path on the host, under the tenant root.
    pub host_path: String,
    pub read_only: bool,
    pub allow_concurrent_writers: bool,
}

/// Why berth cannot put its volumes into the app as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error(
        "app {0} has no container: berth mounts volumes into Docker containers; give the app a container (type DOCKER)"
    )]
    NoContainer(String),
    #[error(
        "app {app} already has its own volume at {path}; remove it from the app or choose another containerPath"
    )]
    ContainerPathTaken { app: String, path: String },
    #[error(
        "app {app} has its own constraint pinning it to {pinned}, but its data is on {host}; remove that constraint from the app"
    )]
    PinnedElsewhere {
        app: String,
        pinned: String,
        host: String,
    },
}

/// The app as berth wants it: `current` with berth's fields replaced. With no volumes and no
/// host, every trace of berth is removed.
pub fn desired_app(current: &App, volumes: &[MountedVolume], host: Option<&str>) -> Result<App, PatchError> {
    let mut app = current.clone();
    let labels = current.labels.clone().unwrap_or_default();
    let managed_before: BTreeSet<&str> = labels
        .get(LABEL_VOLUMES)
        .map(|v| v.split(',').filter(|p| !p.is_empty()).collect())
        .unwrap_or_default();
    let wanted: BTreeMap<&str, &MountedVolume> =
        volumes.iter().map(|v| (v.container_path.as_str(), v)).collect();

    // Volumes, in place.
    let mut placed = BTreeSet::new();
    let mut list = Vec::new();
    for v in current.container.iter().flat_map(|c| c.volumes.iter().flatten()) {
        match v {
            Volume::Host(h) if managed_before.contains(h.container_path.as_str()) => {
                if let Some(w) = wanted.get(h.container_path.as_str()) {
                    list.push(Volume::Host(host_volume(w, h)));
                    placed.insert(h.container_path.as_str());
                }
            }
            other => {
                if let Some(path) = container_path(other).filter(|p| wanted.contains_key(p)) {
                    return Err(PatchError::ContainerPathTaken {
                        app: current.id.clone(),
                        path: path.to_owned(),
                    });
                }
                list.push(other.clone());
            }
        }
    }
    for (path, w) in &wanted {
        if !placed.contains(path) {
            list.push(Volume::Host(HostVolume::new(
                &w.container_path,
                &w.host_path,
                mode(w),
            )));
        }
    }
    match app.container.as_mut() {
        Some(c) => {
            let had_none = c.volumes.is_none();
            c.volumes = if list.is_empty() && had_none {
                None
            } else {
                Some(list)
            };
        }
        None if volumes.is_empty() => {}
        None => return Err(PatchError::NoContainer(current.id.clone())),
    }

    // The pin.
    let mut constraints = current.constraints.clone().unwrap_or_default();
    if let Some(before) = labels.get(LABEL_HOST) {
        constraints.remove(&Constraint::hostname_cluster(before));
    }
    if let Some(host) = host {
        if let Some(pinned) = constraints.pinned_hosts().into_iter().find(|p| p != host) {
            return Err(PatchError::PinnedElsewhere {
                app: current.id.clone(),
                pinned,
                host: host.to_owned(),
            });
        }
        constraints.insert(Constraint::hostname_cluster(host));
    }
    app.constraints = if constraints.is_empty() && current.constraints.is_none() {
        None
    } else {
        Some(constraints)
    };

    // Upgrade strategy and labels.
    let mut new_labels = labels.clone();
    let managing = !volumes.is_empty();
    let single_writer = managing && !volumes.iter().all(|v| v.allow_concurrent_writers);
    if single_writer {
        if !new_labels.contains_key(LABEL_UPGRADE_BEFORE) {
            let before = current
                .upgrade_strategy
                .as_ref()
                .map(strategy_text)
                .unwrap_or_else(|| "default".into());
            new_labels.insert(LABEL_UPGRADE_BEFORE.into(), before);
        }
        app.upgrade_strategy = Some(UpgradeStrategy::single_writer());
    } else if let Some(before) = new_labels.remove(LABEL_UPGRADE_BEFORE) {
        app.upgrade_strategy = Some(parse_strategy(&before));
    }
    if managing {
        let paths: Vec<&str> = wanted.keys().copied().collect();
        new_labels.insert(LABEL_VOLUMES.into(), paths.join(","));
    } else {
        new_labels.remove(LABEL_VOLUMES);
    }
    match host {
        Some(h) if managing => new_labels.insert(LABEL_HOST.into(), h.to_owned()),
        _ => new_labels.remove(LABEL_HOST),
    };
    app.labels = if new_labels.is_empty() && current.labels.is_none() {
        None
    } else {
        Some(new_labels)
    };
    Ok(app)
}

/// The container paths berth manages in an app, from its label.
pub fn managed_paths(app: &App) -> Vec<String> {
    app.labels
        .as_ref()
        .and_then(|l| l.get(LABEL_VOLUMES))
        .map(|v| {
            v.split(',')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn mode(v: &MountedVolume) -> VolumeMode {
    if v.read_only {
        VolumeMode::ReadOnly
    } else {
        VolumeMode::ReadWrite
    }
}

/// berth's volume, keeping any extra keys Marathon or the user attached to the existing entry.
fn host_volume(w: &MountedVolume, existing: &HostVolume) -> HostVolume {
    HostVolume {
        extra: existing.extra.clone(),
        ..HostVolume::new(&w.container_path, &w.host_path, mode(w))
    }
}

fn container_path(v: &Volume) -> Option<&str> {
    match v {
        Volume::Host(h) => Some(&h.container_path),
        Volume::Persistent(p) => Some(&p.container_path),
        Volume::External(e) => Some(&e.container_path),
        Volume::Secret(s) => Some(&s.container_path),
        Volume::Other(m) => m.get("containerPath").and_then(|p| p.as_str()),
    }
}

fn strategy_text(s: &UpgradeStrategy) -> String {
    format!("{}/{}", s.minimum_health_capacity, s.maximum_over_capacity)
}

/// Marathon's defaults (1.0/1.0) when the user had none.
fn parse_strategy(text: &str) -> UpgradeStrategy {
    let parsed = text
        .split_once('/')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
    let (min, max) = parsed.unwrap_or((1.0, 1.0));
    UpgradeStrategy {
        minimum_health_capacity: min,
        maximum_over_capacity: max,
        extra: Map::new(),
    }
}

#[cfg(test)]
mod tests;
