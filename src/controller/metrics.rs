//! Prometheus metrics of the controller, served on `/metrics` in the OpenMetrics text format.
//! Every labelled series an alert relies on exists from the start (at 0), so `rate()` and
//! `absent()` work before the first event.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::Instant,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use super::failure::Failure;
use crate::{agent::client::AgentClientError, marathon::MarathonError};

/// A failed call, by the system it went to and what the failure means.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `kube`, `marathon` or `agent`.
    pub kind: &'static str,
    /// `unreachable`, `transient` or `refused` (see `failure.rs`).
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: &'static str,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabels {
    pub endpoint: &'static str,
    pub host: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
    /// The reason of the volume's Ready condition.
    pub reason: String,
}

/// One volume, for the per-volume capacity series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VolumeLabels {
    pub namespace: String,
    pub volume: String,
    pub host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabels {
    pub host: String,
}

/// What a host's verification learnt of one of its volumes.
#[derive(Debug, Clone)]
pub struct VolumeFigures {
    pub labels: VolumeLabels,
    pub used_bytes: Option<u64>,
    pub capacity_bytes: Option<u64>,
    pub limit_enforced: Option<bool>,
}

/// What a host's agent says of its disk, with what berth promised there.
#[derive(Debug, Clone, Copy)]
pub struct HostFigures {
    pub free_bytes: u64,
    pub size_bytes: u64,
    pub promised_bytes: u64,
    pub limits_enforced: bool,
}

