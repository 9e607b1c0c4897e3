//! Read-only walks: the state of a volume and the disk usage of its tree, on fds only.
//!
//! The walk is iterative and streams each directory's entries (memory does not grow with the
//! number of entries), holds one fd per level, and stops descending at [`MAX_USAGE_DEPTH`]
//! (reported, not an error), so a tenant cannot make its volume impossible to inspect.

use std::{
    collections::HashSet,
    ffi::{CStr, CString},
    os::fd::{AsFd, BorrowedFd, OwnedFd},
};

use rustix::{
    fs::{Dir, Mode, OFlags},
    io::Errno,
};

use super::{
    FsError, MAX_USAGE_DEPTH, Meta, SafeRoot, Usage, cstr, dir_flags, fstat, io_err, join, last, lstat_at,
    open_beneath, subvolume::Boundary,
};
use crate::{
    agent::api::EntryType,
    tenant::{TenantRoot, VolumePath},
};

/// Most hard-linked inodes remembered to count them once; past it, further links of files
/// not seen yet are counted again (usage is then an over-estimate, memory stays bounded).
const MAX_SEEN_HARD_LINKS: usize = 65_536;

/// The leaf of a path, looked at through an `O_PATH` fd: the directory holding it, its display
/// path and its state.
pub(super) struct Leaf {
    pub dir: OwnedFd,
    pub shown: String,
    pub meta: Meta,
}

impl SafeRoot {
    /// The current state of a volume without changing anything; `Ok(None)` when absent.
    pub fn stat(&self, root: &TenantRoot, path: &VolumePath) -> Result<Option<Meta>, FsError> {
        Ok(self.open_leaf_path(root, path)?.map(|l| l.meta))
    }

    /// Opens the leaf with `O_PATH` (a symlink is returned as itself, never followed).
    pub(super) fn open_leaf_path(
        &self,
        root: &TenantRoot,
        path: &VolumePath,
    ) -> Result<Option<Leaf>, FsError> {
        let Some(parents) = self.walk_parents(root, path, false)? else {
            return Ok(None);
        };
        let leaf = last(path);
        let shown = join(&parents.shown, leaf);
        let name = cstr(leaf, &shown)?;
        match open_beneath(parents.dir.as_fd(), name.as_c_str(), OFlags::PATH, Mode::empty()) {
            Ok(fd) => {
                let meta = fstat(fd.as_fd(), &shown)?;
                Ok(Some(Leaf {
                    dir: parents.dir,
                    shown,
                    meta,
                }))
            }
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.classify_open_error(parents.dir.as_fd(), &name, &shown, e, None)),
        }
    }

    /// State plus allocated bytes of the whole tree (same filesystem, no symlinks followed).
    pub fn usage(&self, root: &TenantRoot, path: &VolumePath) -> Result<Option<(Meta, Usage)>, FsError> {
        let Some(leaf) = self.open_leaf_path(root, path)? else {
            return Ok(None);
        };
        let meta = leaf.meta;
        let mut usage = Usage {
            bytes: meta.blocks.saturating_mul(512),
            entries: 1,
            ..Usage::default()
        };
        if meta.entry_type() == EntryType::Directory {
            let name = cstr(last(path), &leaf.shown)?;
            let fd = self.open_checked_dir(leaf.dir.as_fd(), &name, &meta, &leaf.shown)?;
            let boundary = Boundary::of(fd.as_fd(), meta.dev);
            self.usage_walk(fd, boundary, &leaf.shown, &mut usage)?;
        }
        Ok(Some((meta, usage)))
    }

    fn usage_walk(
        &self,
        top: OwnedFd,
        boundary: Boundary,
        shown: &str,
        usage: &mut Usage,
    ) -> Result<(), FsError> {
        // One frame per open directory: its entry stream and its name in its parent.
        let mut stack: Vec<(Dir, CString)> = vec![(
            Dir::new(top).map_err(io_err("read directory", shown))?,
            CString::default(),
        )];
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        loop {
            if self.is_cancelled() {
                return Err(FsError::Interrupted {
                    path: shown.to_owned(),
                    done: usage.entries,
                });
            }
            let Some((dir, _)) = stack.last_mut() else {
                break;
            };
            let entry = match dir.read() {
                None => {
                    stack.pop();
                    continue;
                }
                Some(Err(e)) => return Err(io_err("read directory", &rel_path(shown, &stack, None))(e)),
                Some(Ok(entry)) => entry,
            };
            let name = entry.file_name();
            if is_dot(name) {
                continue;
            }
            let Some(Ok(fd)) = stack.last().map(|(d, _)| d.fd()) else {
                break;
            };
            let Ok(m) = lstat_at(fd, name) else {
                continue; // removed meanwhile
            };
            if boundary.crosses(fd, name, &m) {
                usage.skipped_mounts.push(rel_path("", &stack, Some(name)));
                continue;
            }
            if m.nlink > 1 && m.entry_type() != EntryType::Directory {
                if seen.contains(&(m.dev, m.ino)) {
                    continue;
                }
                if seen.len() < MAX_SEEN_HARD_LINKS {
                    seen.insert((m.dev, m.ino));
                }
            }
            usage.bytes = usage.bytes.saturating_add(m.blocks.saturating_mul(512));
            usage.entries += 1;
            if m.entry_type() != EntryType::Directory {
                continue;
            }
            if stack.len() >= MAX_USAGE_DEPTH {
                usage.depth_limited = true;
                continue;
            }
            match open_child_dir(fd, name, &m) {
                Ok(Some(child)) => {
                    let child = Dir::new(child).map_err(io_err("read directory", shown))?;
                    stack.push((child, name.to_owned()));
                }
                Ok(None) => {}
                Err(Errno::XDEV) => usage.skipped_mounts.push(rel_path("", &stack, Some(name))),
                // Swapped or removed meanwhile: its size is not worth a failure.
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Opens `dir/name` as a directory and checks it is the inode `expected`.
    pub(super) fn open_checked_dir(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        expected: &Meta,
        shown: &str,
    ) -> Result<OwnedFd, FsError> {
        let fd = open_beneath(dir, name, dir_flags(), Mode::empty())
            .map_err(|e| self.classify_open_error(dir, name, shown, e, None))?;
        if !fstat(fd.as_fd(), shown)?.same_inode(expected) {
            return Err(FsError::Raced {
                path: shown.to_owned(),
            });
        }
        Ok(fd)
    }
}

/// Opens a directory entry found by a walk; `Ok(None)` when it is no longer the inode `m`.
pub(super) fn open_child_dir(dir: BorrowedFd<'_>, name: &CStr, m: &Meta) -> Result<Option<OwnedFd>, Errno> {
    let fd = open_beneath(dir, name, dir_flags(), Mode::empty())?;
    match rustix::fs::fstat(&fd) {
        Ok(st) if Meta::from_stat(&st).same_inode(m) => Ok(Some(fd)),
        Ok(_) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(super) fn is_dot(name: &CStr) -> bool {
    matches!(name.to_bytes(), b"." | b"..")
}

/// `base` followed by the names of the open directories below the first (the walk's top) and
/// `name`, for messages: built only when needed, so a deep walk keeps no path strings.
pub(super) fn rel_path<T>(base: &str, stack: &[(T, CString)], name: Option<&CStr>) -> String {
    let mut s = base.to_owned();
    for (_, n) in stack.iter().skip(1) {
        s.push('/');
        s.push_str(&n.to_string_lossy());
    }
    if let Some(n) = name {
        s.push('/');
        s.push_str(&n.to_string_lossy());
    }
    s
}
