//! The edges of a pass: Marathon, the host agents and the Kubernetes API, each behind a small
//! trait, so that every decision and the order of every write can be tested without them.
//! The real implementations are [`MarathonPort`] here, [`super::agents::AgentDirectory`] and
//! [`super::kube_port::KubePort`].

use std::sync::Arc;

use futures::future::BoxFuture;

use super::{failure::Failure, metrics::Metrics, pass::plan::DataRef, placement::Candidate};
use crate::{
    agent::api::{
        CommitRequest, CommitResult, DeleteResult, EnsureBody, EnsuredVolume, HostInfo, TransferStatus,
        UsageReport, VolumeQuery,
    },
    crd::{StatefulLocalVolume, StatefulLocalVolumeStatus},
    marathon::{App, AppUpdate, MarathonClient, MarathonError, responses::DeploymentResult},
};

/// Marathon, as a pass uses it.
pub trait MarathonApi: Send + Sync {
    /// The app with its tasks, deployments and last task failure.
    fn get_app<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<App, MarathonError>>;
    /// A partial update (`PATCH`), never forced.
    fn update_app<'a>(
        &'a self,
        id: &'a str,
        update: &'a AppUpdate,
    ) -> BoxFuture<'a, Result<DeploymentResult, MarathonError>>;
    /// A restart, never forced.
    fn restart_app<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<DeploymentResult, MarathonError>>;
    /// Whether the launch queue shows the app's launches declined for its constraints.
    fn launch_blocked<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, MarathonError>>;
}

/// The host agents, found and authenticated by the implementation.
pub trait AgentsApi: Send + Sync {
    /// Free space and attributes of every agent that answers, for a fresh placement.
    fn candidates(&self) -> BoxFuture<'_, Vec<Candidate>>;
    /// Creates or converges volumes on `host` (idempotent), in one request where the agent
    /// allows: one answer per volume, in order, or the failure of the whole call.
    fn ensure<'a>(
        &'a self,
        host: &'a str,
        reqs: &'a [EnsureBody],
    ) -> BoxFuture<'a, Result<Vec<Result<EnsuredVolume, Failure>>, Failure>>;
    /// What the host's agent measured of these volumes (one answer per volume, in order).
    fn usage<'a>(
        &'a self,
        host: &'a str,
        volumes: &'a [VolumeQuery],
    ) -> BoxFuture<'a, Result<Vec<UsageReport>, Failure>>;
    /// The host's disk (free and total space) and the limits its filesystem can enforce.
    fn host_info<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<HostInfo, Failure>>;
    /// Deletes a volume's data on its host (idempotent); with an identity, only data that
    /// carries it.
    fn delete<'a>(&'a self, data: &'a DataRef) -> BoxFuture<'a, Result<DeleteResult, Failure>>;
    /// Marks a volume's data on its host as released by the volume (kept, and taken over by
    /// another volume only when asked).
    fn release<'a>(&'a self, data: &'a DataRef) -> BoxFuture<'a, Result<(), Failure>>;

    /// Like [`AgentsApi::release`], saying whether the host held the data.
    fn release_found<'a>(&'a self, data: &'a DataRef) -> BoxFuture<'a, Result<bool, Failure>> {
        Box::pin(async move { self.release(data).await.map(|()| true) })
    }

    /// Asks the source agent to send one pass of a volume to the target agent (answers at
    /// once; see [`AgentsApi::transfer_status`]). The controller mints the target's ticket; the
    /// data goes from agent to agent.
    fn start_transfer<'a>(
        &'a self,
        order: &'a TransferOrder,
    ) -> BoxFuture<'a, Result<TransferStatus, Failure>> {
        Box::pin(async move { Err(unsupported(&order.from)) })
    }
    /// The source's progress of a transfer; `Ok(None)` when it knows none (it restarted).
    fn transfer_status<'a>(
        &'a self,
        host: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<TransferStatus>, Failure>> {
        let _ = id;
        Box::pin(async move { Err(unsupported(host)) })
    }
    /// Stops a transfer on its source (idempotent).
    fn cancel_transfer<'a>(&'a self, host: &'a str, id: &'a str) -> BoxFuture<'a, Result<(), Failure>> {
        let _ = id;
        Box::pin(async move { Err(unsupported(host)) })
    }
    /// Discards the target's staged copy of a transfer (idempotent).
    fn discard_incoming<'a>(
        &'a self,
        host: &'a str,
        id: &'a str,
        tenant: &'a str,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        let _ = (id, tenant);
        Box::pin(async move { Err(unsupported(host)) })
    }
    /// Verifies the target's staged copy against the source's manifest and puts it in place.
    fn commit<'a>(
        &'a self,
        host: &'a str,
        id: &'a str,
        req: &'a CommitRequest,
    ) -> BoxFuture<'a, Result<CommitResult, Failure>> {
        let _ = (id, req);
        Box::pin(async move { Err(unsupported(host)) })
    }
}