pub struct Metrics {
    registry: Registry,
    pub volume_used: Family<VolumeLabels, Gauge>,
    pub volume_capacity: Family<VolumeLabels, Gauge>,
    pub volume_limit_enforced: Family<VolumeLabels, Gauge>,
    pub host_free: Family<HostLabels, Gauge>,
    pub host_size: Family<HostLabels, Gauge>,
    pub host_promised: Family<HostLabels, Gauge>,
    pub host_limits_enforced: Family<HostLabels, Gauge>,
    pub host_unreachable_since: Family<HostLabels, Gauge>,
    /// The volume series each host's last verification set, to drop those of volumes gone.
    volume_series: Mutex<HashMap<String, HashSet<VolumeLabels>>>,
    pub passes: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    pub marathon_requests: Family<RequestLabels, Counter>,
    pub marathon_writes: Counter,
    pub marathon_up: Gauge,
    pub agent_requests: Family<AgentLabels, Counter>,
    pub kube_requests: Family<RequestLabels, Counter>,
    pub volumes: Family<PhaseLabels, Gauge>,
    pub stalled: Gauge,
    pub queue: Gauge,
    pub deletes: Family<ResultLabels, Counter>,
    pub migration_bytes: Counter,
    pub migrations: Family<ResultLabels, Counter>,
    pub migration_downtime: Histogram,
    pub reprovisions: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// How moves of an app's data end.
pub const MIGRATION_RESULTS: [&str; 2] = ["completed", "abandoned"];

/// Results of asking an agent to delete a volume's data.
pub const DELETE_RESULTS: [&str; 4] = ["deleted", "in_progress", "unreachable", "failed"];

pub const ERROR_KINDS: [&str; 3] = ["kube", "marathon", "agent"];
pub const ERROR_CLASSES: [&str; 3] = ["unreachable", "transient", "refused"];

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("berth");
        let m = Self {
            passes: Counter::default(),
            errors: Family::default(),
            duration: Histogram::new([0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            marathon_requests: Family::default(),
            marathon_writes: Counter::default(),
            marathon_up: Gauge::default(),
            agent_requests: Family::default(),
            kube_requests: Family::default(),
            volumes: Family::default(),
            stalled: Gauge::default(),
            queue: Gauge::default(),
            deletes: Family::default(),
            migration_bytes: Counter::default(),
            migrations: Family::default(),
            migration_downtime: Histogram::new([1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0]),
            reprovisions: Counter::default(),
            volume_used: Family::default(),
            volume_capacity: Family::default(),
            volume_limit_enforced: Family::default(),
            host_free: Family::default(),
            host_size: Family::default(),
            host_promised: Family::default(),
            host_limits_enforced: Family::default(),
            host_unreachable_since: Family::default(),
            volume_series: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register(
            "volume_used_bytes",
            "Bytes a volume holds, as its host last measured them (quota accounting, or a throttled walk)",
            m.volume_used.clone(),
        );
        registry.register(
            "volume_capacity_bytes",
            "A volume's spec.capacity",
            m.volume_capacity.clone(),
        );
        registry.register(
            "volume_limit_enforced",
            "1 when the host's kernel holds the volume to its capacity, 0 when the capacity is advisory",
            m.volume_limit_enforced.clone(),
        );
        registry.register(
            "host_free_bytes",
            "Free bytes of the filesystem holding a host's tenant roots",
            m.host_free.clone(),
        );
        registry.register(
            "host_size_bytes",
            "Size of the filesystem holding a host's tenant roots",
            m.host_size.clone(),
        );
        registry.register(
            "host_promised_bytes",
            "Capacities berth promised to the volumes placed on a host",
            m.host_promised.clone(),
        );
        registry.register(
            "host_limits_enforced",
            "1 when a host's filesystem enforces volume capacities (btrfs qgroups, XFS project quotas)",
            m.host_limits_enforced.clone(),
        );
        registry.register(
            "app_passes",
            "Passes over Marathon apps (one pass handles all of an app's volumes)",
            m.passes.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed calls during passes, by system (kube, marathon, agent) and class (unreachable, transient, refused)",
            m.errors.clone(),
        );
        registry.register(
            "pass_duration_seconds",
            "Time spent in one pass over an app",
            m.duration.clone(),
        );
        registry.register(
            "marathon_requests",
            "Requests to Marathon by endpoint and HTTP status (or error)",
            m.marathon_requests.clone(),
        );
        registry.register(
            "marathon_app_writes",
            "App updates and restarts sent to Marathon (each restarts the app's tasks)",
            m.marathon_writes.clone(),
        );
        registry.register(
            "host_unreachable_since_seconds",
            "Unix time since which the host's berth agent does not answer, 0 while it answers; its volumes stay pinned there and nothing is deleted",
            m.host_unreachable_since.clone(),
        );
        registry.register(
            "marathon_up",
            "1 when berth's last request to Marathon got an answer, 0 when it did not",
            m.marathon_up.clone(),
        );
        registry.register(
            "agent_requests",
            "Requests to host agents by endpoint, host and result (HTTP status, or unreachable)",
            m.agent_requests.clone(),
        );
        registry.register(
            "kube_requests",
            "Writes to the Kubernetes API by kind (status, finalizers, events) and result",
            m.kube_requests.clone(),
        );
        registry.register(
            "volumes",
            "StatefulLocalVolumes by phase and the reason of their Ready condition, as of their last pass",
            m.volumes.clone(),
        );
        registry.register(
            "volumes_stalled",
            "StatefulLocalVolumes that need a person (kstatus Stalled=True): invalid spec, conflicting placement, a refusal, a mount or permission error",
            m.stalled.clone(),
        );
        registry.register(
            "queue_apps",
            "Apps waiting for a pass or being passed",
            m.queue.clone(),
        );
        registry.register(
            "data_deletes",
            "Deletions of a volume's data (reclaimPolicy Delete) by result: deleted, in_progress (the agent is still deleting; berth checks again), unreachable, failed (the agent refused; the volume says why)",
            m.deletes.clone(),
        );
        registry.register(
            "migration_bytes",
            "Bytes of file data berth's agents sent to other hosts to move volumes (every pass, live and final)",
            m.migration_bytes.clone(),
        );
        registry.register(
            "migrations",
            "Moves of an app's data to another host, by result: completed, abandoned (the app went back to its old host, its data untouched)",
            m.migrations.clone(),
        );
        registry.register(
            "migration_downtime_seconds",
            "How long a move kept an app stopped: from berth scaling it to 0 until a task ran on the new host",
            m.migration_downtime.clone(),
        );
        registry.register(
            "reprovisions",
            "Volumes given new, empty data on another host because their host was lost (hostLoss: Reprovision)",
            m.reprovisions.clone(),
        );
        for result in MIGRATION_RESULTS {
            let _ = m.migrations.get_or_create(&ResultLabels { result });
        }
        for result in DELETE_RESULTS {
            let _ = m.deletes.get_or_create(&ResultLabels { result });
        }
        for kind in ERROR_KINDS {
            for class in ERROR_CLASSES {
                let _ = m.errors.get_or_create(&ErrorLabels { kind, class });
            }
        }
        m.marathon_up.set(1);
        Self { registry, ..m }
    }
}

impl Metrics {
    /// The figures of a host's volumes from its verification; series of volumes no longer on
    /// the host go away.
    pub fn host_volumes(&self, host: &str, figures: &[VolumeFigures]) {
        let now: HashSet<VolumeLabels> = figures.iter().map(|f| f.labels.clone()).collect();
        let before = self
            .volume_series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host.to_owned(), now.clone())
            .unwrap_or_default();
        for gone in before.difference(&now) {
            self.volume_used.remove(gone);
            self.volume_capacity.remove(gone);
            self.volume_limit_enforced.remove(gone);
        }
        let set =
            |family: &Family<VolumeLabels, Gauge>, labels: &VolumeLabels, value: Option<u64>| match value {
                Some(v) => {
                    family.get_or_create(labels).set(v.min(i64::MAX as u64) as i64);
                }
                None => {
                    family.remove(labels);
                }
            };
        for f in figures {
            set(&self.volume_used, &f.labels, f.used_bytes);
            set(&self.volume_capacity, &f.labels, f.capacity_bytes);
            set(
                &self.volume_limit_enforced,
                &f.labels,
                f.limit_enforced.map(u64::from),
            );
        }
    }

    pub fn host_space(&self, host: &str, f: HostFigures) {
        let labels = HostLabels {
            host: host.to_owned(),
        };
        let gauge = |v: u64| v.min(i64::MAX as u64) as i64;
        self.host_free.get_or_create(&labels).set(gauge(f.free_bytes));
        self.host_size.get_or_create(&labels).set(gauge(f.size_bytes));
        self.host_promised
            .get_or_create(&labels)
            .set(gauge(f.promised_bytes));
        self.host_limits_enforced
            .get_or_create(&labels)
            .set(i64::from(f.limits_enforced));
    }

    /// The registry in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Counts a pass and times it until the returned guard drops.
    pub fn pass(&self) -> PassTimer<'_> {
        self.passes.inc();
        PassTimer {
            metrics: self,
            start: Instant::now(),
        }
    }

