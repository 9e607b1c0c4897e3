//! Prometheus metrics of the controller, served on `/metrics` in the OpenMetrics text format.

use std::time::Instant;

use crate::{agent::client::AgentClientError, marathon::MarathonError};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MarathonLabels {
    pub endpoint: &'static str,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub reconciles: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    pub marathon_requests: Family<MarathonLabels, Counter>,
    pub marathon_writes: Counter,
    pub agent_requests: Family<MarathonLabels, Counter>,
    pub volumes: Family<PhaseLabels, Gauge>,
    pub stalled: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("berth");
        let reconciles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new([0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]);
        let marathon_requests = Family::<MarathonLabels, Counter>::default();
        let marathon_writes = Counter::default();
        let agent_requests = Family::<MarathonLabels, Counter>::default();
        let volumes = Family::<PhaseLabels, Gauge>::default();
        let stalled = Gauge::default();
        registry.register(
            "reconciles",
            "Reconciles of StatefulLocalVolumes",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles by kind of error",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            duration.clone(),
        );
        registry.register(
            "marathon_requests",
            "Requests to Marathon by endpoint and HTTP status (or error)",
            marathon_requests.clone(),
        );
        registry.register(
            "marathon_app_writes",
            "App updates sent to Marathon (each restarts the app's tasks)",
            marathon_writes.clone(),
        );
        registry.register(
            "agent_requests",
            "Requests to host agents by endpoint and result",
            agent_requests.clone(),
        );
        registry.register(
            "volumes",
            "StatefulLocalVolumes by phase, as of their last reconcile",
            volumes.clone(),
        );
        registry.register(
            "volumes_stalled",
            "StatefulLocalVolumes that need a person (kstatus Stalled=True): invalid spec, conflicting placement, a refusal, a mount or permission error",
            stalled.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            marathon_requests,
            marathon_writes,
            agent_requests,
            volumes,
            stalled,
        }
    }
}

impl Metrics {
    /// The registry in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Counts a reconcile and times it until the returned guard drops (so early returns count).
    pub fn reconcile(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            metrics: self,
            start: Instant::now(),
        }
    }

    pub fn marathon(&self, endpoint: &'static str, code: impl Into<String>) {
        self.marathon_requests
            .get_or_create(&MarathonLabels {
                endpoint,
                code: code.into(),
            })
            .inc();
    }

    pub fn agent(&self, endpoint: &'static str, code: impl Into<String>) {
        self.agent_requests
            .get_or_create(&MarathonLabels {
                endpoint,
                code: code.into(),
            })
            .inc();
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
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
    fn renders_counters_with_labels() {
        let m = Metrics::default();
        drop(m.reconcile());
        m.marathon("put_app", "200");
        m.marathon_writes.inc();
        m.errors.get_or_create(&ErrorLabels { kind: "marathon" }).inc();
        let text = m.render();
        assert!(text.contains("berth_reconciles_total 1"), "{text}");
        assert!(
            text.contains("berth_marathon_requests_total{endpoint=\"put_app\",code=\"200\"} 1"),
            "{text}"
        );
        assert!(text.contains("berth_marathon_app_writes_total 1"), "{text}");
        assert!(
            text.contains("berth_reconcile_errors_total{kind=\"marathon\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("berth_reconcile_duration_seconds_count 1"),
            "{text}"
        );
    }
}
