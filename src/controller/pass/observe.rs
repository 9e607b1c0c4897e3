//! What a pass knows before it decides: the app's volumes as berth knows them, the app, and —
//! only when a decision needs them — the agents' free space and Marathon's launch queue.

use std::sync::Arc;

use kube::ResourceExt;
use tracing::debug;

use super::{AppRead, Observed, Recorded, Role, Vol, plan};
use crate::{
    controller::{
        admission::Admission,
        context::Context,
        failure::Failure,
        seal::{Record, Sealer},
        usage::Learnt,
    },
    crd::{FINALIZER, StatefulLocalVolume, validate::TenantPolicy},
    marathon::MarathonError,
    tenant::{TenantId, VolumePath},
};

pub async fn observe(ctx: &Context, app_id: &str) -> Observed {
    let volumes = volumes(ctx, app_id);
    let (app, app_cached) = match ctx.apps.fresh(app_id) {
        Some(app) => (AppRead::Found(app), true),
        None => (read_app(ctx, app_id).await, false),
    };
    let mut obs = Observed {
        app_id: app_id.to_owned(),
        app,
        app_cached,
        volumes,
        candidates: Vec::new(),
        launch_blocked: None,
        agent_app: ctx.settings.agent_app.clone(),
        marathon_down_for: ctx.marathon_down_for(),
        move_blocked: None,
        move_waiting: None,
    };
    if plan::needs_candidates(&obs) {
        obs.candidates = ctx
            .agents
            .candidates()
            .await
            .into_iter()
            .map(|c| {
                let promised = ctx.volumes.promised_bytes(&c.host);
                c.with_promises(promised, ctx.settings.overcommit)
            })
            .collect();
    }
    if let AppRead::Found(app) = &obs.app
        && plan::needs_launch_queue(app)
    {
        obs.launch_blocked = ctx.marathon.launch_blocked(app_id).await.ok();
    }
    obs
}

/// Reads the app from Marathon (not the cache), e.g. right before writing to it.
pub async fn reread_app(ctx: &Context, obs: &mut Observed) {
    obs.app = read_app(ctx, &obs.app_id).await;
    obs.app_cached = false;
    if let AppRead::Found(app) = &obs.app
        && plan::needs_launch_queue(app)
        && obs.launch_blocked.is_none()
    {
        obs.launch_blocked = ctx.marathon.launch_blocked(&obs.app_id).await.ok();
    }
}

async fn read_app(ctx: &Context, app_id: &str) -> AppRead {
    if !ctx.may_call_marathon() {
        // Marathon is away and another pass probes it: the same answer as the last probe.
        return AppRead::Failed(ctx.last_outage());
    }
    let ticket = ctx.apps.ticket();
    match ctx.marathon.get_app(app_id).await {
        Ok(app) => {
            ctx.marathon_reachable(true);
            ctx.apps.store(ticket, app_id, Arc::new(app.clone().slim()));
            AppRead::Found(Arc::new(app))
        }
        Err(MarathonError::NotFound { .. }) => {
            ctx.marathon_reachable(true);
            ctx.apps.forget(app_id);
            AppRead::Missing
        }
        Err(e) => {
            let failure = Failure::marathon_outage(&e);
            ctx.marathon_failed(&failure);
            ctx.metrics.failure("marathon", &failure);
            debug!(error = %e, "cannot read the app");
            AppRead::Failed(failure)
        }
    }
}

