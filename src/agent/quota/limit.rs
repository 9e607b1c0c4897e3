//! Converging a volume's limit to the capacity asked for.
//!
//! A careful operator's rules: a limit is never set below what the volume already stores (its
//! writes would fail at once and deleting can be hard when over quota): the old limit stays and
//! the answer says why. Without a capacity a limit berth set is lifted. A directory that existed
//! before it had a capacity is not moved into a subvolume (a running app may be writing it):
//! the answer says the limit is not enforced and how to get it.

use std::os::fd::{AsFd, BorrowedFd};

use rustix::io::Errno;
use tracing::{info, warn};

use super::{Quota, btrfs, xfs};
use crate::agent::{
    api::{LimitState, QuotaKind, VolumeType},
    safe_fs::{VolumeDir, is_subvolume_root},
};

/// The volume an ensure converged, as the quota side needs it.
pub struct Limits<'a> {
    pub tenant: &'a str,
    pub host_path: &'a str,
    pub kind: VolumeType,
    pub capacity: Option<u64>,
    /// True when this ensure created the volume.
    pub created: bool,
}

/// `12.0 MiB (12582912 bytes)`.
pub fn size(bytes: u64) -> String {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    format!("{mib:.1} MiB ({bytes} bytes)")
}

const NOT_NEW: &str = "the volume's directory existed before it had a capacity, and berth does not move data an app may be using into a new";

fn below_usage(used: u64, capacity: u64, current: Option<u64>) -> String {
    format!(
        "the volume already holds {}, more than the capacity of {}; berth does not set a limit below what is stored (every write would fail at once), so the limit stays {}. Delete data in the volume, or ask for a capacity of at least {}",
        size(used),
        size(capacity),
        current.map_or("unset".to_owned(), |b| format!("at {}", size(b))),
        size(used)
    )
}

fn privilege_or(e: Errno, what: &str) -> String {
    match e {
        Errno::PERM | Errno::ACCESS => {
            "the berth agent lacks CAP_SYS_ADMIN, which quota needs; the host's administrator must grant it"
                .into()
        }
        e => format!("{what} failed ({e}); the host's administrator should check the agent's log"),
    }
}

/// Sets the limit to `wanted` (the capacity, rounded up to the filesystem's unit) unless it
/// already is, never below `used`. `Some(changed)`, or `None` with `st.reason` saying why not.
fn resize(
    st: &mut LimitState,
    used: u64,
    current: Option<u64>,
    wanted: u64,
    set: impl FnOnce() -> Result<(), Errno>,
    what: &str,
) -> Option<bool> {
    if current == Some(wanted) {
        return Some(false);
    }
    if used > st.requested_bytes {
        st.reason = Some(below_usage(used, st.requested_bytes, current));
        return None;
    }
    if let Err(e) = set() {
        st.reason = Some(privilege_or(e, &format!("setting {what}")));
        return None;
    }
    st.bytes = Some(wanted);
    Some(true)
}

impl Quota {
    /// Whether a missing directory volume should be created as a btrfs subvolume.
    pub fn wants_subvolume(&self, kind: VolumeType, capacity: Option<u64>) -> bool {
        self.kind == QuotaKind::BtrfsQgroup && kind == VolumeType::Directory && capacity.is_some()
    }

    /// Whether a missing directory volume should be tagged with an XFS project id.
    pub fn wants_project(&self, kind: VolumeType, capacity: Option<u64>) -> bool {
        self.kind == QuotaKind::XfsProject
            && kind == VolumeType::Directory
            && capacity.is_some()
            && self.ledger().is_some()
    }

