//! What every pass shares: the edges (Marathon, agents, Kubernetes), configuration, the caches,
//! what berth last wrote, and the per-app back-off.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;

use super::{
    app_cache::AppCache,
    cache::VolumeCache,
    failure::Failure,
    metrics::{HostLabels, Metrics},
    ports::{AgentsApi, KubeApi, MarathonApi},
    seal::Sealer,
    status::Written,
    usage::Learnt,
};
use crate::{
    agent::api::{EnsuredVolume, LimitState, UsageReport, VolumeState},
    crd::validate::TenantPolicy,
    tenant::NamespaceMapping,
};

/// Timing of passes.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Every app is passed at least this often, to repair drift in Marathon and on hosts.
    pub resync: Duration,
    /// The agent app, which berth never manages.
    pub agent_app: Option<String>,
    /// How long Marathon may be unreachable before Ready volumes say so in `Synced`.
    pub outage_grace: Duration,
    /// Share of its capacity a volume may fill before berth warns (`--usage-warning`).
    pub usage_warning: f64,
    /// How far the capacities promised on a host may exceed its size (`--capacity-overcommit`).
    pub overcommit: f64,
    /// Longest a move keeps an app stopped before berth gives up and starts it again on its
    /// old host (`--migration-stop-limit`).
    pub migration_stop_limit: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(300),
            agent_app: None,
            outage_grace: Duration::from_secs(60),
            usage_warning: 0.9,
            overcommit: 1.0,
            migration_stop_limit: Duration::from_secs(300),
        }
    }
}

pub struct Context {
    pub marathon: Arc<dyn MarathonApi>,
    pub agents: Arc<dyn AgentsApi>,
    pub kube: Arc<dyn KubeApi>,
    pub policy: TenantPolicy,
    pub tenants: NamespaceMapping,
    pub sealer: Sealer,
    pub metrics: Arc<Metrics>,
    /// Every volume the controller watches, indexed by app and by path.
    pub volumes: Arc<VolumeCache>,
    /// Marathon apps as last read.
    pub apps: Arc<AppCache>,
    /// The status berth last wrote for each volume.
    pub written: Written,
    pub settings: Settings,
    failures: Mutex<HashMap<String, usize>>,
    marathon_down_since: Mutex<Option<Instant>>,
    /// While Marathon is away, the last request a pass was allowed to send it, and what the
    /// last request got.
    last_probe: Mutex<Option<Instant>>,
    last_outage: Mutex<Option<Failure>>,
    /// Signalled when Marathon answers again after an outage.
    marathon_back: tokio::sync::Notify,
    hosts_down_since: Mutex<HashMap<String, Instant>>,
    verified: Mutex<HashMap<String, Verified>>,
    /// The hosts' last measurement of each volume (by uid), from the verification.
    usage: Mutex<HashMap<String, UsageReport>>,
    /// Hosts whose disk is nearly full (their volumes were warned).
    hosts_low: Mutex<std::collections::HashSet<String>>,
    /// Apps whose last move was abandoned: when, and why (a new move waits a while).
    abandoned: Mutex<HashMap<String, (Instant, String)>>,
}

/// After an abandoned move, how long berth waits before it tries the same app again.
pub const MOVE_RETRY_AFTER: Duration = Duration::from_secs(600);

/// The last time a volume's agent confirmed its data as the spec wants it.
struct Verified {
    generation: Option<i64>,
    at: Instant,
    /// What the host's verification repaired, for the volume's next pass to report.
    repaired: Option<VolumeState>,
    /// How the agent holds the volume to its capacity, as the confirmation said.
    limit: Option<LimitState>,
    /// The agent made the volume empty then ([`super::usage::made_empty`]).
    created: bool,
    /// The data carries the volume's identity.
    marked: bool,
}

