//! What berth does when a host's agent stops answering (`spec.hostLoss`).
//!
//! `Wait` (the default) keeps the volumes pinned: berth reports the host unavailable (and
//! `berth_host_unreachable_since_seconds` says since when) and changes nothing. `Reprovision`
//! is for data that can be rebuilt (caches, scratch): once the host has been away for `after`,
//! every volume of the app is given new, empty data on another host, the app is pinned there,
//! and the old data is recorded in the sealed `status.orphaned`. When the old host answers
//! again, its copy is marked released (so nothing binds it unasked) and reported; berth never
//! deletes it.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tracing::{info, warn};

use super::{
    conditions::{Binding, Check, Outcome, Reason, Report},
    context::Context,
    failure::Kind,
    migration::plan::{app_constraints, avoided_hosts},
    pass::{Observed, Role, act::write_status, plan::DataRef},
    placement::{self, Placement, PlacementInput},
    ports::VolumeEvent,
};
use crate::crd::{HostLossPolicy, OrphanedData, Phase};

/// The lost host, when every volume of the app asks to be reprovisioned and the host has been
/// away long enough.
pub fn lost_host(obs: &Observed, down_for: impl Fn(&str) -> Option<Duration>) -> Option<String> {
    let mut host = None;
    let mut after = Duration::ZERO;
    for v in &obs.volumes {
        let req = match &v.role {
            Role::Active(req) => req,
            Role::Refused(_) => continue,
            Role::Held(_) | Role::Leaving => return None,
        };
        let r = v
            .record
            .as_ref()
            .filter(|r| r.host_path.is_some() && r.migration.is_none())?;
        if req.host_loss != HostLossPolicy::Reprovision || req.host.as_deref() == Some(r.host.as_str()) {
            // Waits, or its spec pins it to that very host.
            return None;
        }
        match &host {
            None => host = Some(r.host.clone()),
            Some(h) if *h != r.host => return None,
            Some(_) => {}
        }
        after = after.max(req.host_loss_after);
    }
    let host = host?;
    (down_for(&host)? >= after).then_some(host)
}

/// Data left on lost hosts that berth has not found again yet: (volume index, entry index).
pub fn unfound_orphans(obs: &Observed) -> Vec<(usize, usize)> {
    obs.volumes
        .iter()
        .enumerate()
        .flat_map(|(i, v)| {
            v.record
                .iter()
                .flat_map(|r| r.orphaned.iter().enumerate())
                .filter(|(_, o)| !o.found)
                .map(move |(j, _)| (i, j))
        })
        .collect()
}

/// The host-loss part of a pass: `Some(requeue)` when it reprovisioned the app's volumes.
pub async fn run(ctx: &Context, obs: &Observed) -> Option<Duration> {
    check_orphans(ctx, obs).await;
    let lost = lost_host(obs, |h| ctx.host_down_for(h))?;
    let app = crate::controller::pass::plan::found_app(obs)?;
    let candidates = ctx.agents.candidates().await;
    let mut avoid = avoided_hosts(obs);
    avoid.push(&lost);
    let need = obs
        .volumes
        .iter()
        .filter_map(|v| v.request()?.capacity_bytes)
        .sum();
    let input = PlacementInput {
        capacity_bytes: need,
        avoid,
        ..Default::default()
    };
    let constraints = app_constraints(app);
    let host = match placement::place(&input, &candidates, |c| {
        placement::constraints_allow(&constraints, c)
    }) {
        Placement::Host { host, .. } => host,
        Placement::NoHost(why) | Placement::Conflict(why) => {
            warn!(%lost, %why, "cannot reprovision the app's volumes elsewhere");
            return None;
        }
    };
    let away = ctx.host_down_for(&lost).unwrap_or_default();
    let now = Timestamp::now().to_string();
    for v in obs.volumes.iter().filter(|v| v.request().is_some()) {
        let Some(r) = v.record.as_ref() else { continue };
        let mut orphaned = r.orphaned.clone();
        orphaned.push(OrphanedData {
            host: lost.clone(),
            host_path: r.host_path.clone().unwrap_or_default(),
            abandoned_at: now.clone(),
            found: false,
        });
        let message = format!(
            "host {lost} did not answer for {}; as hostLoss: Reprovision asks, the volume gets new, empty data on {host} and its data on {lost} is abandoned (never deleted)",
            humantime::format_duration(Duration::from_secs(away.as_secs()))
        );
        let report = Report {
            ready: Outcome::new(Phase::Provisioning, Reason::Reprovisioned, message.clone()),
            synced: Check::ok(Reason::Checked, "berth's last pass reached Marathon"),
            running: None,
            waiting: None,
        };
        let binding = Binding {
            host: Some(host.clone()),
            host_path: None,
            app: Some(obs.app_id.clone()),
            tenant: Some(r.tenant.to_string()),
            orphaned: Some(orphaned),
            ..Default::default()
        };
        if let Err(e) = write_status(ctx, v, &report, binding, None, false).await {
            warn!(volume = %v.name, error = %e, "cannot record the new host");
            return Some(Duration::from_secs(2));
        }
        ctx.kube
            .publish(&v.obj, &VolumeEvent::warning("Reprovisioned", message))
            .await;
        ctx.metrics.reprovisions.inc();
    }
    info!(%lost, new_host = %host, "reprovisioned the app's volumes after losing their host");
    Some(Duration::ZERO)
}

