//! Capacity limits of volumes: what the data root's filesystem can enforce, and the limit of
//! each directory volume with a capacity.
//!
//! - btrfs ([`btrfs`]): a new directory volume with a capacity is a subvolume; its qgroup
//!   `0/<id>` carries the limit on bytes referenced. Quota must be enabled on the filesystem
//!   (`btrfs quota enable`, or the agent's `--enable-quota`).
//! - XFS ([`xfs`]): a new directory volume with a capacity gets a project id (recorded in the
//!   [`ledger`]) and `PROJINHERIT`; the project's quota carries the limit. Project quota
//!   accounting must be on (mount option `prjquota`).
//! - anything else, a file volume, or a directory that existed before it had a capacity: no
//!   limit, and the answer says why.
//!
//! Usage comes from the same accounting where there is one ([`Quota::measure`]), else from a
//! throttled, cached walk ([`walks`]).

pub mod btrfs;
pub mod ledger;
mod limit;
mod objects;
pub mod walks;
pub mod xfs;

use std::{collections::BTreeSet, os::fd::BorrowedFd, sync::Mutex};

use rustix::io::Errno;
use tracing::{info, warn};

use crate::agent::{
    api::{QuotaInfo, QuotaKind},
    safe_fs::fs_magic,
};
pub use limit::{Limits, size};
pub use objects::{MeasureCache, QuotaObject, QuotaUsage};

/// The smallest capacity accepted: below it a btrfs subvolume cannot even hold its metadata.
pub const MIN_CAPACITY: u64 = 1 << 20;
/// ext4's `statfs` magic, to name it in messages.
const EXT4_MAGIC: u64 = 0xEF53;

/// What the agent root's filesystem offers, found at start-up.
#[derive(Debug)]
pub struct Quota {
    kind: QuotaKind,
    fs_name: &'static str,
    /// XFS: the ledger of project ids (or why it could not be opened).
    ledger: Option<Result<ledger::Ledger, String>>,
    /// btrfs: qgroups of deleted subvolumes the kernel did not let go of yet.
    stale_qgroups: Mutex<BTreeSet<u64>>,
}

impl Quota {
    /// Looks at the filesystem of the agent root `base`. With `enable`, turns btrfs quota on
    /// when it is off, and refuses to start where limits cannot be enforced.
    pub fn detect(base: BorrowedFd<'_>, enable: bool) -> Result<Self, String> {
        let magic = fs_magic(base);
        let (kind, fs_name) = match magic {
            Some(btrfs::SUPER_MAGIC) => (QuotaKind::BtrfsQgroup, "btrfs"),
            Some(xfs::SUPER_MAGIC) => (QuotaKind::XfsProject, "XFS"),
            Some(EXT4_MAGIC) => (QuotaKind::None, "ext4"),
            _ => (QuotaKind::None, "this filesystem"),
        };
        let ledger =
            (kind == QuotaKind::XfsProject).then(|| ledger::Ledger::open(base).map_err(|e| e.to_string()));
        let quota = Self {
            kind,
            fs_name,
            ledger,
            stale_qgroups: Mutex::new(BTreeSet::new()),
        };
        if enable {
            quota.enable(base)?;
        }
        let info = quota.info(base);
        if info.enforced {
            info!(kind = ?info.kind, "volumes with a capacity get a limit the kernel enforces");
        } else {
            warn!(kind = ?info.kind, reason = %info.reason.as_deref().unwrap_or(""),
                  "capacities of volumes are not enforced on this host");
        }
        Ok(quota)
    }

    fn enable(&self, base: BorrowedFd<'_>) -> Result<(), String> {
        match self.kind {
            QuotaKind::BtrfsQgroup => match btrfs::quota_status(base) {
                Ok(btrfs::QuotaStatus::Disabled) => {
                    info!("enabling btrfs quota on the agent root's filesystem (--enable-quota); waiting for its rescan");
                    btrfs::enable_quota(base).map_err(|e| {
                        format!("--enable-quota: enabling btrfs quota failed: {e}; the agent needs CAP_SYS_ADMIN")
                    })
                }
                Ok(_) => Ok(()),
                Err(e) => Err(format!(
                    "--enable-quota: cannot read the btrfs quota state: {e}; the agent needs CAP_SYS_ADMIN"
                )),
            },
            QuotaKind::XfsProject => match xfs::project_state(base) {
                Ok((true, _)) => Ok(()),
                _ => Err("--enable-quota: XFS project quota accounting can only be turned on at mount time: mount the agent root's filesystem with prjquota".into()),
            },
            QuotaKind::None => Err(format!(
                "--enable-quota: the agent root is on {}, which has no per-directory limits berth can use; put it on btrfs or XFS (prjquota), or drop the flag",
                self.fs_name
            )),
        }
    }

