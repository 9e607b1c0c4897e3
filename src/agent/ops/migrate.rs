//! Manifests, and the target's side of transfers: tickets, receiving, staging areas, commit.
//! (The source's side is in `outgoing.rs`.)

use std::{
    io::Read,
    os::fd::AsFd,
    sync::{Arc, atomic::Ordering},
};

use rustix::fs::RenameFlags;
use tracing::{info, warn};

use super::{Agent, OpError, Target};
use crate::{
    agent::{
        api::{
            CommitRequest, CommitResult, IncomingQuery, IncomingStatus, ReceiveResult, VolumeManifest,
            VolumeQuery,
        },
        identity::{self, Stamp, StampState},
        quota::{btrfs, xfs},
        safe_fs::{
            is_subvolume_root,
            stamp::{set_mark, stamp_of},
        },
        transfer::{
            Incoming, MAX_RECEIVES, ReceiveGuard, TicketClaims, TransferError, lock,
            receive::{self, DATA, STAGING_DIR, StagingState},
            ticket, verify,
            wire::FrameReader,
        },
    },
    tenant::VolumePath,
};

/// No volume may lie in (or be) the staging directory: a container must never reach it.
pub(super) fn refuse_staging_path(path: &VolumePath) -> Result<(), OpError> {
    if path.components().first().is_some_and(|c| c == STAGING_DIR) {
        return Err(OpError::Request(format!(
            "hostPath {} lies in /{STAGING_DIR}, where berth stages volumes moved from other hosts; choose another hostPath",
            path.as_string()
        )));
    }
    Ok(())
}

fn check_id(id: &str) -> Result<(), OpError> {
    if ticket::valid_id(id) {
        Ok(())
    } else {
        Err(OpError::Request(format!(
            "transfer id {id:?} must be 1 to 64 of [A-Za-z0-9-]"
        )))
    }
}

impl Agent {
    /// `GET /v1/volumes/manifest`: the manifest of a volume, read from disk.
    pub fn manifest(&self, q: &VolumeQuery) -> Result<VolumeManifest, OpError> {
        let t = self.target(&q.tenant, &q.host_path)?;
        self.deletes.conflict(&t.tenant, &t.path)?;
        let Some((dir, name, shown)) = self.fs.volume_parent(&t.root, &t.path, false)? else {
            return Err(OpError::NotFound(self.shown(&t)));
        };
        if let Err(rustix::io::Errno::NOENT) = crate::agent::transfer::walk::stat_at(dir.as_fd(), &name) {
            return Err(OpError::NotFound(shown));
        }
        let (identity, released) = self.stamp_fields(&t)?;
        let cancelled = || false;
        let manifest = verify::tree_manifest(
            dir.as_fd(),
            &name,
            &self.config.uid_map,
            &self.config.gid_map,
            false,
            &cancelled,
        )?;
        Ok(VolumeManifest {
            tenant: t.tenant.to_string(),
            host_path: t.path.as_string(),
            identity,
            released,
            manifest,
        })
    }

    /// Checks a ticket presented to `POST /v1/incoming` with this agent's token (once).
    pub fn accept_ticket(&self, token: &[u8], ticket: &str) -> Result<TicketClaims, OpError> {
        let claims = self.transfers.used.accept(token, ticket, ticket::now_secs())?;
        Ok(claims)
    }

    /// Claims a receive slot for the ticket's transfer (one stream per transfer, a few at once).
    pub fn begin_receive(self: &Arc<Self>, claims: &TicketClaims) -> Result<ReceiveGuard, OpError> {
        let key = (claims.tenant.clone(), claims.transfer_id.clone());
        let mut incoming = lock(&self.transfers.incoming);
        if incoming.contains_key(&key) {
            return Err(TransferError::InProgress(claims.transfer_id.clone()).into());
        }
        if self.transfers.receives.fetch_add(1, Ordering::SeqCst) >= MAX_RECEIVES {
            self.transfers.receives.fetch_sub(1, Ordering::SeqCst);
            return Err(TransferError::Busy.into());
        }
        let progress = Arc::new(Incoming::default());
        incoming.insert(key.clone(), progress.clone());
        Ok(ReceiveGuard {
            agent: self.clone(),
            key,
            progress,
        })
    }

