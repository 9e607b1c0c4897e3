//! The host verification: once per resync period, every host's agent confirms all the bound
//! volumes it holds in one batched request (idempotent ensures: drift is repaired on the spot),
//! so the passes of a resync need no agent call of their own. A volume the agent repaired or
//! refused gets a pass at once, which reports what happened.
//!
//! The same round asks the agent what each volume holds (one batched request) and how full its
//! disk is, for the capacity metrics; a volume whose usage moved enough to show, or passed its
//! warning threshold, gets a pass that writes it. A host whose disk passes the threshold warns
//! every volume on it once.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use kube::ResourceExt;
use tracing::{debug, info};

use super::{
    admission::Admission,
    context::Context,
    metrics::{HostFigures, VolumeFigures, VolumeLabels},
    pass::{observe::sealed_record, plan::ensure_request},
    ports::VolumeEvent,
    queue::AppQueue,
    usage::{self, Learnt},
};
use crate::{
    agent::api::{EnsureBody, UsageReport, VolumeQuery},
    crd::StatefulLocalVolume,
};

/// One bound volume to confirm.
struct Item {
    obj: Arc<StatefulLocalVolume>,
    uid: String,
    generation: Option<i64>,
    app: String,
    request: EnsureBody,
}

/// The bound, admitted volumes of every host, from the cache.
fn bound_volumes(ctx: &Context) -> BTreeMap<String, Vec<Item>> {
    let mut by_host: BTreeMap<String, Vec<Item>> = BTreeMap::new();
    for obj in ctx.volumes.all() {
        if obj.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let obj = ctx.written.fresh(&obj);
        let ready = obj.status.as_ref().is_some_and(|s| s.is_ready());
        let Some(record) =
            sealed_record(&ctx.sealer, &ctx.policy, &obj).filter(|r| ready && r.host_path.is_some())
        else {
            continue;
        };
        let neighbours = ctx.volumes.sharing_first_component(&obj.spec.host_path);
        let admission = Admission {
            tenants: &ctx.tenants,
            policy: &ctx.policy,
            neighbours: &neighbours,
        };
        let Ok(req) = admission.admit(&obj, Some(&record.bound())) else {
            continue; // held: its pass keeps it as it is
        };
        let Some(uid) = obj.uid() else {
            continue;
        };
        by_host.entry(record.host.clone()).or_default().push(Item {
            obj: obj.clone(),
            uid,
            generation: obj.metadata.generation,
            app: record.app.clone(),
            request: ensure_request(&req, &obj, true),
        });
    }
    by_host
}

/// Confirms every host's bound volumes once per `period`, until the controller stops.
pub async fn run(ctx: Arc<Context>, queue: Arc<AppQueue>, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        let hosts = bound_volumes(&ctx);
        let checks = hosts.into_iter().map(|(host, items)| {
            let ctx = ctx.clone();
            let queue = queue.clone();
            async move { verify_host(&ctx, &queue, &host, items).await }
        });
        futures::future::join_all(checks).await;
    }
}

async fn verify_host(ctx: &Context, queue: &AppQueue, host: &str, items: Vec<Item>) {
    let requests: Vec<EnsureBody> = items.iter().map(|i| i.request.clone()).collect();
    let answers = match ctx.agents.ensure(host, &requests).await {
        Ok(a) => {
            ctx.host_reachable(host, true);
            a
        }
        Err(f) => {
            // The passes of its apps ask again once the confirmation is stale, and report it;
            // how long the host has been away counts from now (hostLoss, the lost-host metric).
            if f.kind == crate::controller::failure::Kind::Unreachable {
                ctx.host_reachable(host, false);
            }
            ctx.metrics.failure("agent", &f);
            debug!(%host, error = %f.message, "host verification failed");
            return;
        }
    };
    let mut repaired = 0;
    let mut confirmed = Vec::with_capacity(items.len());
    for (item, answer) in items.into_iter().zip(answers) {
        match answer {
            Ok(answer) => {
                let state = &answer.state;
                let repair = state.created || state.changed || state.reowned.is_some();
                ctx.mark_verified(&item.uid, item.generation, &answer, repair);
                if repair {
                    repaired += 1;
                    queue.trigger(&item.app);
                }
                confirmed.push(item);
            }
            Err(f) => {
                ctx.metrics.failure("agent", &f);
                ctx.unverify(&item.uid);
                queue.trigger(&item.app);
            }
        }
    }
    if repaired > 0 {
        info!(%host, repaired, "host verification repaired volumes");
    }
    measure_host(ctx, queue, host, &confirmed).await;
}

