//! The client's methods for identity, manifests and transfers (see `docs/agent.md`).

use std::time::Duration;

use super::{AgentClient, AgentClientError, query};
use crate::agent::{
    api::{
        CommitRequest, CommitResult, DeleteQuery, DeleteResult, EnsureBody, EnsureVolumeRequest,
        EnsuredVolume, INCOMING_PATH, IdentityCheck, IncomingQuery, IncomingStatus, MANIFEST_PATH,
        RELEASE_PATH, ReleaseRequest, ReleaseResult, TRANSFERS_PATH, TransferRequest, TransferStatus,
        VOLUMES_PATH, VolumeManifest,
    },
    identity::VolumeIdentity,
};

/// A manifest or a commit reads every byte of a volume: give it time.
pub const LONG_TIMEOUT: Duration = Duration::from_secs(3600);

impl AgentClient {
    /// `PUT /v1/volumes` with an identity check: the data must be the volume's
    /// (`identity_mismatch`, `data_missing`, … otherwise); what is created or adopted is marked.
    pub async fn ensure_volume_checked(
        &self,
        req: &EnsureVolumeRequest,
        check: &IdentityCheck,
    ) -> Result<EnsuredVolume, AgentClientError> {
        let r = self.http.put(self.url(VOLUMES_PATH)).json(&EnsureBody {
            request: req.clone(),
            capacity_bytes: None,
            check: check.clone(),
        });
        self.send(r).await?.ok_or_else(|| self.not_found(VOLUMES_PATH))
    }

    /// `DELETE /v1/volumes` that refuses data of another identity (or none).
    pub async fn delete_checked(
        &self,
        tenant: &str,
        host_path: &str,
        identity: &VolumeIdentity,
    ) -> Result<DeleteResult, AgentClientError> {
        let q = DeleteQuery {
            tenant: tenant.to_owned(),
            host_path: host_path.to_owned(),
            identity: Some(identity.clone()),
        };
        let r = self.http.delete(self.url(VOLUMES_PATH)).query(&q);
        self.send(r).await?.ok_or_else(|| self.not_found(VOLUMES_PATH))
    }

    /// `POST /v1/volumes/release`: the volume is gone, its data kept and marked released.
    pub async fn release(&self, req: &ReleaseRequest) -> Result<ReleaseResult, AgentClientError> {
        let r = self.http.post(self.url(RELEASE_PATH)).json(req);
        self.send(r).await?.ok_or_else(|| self.not_found(RELEASE_PATH))
    }

    /// `GET /v1/volumes/manifest`; `Ok(None)` when the volume does not exist.
    pub async fn manifest(
        &self,
        tenant: &str,
        host_path: &str,
    ) -> Result<Option<VolumeManifest>, AgentClientError> {
        let r = self
            .http
            .get(self.url(MANIFEST_PATH))
            .query(&query(tenant, host_path))
            .timeout(LONG_TIMEOUT);
        self.send(r).await
    }

    /// `POST /v1/transfers` on the **source** agent (answers at once; poll
    /// [`AgentClient::transfer_status`]).
    pub async fn start_transfer(&self, req: &TransferRequest) -> Result<TransferStatus, AgentClientError> {
        let r = self.http.post(self.url(TRANSFERS_PATH)).json(req);
        self.send(r).await?.ok_or_else(|| self.not_found(TRANSFERS_PATH))
    }

    /// `GET /v1/transfers/{id}` on the source; `Ok(None)` when it knows no such transfer (it
    /// restarted: start the pass again).
    pub async fn transfer_status(&self, id: &str) -> Result<Option<TransferStatus>, AgentClientError> {
        let r = self.http.get(self.url(&format!("{TRANSFERS_PATH}/{id}")));
        none_if_not_found(self.send(r).await)
    }

    /// `DELETE /v1/transfers/{id}` on the source.
    pub async fn cancel_transfer(&self, id: &str) -> Result<Option<TransferStatus>, AgentClientError> {
        let r = self.http.delete(self.url(&format!("{TRANSFERS_PATH}/{id}")));
        none_if_not_found(self.send(r).await)
    }

    /// `GET /v1/incoming/{id}` on the target: its staging area of the transfer.
    pub async fn incoming_status(&self, id: &str, tenant: &str) -> Result<IncomingStatus, AgentClientError> {
        let path = format!("{INCOMING_PATH}/{id}");
        let q = IncomingQuery {
            tenant: tenant.to_owned(),
        };
        let r = self.http.get(self.url(&path)).query(&q);
        self.send(r).await?.ok_or_else(|| self.not_found(&path))
    }

    /// `DELETE /v1/incoming/{id}` on the target: discard the staging area.
    pub async fn discard_incoming(&self, id: &str, tenant: &str) -> Result<IncomingStatus, AgentClientError> {
        let path = format!("{INCOMING_PATH}/{id}");
        let q = IncomingQuery {
            tenant: tenant.to_owned(),
        };
        let r = self.http.delete(self.url(&path)).query(&q);
        self.send(r).await?.ok_or_else(|| self.not_found(&path))
    }

    /// `POST /v1/incoming/{id}/commit` on the target: verify the staged copy against the
    /// source's manifest digest and put it in place.
    pub async fn commit(&self, id: &str, req: &CommitRequest) -> Result<CommitResult, AgentClientError> {
        let path = format!("{INCOMING_PATH}/{id}/commit");
        let r = self.http.post(self.url(&path)).json(req).timeout(LONG_TIMEOUT);
        self.send(r).await?.ok_or_else(|| self.not_found(&path))
    }
}

fn none_if_not_found<T>(r: Result<Option<T>, AgentClientError>) -> Result<Option<T>, AgentClientError> {
    match r {
        Err(e) if e.code() == Some("not_found") => Ok(None),
        other => other,
    }
}
