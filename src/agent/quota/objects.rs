//! The quota objects of a volume: measuring them, and cleaning them up when the volume is
//! deleted.

use std::{collections::HashMap, os::fd::AsFd, os::fd::BorrowedFd};

use rustix::io::Errno;
use tracing::{info, warn};

use super::{Quota, btrfs, xfs};
use crate::agent::{
    api::QuotaKind,
    safe_fs::{VolumeDir, is_subvolume_root},
};

/// What holds a volume's limit, and must go with its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaObject {
    /// A btrfs subvolume (and its qgroup `0/<id>`).
    Subvolume(u64),
    /// An XFS project id recorded in the ledger.
    Project(u32),
}

/// Usage from quota accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaUsage {
    pub bytes: u64,
    /// Inodes, where the accounting counts them (XFS; not btrfs).
    pub inodes: Option<u64>,
    pub limit: Option<u64>,
    /// Subvolumes made inside the volume; their bytes are included.
    pub nested: u64,
}

/// What one usage batch reads once for all its volumes.
#[derive(Default)]
pub struct MeasureCache {
    /// `Some(true)` when the accounting can be trusted now.
    trusted: Option<bool>,
    qgroups: Option<HashMap<u64, btrfs::Qgroup>>,
}

impl Quota {
    /// The quota object of a directory volume about to be deleted.
    pub fn object_of(&self, vol: &VolumeDir, tenant: &str, host_path: &str) -> Option<QuotaObject> {
        match self.kind {
            QuotaKind::BtrfsQgroup if is_subvolume_root(vol.fd.as_fd(), &vol.meta) => {
                btrfs::subvolume_id(vol.fd.as_fd())
                    .ok()
                    .map(QuotaObject::Subvolume)
            }
            QuotaKind::XfsProject => self
                .ledger()
                .and_then(|l| l.id_of(tenant, host_path).ok().flatten())
                .map(QuotaObject::Project),
            _ => None,
        }
    }

    /// After a volume was deleted completely: removes its qgroup (later, if the kernel still
    /// frees the subvolume's data), or releases its project id. Not called when something was
    /// left in place, so a project id is never released while data tagged with it remains.
    pub fn release(&self, base: BorrowedFd<'_>, obj: QuotaObject, tenant: &str, host_path: &str) {
        match obj {
            QuotaObject::Subvolume(id) => {
                match btrfs::remove_qgroup(base, id) {
                    Ok(()) => info!(qgroup = %format!("0/{id}"), "removed the deleted volume's qgroup"),
                    // Quota off, or the kernel removed it already.
                    Err(Errno::NOENT | Errno::NOTCONN) => {}
                    Err(Errno::BUSY) => {
                        self.stale_qgroups
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(id);
                    }
                    Err(e) => {
                        warn!(qgroup = %format!("0/{id}"), error = %e, "cannot remove the deleted volume's qgroup")
                    }
                }
                self.sweep_stale_qgroups(base);
            }
            QuotaObject::Project(id) => {
                if let Err(e) = xfs::set_limit(base, id, None) {
                    warn!(project = id, error = %e, "cannot clear the deleted volume's project quota");
                }
                match self.ledger().map(|l| l.release(tenant, host_path)) {
                    Some(Ok(_)) => info!(
                        project = id,
                        "released the deleted volume's project id (never given again)"
                    ),
                    Some(Err(e)) => {
                        warn!(project = id, error = %e, "cannot release the deleted volume's project id")
                    }
                    None => {}
                }
            }
        }
    }

    /// A directory volume's usage from quota accounting: `None` when it has none (a plain
    /// directory, quota off or untrustworthy), and a walk must measure it.
    pub fn measure(
        &self,
        base: BorrowedFd<'_>,
        vol: &VolumeDir,
        tenant: &str,
        host_path: &str,
        cache: &mut MeasureCache,
    ) -> Option<QuotaUsage> {
        let fd = vol.fd.as_fd();
        match self.kind {
            QuotaKind::BtrfsQgroup if is_subvolume_root(fd, &vol.meta) => {
                if !*cache
                    .trusted
                    .get_or_insert_with(|| self.not_enforced(base).is_none())
                {
                    return None;
                }
                let id = btrfs::subvolume_id(fd).ok()?;
                if cache.qgroups.is_none() {
                    cache.qgroups = Some(btrfs::qgroups(base, None).ok()?);
                }
                let all = cache.qgroups.as_ref()?;
                let q = all.get(&id)?;
                let nested = btrfs::nested_subvolumes(base, id, 1024).unwrap_or_default();
                let bytes = nested
                    .iter()
                    .filter_map(|n| all.get(n))
                    .fold(q.rfer, |sum, n| sum.saturating_add(n.rfer));
                Some(QuotaUsage {
                    bytes,
                    inodes: None,
                    limit: q.max_rfer,
                    nested: nested.len() as u64,
                })
            }
            QuotaKind::XfsProject => {
                let id = self.ledger()?.id_of(tenant, host_path).ok()??;
                let tag = xfs::get_project(fd).ok()?;
                if tag.projid != id
                    || !*cache
                        .trusted
                        .get_or_insert_with(|| self.not_enforced(base).is_none())
                {
                    return None;
                }
                let (bytes, inodes, limit) = xfs::get_quota(base, id).ok()?;
                Some(QuotaUsage {
                    bytes,
                    inodes: Some(inodes),
                    limit,
                    nested: 0,
                })
            }
            _ => None,
        }
    }
}
