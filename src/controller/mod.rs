//! `berth controller`: watches StatefulLocalVolumes and makes Marathon apps and hosts match them.
//!
//! The Marathon app is the unit of work. Volume changes (`cache`), Marathon's events and the
//! bulk refresh (`triggers`) name apps; the `queue` hands each app to one worker at a time; a
//! `pass` over an app observes it and its volumes, plans (pure) and acts through the `ports`.
//!
//! - [`pass`]: observe → plan → act for one app.
//! - [`admission`], [`app_policy`], [`app_patch`], [`placement`], [`conditions`], [`diagnosis`]:
//!   the pure decisions.
//! - [`ports`], [`agents`], [`kube_port`]: the edges (Marathon, agents, Kubernetes).
//! - [`queue`], [`triggers`], [`cache`], [`app_cache`], [`status`]: what makes a pass due, and
//!   what berth remembers between passes; [`verifier`]: each host confirms its volumes in one
//!   request per resync.
//! - [`seal`], [`failure`]: trusting only what berth wrote; what a failed call means.
//! - [`metrics`], [`server`], [`leader`], [`config`]: operations.

pub mod admission;
pub mod agents;
pub mod app_cache;
pub mod app_patch;
pub mod app_policy;
pub mod cache;
pub mod conditions;
pub mod config;
pub mod context;
pub mod diagnosis;
pub mod failure;
pub mod faults;
pub mod host_loss;
pub mod kube_port;
pub mod leader;
pub mod metrics;
pub mod migration;
pub mod pass;
pub mod placement;
pub mod ports;
pub mod queue;
pub mod seal;
pub mod server;
pub mod status;
pub mod triggers;
pub mod usage;
pub mod verifier;

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures::TryStreamExt;
use kube::{
    Api, Resource,
    api::ListParams,
    runtime::{WatchStreamExt, reflector, watcher},
};
use thiserror::Error;
use tokio::sync::watch;
use tracing::{info, warn};

pub use config::ControllerArgs;

use crate::{
    agent::client::AgentClientOptions,
    crd::{StatefulLocalVolume, validate::TenantPolicy},
    marathon::{MarathonAuth, MarathonClient, MarathonConfig},
    tenant::{AppGroupRule, NamespaceMapping, PathError, RootTemplate},
};

/// Why the controller could not start.
#[derive(Debug, Error)]
pub enum StartError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("tenant configuration: {0}")]
    Tenant(#[from] PathError),
    #[error("cannot read {path}: {source}")]
    ReadFile { path: String, source: std::io::Error },
    #[error("Kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error(
        "the StatefulLocalVolume CRD is not installed (or not readable with this account): {0}; install it with `berth crd | kubectl create -f -` or the Helm chart"
    )]
    CrdMissing(kube::Error),
    #[error("Marathon client: {0}")]
    Marathon(#[from] crate::marathon::MarathonError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("leader election: {0}")]
    Leader(String),
}

fn read(path: &std::path::Path) -> Result<String, StartError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| StartError::ReadFile {
            path: path.display().to_string(),
            source,
        })
}

fn marathon_config(args: &ControllerArgs) -> Result<MarathonConfig, StartError> {
    let mut config = MarathonConfig::new(args.marathon_urls.clone());
    config.request_timeout = args.marathon_timeout;
    config.auth = match (
        &args.marathon_username,
        &args.marathon_password_file,
        &args.marathon_token_file,
    ) {
        (Some(username), Some(pw), None) => MarathonAuth::Basic {
            username: username.clone(),
            password: read(pw)?,
        },
        (None, None, Some(token)) => MarathonAuth::DcosToken(read(token)?),
        (None, None, None) => MarathonAuth::None,
        _ => {
            return Err(StartError::Config(
                "use either --marathon-username with --marathon-password-file, or --marathon-token-file"
                    .into(),
            ));
        }
    };
    if let Some(ca) = &args.marathon_ca_file {
        config.ca_pem = Some(read(ca)?.into_bytes());
    }
    Ok(config)
}

