//! The source's side of transfers: start, progress, cancel.

use std::{
    os::fd::AsFd,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use axum::body::Bytes;
use rustix::fs::FileType;
use tracing::{info, warn};

use super::{Agent, OpError};
use crate::agent::{
    api::{
        ErrorBody, INCOMING_PATH, PassMode, ReceiveResult, TICKET_SCHEME, TransferRequest, TransferState,
        TransferStatus,
    },
    identity::{self, Expect},
    transfer::{
        Baseline, Outgoing, TransferError, lock, new_status,
        send::{self, Sent},
        ticket,
        walk::stat_at,
        wire::Begin,
    },
};

/// How long the source keeps what it sent (to send only changes next time), and finished
/// transfers' statuses.
const BASELINE_TTL: Duration = Duration::from_secs(24 * 3600);
const STATUS_TTL: Duration = Duration::from_secs(3600);

impl Agent {
    /// `POST /v1/transfers`: checks the request, then sends in the background (at most
    /// [`crate::agent::transfer::MAX_SENDS`] at once); poll [`Agent::transfer_status`].
    pub fn start_transfer(self: &Arc<Self>, req: TransferRequest) -> Result<TransferStatus, OpError> {
        if !ticket::valid_id(&req.id) {
            return Err(OpError::Request(format!(
                "transfer id {:?} must be 1 to 64 of [A-Za-z0-9-]",
                req.id
            )));
        }
        let t = self.target(&req.tenant, &req.host_path)?;
        self.deletes.conflict(&t.tenant, &t.path)?;
        let (claims, _) = ticket::parse(&req.target.ticket)?;
        if claims.transfer_id != req.id || claims.pass != req.pass || claims.identity != req.identity.as_str()
        {
            return Err(OpError::Request(
                "the ticket is for another transfer, pass or identity than the request".into(),
            ));
        }
        let url = reqwest::Url::parse(&req.target.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                OpError::Request("target.url must be an http:// or https:// URL of the target agent".into())
            })?;
        let (found, shown) = self.fs.read_stamp(&t.root, &t.path)?;
        if found == identity::Stamp::Absent {
            return Err(OpError::NotFound(shown));
        }
        // Only the volume's own data leaves the host.
        identity::decide(&found, &req.identity, Expect::Bound, &shown)?;
        if !matches!(
            found,
            identity::Stamp::Marked {
                state: identity::StampState::Bound,
                ..
            }
        ) {
            return Err(identity::IdentityError::Missing { path: shown }.into());
        }
        let mut outgoing = lock(&self.transfers.outgoing);
        outgoing.retain(|_, o| {
            let s = o.lock();
            matches!(s.state, TransferState::Queued | TransferState::Running)
                || o.started.elapsed() < STATUS_TTL
        });
        if let Some(o) = outgoing.get(&req.id)
            && matches!(o.lock().state, TransferState::Queued | TransferState::Running)
        {
            return Err(TransferError::InProgress(req.id.clone()).into());
        }
        let base = {
            let mut baselines = lock(&self.transfers.baselines);
            baselines.retain(|_, b| b.at.elapsed() < BASELINE_TTL);
            baselines.get(&req.id).cloned().filter(|b| {
                !req.full
                    && b.tenant == req.tenant
                    && b.host_path == t.path.as_string()
                    && b.identity == req.identity.as_str()
                    && b.pass < req.pass
            })
        };
        let mode = if base.is_some() {
            PassMode::Delta
        } else {
            PassMode::Full
        };
        let out = Arc::new(Outgoing::new(new_status(
            &req.id,
            &req.tenant,
            &t.path.as_string(),
            req.pass,
            mode,
        )));
        outgoing.insert(req.id.clone(), out.clone());
        drop(outgoing);
        info!(tenant = %t.tenant, host_path = %t.path, transfer = %req.id, pass = req.pass, mode = ?mode,
              target = %url, "transfer queued");
        let status = out.snapshot();
        tokio::spawn(run(self.clone(), req, url, base, out));
        Ok(status)
    }

    /// `GET /v1/transfers/{id}`; `None` when this agent knows no such transfer.
    pub fn transfer_status(&self, id: &str) -> Option<TransferStatus> {
        lock(&self.transfers.outgoing).get(id).map(|o| o.snapshot())
    }

    /// `DELETE /v1/transfers/{id}`: stops a running transfer at its next entry and forgets what
    /// was sent (the next pass of the id sends everything).
    pub fn cancel_transfer(&self, id: &str) -> Option<TransferStatus> {
        lock(&self.transfers.baselines).remove(id);
        let o = lock(&self.transfers.outgoing).get(id).cloned()?;
        o.cancel.store(true, Ordering::Relaxed);
        Some(o.snapshot())
    }

    fn peer_client(&self) -> Result<reqwest::Client, TransferError> {
        if let Some(c) = self.transfers.client.get() {
            return Ok(c.clone());
        }
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(Duration::from_secs(300))
                .pool_idle_timeout(Duration::from_secs(5))
        };
        let roots = match &self.config.peer_ca_pem {
            Some(pem) => Some(
                reqwest::Certificate::from_pem_bundle(pem)
                    .map_err(|e| TransferError::Internal(format!("--peer-ca-file: {e}")))?,
            ),
            None => None,
        };
        let c = crate::tls::http_client(builder, roots)
            .map_err(|e| TransferError::Internal(format!("HTTP client: {e}")))?;
        let _ = self.transfers.client.set(c.clone());
        Ok(c)
    }

    /// Walks and writes one pass (blocking), handing frames to `tx`.
    fn produce(
        &self,
        req: &TransferRequest,
        base: Option<&Baseline>,
        out: &Outgoing,
        tx: tokio::sync::mpsc::Sender<Bytes>,
    ) -> Result<Sent, TransferError> {
        let t = self
            .target(&req.tenant, &req.host_path)
            .map_err(|e| TransferError::BadRequest(e.to_string()))?;
        let Some((dir, name, shown)) = self
            .fs
            .volume_parent(&t.root, &t.path, false)
            .map_err(|e| TransferError::BadRequest(e.to_string()))?
        else {
            return Err(TransferError::NotFound(self.shown(&t)));
        };
        let cancelled = || out.cancel.load(Ordering::Relaxed);
        let plan = send::plan(dir.as_fd(), &name, base, &cancelled)?;
        {
            let mut s = out.lock();
            s.files_total = plan.files;
            s.bytes_total = plan.bytes;
        }
        let st = stat_at(dir.as_fd(), &name).map_err(|e| TransferError::io("stat", &shown, e))?;
        let begin = Begin {
            transfer_id: req.id.clone(),
            pass: req.pass,
            delta: base.is_some(),
            base: base.map_or(0, |b| b.pass),
            identity: req.identity.to_string(),
            file: st.file_type() == FileType::RegularFile,
            estimated_bytes: plan.bytes,
        };
        let maps = (&self.config.uid_map, &self.config.gid_map);
        send::send(
            dir.as_fd(),
            &name,
            &begin,
            base,
            maps,
            req.compression,
            out,
            |frame| {
                out.wire_bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
                tx.blocking_send(Bytes::from(frame))
                    .map_err(|_| TransferError::Disconnected("the target stopped reading".into()))
            },
        )
    }
}