    pub(crate) fn forget_incoming(&self, key: &(String, String)) {
        if lock(&self.transfers.incoming).remove(key).is_some() {
            self.transfers.receives.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Applies a stream (blocking) to the ticket's staging area.
    pub fn receive<R: Read>(
        &self,
        claims: &TicketClaims,
        body: R,
        guard: &ReceiveGuard,
    ) -> Result<ReceiveResult, OpError> {
        let t = self.target(&claims.tenant, &claims.host_path)?;
        let mut r = FrameReader::new(body)?;
        let begin = r.begin()?;
        if begin.transfer_id != claims.transfer_id
            || begin.pass != claims.pass
            || begin.identity != claims.identity
        {
            return Err(
                TransferError::stream("its transfer id, pass or identity is not the ticket's").into(),
            );
        }
        let free = self.fs.space()?.free_bytes;
        if begin.estimated_bytes > free {
            return Err(TransferError::NoSpace {
                need: begin.estimated_bytes,
                free,
            }
            .into());
        }
        let Some((top, _)) = self
            .fs
            .staging_dir(&t.root, STAGING_DIR, &claims.transfer_id, true)?
        else {
            return Err(OpError::Internal("the staging directory vanished".into()));
        };
        let io = |op| move |e| TransferError::io(op, "the staging area", e);
        let state = receive::read_state(top.as_fd()).map_err(io("read the state of"))?;
        let mut state = match state {
            Some(s) if s.identity != claims.identity || s.host_path != claims.host_path => {
                return Err(TransferError::Conflict(format!(
                    "the staging area of transfer {} holds another volume's data; discard it (DELETE /v1/incoming/{}) or use another transfer id",
                    claims.transfer_id, claims.transfer_id
                ))
                .into());
            }
            Some(s) => s,
            None => StagingState {
                identity: claims.identity.clone(),
                host_path: claims.host_path.clone(),
                last_complete: None,
            },
        };
        if state.last_complete.is_some_and(|p| claims.pass <= p) {
            return Err(TransferError::TicketReplayed.into());
        }
        if begin.delta {
            if state.last_complete != Some(begin.base) {
                return Err(TransferError::BaseMismatch {
                    id: claims.transfer_id.clone(),
                    base: begin.base,
                    have: state.last_complete,
                }
                .into());
            }
        } else {
            receive::remove_all(top.as_fd(), DATA).map_err(io("empty"))?;
            state.last_complete = None;
            if !begin.file {
                self.stage_like_volume(&t, top.as_fd());
            }
        }
        receive::write_state(top.as_fd(), &state).map_err(io("write the state of"))?;
        let maps = (&self.config.uid_map, &self.config.gid_map);
        let out = receive::apply(r, &begin, top.as_fd(), maps, &guard.progress).inspect_err(|e| {
            warn!(tenant = %t.tenant, transfer = %claims.transfer_id, pass = claims.pass, error = %e, "refused a transfer stream");
        })?;
        state.last_complete = Some(claims.pass);
        receive::write_state(top.as_fd(), &state).map_err(io("write the state of"))?;
        info!(tenant = %t.tenant, transfer = %claims.transfer_id, pass = claims.pass, entries = out.entries,
              data_bytes = out.data_bytes, deleted = out.deleted, "received a transfer pass");
        Ok(out)
    }

    /// Gives a full pass's copy the form of the volume it will replace, so that the limit of a
    /// volume with a capacity still holds once the copy is in place: a btrfs subvolume when the
    /// target was provisioned as one; on XFS, the volume's project id (inherited by everything
    /// the stream then creates, so every file counts against the limit). Otherwise, or when the
    /// filesystem refuses, the stream makes a plain directory, whose limit the next ensure
    /// reports as not enforced.
    fn stage_like_volume(&self, t: &Target, top: std::os::fd::BorrowedFd<'_>) {
        let vol = match self.fs.open_volume_dir(&t.root, &t.path) {
            Ok(Some(vol)) => vol,
            Ok(None) => return,
            Err(e) => {
                warn!(tenant = %t.tenant, host_path = %t.path, error = %e, "cannot look at the volume in place; staging a plain directory");
                return;
            }
        };
        if is_subvolume_root(vol.fd.as_fd(), &vol.meta) {
            if let Err(e) = btrfs::create_subvolume(top, DATA) {
                warn!(tenant = %t.tenant, host_path = %t.path, error = %e,
                    "cannot stage the copy as a btrfs subvolume: once in place, its capacity is not enforced");
            }
            return;
        }
        let project = match xfs::get_project(vol.fd.as_fd()) {
            Ok(x) if x.projid != 0 && x.xflags & xfs::FS_XFLAG_PROJINHERIT != 0 => x.projid,
            _ => return,
        };
        let tagged = rustix::fs::mkdirat(top, DATA, rustix::fs::Mode::from_raw_mode(0o700))
            .and_then(|()| crate::agent::transfer::walk::open_dir(top, DATA))
            .and_then(|data| xfs::set_project(data.as_fd(), project));
        if let Err(e) = tagged {
            warn!(tenant = %t.tenant, host_path = %t.path, project, error = %e,
                "cannot give the staged copy the volume's project id: once in place, its capacity is not enforced");
        }
    }

    /// `GET /v1/incoming/{id}`.
    pub fn incoming_status(&self, id: &str, q: &IncomingQuery) -> Result<IncomingStatus, OpError> {
        check_id(id)?;
        let t = self.target(&q.tenant, "/x")?;
        let progress = lock(&self.transfers.incoming)
            .get(&(q.tenant.clone(), id.to_owned()))
            .cloned();
        let staged = self.fs.staging_dir(&t.root, STAGING_DIR, id, false)?;
        let state = match &staged {
            Some((fd, _)) => receive::read_state(fd.as_fd())
                .map_err(|e| TransferError::io("read", "the staging area", e))?,
            None => None,
        };
        Ok(IncomingStatus {
            id: id.to_owned(),
            tenant: t.tenant.to_string(),
            exists: staged.is_some(),
            receiving: progress.is_some(),
            host_path: state.as_ref().map(|s| s.host_path.clone()),
            identity: state
                .as_ref()
                .and_then(|s| identity::VolumeIdentity::parse(&s.identity).ok()),
            last_complete_pass: state.and_then(|s| s.last_complete),
            entries: progress.as_ref().map_or(0, |p| p.entries.load(Ordering::Relaxed)),
            data_bytes: progress
                .as_ref()
                .map_or(0, |p| p.data_bytes.load(Ordering::Relaxed)),
        })
    }

    /// `DELETE /v1/incoming/{id}`: discards a staging area (not while a stream is received).
    pub fn discard_incoming(&self, id: &str, q: &IncomingQuery) -> Result<IncomingStatus, OpError> {
        let status = self.incoming_status(id, q)?;
        if status.receiving {
            return Err(TransferError::InProgress(id.to_owned()).into());
        }
        let t = self.target(&q.tenant, "/x")?;
        self.remove_staging(&t, id)?;
        info!(tenant = %t.tenant, transfer = %id, "discarded a staging area");
        Ok(IncomingStatus {
            exists: false,
            ..status
        })
    }

    fn remove_staging(&self, t: &Target, id: &str) -> Result<(), OpError> {
        let path = VolumePath::parse(&format!("/{STAGING_DIR}/x"))
            .map_err(|_| OpError::Internal("staging path".into()))?;
        if let Some((dir, _, _)) = self.fs.volume_parent(&t.root, &path, false)? {
            let name = std::ffi::CString::new(id).map_err(|_| OpError::Internal("transfer id".into()))?;
            receive::remove_all(dir.as_fd(), &name)
                .map_err(|e| TransferError::io("remove", "the staging area", e))?;
        }
        Ok(())
    }

    /// `POST /v1/incoming/{id}/commit`: checks the staged copy against the source's manifest
    /// and renames it into place, never over data (only over an empty volume of the same
    /// identity, or an empty one without identity, such as the one the target was provisioned
    /// with). A retry after a commit that already happened finds the data in place and says so.
    pub fn commit(&self, id: &str, req: &CommitRequest) -> Result<CommitResult, OpError> {
        check_id(id)?;
        let t = self.target(&req.tenant, &req.host_path)?;
        self.deletes.conflict(&t.tenant, &t.path)?;
        if lock(&self.transfers.incoming).contains_key(&(req.tenant.clone(), id.to_owned())) {
            return Err(TransferError::InProgress(id.to_owned()).into());
        }
        let _mark = super::identity::mark_lock(&t);
        let maps = (&self.config.uid_map, &self.config.gid_map);
        let never = || false;
        let (found, shown) = self.fs.read_stamp(&t.root, &t.path)?;
        let own = matches!(&found, Stamp::Marked { state: StampState::Bound, identity } if *identity == req.identity);
        // Committed before (the answer was lost): the data in place is the source's.
        if own && let Some((dir, name, _)) = self.fs.volume_parent(&t.root, &t.path, false)? {
            let m = verify::tree_manifest(dir.as_fd(), &name, maps.0, maps.1, false, &never)?;
            if m.digest == req.manifest {
                self.remove_staging(&t, id)?;
                return self.committed(&t, req, m, true);
            }
        }
        let Some((top, _)) = self.fs.staging_dir(&t.root, STAGING_DIR, id, false)? else {
            return Err(TransferError::NotFound(format!(
                "no staged copy of transfer {id} for tenant {}",
                t.tenant
            ))
            .into());
        };
        let state =
            receive::read_state(top.as_fd()).map_err(|e| TransferError::io("read", "the staging area", e))?;
        match &state {
            Some(s)
                if s.identity == req.identity.as_str()
                    && s.host_path == t.path.as_string()
                    && s.last_complete.is_some() => {}
            _ => {
                return Err(TransferError::Conflict(format!(
                    "the staging area of transfer {id} holds no complete pass of this volume; send a pass first"
                ))
                .into());
            }
        }
        // Written to disk first (syncfs reports a failed writeback), then read back and compared.
        rustix::fs::syncfs(&top).map_err(|e| TransferError::io("sync", "the staged copy", e))?;
        let staged = verify::tree_manifest(top.as_fd(), DATA, maps.0, maps.1, false, &never)?;
        if staged.digest != req.manifest {
            return Err(TransferError::ManifestMismatch {
                expected: req.manifest.clone(),
                found: staged.digest,
            }
            .into());
        }
        let exchange = match &found {
            Stamp::Absent => false,
            Stamp::Unstamped { empty: true } => true,
            Stamp::Marked { .. } if own && is_empty_volume(&found, self, &t)? => true,
            Stamp::Marked { .. } | Stamp::Unreadable => {
                identity::check_delete(&found, &req.identity, &shown)?;
                return Err(TransferError::Occupied { path: shown }.into());
            }
            Stamp::Unstamped { .. } => return Err(TransferError::Occupied { path: shown }.into()),
        };
        // The identity travels with the data into place.
        let data = crate::agent::transfer::walk::open_file(top.as_fd(), DATA)
            .or_else(|_| crate::agent::transfer::walk::open_dir(top.as_fd(), DATA))
            .map_err(|e| TransferError::io("open", "the staged copy", e))?;
        set_mark(data.as_fd(), &identity::encode(StampState::Bound, &req.identity))
            .map_err(|e| TransferError::io("mark", "the staged copy", e))?;
        rustix::fs::fsync(&data).map_err(|e| TransferError::io("sync", "the staged copy", e))?;
        let Some((dir, name, _)) = self.fs.volume_parent(&t.root, &t.path, true)? else {
            return Err(OpError::Internal("the volume's directory vanished".into()));
        };
        let flags = if exchange {
            RenameFlags::EXCHANGE
        } else {
            RenameFlags::NOREPLACE
        };
        rustix::fs::renameat_with(top.as_fd(), DATA, dir.as_fd(), &name, flags)
            .map_err(|e| TransferError::io("rename into place", &shown, e))?;
        rustix::fs::fsync(&dir).map_err(|e| TransferError::io("sync", &shown, e))?;
        info!(tenant = %t.tenant, host_path = %t.path, transfer = %id, identity = %req.identity,
              entries = staged.entries, bytes = staged.bytes, replaced_empty = exchange, "put a moved volume in place");
        drop(top);
        self.remove_staging(&t, id)?;
        self.committed(&t, req, staged, false)
    }

    fn committed(
        &self,
        t: &Target,
        req: &CommitRequest,
        manifest: crate::agent::api::ManifestSummary,
        already: bool,
    ) -> Result<CommitResult, OpError> {
        let Some(meta) = self.fs.stat(&t.root, &t.path)? else {
            return Err(OpError::NotFound(self.shown(t)));
        };
        Ok(CommitResult {
            state: self.state(t, &meta),
            identity: req.identity.clone(),
            manifest,
            already_committed: already,
        })
    }
}

/// True when the volume in place holds nothing (a freshly provisioned target).
fn is_empty_volume(found: &Stamp, agent: &Agent, t: &Target) -> Result<bool, OpError> {
    let _ = found;
    let Some((Some(fd), meta, _)) = agent.fs.open_volume(&t.root, &t.path)? else {
        return Ok(false);
    };
    Ok(matches!(
        stamp_of(fd.as_fd(), &meta),
        Ok(Stamp::Marked { .. }) if crate::agent::safe_fs::stamp::is_empty(fd.as_fd(), &meta).unwrap_or(false)
    ))
}