pub async fn run(args: ControllerArgs) -> Result<(), StartError> {
    let policy = TenantPolicy {
        roots: RootTemplate::parse(&args.tenant_root)?,
        apps: AppGroupRule::parse(&args.app_group)?,
    };
    let tenants = NamespaceMapping::new(&args.tenant_map, args.mapped_namespaces_only)?;
    let marathon = MarathonClient::new(marathon_config(&args)?)?;
    let marathon_urls = marathon.urls().to_vec();
    let credentials = match (&args.agent_secret_file, &args.agent_token_file) {
        (Some(f), _) => agents::Credentials::PerHost(
            crate::agent::credentials::read_secret(f).map_err(|e| StartError::Config(e.to_string()))?,
        ),
        (None, Some(f)) => agents::Credentials::Shared(read(f)?),
        (None, None) => agents::Credentials::Shared(std::env::var(crate::agent::TOKEN_ENV).map_err(|_| {
            StartError::Config(format!(
                "give the agents' secret with --agent-secret-file (a token per host), or one shared token \
                 with --agent-token-file or {}",
                crate::agent::TOKEN_ENV
            ))
        })?),
    };
    let agent_options = AgentClientOptions {
        ca_pem: args
            .agent_ca_file
            .as_deref()
            .map(read)
            .transpose()?
            .map(String::into_bytes),
        timeout: args.agent_timeout,
        ..AgentClientOptions::default()
    };
    if args.agents.is_empty() && args.agent_app.is_none() {
        return Err(StartError::Config(
            "name the agents with --agent HOST=URL or --agent-app".into(),
        ));
    }
    let discovery = agents::AgentDiscovery {
        fixed: args.agents.iter().cloned().collect::<BTreeMap<_, _>>(),
        app: args.agent_app.clone(),
        scheme: args.agent_scheme.clone(),
        port: args.agent_port,
    };
    let metrics = Arc::new(metrics::Metrics::default());
    let sealer = seal::Sealer::new(credentials.secret());
    let agents = Arc::new(agents::AgentDirectory::new(
        discovery,
        marathon.clone(),
        credentials,
        agent_options,
        metrics.clone(),
    ));

    let kube = kube::Client::try_default().await?;
    // One watch per namespace given, or one for every namespace.
    let scopes: Vec<cache::Scope> = if args.namespace.is_empty() {
        vec![None]
    } else {
        args.namespace.iter().cloned().map(Some).collect()
    };
    let apis: Vec<(cache::Scope, Api<StatefulLocalVolume>)> = scopes
        .into_iter()
        .map(|scope| {
            let api = match &scope {
                Some(ns) => Api::namespaced(kube.clone(), ns),
                None => Api::all(kube.clone()),
            };
            (scope, api)
        })
        .collect();
    for (_, api) in &apis {
        api.list(&ListParams::default().limit(1))
            .await
            .map_err(StartError::CrdMissing)?;
    }

    let health = Arc::new(server::Health::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: args.listen,
            source,
        })?;
    info!(addr = %listener.local_addr().unwrap_or(args.listen), "serving /metrics, /healthz and /readyz");
    let server = tokio::spawn({
        let mut stop = stop_rx.clone();
        axum::serve(listener, server::router(metrics.clone(), health.clone()))
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .into_future()
    });
    tokio::spawn(signals(stop_tx.clone()));

    let lost_leadership = if args.leader_elect {
        health.ready.store(true, Ordering::Relaxed);
        let identity = args.identity.clone().unwrap_or_else(default_identity);
        Some(
            leader::acquire(
                kube.clone(),
                &args.lease_name,
                &args.lease_namespace,
                &identity,
                stop_rx.clone(),
            )
            .await?,
        )
    } else {
        None
    };
    if *stop_rx.borrow() {
        return Ok(());
    }
    health.leading.store(true, Ordering::Relaxed);

    let queue = Arc::new(queue::AppQueue::new(args.debounce));
    let mut writers = Vec::new();
    let mut stores = Vec::new();
    for (scope, api) in apis {
        let (store, writer) = reflector::store();
        stores.push((scope.clone(), store));
        writers.push((scope, api, writer));
    }
    let cache = Arc::new(cache::VolumeCache::new(stores));
    let apps = Arc::new(app_cache::AppCache::new(args.resync * 2));
    let instance = args.identity.clone().unwrap_or_else(default_identity);
    let ctx = Arc::new(context::Context::new(
        Arc::new(ports::MarathonPort {
            client: marathon.clone(),
            metrics: metrics.clone(),
        }),
        agents,
        Arc::new(kube_port::KubePort::new(kube, instance, metrics.clone())),
        policy,
        tenants,
        sealer,
        metrics.clone(),
        cache.clone(),
        apps.clone(),
        context::Settings {
            resync: args.resync,
            agent_app: args.agent_app.clone(),
            outage_grace: args.outage_grace,
            usage_warning: args.usage_warning,
            overcommit: args.capacity_overcommit,
            migration_stop_limit: args.migration_stop_limit,
        },
    ));

    // The watches: the reflector's stores, the cache's indexes, and the apps each change names.
    let watches = writers.into_iter().map(|(scope, api, writer)| {
        let cache = cache.clone();
        let queue = queue.clone();
        watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            // Only what decisions need is kept: managed fields and annotations (kubectl's
            // last-applied copy of the whole object, among others) are large and never read.
            .modify(|v| {
                let meta = v.meta_mut();
                meta.managed_fields = None;
                meta.annotations = None;
            })
            .reflect(writer)
            .try_for_each(move |event| {
                for app in cache.observe(&scope, &event) {
                    queue.trigger(&app);
                }
                futures::future::ready(Ok(()))
            })
    });
    let watch = tokio::spawn(futures::future::select_all(watches.map(Box::pin)));
    tokio::spawn(triggers::marathon_events(
        marathon.clone(),
        queue.clone(),
        cache.clone(),
        apps.clone(),
    ));
    tokio::spawn(triggers::bulk_refresh(
        marathon,
        apps,
        metrics.clone(),
        args.resync,
    ));
    tokio::spawn(triggers::marathon_return(ctx.clone(), queue.clone()));
    tokio::spawn(gauges(cache.clone(), queue.clone(), metrics.clone()));
    tokio::spawn(verifier::run(ctx.clone(), queue.clone(), args.resync));
    health.ready.store(true, Ordering::Relaxed);
    info!(marathon = ?marathon_urls, namespace = ?args.namespace, workers = args.workers, "controller started");

    let workers: Vec<_> = (0..args.workers.max(1))
        .map(|_| {
            let queue = queue.clone();
            let ctx = ctx.clone();
            tokio::spawn(async move {
                while let Some(app) = queue.next().await {
                    let requeue = pass::run(&ctx, &app).await;
                    queue.done(&app, Some(requeue));
                }
            })
        })
        .collect();

    let mut stop = stop_rx.clone();
    let leadership = async {
        match lost_leadership {
            Some(lost) => lost.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = stop.wait_for(|s| *s) => {}
        _ = leadership => warn!("lost the leader lease; stopping"),
        r = watch => warn!(result = ?r.map(|(r, _, _)| r.map_err(|e| e.to_string())), "a watch of volumes ended; stopping"),
    }
    // Running passes finish; nothing new starts.
    queue.close();
    for w in workers {
        let _ = w.await;
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    info!("controller stopped");
    Ok(())
}

/// Counts volumes by phase and the stalled ones, for the `berth_volumes` gauges, and the queue.
async fn gauges(
    volumes: Arc<cache::VolumeCache>,
    queue: Arc<queue::AppQueue>,
    metrics: Arc<metrics::Metrics>,
) {
    // Series seen before go back to 0 when no volume has their phase and reason any more.
    let mut seen: std::collections::BTreeSet<(&'static str, String)> = Default::default();
    loop {
        metrics.queue.set(i64::try_from(queue.len()).unwrap_or(i64::MAX));
        let counts = conditions::VolumeCounts::of(volumes.all().iter().map(|v| v.status.as_ref()));
        for key in seen.iter().filter(|k| !counts.by_phase.contains_key(*k)) {
            metrics
                .volumes
                .get_or_create(&metrics::PhaseLabels {
                    phase: key.0,
                    reason: key.1.clone(),
                })
                .set(0);
        }
        for ((phase, reason), n) in &counts.by_phase {
            seen.insert((phase, reason.clone()));
            metrics
                .volumes
                .get_or_create(&metrics::PhaseLabels {
                    phase,
                    reason: reason.clone(),
                })
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        metrics
            .stalled
            .set(i64::try_from(counts.stalled).unwrap_or(i64::MAX));
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// SIGINT or SIGTERM: stop taking new work, finish what runs, exit.
async fn signals(stop: watch::Sender<bool>) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    info!("shutting down");
    let _ = stop.send(true);
}

fn default_identity() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}
