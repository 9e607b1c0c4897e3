//! What every reconcile shares: clients, configuration, the volume cache, per-app locks and the
//! per-app back-off.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use kube::runtime::events::Recorder;

use super::{agents::Agents, cache::VolumeCache, metrics::Metrics};
use crate::{crd::validate::TenantPolicy, marathon::MarathonClient, tenant::NamespaceMapping};

pub struct Context {
    pub kube: kube::Client,
    pub marathon: MarathonClient,
    pub agents: Arc<Agents>,
    pub policy: TenantPolicy,
    pub tenants: NamespaceMapping,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Every volume the controller watches, indexed by app and by path.
    pub volumes: Arc<VolumeCache>,
    pub resync: Duration,
    /// The status berth last wrote for each volume.
    pub written: super::status::Written,
    app_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    failures: Mutex<HashMap<String, u32>>,
}

/// First and longest wait after failures of one app.
const BACKOFF_MIN: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kube: kube::Client,
        marathon: MarathonClient,
        agents: Arc<Agents>,
        policy: TenantPolicy,
        tenants: NamespaceMapping,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        volumes: Arc<VolumeCache>,
        resync: Duration,
    ) -> Self {
        Self {
            kube,
            marathon,
            agents,
            policy,
            tenants,
            recorder,
            metrics,
            volumes,
            resync,
            written: Default::default(),
            app_locks: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Serialises the work on one Marathon app: reconciles of its volumes run one at a time, so
    /// the second one sees the first one's write and sends none of its own.
    pub async fn lock_app(&self, app: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.app_locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(app.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// The wait before retrying an app that failed again: 2 s, doubling, at most 5 min.
    pub fn backoff(&self, app: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(app.to_owned()).or_default();
        let delay = BACKOFF_MIN.saturating_mul(1 << (*n).min(8)).min(BACKOFF_MAX);
        *n = n.saturating_add(1);
        delay
    }

    pub fn succeeded(&self, app: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(app);
    }
}