/// While Marathon is away, at most one pass asks it per this interval.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// First and longest wait after failures of one app.
const BACKOFF_MIN: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        marathon: Arc<dyn MarathonApi>,
        agents: Arc<dyn AgentsApi>,
        kube: Arc<dyn KubeApi>,
        policy: TenantPolicy,
        tenants: NamespaceMapping,
        sealer: Sealer,
        metrics: Arc<Metrics>,
        volumes: Arc<VolumeCache>,
        apps: Arc<AppCache>,
        settings: Settings,
    ) -> Self {
        Self {
            marathon,
            agents,
            kube,
            policy,
            tenants,
            sealer,
            metrics,
            volumes,
            apps,
            written: Written::default(),
            settings,
            failures: Mutex::default(),
            marathon_down_since: Mutex::default(),
            last_probe: Mutex::default(),
            last_outage: Mutex::default(),
            marathon_back: tokio::sync::Notify::new(),
            hosts_down_since: Mutex::default(),
            verified: Mutex::default(),
            usage: Mutex::default(),
            hosts_low: Mutex::default(),
            abandoned: Mutex::default(),
        }
    }

    /// A move of the app was abandoned for `why`.
    pub fn move_abandoned(&self, app: &str, why: &str) {
        self.abandoned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(app.to_owned(), (Instant::now(), why.to_owned()));
    }

    /// Why a new move of the app waits, with how long it still waits, when it does.
    pub fn move_paused(&self, app: &str) -> Option<(String, Duration)> {
        let mut map = self.abandoned.lock().unwrap_or_else(|e| e.into_inner());
        let (at, why) = map.get(app)?;
        match MOVE_RETRY_AFTER.checked_sub(at.elapsed()) {
            Some(left) => Some((why.clone(), left)),
            None => {
                map.remove(app);
                None
            }
        }
    }

    /// The wait before passing an app that failed again: 2 s, doubling with jitter, at most
    /// 5 min.
    pub fn backoff(&self, app: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(app.to_owned()).or_default();
        let delay = ExponentialBuilder::default()
            .with_min_delay(BACKOFF_MIN)
            .with_max_delay(BACKOFF_MAX)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(*n)
            .unwrap_or(BACKOFF_MAX);
        *n = n.saturating_add(1);
        delay
    }

    /// Apps whose last pass failed and that wait for their back-off.
    pub fn failing_apps(&self) -> Vec<String> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.keys().cloned().collect()
    }

    /// Resolves when Marathon answers again after an outage (at once if it did since the last
    /// call).
    pub async fn marathon_returned(&self) {
        self.marathon_back.notified().await;
    }

    /// The app passed without a failure to retry.
    pub fn succeeded(&self, app: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(app);
    }

    /// A read of Marathon failed with `outage`.
    pub fn marathon_failed(&self, outage: &Failure) {
        *self.last_outage.lock().unwrap_or_else(|e| e.into_inner()) = Some(outage.clone());
        self.marathon_reachable(false);
    }

    /// What the last failed read of Marathon got.
    pub fn last_outage(&self) -> Failure {
        self.last_outage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| Failure::new(super::failure::Kind::Unreachable, "Marathon is unavailable"))
    }

    /// Marathon answered (or not): keeps track of how long it has been away.
    pub fn marathon_reachable(&self, reachable: bool) {
        let mut since = self.marathon_down_since.lock().unwrap_or_else(|e| e.into_inner());
        match (reachable, since.is_some()) {
            (true, false) => {}
            (true, true) => {
                *since = None;
                self.marathon_back.notify_one();
            }
            (false, false) => *since = Some(Instant::now()),
            (false, true) => {}
        }
        self.metrics.marathon_up.set(i64::from(reachable));
    }

    /// Whether a pass may send Marathon a request now. While Marathon does not answer, passes
    /// share one probe per [`PROBE_INTERVAL`] instead of each trying (and each backing off) on
    /// its own, so an outage costs a bounded request rate whatever the number of apps; once
    /// the probe gets an answer, the apps that waited are passed at once
    /// ([`super::triggers::marathon_return`]).
    pub fn may_call_marathon(&self) -> bool {
        if self.marathon_down_for().is_none() {
            return true;
        }
        let mut last = self.last_probe.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some(at) if at.elapsed() < PROBE_INTERVAL => false,
            _ => {
                *last = Some(Instant::now());
                true
            }
        }
    }

    /// A host's agent answered (or not): keeps track of how long it has been away.
    /// `berth_host_unreachable_since_seconds` says since when, so that an operator sees how
    /// long a host has been lost (berth keeps its volumes pinned there meanwhile).
    pub fn host_reachable(&self, host: &str, reachable: bool) {
        let mut down = self.hosts_down_since.lock().unwrap_or_else(|e| e.into_inner());
        let since = if reachable {
            down.remove(host);
            Some(0)
        } else if down.contains_key(host) {
            None
        } else {
            down.insert(host.to_owned(), Instant::now());
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            Some(now.map_or(1, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)))
        };
        if let Some(since) = since {
            self.metrics
                .host_unreachable_since
                .get_or_create(&HostLabels {
                    host: host.to_owned(),
                })
                .set(since);
        }
    }

    pub fn host_down_for(&self, host: &str) -> Option<Duration> {
        self.hosts_down_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .map(|since| since.elapsed())
    }

    /// The agent confirmed the volume (uid, at this generation) as its spec wants it.
    /// `repaired`: the answer reports a repair that the volume's next pass should report.
    pub fn mark_verified(&self, uid: &str, generation: Option<i64>, answer: &EnsuredVolume, repaired: bool) {
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        // Made empty by berth, until a measurement says more (later ensures find it).
        let created = super::usage::made_empty(&answer.state) || verified.get(uid).is_some_and(|v| v.created);
        let marked = answer.identity.is_some() || verified.get(uid).is_some_and(|v| v.marked);
        verified.insert(
            uid.to_owned(),
            Verified {
                generation,
                at: Instant::now(),
                repaired: repaired.then(|| answer.state.clone()),
                limit: answer.limit.clone(),
                created,
                marked,
            },
        );
    }

    /// Records whether `host`'s disk is nearly full; true when it just became so.
    pub fn host_low(&self, host: &str, low: bool) -> bool {
        let mut hosts = self.hosts_low.lock().unwrap_or_else(|e| e.into_inner());
        if low {
            hosts.insert(host.to_owned())
        } else {
            hosts.remove(host);
            false
        }
    }

    /// The host's last measurement of the volume.
    pub fn store_usage(&self, uid: &str, report: UsageReport) {
        self.usage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid.to_owned(), report);
    }

    /// Forgets what was learnt of volumes that are gone.
    pub fn forget_volume(&self, uid: &str) {
        self.usage.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }

    /// What the agents told berth of the volume since: its limit and its last measurement.
    pub fn learnt(&self, uid: &str) -> Learnt {
        let (limit, created, marked) = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid)
            .map(|v| (v.limit.clone(), v.created, v.marked))
            .unwrap_or_default();
        let measured = self
            .usage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid)
            .cloned();
        Learnt {
            limit,
            measured,
            created,
            marked,
        }
    }

    /// Whether the volume was confirmed at this generation within two resync periods (the host
    /// verification runs once per period).
    pub fn verified_fresh(&self, uid: &str, generation: Option<i64>) -> bool {
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        verified
            .get(uid)
            .is_some_and(|v| v.generation == generation && v.at.elapsed() < self.settings.resync * 2)
    }

    /// What the host's verification repaired for the volume, once.
    pub fn take_repair(&self, uid: &str) -> Option<VolumeState> {
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(uid)
            .and_then(|v| v.repaired.take())
    }

    /// The volume must be asked about again.
    pub fn unverify(&self, uid: &str) {
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }

    pub fn marathon_down_for(&self) -> Option<Duration> {
        self.marathon_down_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|since| since.elapsed())
    }
}
