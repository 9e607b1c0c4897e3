//! The identity mark of a volume's data (`trusted.berth.volume`, see [`crate::agent::identity`]),
//! read and written through an fd of the very inode looked at, never through a path.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::{
    fs::{Dir, Mode, OFlags, XattrFlags},
    io::Errno,
};
use tracing::info;

use super::{FsError, Meta, SafeRoot, cstr, dir_flags, fstat, io_err, last, open_beneath, usage::is_dot};
use crate::{
    agent::{
        api::EntryType,
        identity::{self, Stamp, XATTR},
    },
    tenant::{TenantRoot, VolumePath},
};

/// Largest attribute value read (a mark is `released <64 characters>`).
const MAX_MARK: usize = 256;

/// The raw mark of an fd's inode; `None` when it has none.
pub fn get_mark(fd: BorrowedFd<'_>) -> Result<Option<Vec<u8>>, Errno> {
    let mut buf = [0u8; MAX_MARK];
    match rustix::fs::fgetxattr(fd, XATTR, &mut buf[..]) {
        Ok(n) => Ok(Some(buf[..n].to_vec())),
        Err(Errno::NODATA) => Ok(None),
        // Longer than any mark berth writes: not one of ours.
        Err(Errno::RANGE) => Ok(Some(Vec::new())),
        Err(e) => Err(e),
    }
}

/// Writes the mark of an fd's inode.
pub fn set_mark(fd: BorrowedFd<'_>, value: &[u8]) -> Result<(), Errno> {
    rustix::fs::fsetxattr(fd, XATTR, value, XattrFlags::empty())
}

/// True when a directory fd has no entries, or a file is empty.
pub fn is_empty(fd: BorrowedFd<'_>, meta: &Meta) -> Result<bool, Errno> {
    if meta.entry_type() != EntryType::Directory {
        return Ok(meta.size == 0);
    }
    let mut dir = Dir::read_from(fd)?;
    while let Some(entry) = dir.read() {
        if !is_dot(entry?.file_name()) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The mark of an open volume (directory or regular file fd).
pub fn stamp_of(fd: BorrowedFd<'_>, meta: &Meta) -> Result<Stamp, Errno> {
    Ok(match get_mark(fd)? {
        Some(v) => identity::decode(&v),
        None => Stamp::Unstamped {
            empty: is_empty(fd, meta)?,
        },
    })
}

impl SafeRoot {
    /// Opens the volume at `path` for reading its mark: a directory, or a regular file reopened
    /// through its `O_PATH` fd. `Ok(None)` when nothing is there; other types are returned as
    /// `Some((None, meta))`, never opened.
    pub(crate) fn open_volume(
        &self,
        root: &TenantRoot,
        path: &VolumePath,
    ) -> Result<Option<(Option<OwnedFd>, Meta, String)>, FsError> {
        let Some(leaf) = self.open_leaf_path(root, path)? else {
            return Ok(None);
        };
        let name = cstr(last(path), &leaf.shown)?;
        let fd = match leaf.meta.entry_type() {
            EntryType::Directory => {
                Some(self.open_checked_dir(leaf.dir.as_fd(), &name, &leaf.meta, &leaf.shown)?)
            }
            EntryType::File => {
                let pfd = open_beneath(leaf.dir.as_fd(), name.as_c_str(), OFlags::PATH, Mode::empty())
                    .map_err(|e| self.classify_open_error(leaf.dir.as_fd(), &name, &leaf.shown, e, None))?;
                let fd = super::ensure::reopen(&pfd, &leaf.shown)?;
                if !fstat(fd.as_fd(), &leaf.shown)?.same_inode(&leaf.meta) {
                    return Err(FsError::Raced { path: leaf.shown });
                }
                Some(fd)
            }
            _ => None,
        };
        Ok(Some((fd, leaf.meta, leaf.shown)))
    }

    /// The mark of the volume at `path` and its display path. A symlink or special file at the
    /// path reads as unstamped, non-empty data (ensure then refuses it for what it is).
    pub fn read_stamp(&self, root: &TenantRoot, path: &VolumePath) -> Result<(Stamp, String), FsError> {
        let shown = root
            .host_path(path)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let Some((fd, meta, shown)) = self.open_volume(root, path)? else {
            return Ok((Stamp::Absent, shown));
        };
        let Some(fd) = fd else {
            return Ok((Stamp::Unstamped { empty: false }, shown));
        };
        let stamp = stamp_of(fd.as_fd(), &meta).map_err(io_err("read the identity of", &shown))?;
        Ok((stamp, shown))
    }

    /// Marks the volume at `path` with `value` (see [`identity::encode`]).
    pub fn write_stamp(&self, root: &TenantRoot, path: &VolumePath, value: &[u8]) -> Result<(), FsError> {
        let Some((Some(fd), _, shown)) = self.open_volume(root, path)? else {
            return Err(FsError::Raced {
                path: root
                    .host_path(path)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            });
        };
        set_mark(fd.as_fd(), value).map_err(io_err("mark the identity of", &shown))?;
        info!(path = %shown, mark = %String::from_utf8_lossy(value), "marked the volume's identity");
        Ok(())
    }
}

/// Opens a directory below `dir` for marks (used on staging trees).
pub fn open_dir(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> Result<OwnedFd, Errno> {
    open_beneath(dir, name, dir_flags(), Mode::empty())
}
