//! The first decision of a pass: which host the app's data lives on, and what to write and
//! create there before the app is touched.

use super::{Provision, found_app};
use crate::{
    agent::{
        api::{ContainerOwner, EnsureBody, EnsureVolumeRequest, IdentityCheck, Seed, VolumeType as WireType},
        identity::{Expect, VolumeIdentity},
    },
    controller::{
        app_policy,
        conditions::{Outcome, Reason},
        pass::{AppRead, Observed, Role},
        placement::{self, Placement, PlacementInput},
    },
    crd::{
        Phase, StatefulLocalVolume, VolumeType,
        validate::{SeedSource, VolumeRequest},
    },
};

/// The placement input from the volumes a pass observed: the recorded hosts of active and held
/// volumes, the hosts active volumes ask for, and where the app's tasks run.
pub fn placement_input(obs: &Observed) -> PlacementInput<'_> {
    let mut input = PlacementInput::default();
    for v in &obs.volumes {
        let counts = matches!(v.role, Role::Active(_) | Role::Held(_));
        if let Some(r) = v.record.as_ref().filter(|_| counts) {
            input.recorded.push((v.name.as_str(), r.host.as_str()));
        }
        if let Some(req) = v.request() {
            let recorded_elsewhere = v
                .record
                .as_ref()
                .is_some_and(|r| Some(r.host.as_str()) != req.host.as_deref());
            if let Some(h) = req.host.as_deref()
                && !(obs.move_waiting.is_some() && recorded_elsewhere)
            {
                input.requested.push((v.name.as_str(), h));
            }
            input.capacity_bytes = input
                .capacity_bytes
                .saturating_add(req.capacity_bytes.unwrap_or(0));
        }
    }
    if let Some(app) = found_app(obs) {
        input.task_hosts = app.tasks.iter().flatten().map(|t| t.host.as_str()).collect();
    }
    input.avoid = crate::controller::migration::plan::avoided_hosts(obs);
    input.move_blocked = obs
        .move_blocked
        .clone()
        .or_else(|| crate::controller::migration::plan::blocked(obs));
    input
}

/// Whether the pass must ask the agents for their free space: only for a fresh placement, and
/// then only to choose a host or to check that the volumes' capacities fit on the one asked for
/// or where the app runs.
pub fn needs_candidates(obs: &Observed) -> bool {
    let any_active = obs.volumes.iter().any(|v| v.request().is_some());
    let input = placement_input(obs);
    let chooses = input.requested.is_empty() && input.task_hosts.is_empty();
    any_active && input.recorded.is_empty() && (chooses || input.capacity_bytes > 0)
}