/// The volumes whose home is this app, each with its role.
fn volumes(ctx: &Context, app_id: &str) -> Vec<Vol> {
    let mut out: Vec<Vol> = ctx
        .volumes
        .of_app(app_id)
        .into_iter()
        .filter_map(|obj| {
            let obj = ctx.written.fresh(&obj);
            let record = sealed_record(&ctx.sealer, &ctx.policy, &obj);
            let neighbours = ctx.volumes.sharing_first_component(&obj.spec.host_path);
            let admission = Admission {
                tenants: &ctx.tenants,
                policy: &ctx.policy,
                neighbours: &neighbours,
            };
            let mut v = classify(obj, record, app_id, &admission)?;
            if let Some(uid) = v.obj.metadata.uid.as_deref() {
                v.verified = ctx.verified_fresh(uid, v.obj.metadata.generation);
                v.learnt = ctx.learnt(uid);
            }
            Some(v)
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    refuse_shared_container_paths(&mut out);
    out
}

/// Two volumes of one app cannot be mounted at the same container path: the app would mount
/// only one of them. The volume already mounted there (held or admitted as it is) keeps it; of
/// two new ones, the older keeps it. The other is refused.
pub fn refuse_shared_container_paths(volumes: &mut [Vol]) {
    let keeps = |v: &Vol| {
        (
            !matches!(v.role, Role::Held(_)),
            !crate::controller::admission::admitted_as_is(&v.obj),
            v.obj.creation_timestamp(),
            v.name.clone(),
        )
    };
    let mut order: Vec<usize> = (0..volumes.len())
        .filter(|&i| matches!(volumes[i].role, Role::Active(_) | Role::Held(_)))
        .collect();
    order.sort_by_key(|&i| keeps(&volumes[i]));
    let mut taken: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for i in order {
        let path = match &volumes[i].role {
            Role::Active(req) => req.container_path.as_string(),
            _ => volumes[i].obj.spec.container_path.clone(),
        };
        match taken.get(&path) {
            Some(owner) if matches!(volumes[i].role, Role::Active(_)) => {
                volumes[i].role = Role::Refused(format!(
                    "spec.containerPath: {path} is already the mount point of volume {owner} in the same app; \
                     a container path can hold one volume: choose another containerPath"
                ));
            }
            Some(_) => {}
            None => {
                taken.insert(path, volumes[i].name.clone());
            }
        }
    }
}

/// The role of a volume in the pass over `app_id`, or `None` when it is not this app's: a
/// volume's home is the app berth bound it to (its sealed record), else the app its spec names.
pub fn classify(
    obj: Arc<StatefulLocalVolume>,
    record: Option<Recorded>,
    app_id: &str,
    admission: &Admission<'_>,
) -> Option<Vol> {
    let home = record.as_ref().map_or(obj.spec.app.as_str(), |r| r.app.as_str());
    if home != app_id {
        return None;
    }
    let finalized = obj.finalizers().iter().any(|f| f == FINALIZER);
    let role = if obj.metadata.deletion_timestamp.is_some() {
        if !finalized {
            return None; // going away without berth's help: nothing of it is berth's
        }
        Role::Leaving
    } else {
        let bound = record.as_ref().map(Recorded::bound);
        match admission.admit(&obj, bound.as_ref()) {
            Ok(req) => Role::Active(Box::new(req)),
            Err(msg) if record.as_ref().is_some_and(|r| r.host_path.is_some()) => Role::Held(msg),
            Err(msg) => Role::Refused(msg),
        }
    };
    let name = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
    Some(Vol {
        obj,
        name,
        role,
        record,
        finalized,
        verified: false,
        learnt: Learnt::default(),
    })
}

/// berth's record in the volume's status, if it carries berth's seal.
pub fn sealed_record(sealer: &Sealer, policy: &TenantPolicy, obj: &StatefulLocalVolume) -> Option<Recorded> {
    let s = obj.status.as_ref()?;
    let uid = obj.uid()?;
    let (app, tenant, host, seal) = (
        s.app.as_deref()?,
        s.tenant.as_deref()?,
        s.host.as_deref()?,
        s.seal.as_deref()?,
    );
    let extra = crate::controller::seal::extra(s.migration.as_ref(), &s.orphaned);
    let record = Record {
        uid: &uid,
        app,
        tenant,
        host,
        host_path: s.host_path.as_deref(),
        extra: extra.as_deref(),
    };
    if !sealer.verify(&record, seal) {
        return None;
    }
    let tenant = TenantId::parse(tenant).ok()?;
    // `/…/user-toto/a/b` → `/a/b`: the agent is asked about the path below the tenant's root.
    let dir_name = policy.roots.root(&tenant).dir_name().to_owned();
    let rel_path = s
        .host_path
        .as_deref()
        .and_then(|p| relative_path(p, &dir_name, &obj.spec.host_path));
    Some(Recorded {
        app: app.to_owned(),
        tenant,
        host: host.to_owned(),
        host_path: s.host_path.clone(),
        rel_path,
        migration: s.migration.clone(),
        orphaned: s.orphaned.clone(),
    })
}

/// The user's path of the data at `abs` (`/…/user-toto/a/b` → `/a/b`): the spec's own path when
/// the data is there, else what follows the first tenant directory in the path.
fn relative_path(abs: &str, tenant_dir: &str, spec_path: &str) -> Option<String> {
    if let Ok(p) = VolumePath::parse(spec_path)
        && abs.ends_with(&format!("/{tenant_dir}{}", p.as_string()))
    {
        return Some(p.as_string());
    }
    let dir = format!("/{tenant_dir}/");
    let at = abs.find(&dir)?;
    Some(format!("/{}", &abs[at + dir.len()..]))
}

#[cfg(test)]
mod tests {
    use super::relative_path;

    #[test]
    fn the_relative_path_of_recorded_data() {
        let abs = "/srv/containerdata/user-toto/x/user-toto/y";
        assert_eq!(
            relative_path(abs, "user-toto", "/x/user-toto/y").as_deref(),
            Some("/x/user-toto/y")
        );
        assert_eq!(
            relative_path(abs, "user-toto", "/other").as_deref(),
            Some("/x/user-toto/y")
        );
        assert_eq!(
            relative_path("/containerdata/user-toto/data", "user-toto", "//data/").as_deref(),
            Some("/data")
        );
        assert_eq!(
            relative_path("/containerdata/user-tata/data", "user-toto", "/data"),
            None
        );
    }
}