    /// A failed call to `kind` (`kube`, `marathon`, `agent`).
    pub fn failure(&self, kind: &'static str, f: &Failure) {
        self.errors
            .get_or_create(&ErrorLabels {
                kind,
                class: f.label(),
            })
            .inc();
    }

    pub fn marathon(&self, endpoint: &'static str, code: impl Into<String>) {
        self.marathon_requests
            .get_or_create(&RequestLabels {
                endpoint,
                code: code.into(),
            })
            .inc();
    }

    pub fn agent(&self, endpoint: &'static str, host: &str, code: impl Into<String>) {
        self.agent_requests
            .get_or_create(&AgentLabels {
                endpoint,
                host: host.to_owned(),
                code: code.into(),
            })
            .inc();
    }

    pub fn delete_result(&self, result: &'static str) {
        self.deletes.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn kube(&self, endpoint: &'static str, code: impl Into<String>) {
        self.kube_requests
            .get_or_create(&RequestLabels {
                endpoint,
                code: code.into(),
            })
            .inc();
    }
}

pub struct PassTimer<'a> {
    metrics: &'a Metrics,
    start: Instant,
}

impl Drop for PassTimer<'_> {
    fn drop(&mut self) {
        self.metrics.duration.observe(self.start.elapsed().as_secs_f64());
    }
}

/// A short label for the metrics: the HTTP status, or the kind of failure.
pub fn marathon_code(e: &MarathonError) -> String {
    match e {
        MarathonError::NotFound { .. } => "404".into(),
        MarathonError::Locked { .. } | MarathonError::Conflict { .. } => "409".into(),
        MarathonError::Validation { .. } => "422".into(),
        MarathonError::Unauthorized { status, .. }
        | MarathonError::BadRequest { status, .. }
        | MarathonError::Server { status, .. } => status.to_string(),
        MarathonError::Timeout { .. } => "timeout".into(),
        MarathonError::Connect { .. } => "connect".into(),
        _ => "error".into(),
    }
}

pub fn agent_code<T>(r: &Result<T, AgentClientError>) -> String {
    match r {
        Ok(_) => "200".into(),
        Err(AgentClientError::Rejected { status, .. } | AgentClientError::AgentFailed { status, .. }) => {
            status.to_string()
        }
        Err(AgentClientError::Unreachable { .. }) => "unreachable".into(),
        Err(_) => "error".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_series_exists_from_the_start_and_counts_by_kind_and_class() {
        let m = Metrics::default();
        let text = m.render();
        for kind in ERROR_KINDS {
            for class in ERROR_CLASSES {
                assert!(
                    text.contains(&format!(
                        "berth_reconcile_errors_total{{kind=\"{kind}\",class=\"{class}\"}} 0"
                    )),
                    "{text}"
                );
            }
        }
        assert!(text.contains("berth_marathon_up 1"), "{text}");
        drop(m.pass());
        m.marathon("update_app", "200");
        m.marathon_writes.inc();
        m.agent("ensure_volume", "node-1", "200");
        m.failure(
            "marathon",
            &Failure::new(super::super::failure::Kind::Unreachable, "down"),
        );
        let text = m.render();
        assert!(text.contains("berth_app_passes_total 1"), "{text}");
        assert!(
            text.contains("berth_marathon_requests_total{endpoint=\"update_app\",code=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "berth_agent_requests_total{endpoint=\"ensure_volume\",host=\"node-1\",code=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("berth_marathon_app_writes_total 1"), "{text}");
        assert!(
            text.contains("berth_reconcile_errors_total{kind=\"marathon\",class=\"unreachable\"} 1"),
            "{text}"
        );
        assert!(text.contains("berth_pass_duration_seconds_count 1"), "{text}");
    }
}