    pub fn kind(&self) -> QuotaKind {
        self.kind
    }

    /// Whether limits are enforced now, and why not (`quota` of `GET /v1/host`). Safe to show a
    /// tenant: it names no host path.
    pub fn info(&self, base: BorrowedFd<'_>) -> QuotaInfo {
        let reason = self.not_enforced(base);
        QuotaInfo {
            kind: self.kind,
            enforced: reason.is_none(),
            reason,
        }
    }

    /// `None` when the kernel enforces limits now; else why not.
    fn not_enforced(&self, base: BorrowedFd<'_>) -> Option<String> {
        let privilege =
            "the berth agent lacks CAP_SYS_ADMIN, which quota needs; the host's administrator must grant it";
        match self.kind {
            QuotaKind::BtrfsQgroup => match btrfs::quota_status(base) {
                Ok(btrfs::QuotaStatus::On) => None,
                Ok(btrfs::QuotaStatus::Disabled) => Some(
                    "quota is not enabled on the host's btrfs filesystem; the host's administrator must enable it (`btrfs quota enable`, or the agent's --enable-quota)".into(),
                ),
                Ok(btrfs::QuotaStatus::Rescanning) => Some(
                    "the host's btrfs filesystem is rescanning its quota accounting; limits hold only once it is done".into(),
                ),
                Ok(btrfs::QuotaStatus::Inconsistent) => Some(
                    "the quota accounting of the host's btrfs filesystem is inconsistent; the host's administrator must run `btrfs quota rescan -w` on it".into(),
                ),
                Err(Errno::PERM | Errno::ACCESS) => Some(privilege.into()),
                Err(e) => Some(format!("the btrfs quota state cannot be read ({e})")),
            },
            QuotaKind::XfsProject => {
                if let Some(Err(e)) = &self.ledger {
                    warn!(error = %e, "the project id ledger cannot be used");
                    return Some("the agent cannot record project ids on this host (see the agent's log)".into());
                }
                match xfs::project_state(base) {
                    Ok((true, true)) => None,
                    Ok((true, false)) => Some(
                        "XFS project quota is accounted but not enforced on this host; the host's administrator must enable enforcement (`xfs_quota -x -c 'enable -p'`)".into(),
                    ),
                    Ok((false, _)) | Err(Errno::SRCH | Errno::NOSYS | Errno::INVAL) => Some(
                        "XFS project quota is off on this host; the host's administrator must mount the filesystem with prjquota".into(),
                    ),
                    Err(Errno::PERM | Errno::ACCESS) => Some(privilege.into()),
                    Err(e) => Some(format!("the XFS quota state cannot be read ({e})")),
                }
            }
            QuotaKind::None => Some(format!(
                "the host's data filesystem ({}) has no per-directory limits berth can use, so a capacity only steers placement; limits need btrfs (qgroups) or XFS (prjquota)",
                self.fs_name
            )),
        }
    }

    fn ledger(&self) -> Option<&ledger::Ledger> {
        self.ledger.as_ref().and_then(|l| l.as_ref().ok())
    }

    /// Removes the qgroups of deleted subvolumes that the kernel has not removed itself (it does
    /// once their data is freed, on recent kernels). Ids of subvolumes are never reused.
    pub fn sweep_stale_qgroups(&self, base: BorrowedFd<'_>) {
        let mut stale = self.stale_qgroups.lock().unwrap_or_else(|p| p.into_inner());
        stale.retain(|&id| match btrfs::remove_qgroup(base, id) {
            Ok(()) => {
                info!(qgroup = %format!("0/{id}"), "removed the qgroup of a deleted subvolume");
                false
            }
            // The kernel removed it itself.
            Err(Errno::NOENT) => false,
            Err(Errno::BUSY) => true,
            Err(e) => {
                warn!(qgroup = %format!("0/{id}"), error = %e, "cannot remove the qgroup of a deleted subvolume");
                false
            }
        });
    }
}
