//! What `berth migrate` and `berth drain` decide, without I/O: which volumes move together, the
//! JSON merge patch for each, and when `migrate` refuses.
//!
//! Both commands only edit `spec.placement` (what a GitOps user would write by hand); the
//! controller does the move. Every patch carries `metadata.resourceVersion`, so the apiserver
//! refuses it (409) when the volume changed since it was read, instead of overwriting a change.

use std::collections::BTreeMap;

use kube::ResourceExt;
use serde_json::{Map, Value, json};
use thiserror::Error;

use crate::crd::{MigrationStatus, StatefulLocalVolume, rules};

/// `namespace/name`, as the commands print a volume.
pub fn key(v: &StatefulLocalVolume) -> String {
    format!("{}/{}", v.namespace().unwrap_or_default(), v.name_any())
}

/// Whether the volume is being deleted (it only waits for its finalizer).
pub fn is_deleting(v: &StatefulLocalVolume) -> bool {
    v.metadata.deletion_timestamp.is_some()
}

/// The host that holds the data (`status.host`), once the volume is bound.
pub fn bound_host(v: &StatefulLocalVolume) -> Option<&str> {
    v.status.as_ref()?.host.as_deref()
}

/// The move under way (`status.migration`), if any.
pub fn migration(v: &StatefulLocalVolume) -> Option<&MigrationStatus> {
    v.status.as_ref()?.migration.as_ref()
}

/// The host the spec asks for (`spec.placement.host`).
pub fn requested_host(v: &StatefulLocalVolume) -> Option<&str> {
    v.spec.placement.as_ref()?.host.as_deref()
}

fn avoided_hosts(v: &StatefulLocalVolume) -> &[String] {
    v.spec
        .placement
        .as_ref()
        .map_or(&[], |p| p.avoid_hosts.as_slice())
}

/// A host name as the CRD accepts it (`spec.placement.host`): letters, digits, '.' and '-',
/// starting and ending with a letter or digit. Checked here because older apiservers do not run
/// the CRD's rules.
pub fn parse_host(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= rules::MAX_HOST_BYTES
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} {}", rules::HOST_RULES[0].1))
    }
}

/// The volumes of Marathon app `app` in `namespace`, sorted by name. They move together: Marathon
/// runs an app's tasks on one host, so every volume of the app names the same host.
pub fn app_volumes<'a>(
    volumes: &'a [StatefulLocalVolume],
    namespace: &str,
    app: &str,
) -> Vec<&'a StatefulLocalVolume> {
    let mut found: Vec<_> = volumes
        .iter()
        .filter(|v| v.spec.app == app && v.namespace().as_deref() == Some(namespace))
        .collect();
    found.sort_by_key(|v| v.name_any());
    found
}

/// The merge patch that sets `spec.placement` to `host` and `avoid` (`null` removes a field), with
/// the volume's resourceVersion as a precondition; `None` when the spec already says so.
fn placement_patch(v: &StatefulLocalVolume, host: Option<&str>, avoid: Vec<String>) -> Option<Value> {
    let mut placement = Map::new();
    if requested_host(v) != host {
        placement.insert("host".into(), host.map_or(Value::Null, |h| json!(h)));
    }
    if avoided_hosts(v) != avoid.as_slice() {
        let avoid = if avoid.is_empty() {
            Value::Null
        } else {
            json!(avoid)
        };
        placement.insert("avoidHosts".into(), avoid);
    }
    if placement.is_empty() {
        return None;
    }
    Some(json!({
        "metadata": {"resourceVersion": v.resource_version()},
        "spec": {"placement": placement},
    }))
}

/// `berth migrate`: `spec.placement.host = host`, and `host` out of `spec.placement.avoidHosts`.
pub fn migrate_patch(v: &StatefulLocalVolume, host: &str) -> Option<Value> {
    let avoid = avoided_hosts(v).iter().filter(|h| *h != host).cloned().collect();
    placement_patch(v, Some(host), avoid)
}

