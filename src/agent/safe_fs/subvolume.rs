//! btrfs subvolumes as volumes, and mount detection that tells them apart from mounts.
//!
//! A subvolume has its own `st_dev` but is not a mount: `openat2(RESOLVE_NO_XDEV)` resolves into
//! it. Walks therefore take an entry with another `st_dev` for a mount point only when its mount
//! id (`statx` `STATX_MNT_ID`) differs from the walk's, so a volume that is a subvolume, or holds
//! subvolumes a tenant made, is walked, re-owned and deleted like any directory, while real mounts
//! (bind mounts included, which `RESOLVE_NO_XDEV` refuses) are still never crossed.

use std::{
    ffi::CStr,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
};

use rustix::{
    fs::{AtFlags, Mode, StatxFlags},
    io::Errno,
};

use super::{FsError, Meta, SafeRoot, cstr, dir_flags, fstat, last, open_beneath};
use crate::{
    agent::{api::EntryType, quota::btrfs},
    tenant::{TenantRoot, VolumePath},
};

/// The mount id of `dir/name` (`name` empty: of `dir` itself), never following a symlink or
/// triggering an automount.
pub fn mount_id_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<u64, Errno> {
    let mut flags = AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT;
    if name.is_empty() {
        flags |= AtFlags::EMPTY_PATH;
    }
    let st = rustix::fs::statx(dir, name, flags, StatxFlags::MNT_ID)?;
    if st.stx_mask & StatxFlags::MNT_ID.bits() == 0 {
        return Err(Errno::NOSYS);
    }
    Ok(st.stx_mnt_id)
}

/// Where a walk stops: entries on another mount than the tree's top.
#[derive(Debug, Clone, Copy)]
pub(super) struct Boundary {
    dev: u64,
    /// The top's mount id; `None` where the kernel does not report one (then any other
    /// `st_dev` counts as a mount, as before subvolumes were handled).
    mnt_id: Option<u64>,
}

impl Boundary {
    /// The boundary of a walk whose top is the directory `top`, of device `dev`.
    pub(super) fn of(top: BorrowedFd<'_>, dev: u64) -> Self {
        Self {
            dev,
            mnt_id: mount_id_at(top, c"").ok(),
        }
    }

    /// Whether the entry `dir/name` (lstat'ed as `m`) lies on another mount. Only entries with
    /// another `st_dev` are asked for their mount id: one `statx` per subvolume or mount point,
    /// none per ordinary entry. Entries on the same device may still be bind mounts: opening them
    /// with `RESOLVE_NO_XDEV` (directories) or unlinking them (`EBUSY`) catches those.
    pub(super) fn crosses(&self, dir: BorrowedFd<'_>, name: &CStr, m: &Meta) -> bool {
        if m.dev == self.dev {
            return false;
        }
        match self.mnt_id {
            Some(top) => mount_id_at(dir, name) != Ok(top),
            None => true,
        }
    }
}

/// Whether the directory `fd` (of state `meta`) is the root of a btrfs subvolume.
pub fn is_subvolume_root(fd: BorrowedFd<'_>, meta: &Meta) -> bool {
    meta.entry_type() == EntryType::Directory
        && meta.ino == btrfs::SUBVOL_ROOT_INO
        && fs_magic(fd) == Some(btrfs::SUPER_MAGIC)
}

/// The `statfs` magic of the filesystem holding `fd`.
#[allow(clippy::unnecessary_cast)]
pub fn fs_magic(fd: BorrowedFd<'_>) -> Option<u64> {
    rustix::fs::fstatfs(fd)
        .ok()
        .map(|s| s.f_type as u64 & 0xffff_ffff)
}

/// A directory volume opened for ioctls (a real fd, not `O_PATH`), checked to be the inode
/// that was looked at, with the directory holding it.
pub struct VolumeDir {
    pub parent: OwnedFd,
    pub fd: OwnedFd,
    pub meta: Meta,
    pub shown: String,
}

impl SafeRoot {
    /// The base directory's fd: ioctls that act on the whole filesystem (btrfs quota, XFS
    /// quotactl) are sent to it.
    pub fn base_fd(&self) -> BorrowedFd<'_> {
        self.base.as_fd()
    }

    /// Opens a directory volume; `Ok(None)` when it does not exist or is not a directory.
    pub fn open_volume_dir(
        &self,
        root: &TenantRoot,
        path: &VolumePath,
    ) -> Result<Option<VolumeDir>, FsError> {
        let Some(leaf) = self.open_leaf_path(root, path)? else {
            return Ok(None);
        };
        if leaf.meta.entry_type() != EntryType::Directory {
            return Ok(None);
        }
        let name = cstr(last(path), &leaf.shown)?;
        let fd = self.open_checked_dir(leaf.dir.as_fd(), &name, &leaf.meta, &leaf.shown)?;
        Ok(Some(VolumeDir {
            parent: leaf.dir,
            fd,
            meta: leaf.meta,
            shown: leaf.shown,
        }))
    }

    /// Creates `parent/name` as a subvolume, or as a plain directory when btrfs refuses (the
    /// caller sees which from its inode number). `EEXIST` when the name exists.
    pub(super) fn make_subvolume(
        &self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        shown: &str,
    ) -> Result<(), Errno> {
        match btrfs::create_subvolume(parent, name) {
            Err(Errno::EXIST) => Err(Errno::EXIST),
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(path = %shown, error = %e, "cannot create a subvolume: creating a plain directory, whose size is not limited");
                rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))
            }
        }
    }

    /// Removes the empty subvolume `parent/name` after a delete emptied it, where `rmdir` is
    /// refused (kernels before 4.18).
    pub(super) fn destroy_empty_subvolume(
        &self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        shown: &str,
    ) -> Result<(), FsError> {
        let fd = open_beneath(parent, name, dir_flags(), Mode::empty())
            .map_err(|e| self.classify_open_error(parent, name, shown, e, None))?;
        let meta = fstat(fd.as_fd(), shown)?;
        if !is_subvolume_root(fd.as_fd(), &meta) {
            return Err(FsError::Raced {
                path: shown.to_owned(),
            });
        }
        btrfs::destroy_subvolume(parent, name).map_err(super::io_err("delete subvolume", shown))
    }
}