    /// Tags a new, empty directory volume with its project id (allocated and recorded first).
    /// Failures are logged; [`Quota::converge`] then reports the limit as not enforced.
    pub fn tag_new_dir(&self, base: BorrowedFd<'_>, dir: BorrowedFd<'_>, tenant: &str, host_path: &str) {
        let Some(ledger) = self.ledger() else { return };
        let in_use = |id| xfs::get_quota(base, id).is_ok_and(|(bytes, inodes, _)| bytes > 0 || inodes > 0);
        match ledger.allocate(tenant, host_path, in_use) {
            Ok(id) => match xfs::set_project(dir, id) {
                Ok(()) => info!(project = id, "tagged the new volume with its project id"),
                Err(e) => warn!(project = id, error = %e, "cannot tag the new volume with its project id"),
            },
            Err(e) => warn!(error = %e, "cannot allocate a project id"),
        }
    }

    /// Makes the limit of an ensured volume match its capacity. Returns the limit's state (when
    /// a capacity was asked for) and whether anything changed.
    pub fn converge(
        &self,
        base: BorrowedFd<'_>,
        vol: Option<&VolumeDir>,
        v: &Limits<'_>,
    ) -> (Option<LimitState>, bool) {
        let mut st = v.capacity.map(|c| LimitState {
            kind: self.kind,
            requested_bytes: c,
            bytes: None,
            enforced: false,
            reason: None,
        });
        let vol = match (vol, &mut st) {
            (Some(vol), _) => vol,
            (None, Some(st)) => {
                st.reason = Some(if v.kind == VolumeType::File {
                    "a file volume's size is not limited; its capacity only steers placement".into()
                } else {
                    "the volume is not a directory, so no limit applies".into()
                });
                return (Some(st.clone()), false);
            }
            (None, None) => return (None, false),
        };
        let changed = match self.kind {
            QuotaKind::BtrfsQgroup => self.converge_btrfs(base, vol, v, st.as_mut()),
            QuotaKind::XfsProject => self.converge_xfs(base, vol, v, st.as_mut()),
            QuotaKind::None => {
                if let Some(st) = st.as_mut() {
                    st.reason = self.not_enforced(base);
                }
                false
            }
        };
        (st, changed)
    }

    fn converge_btrfs(
        &self,
        base: BorrowedFd<'_>,
        vol: &VolumeDir,
        v: &Limits<'_>,
        st: Option<&mut LimitState>,
    ) -> bool {
        let fd = vol.fd.as_fd();
        if !is_subvolume_root(fd, &vol.meta) {
            if let Some(st) = st {
                st.reason = Some(if v.created {
                    "the agent could not create the volume as a btrfs subvolume (see the agent's log), so its size is not limited".into()
                } else {
                    format!(
                        "{NOT_NEW} btrfs subvolume, and btrfs limits only subvolumes. To enforce it, move the data out, delete the volume and create it again with its capacity"
                    )
                });
            }
            return false;
        }
        let found = btrfs::subvolume_id(fd)
            .and_then(|id| Ok((id, btrfs::qgroups(base, Some((id, id)))?.remove(&id))));
        let Some(st) = st else {
            // No capacity: lift a limit berth set.
            if let Ok((id, Some(q))) = found
                && q.max_rfer.is_some()
            {
                match btrfs::set_limit(base, id, None) {
                    Ok(()) => {
                        info!(qgroup = %format!("0/{id}"), "lifted the volume's limit: it has no capacity any more");
                        return true;
                    }
                    Err(e) => {
                        warn!(qgroup = %format!("0/{id}"), error = %e, "cannot lift the volume's limit")
                    }
                }
            }
            return false;
        };
        let (id, q) = match found {
            Ok((id, Some(q))) => (id, q),
            Ok((id, None)) => {
                st.reason = Some(self.not_enforced(base).unwrap_or_else(|| {
                    format!("the volume's qgroup 0/{id} does not exist; the host's administrator should run `btrfs quota rescan -w` on its filesystem")
                }));
                return false;
            }
            Err(e) => {
                st.reason = Some(
                    self.not_enforced(base)
                        .unwrap_or_else(|| privilege_or(e, "reading the volume's qgroup")),
                );
                return false;
            }
        };
        st.bytes = q.max_rfer;
        if let Some(why) = self.not_enforced(base) {
            st.reason = Some(why);
            return false;
        }
        let wanted = st.requested_bytes;
        let set = || btrfs::set_limit(base, id, Some(wanted));
        let Some(changed) = resize(st, q.rfer, q.max_rfer, wanted, set, "the volume's qgroup limit") else {
            return false;
        };
        if changed {
            info!(qgroup = %format!("0/{id}"), bytes = wanted, old = ?q.max_rfer, "set the volume's limit");
        }
        match btrfs::nested_subvolumes(base, id, 64) {
            Ok(n) if !n.is_empty() => {
                st.reason = Some(format!(
                    "{} subvolume(s) were created inside the volume; btrfs does not count their data against the volume's limit. Remove them (move their data into ordinary directories first)",
                    n.len()
                ));
            }
            Ok(_) => st.enforced = true,
            Err(e) => st.reason = Some(privilege_or(e, "listing subvolumes inside the volume")),
        }
        changed
    }