/// `berth drain`: `host` in `spec.placement.avoidHosts`, and `spec.placement.host` removed when it
/// names `host` (the controller then chooses another host for the app).
pub fn drain_patch(v: &StatefulLocalVolume, host: &str) -> Option<Value> {
    let mut avoid = avoided_hosts(v).to_vec();
    if !avoid.iter().any(|h| h == host) {
        avoid.push(host.to_owned());
    }
    let keep = requested_host(v).filter(|h| *h != host);
    placement_patch(v, keep, avoid)
}

/// Why `berth migrate` does not move a volume.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Refusal {
    #[error(
        "{volume} is not bound to a host yet: set spec.placement.host instead (e.g. kubectl \
         patch slv -n {namespace} {name} --type merge \
         -p '{{\"spec\":{{\"placement\":{{\"host\":\"{host}\"}}}}}}')"
    )]
    NotBound {
        volume: String,
        namespace: String,
        name: String,
        host: String,
    },
    #[error("{volume} is being deleted: there is nothing to move")]
    Deleting { volume: String },
}

/// What `berth migrate` does.
#[derive(Debug, PartialEq, Eq)]
pub enum MigrateDecision {
    /// Every volume of the app is on the host, no move is under way and the specs already say so.
    AlreadyThere,
    /// Patch the app's volumes; the data is on `from` now.
    Move { from: String },
}

/// Whether `volume` (of the app whose volumes are `app`) can move to `host`.
pub fn decide_migrate(
    volume: &StatefulLocalVolume,
    app: &[&StatefulLocalVolume],
    host: &str,
) -> Result<MigrateDecision, Refusal> {
    if is_deleting(volume) {
        return Err(Refusal::Deleting { volume: key(volume) });
    }
    let Some(from) = bound_host(volume) else {
        return Err(Refusal::NotBound {
            volume: key(volume),
            namespace: volume.namespace().unwrap_or_default(),
            name: volume.name_any(),
            host: host.to_owned(),
        });
    };
    let settled = |v: &&StatefulLocalVolume| {
        is_deleting(v)
            || (bound_host(v) == Some(host) && migration(v).is_none() && migrate_patch(v, host).is_none())
    };
    if from == host && app.iter().all(settled) {
        return Ok(MigrateDecision::AlreadyThere);
    }
    Ok(MigrateDecision::Move {
        from: from.to_owned(),
    })
}

/// The volumes of one app that `berth drain` edits.
#[derive(Debug)]
pub struct DrainGroup<'a> {
    pub namespace: String,
    pub app: String,
    /// Every volume of the app that is not being deleted, by name.
    pub volumes: Vec<&'a StatefulLocalVolume>,
}

impl DrainGroup<'_> {
    /// The volumes to wait for: those bound to a host (the others have no data to move).
    pub fn bound(&self) -> Vec<String> {
        let bound = self.volumes.iter().filter(|v| bound_host(v).is_some());
        bound.map(|v| v.name_any()).collect()
    }
}

/// Whether `v` has to do with `host`: its data is there, is moving from or to it, or its spec asks
/// for it.
pub fn concerns(v: &StatefulLocalVolume, host: &str) -> bool {
    bound_host(v) == Some(host)
        || migration(v).is_some_and(|m| m.from == host || m.to == host)
        || requested_host(v) == Some(host)
}

/// The apps `berth drain host` moves, in (namespace, app) order: each app with a volume that
/// [`concerns`] the host, with all its volumes that are not being deleted.
pub fn drain_groups<'a>(volumes: &'a [StatefulLocalVolume], host: &str) -> Vec<DrainGroup<'a>> {
    let mut apps: BTreeMap<(String, String), Vec<&'a StatefulLocalVolume>> = BTreeMap::new();
    for v in volumes.iter().filter(|v| !is_deleting(v)) {
        let app = (v.namespace().unwrap_or_default(), v.spec.app.clone());
        apps.entry(app).or_default().push(v);
    }
    apps.into_iter()
        .filter(|(_, vs)| vs.iter().any(|v| concerns(v, host)))
        .map(|((namespace, app), mut volumes)| {
            volumes.sort_by_key(|v| v.name_any());
            DrainGroup {
                namespace,
                app,
                volumes,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