async fn run(
    agent: Arc<Agent>,
    req: TransferRequest,
    url: reqwest::Url,
    base: Option<Arc<Baseline>>,
    out: Arc<Outgoing>,
) {
    let result = async {
        let _slot = agent
            .transfers
            .sends
            .acquire()
            .await
            .map_err(|_| TransferError::Cancelled)?;
        if out.cancel.load(Ordering::Relaxed) {
            return Err(TransferError::Cancelled);
        }
        out.lock().state = TransferState::Running;
        let client = agent.peer_client()?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let producer = {
            let (agent, req, out, base) = (agent.clone(), req.clone(), out.clone(), base.clone());
            tokio::task::spawn_blocking(move || agent.produce(&req, base.as_deref(), &out, tx))
        };
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
        });
        let endpoint = url
            .join(INCOMING_PATH)
            .map_err(|e| TransferError::BadRequest(e.to_string()))?;
        let http = client
            .post(endpoint)
            .header(
                reqwest::header::AUTHORIZATION,
                format!("{TICKET_SCHEME} {}", req.target.ticket),
            )
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await;
        let answer = match http {
            Err(e) => Err(TransferError::Unreachable(e.to_string())),
            Ok(resp) => {
                let status = resp.status();
                let bytes = resp
                    .bytes()
                    .await
                    .map_err(|e| TransferError::Unreachable(e.to_string()))?;
                if status.is_success() {
                    serde_json::from_slice::<ReceiveResult>(&bytes)
                        .map_err(|e| TransferError::Internal(format!("the target's answer: {e}")))
                } else {
                    let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
                        Ok(b) => (b.error.code, b.error.message),
                        Err(_) => (
                            "unknown".into(),
                            String::from_utf8_lossy(&bytes).chars().take(300).collect(),
                        ),
                    };
                    Err(TransferError::TargetRefused {
                        status: status.as_u16(),
                        code,
                        message,
                    })
                }
            }
        };
        let produced = producer
            .await
            .map_err(|e| TransferError::Internal(format!("the sender stopped: {e}")))?;
        match (produced, answer) {
            (_, Err(e @ TransferError::TargetRefused { .. })) => Err(e),
            (Err(e), _) | (Ok(_), Err(e)) => Err(e),
            (Ok(sent), Ok(received)) => {
                lock(&agent.transfers.baselines).insert(
                    req.id.clone(),
                    Arc::new(Baseline {
                        tenant: req.tenant.clone(),
                        host_path: out.lock().host_path.clone(),
                        identity: req.identity.to_string(),
                        pass: req.pass,
                        entries: sent.entries,
                        at: std::time::Instant::now(),
                    }),
                );
                Ok((sent.manifest, received))
            }
        }
    }
    .await;
    match &result {
        Ok((m, r)) => {
            info!(transfer = %req.id, pass = req.pass, entries = r.entries, data_bytes = r.data_bytes,
                            deleted = r.deleted, manifest = %m.digest, "transfer pass done")
        }
        Err(e) => warn!(transfer = %req.id, pass = req.pass, error = %e, "transfer pass failed"),
    }
    out.finish(result);
}