    fn converge_xfs(
        &self,
        base: BorrowedFd<'_>,
        vol: &VolumeDir,
        v: &Limits<'_>,
        st: Option<&mut LimitState>,
    ) -> bool {
        let fd = vol.fd.as_fd();
        let recorded = self
            .ledger()
            .and_then(|l| l.id_of(v.tenant, v.host_path).ok().flatten());
        let tag = xfs::get_project(fd).ok();
        let Some(id) = recorded else {
            if let Some(st) = st {
                st.reason = Some(self.not_enforced(base).unwrap_or_else(|| {
                    if v.created {
                        "the agent could not give the volume a project id (see the agent's log), so its size is not limited".into()
                    } else {
                        format!("{NOT_NEW} XFS project (existing files would not be counted). To enforce it, move the data out, delete the volume and create it again with its capacity")
                    }
                }));
            }
            return false;
        };
        let mut changed = false;
        let mut retagged = false;
        if tag.is_none_or(|x| x.projid != id || x.xflags & xfs::FS_XFLAG_PROJINHERIT == 0) {
            // Changed from inside the volume (root in a container without userns-remap can), or
            // never tagged: tag the volume's directory again.
            match xfs::set_project(fd, id) {
                Ok(()) => {
                    warn!(project = id, found = ?tag.map(|x| x.projid), "the volume's directory had lost its project id: set it again");
                    retagged = !v.created;
                    changed = true;
                }
                Err(e) => {
                    if let Some(st) = st {
                        st.reason = Some(privilege_or(e, "tagging the volume with its project id"));
                    }
                    return changed;
                }
            }
        }
        let current = xfs::get_quota(base, id);
        let Some(st) = st else {
            if let Ok((_, _, Some(_))) = current
                && xfs::set_limit(base, id, None).is_ok()
            {
                info!(
                    project = id,
                    "lifted the volume's limit: it has no capacity any more"
                );
                return true;
            }
            return changed;
        };
        if let Some(why) = self.not_enforced(base) {
            st.reason = Some(why);
            return changed;
        }
        let (used, _, limit) = match current {
            Ok(q) => q,
            Err(e) => {
                st.reason = Some(privilege_or(e, "reading the volume's project quota"));
                return changed;
            }
        };
        st.bytes = limit;
        let wanted = st.requested_bytes.div_ceil(xfs::QUOTA_BLOCK) * xfs::QUOTA_BLOCK;
        let set = || xfs::set_limit(base, id, Some(wanted));
        match resize(st, used, limit, wanted, set, "the volume's project quota") {
            None => return changed,
            Some(true) => {
                info!(project = id, bytes = wanted, old = ?limit, "set the volume's limit");
                changed = true;
            }
            Some(false) => {}
        }
        if retagged {
            st.reason = Some("the volume's project id had been changed from inside it, which took files out of its limit; berth set it back on the volume's directory, but files tagged otherwise are still not counted. The host should run containers with userns-remap, which stops them from changing project ids".into());
        } else {
            st.enforced = true;
        }
        changed
    }
}