/// One pass of a volume's move between two hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferOrder {
    pub from: String,
    pub to: String,
    /// The transfer's id on both agents (the same for every pass of one move).
    pub id: String,
    pub pass: u32,
    pub tenant: String,
    /// The volume's path below the tenant's root (the same on both hosts).
    pub host_path: String,
    pub identity: String,
}

fn unsupported(host: &str) -> Failure {
    Failure::new(
        super::failure::Kind::Refused,
        format!("moving data is not available for host {host}"),
    )
}

/// A Kubernetes event about a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeEvent {
    pub warning: bool,
    /// CamelCase, e.g. `Provisioned`.
    pub reason: String,
    pub note: String,
}

impl VolumeEvent {
    pub fn normal(reason: &str, note: impl Into<String>) -> Self {
        Self {
            warning: false,
            reason: reason.to_owned(),
            note: note.into(),
        }
    }

    pub fn warning(reason: &str, note: impl Into<String>) -> Self {
        Self {
            warning: true,
            reason: reason.to_owned(),
            note: note.into(),
        }
    }
}

/// The writes a pass makes to Kubernetes.
pub trait KubeApi: Send + Sync {
    fn add_finalizer<'a>(&'a self, v: &'a StatefulLocalVolume) -> BoxFuture<'a, Result<(), kube::Error>>;
    fn remove_finalizer<'a>(&'a self, v: &'a StatefulLocalVolume) -> BoxFuture<'a, Result<(), kube::Error>>;
    /// Server-side applies the whole status.
    fn apply_status<'a>(
        &'a self,
        v: &'a StatefulLocalVolume,
        status: &'a StatefulLocalVolumeStatus,
    ) -> BoxFuture<'a, Result<(), kube::Error>>;
    fn publish<'a>(&'a self, v: &'a StatefulLocalVolume, event: &'a VolumeEvent) -> BoxFuture<'a, ()>;
}

/// The Marathon client, counting each request in the metrics.
pub struct MarathonPort {
    pub client: MarathonClient,
    pub metrics: Arc<Metrics>,
}

impl MarathonPort {
    fn count<T>(&self, endpoint: &'static str, r: &Result<T, MarathonError>) {
        let code = match r {
            Ok(_) => "200".to_owned(),
            Err(e) => super::metrics::marathon_code(e),
        };
        self.metrics.marathon(endpoint, code);
    }
}

impl MarathonApi for MarathonPort {
    fn get_app<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<App, MarathonError>> {
        Box::pin(async move {
            let r = self.client.get_app(id).await;
            self.count("get_app", &r);
            r
        })
    }

    fn update_app<'a>(
        &'a self,
        id: &'a str,
        update: &'a AppUpdate,
    ) -> BoxFuture<'a, Result<DeploymentResult, MarathonError>> {
        Box::pin(async move {
            let r = self.client.update_app(id, update, false).await;
            self.count("update_app", &r);
            if r.is_ok() {
                self.metrics.marathon_writes.inc();
            }
            r
        })
    }

    fn restart_app<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<DeploymentResult, MarathonError>> {
        Box::pin(async move {
            let r = self.client.restart_app(id, false).await;
            self.count("restart_app", &r);
            if r.is_ok() {
                self.metrics.marathon_writes.inc();
            }
            r
        })
    }

    fn launch_blocked<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, MarathonError>> {
        Box::pin(async move {
            let r = self.client.blocked_by_constraints(id).await;
            self.count("queue", &r);
            r
        })
    }
}