/// Decides the app's host and what to record and create before anything else.
pub fn provision(obs: &Observed) -> Provision {
    let mut plan = Provision::default();
    let actives: Vec<(usize, &VolumeRequest)> = obs
        .volumes
        .iter()
        .enumerate()
        .filter_map(|(i, v)| Some((i, v.request()?)))
        .collect();
    if actives.is_empty() {
        return plan;
    }
    let app = match &obs.app {
        AppRead::Found(app) => app,
        AppRead::Missing => {
            plan.stop = Some(Outcome::new(
                Phase::Pending,
                Reason::AppNotFound,
                format!(
                    "Marathon has no app {}; create the app and berth will mount the volume into it",
                    obs.app_id
                ),
            ));
            return plan;
        }
        AppRead::Failed(f) => {
            plan.stop = Some(Outcome::new(
                Phase::Pending,
                Reason::MarathonUnavailable,
                format!("cannot read app {} from Marathon: {}", obs.app_id, f.message),
            ));
            return plan;
        }
    };
    if let Some(why) = app_policy::refusal(app, obs.agent_app.as_deref()) {
        plan.stop = Some(Outcome::new(Phase::Failed, Reason::AppNotAllowed, why));
        return plan;
    }
    let constraints: Vec<(String, String, Option<String>)> = app
        .constraints
        .iter()
        .flat_map(|c| c.iter())
        .map(|c| (c.field.clone(), c.operator.clone(), c.value.clone()))
        .collect();
    let input = placement_input(obs);
    let (host, reason) = match placement::place(&input, &obs.candidates, |c| {
        placement::constraints_allow(&constraints, c)
    }) {
        Placement::Host { host, reason } => (host, reason),
        Placement::Conflict(msg) => {
            plan.stop = Some(Outcome::new(Phase::Failed, Reason::ConflictingPlacement, msg));
            return plan;
        }
        Placement::NoHost(msg) => {
            plan.stop = Some(Outcome::new(Phase::Pending, Reason::NoSuitableHost, msg));
            return plan;
        }
    };
    for (i, req) in actives {
        let v = &obs.volumes[i];
        if !v.finalized {
            plan.finalize.push(i);
        }
        if v.record.as_ref().map(|r| r.host.as_str()) != Some(host.as_str()) {
            plan.record.push(i);
        }
        let confirmed = v
            .record
            .as_ref()
            .filter(|r| v.verified && v.was_ready() && r.host == host)
            .and_then(|r| r.host_path.clone());
        match confirmed {
            Some(path) => plan.verified.push((i, path)),
            None => {
                let bound = v
                    .record
                    .as_ref()
                    .is_some_and(|r| r.host == host && r.host_path.is_some());
                plan.ensure.push((i, ensure_request(req, &v.obj, bound)));
            }
        }
    }
    plan.host = Some(host);
    plan.reason = Some(reason);
    plan
}

/// What the agent is asked to make, the capacity to hold it to (none lifts a limit set
/// before), and the identity its data must carry. `bound`: berth bound the volume to data on
/// this host before.
///
/// A read-only volume claims no data: several read-only volumes may mount one dataset (the
/// admission allows a shared path only when every volume on it is read-only), so its data is
/// neither checked against its identity nor marked with it.
pub fn ensure_request(req: &VolumeRequest, obj: &StatefulLocalVolume, bound: bool) -> EnsureBody {
    let identity = obj
        .metadata
        .uid
        .as_deref()
        .filter(|_| !req.read_only)
        .and_then(|uid| VolumeIdentity::parse(uid).ok());
    EnsureBody {
        request: volume_request(req),
        capacity_bytes: req.capacity_bytes,
        check: IdentityCheck {
            expect: identity.as_ref().map(|_| expect(obj, bound)),
            identity,
        },
    }
}

/// What berth knows of the volume's data on its host, for the agent's identity check.
pub fn expect(obj: &StatefulLocalVolume, bound: bool) -> Expect {
    let marked = obj.status.as_ref().and_then(|s| s.data_marked) == Some(true);
    match (bound, marked) {
        // Marked before: the data must be there and carry the mark.
        (true, true) => Expect::Bound,
        // Bound by a berth from before identities: its data is taken as it is, once.
        (true, false) => Expect::AdoptUnstamped,
        (false, _) if obj.spec.adopt_data => Expect::AdoptReleased,
        (false, _) => Expect::New,
    }
}

fn volume_request(req: &VolumeRequest) -> EnsureVolumeRequest {
    EnsureVolumeRequest {
        tenant: req.tenant.to_string(),
        host_path: req.host_path.as_string(),
        volume_type: match req.kind {
            VolumeType::Directory => WireType::Directory,
            VolumeType::File => WireType::File,
        },
        owner: req.owner.map(|o| ContainerOwner {
            uid: o.uid,
            gid: o.gid,
        }),
        permissions: Some(format!("{:04o}", req.mode)),
        seed: req.seed.as_ref().map(|s| match s {
            SeedSource::Content(c) => Seed::Content(c.clone()),
            SeedSource::CopyFromHost(p) => Seed::CopyFromHost(p.clone()),
        }),
    }
}
