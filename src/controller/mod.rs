//! `berth controller`: watches StatefulLocalVolumes and makes Marathon apps and hosts match them.
//!
//! - [`reconcile`]: one reconcile (finalizer, validation, status, events).
//! - [`app_sync`]: the pass over one Marathon app and its host.
//! - [`app_patch`], [`placement`], [`conditions`], [`diagnosis`]: the pure decisions.
//! - [`agents`], [`triggers`]: the edges (agent clients, Marathon's event stream).
//! - [`cache`]: every volume, indexed by app and by path, from the watch stream.
//! - [`metrics`], [`server`], [`leader`]: operations.

pub mod admission;
pub mod agents;
pub mod app_patch;
pub mod app_sync;
pub mod cache;
pub mod conditions;
pub mod config;
pub mod context;
pub mod diagnosis;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod placement;
pub mod reconcile;
pub mod running;
pub mod server;
pub mod status;
pub mod triggers;

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures::{StreamExt, TryStreamExt};
use kube::{
    Api,
    api::ListParams,
    runtime::{
        Controller, WatchStreamExt,
        controller::Config as ControllerConfig,
        events::{Recorder, Reporter},
        reflector, watcher,
    },
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
    let token = match &args.agent_token_file {
        Some(f) => read(f)?,
        None => std::env::var(crate::agent::TOKEN_ENV).map_err(|_| {
            StartError::Config(format!(
                "give the agents' token with --agent-token-file or {}",
                crate::agent::TOKEN_ENV
            ))
        })?,
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
    let agents = Arc::new(agents::Agents::new(discovery, token, agent_options));

    let kube = kube::Client::try_default().await?;
    let volumes: Api<StatefulLocalVolume> = match &args.namespace {
        Some(ns) => Api::namespaced(kube.clone(), ns),
        None => Api::all(kube.clone()),
    };
    volumes
        .list(&ListParams::default().limit(1))
        .await
        .map_err(StartError::CrdMissing)?;

    let metrics = Arc::new(metrics::Metrics::default());
    let health = Arc::new(server::Health::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: args.listen,
            source,
        })?;
    info!(addr = %args.listen, "serving /metrics, /healthz and /readyz");
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

    // The reflector feeds both the controller's store and the cache's indexes, in that order.
    let (store, writer) = reflector::store();
    let cache = Arc::new(cache::VolumeCache::new(store.clone()));
    let observed = cache.clone();
    let stream = watcher(volumes, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .inspect_ok(move |event| observed.observe(event))
        .applied_objects();
    let controller = Controller::for_stream(stream, store);
    let recorder = Recorder::new(
        kube.clone(),
        Reporter {
            controller: "berth-controller".into(),
            instance: args.identity.clone(),
        },
    );
    let ctx = Arc::new(context::Context::new(
        kube,
        marathon.clone(),
        agents,
        policy,
        tenants,
        recorder,
        metrics.clone(),
        cache.clone(),
        args.resync,
    ));
    tokio::spawn(phase_gauges(cache.clone(), metrics.clone()));
    health.ready.store(true, Ordering::Relaxed);
    info!(marathon = ?args.marathon_urls, namespace = ?args.namespace, "controller started");

    let mut stop = stop_rx.clone();
    let shutdown = async move {
        let leadership = async {
            match lost_leadership {
                Some(lost) => lost.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.wait_for(|s| *s) => {}
            _ = leadership => warn!("lost the leader lease; stopping"),
        }
    };
    controller_run(controller, ctx, marathon, cache, args.debounce, shutdown).await;
    let _ = stop_tx.send(true);
    let _ = server.await;
    info!("controller stopped");
    Ok(())
}

async fn controller_run(
    controller: Controller<StatefulLocalVolume>,
    ctx: Arc<context::Context>,
    marathon: MarathonClient,
    volumes: Arc<cache::VolumeCache>,
    debounce: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    controller
        .with_config(ControllerConfig::default().debounce(debounce))
        .reconcile_on(triggers::marathon_events(
            marathon,
            volumes,
            (debounce * 2).max(Duration::from_secs(1)),
        ))
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(volume = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
}

/// Counts volumes by phase and the stalled ones, for the `berth_volumes` gauges.
async fn phase_gauges(volumes: Arc<cache::VolumeCache>, metrics: Arc<metrics::Metrics>) {
    loop {
        let counts = conditions::VolumeCounts::of(volumes.all().iter().map(|v| v.status.as_ref()));
        for (phase, n) in counts.by_phase {
            metrics
                .volumes
                .get_or_create(&metrics::PhaseLabels {
                    phase: reconcile::phase_label(phase),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
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