/// Marks data found again on a host that came back as released, and says so; forgets entries
/// whose host answered without the data.
async fn check_orphans(ctx: &Context, obs: &Observed) {
    for (i, j) in unfound_orphans(obs) {
        let v = &obs.volumes[i];
        let Some(r) = v.record.as_ref() else { continue };
        let o = &r.orphaned[j];
        if ctx
            .host_down_for(&o.host)
            .is_some_and(|d| d < Duration::from_secs(3600))
        {
            // Still away (berth asks again at most once an hour while it stays away).
            continue;
        }
        let (Some(rel), Some(uid)) = (r.rel_path.clone(), v.obj.metadata.uid.clone()) else {
            continue;
        };
        let data = DataRef {
            host: o.host.clone(),
            tenant: r.tenant.to_string(),
            host_path: rel,
            identity: Some(uid),
        };
        let found = match ctx.agents.release_found(&data).await {
            Ok(found) => {
                ctx.host_reachable(&o.host, true);
                found
            }
            Err(f) => {
                if f.kind == Kind::Unreachable {
                    ctx.host_reachable(&o.host, false);
                }
                continue;
            }
        };
        let mut orphaned = r.orphaned.clone();
        if found {
            orphaned[j].found = true;
        } else {
            orphaned.remove(j);
        }
        let Some(previous) = v.obj.status.as_ref() else {
            continue;
        };
        let report = Report {
            ready: previous_outcome(previous),
            synced: Check::ok(
                Reason::Checked,
                "berth's last pass reached Marathon and the host's agent",
            ),
            running: None,
            waiting: None,
        };
        let binding = Binding {
            host: Some(r.host.clone()),
            host_path: r.host_path.clone(),
            app: Some(r.app.clone()),
            tenant: Some(r.tenant.to_string()),
            orphaned: Some(orphaned),
            ..Default::default()
        };
        if write_status(ctx, v, &report, binding, None, true).await.is_ok() && found {
            let note = format!(
                "host {} is back and still holds the data this volume had before it was reprovisioned ({}); berth marked it released and never deletes it: copy what you need, then remove it by hand",
                o.host, o.host_path
            );
            ctx.kube
                .publish(&v.obj, &VolumeEvent::warning("OrphanedData", note))
                .await;
        }
        // One entry per pass: the next pass sees the new sealed list.
        return;
    }
}

fn previous_outcome(s: &crate::crd::StatefulLocalVolumeStatus) -> Outcome {
    let c = s.ready();
    Outcome::new(
        s.phase.unwrap_or(Phase::Pending),
        c.and_then(|c| Reason::parse(&c.reason))
            .unwrap_or(Reason::Provisioning),
        c.map(|c| c.message.clone()).unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::{lost_host, unfound_orphans};
    use crate::{
        controller::{
            migration::tests::{observed, running_on, spec, vol},
            pass::Role,
        },
        crd::OrphanedData,
    };

    fn reprovision(after: &str) -> serde_json::Value {
        let mut s = spec("/cache", json!({}));
        s["hostLoss"] = json!({"policy": "Reprovision", "after": after});
        s
    }

    #[test]
    fn only_volumes_that_all_ask_for_it_are_reprovisioned_after_their_time() {
        let down = |d: u64| move |h: &str| (h == "node-1").then_some(Duration::from_secs(d));
        let obs = observed(
            vec![vol("a", reprovision("2m"), Some("node-1"), true, None)],
            running_on("node-1", 1),
        );
        assert_eq!(lost_host(&obs, down(119)), None);
        assert_eq!(lost_host(&obs, down(120)).as_deref(), Some("node-1"));
        assert_eq!(lost_host(&obs, |_| None), None, "a host that answers is not lost");
        // One volume of the app waits (the default): the app waits.
        let obs = observed(
            vec![
                vol("a", reprovision("2m"), Some("node-1"), true, None),
                vol("bb", spec("/b", json!({})), Some("node-1"), true, None),
            ],
            running_on("node-1", 1),
        );
        assert_eq!(lost_host(&obs, down(3600)), None);
        // The longest `after` of the app's volumes counts.
        let obs = observed(
            vec![
                vol("a", reprovision("2m"), Some("node-1"), true, None),
                vol("bb", reprovision("10m"), Some("node-1"), true, None),
            ],
            running_on("node-1", 1),
        );
        assert_eq!(lost_host(&obs, down(300)), None);
        assert!(lost_host(&obs, down(600)).is_some());
        // A volume pinned to that host by its spec stays.
        let mut pinned = reprovision("2m");
        pinned["placement"] = json!({"host": "node-1"});
        let obs = observed(
            vec![vol("a", pinned, Some("node-1"), true, None)],
            running_on("node-1", 1),
        );
        assert_eq!(lost_host(&obs, down(3600)), None);
        // A volume being deleted holds the app back.
        let mut leaving = vol("a", reprovision("2m"), Some("node-1"), true, None);
        leaving.role = Role::Leaving;
        assert_eq!(
            lost_host(&observed(vec![leaving], running_on("node-1", 1)), down(3600)),
            None
        );
    }

    #[test]
    fn orphans_are_looked_for_until_found() {
        let mut v = vol("a", reprovision("2m"), Some("node-2"), true, None);
        let orphan = |found| OrphanedData {
            host: "node-1".into(),
            host_path: "/containerdata/user-toto/cache".into(),
            abandoned_at: "2026-11-30T12:00:00Z".into(),
            found,
        };
        v.record.as_mut().unwrap().orphaned = vec![orphan(true), orphan(false)];
        let obs = observed(vec![v], running_on("node-2", 1));
        assert_eq!(unfound_orphans(&obs), [(0, 1)]);
    }
}