/// What the host's volumes hold and how full its disk is: metrics, and a pass for each volume
/// whose status should show it.
async fn measure_host(ctx: &Context, queue: &AppQueue, host: &str, items: &[Item]) {
    let queries: Vec<VolumeQuery> = items
        .iter()
        .map(|i| VolumeQuery {
            tenant: i.request.request.tenant.clone(),
            host_path: i.request.request.host_path.clone(),
        })
        .collect();
    let reports: Vec<Option<UsageReport>> = match ctx.agents.usage(host, &queries).await {
        Ok(r) => r.into_iter().map(Some).collect(),
        Err(f) => {
            // An agent from before usage reports, or one that just failed: the figures shown
            // stay until the next round.
            debug!(%host, error = %f.message, "usage not measured");
            vec![None; items.len()]
        }
    };
    let warn = ctx.settings.usage_warning;
    let mut figures = Vec::with_capacity(items.len());
    for (item, report) in items.iter().zip(reports) {
        let capacity = item.request.capacity_bytes;
        if let Some(r) = &report {
            ctx.store_usage(&item.uid, r.clone());
        }
        let learnt = ctx.learnt(&item.uid);
        let shown = item.obj.status.as_ref().and_then(|s| s.usage.as_ref());
        if usage::next(shown, capacity, &learnt, warn).as_ref() != shown {
            queue.trigger(&item.app);
        }
        figures.push(figures_of(item, host, capacity, &learnt));
    }
    ctx.metrics.host_volumes(host, &figures);

    let info = match ctx.agents.host_info(host).await {
        Ok(info) => info,
        Err(f) => {
            debug!(%host, error = %f.message, "host space not read");
            return;
        }
    };
    let space = info.space;
    ctx.metrics.host_space(
        host,
        HostFigures {
            free_bytes: space.free_bytes,
            size_bytes: space.total_bytes,
            promised_bytes: ctx.volumes.promised_bytes(host),
            limits_enforced: info.quota.enforced,
        },
    );
    let used = space.total_bytes.saturating_sub(space.free_bytes);
    let low = usage::nearly_full(used, space.total_bytes, warn);
    if ctx.host_low(host, low) {
        let note = format!(
            "host {host}'s disk is {}% full ({} free of {}): every volume on it may soon fail to write; \
             the platform team must make room or move volumes",
            used.saturating_mul(100) / space.total_bytes.max(1),
            usage::human_bytes(space.free_bytes),
            usage::human_bytes(space.total_bytes)
        );
        info!(%host, free = space.free_bytes, "host is low on space; warning its volumes");
        let event = VolumeEvent::warning("HostLowOnSpace", note);
        for item in items {
            ctx.kube.publish(&item.obj, &event).await;
        }
    }
}

fn figures_of(item: &Item, host: &str, capacity: Option<u64>, learnt: &Learnt) -> VolumeFigures {
    let used = learnt.measured.as_ref().and_then(|m| m.used_bytes).or_else(|| {
        let shown = item.obj.status.as_ref()?.usage.as_ref()?;
        shown.used_bytes.map(|b| b.max(0) as u64)
    });
    VolumeFigures {
        labels: VolumeLabels {
            namespace: item.obj.metadata.namespace.clone().unwrap_or_default(),
            volume: item.obj.metadata.name.clone().unwrap_or_default(),
            host: host.to_owned(),
        },
        used_bytes: used,
        capacity_bytes: capacity,
        limit_enforced: capacity.and(learnt.limit.as_ref().map(|l| l.enforced)),
    }
}
