//! Read-only and destructive walks of a volume's tree (usage, recursive delete), on fds only.

use std::{
    collections::HashSet,
    ffi::{CStr, CString},
    os::fd::{AsFd, BorrowedFd, OwnedFd},
};

use rustix::{
    fs::{AtFlags, Dir, Mode, OFlags},
    io::Errno,
};
use tracing::info;

use super::{
    DELETE_PASSES, FsError, MAX_DEPTH, Meta, SafeRoot, Usage, cstr, dir_flags, fstat, io_err, join, last,
    lstat_at, open_beneath,
};
use crate::{
    agent::api::EntryType,
    tenant::{TenantRoot, VolumePath},
};

impl SafeRoot {
    /// The current state of a volume without changing anything; `Ok(None)` when absent.
    pub fn stat(&self, root: &TenantRoot, path: &VolumePath) -> Result<Option<Meta>, FsError> {
        Ok(self.open_leaf_path(root, path)?.map(|(_, _, _, m)| m))
    }

    /// Opens the leaf with `O_PATH` (a symlink is returned as itself, never followed).
    #[allow(clippy::type_complexity)]
    fn open_leaf_path(
        &self,
        root: &TenantRoot,
        path: &VolumePath,
    ) -> Result<Option<(OwnedFd, OwnedFd, String, Meta)>, FsError> {
        let Some((dir, parent_display)) = self.walk_parents(root, path, false)? else {
            return Ok(None);
        };
        let leaf = last(path);
        let shown = join(&parent_display, leaf);
        let name = cstr(leaf, &shown)?;
        match open_beneath(dir.as_fd(), name.as_c_str(), OFlags::PATH, Mode::empty()) {
            Ok(fd) => {
                let meta = fstat(fd.as_fd(), &shown)?;
                Ok(Some((dir, fd, shown, meta)))
            }
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.classify_open_error(dir.as_fd(), &name, &shown, e, None)),
        }
    }

    /// State plus allocated bytes of the whole tree (same filesystem, no symlinks followed).
    pub fn usage(&self, root: &TenantRoot, path: &VolumePath) -> Result<Option<(Meta, Usage)>, FsError> {
        let Some((dir, _pfd, shown, meta)) = self.open_leaf_path(root, path)? else {
            return Ok(None);
        };
        let mut usage = Usage {
            bytes: meta.blocks.saturating_mul(512),
            entries: 1,
            skipped_mounts: Vec::new(),
        };
        if meta.entry_type() == EntryType::Directory {
            let name = cstr(last(path), &shown)?;
            let fd = self.open_checked_dir(dir.as_fd(), &name, &meta, &shown)?;
            let mut seen = HashSet::new();
            self.usage_walk(fd.as_fd(), "", meta.dev, 1, &mut seen, &mut usage)?;
        }
        Ok(Some((meta, usage)))
    }

    fn usage_walk(
        &self,
        dir: BorrowedFd<'_>,
        rel: &str,
        dev: u64,
        depth: usize,
        seen: &mut HashSet<(u64, u64)>,
        usage: &mut Usage,
    ) -> Result<(), FsError> {
        if depth > MAX_DEPTH {
            return Err(FsError::TooDeep { path: rel.to_owned() });
        }
        for name in read_names(dir, rel)? {
            let rel_child = join(rel, &name.to_string_lossy());
            let Ok(m) = lstat_at(dir, &name) else {
                continue; // removed meanwhile
            };
            if m.dev != dev {
                usage.skipped_mounts.push(rel_child);
                continue;
            }
            if m.nlink > 1 && m.entry_type() != EntryType::Directory && !seen.insert((m.dev, m.ino)) {
                continue;
            }
            usage.bytes = usage.bytes.saturating_add(m.blocks.saturating_mul(512));
            usage.entries += 1;
            if m.entry_type() == EntryType::Directory {
                match open_beneath(dir, name.as_c_str(), dir_flags(), Mode::empty()) {
                    Ok(fd) if fstat(fd.as_fd(), &rel_child)?.same_inode(&m) => {
                        self.usage_walk(fd.as_fd(), &rel_child, dev, depth + 1, seen, usage)?;
                    }
                    Err(Errno::XDEV) => usage.skipped_mounts.push(rel_child),
                    // Swapped or removed meanwhile: its size is not worth a failure.
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Opens `dir/name` as a directory and checks it is the inode `expected`.
    fn open_checked_dir(
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

    /// Deletes a volume and everything below it. Returns `Ok(None)` when nothing was there,
    /// else the number of objects removed. Mount points found inside are left in place (and
    /// reported as [`FsError::DeleteIncomplete`]); nothing is opened except directories.
    pub fn delete(&self, root: &TenantRoot, path: &VolumePath) -> Result<Option<u64>, FsError> {
        let Some((dir, parent_display)) = self.walk_parents(root, path, false)? else {
            return Ok(None);
        };
        let leaf = last(path);
        let shown = join(&parent_display, leaf);
        let name = cstr(leaf, &shown)?;
        let meta = match lstat_at(dir.as_fd(), &name) {
            Ok(m) => m,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(io_err("stat", &shown)(e)),
        };
        let mut state = DeleteState {
            dev: meta.dev,
            removed: 0,
            kept: Vec::new(),
        };
        if meta.entry_type() == EntryType::Directory {
            let fd = self.open_checked_dir(dir.as_fd(), &name, &meta, &shown)?;
            self.remove_contents(fd.as_fd(), &shown, 1, &mut state)?;
            drop(fd);
            match rustix::fs::unlinkat(dir.as_fd(), name.as_c_str(), AtFlags::REMOVEDIR) {
                Ok(()) => state.removed += 1,
                Err(Errno::NOENT) => {}
                Err(Errno::NOTEMPTY | Errno::EXIST) if !state.kept.is_empty() => {}
                Err(Errno::NOTEMPTY | Errno::EXIST) => {
                    return Err(FsError::Raced { path: shown });
                }
                Err(Errno::BUSY) => return Err(FsError::MountPoint { path: shown }),
                Err(e) => return Err(io_err("rmdir", &shown)(e)),
            }
        } else {
            match rustix::fs::unlinkat(dir.as_fd(), name.as_c_str(), AtFlags::empty()) {
                Ok(()) => state.removed += 1,
                Err(Errno::NOENT) => {}
                Err(Errno::BUSY) => return Err(FsError::MountPoint { path: shown }),
                Err(Errno::ISDIR) => return Err(FsError::Raced { path: shown }),
                Err(e) => return Err(io_err("unlink", &shown)(e)),
            }
        }
        if !state.kept.is_empty() {
            return Err(FsError::DeleteIncomplete {
                path: shown,
                remaining: state.kept,
            });
        }
        info!(path = %shown, removed = state.removed, "deleted volume");
        Ok(Some(state.removed))
    }

    fn remove_contents(
        &self,
        dir: BorrowedFd<'_>,
        shown: &str,
        depth: usize,
        st: &mut DeleteState,
    ) -> Result<(), FsError> {
        if depth > MAX_DEPTH {
            return Err(FsError::TooDeep {
                path: shown.to_owned(),
            });
        }
        let mut kept_here: HashSet<CString> = HashSet::new();
        for _ in 0..DELETE_PASSES {
            let names: Vec<CString> = read_names(dir, shown)?
                .into_iter()
                .filter(|n| !kept_here.contains(n))
                .collect();
            if names.is_empty() {
                return Ok(());
            }
            for name in names {
                let child = join(shown, &name.to_string_lossy());
                if self.remove_entry(dir, &name, &child, depth, st)? == Some(true) {
                    kept_here.insert(name);
                }
            }
        }
        Ok(())
    }

    /// Removes one entry. `Some(true)` = left in place on purpose (mount point), `Some(false)` =
    /// could not be removed this pass (swapped meanwhile: retried), `None` = done.
    fn remove_entry(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        child: &str,
        depth: usize,
        st: &mut DeleteState,
    ) -> Result<Option<bool>, FsError> {
        let m = match lstat_at(dir, name) {
            Ok(m) => m,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(io_err("stat", child)(e)),
        };
        if m.dev != st.dev {
            st.kept.push(child.to_owned());
            return Ok(Some(true));
        }
        if m.entry_type() != EntryType::Directory {
            // Files, symlinks, FIFOs, sockets and devices are unlinked by name, never opened.
            return match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
                Ok(()) => {
                    st.removed += 1;
                    Ok(None)
                }
                Err(Errno::NOENT) => Ok(None),
                Err(Errno::ISDIR) => Ok(Some(false)),
                Err(Errno::BUSY) => {
                    st.kept.push(child.to_owned());
                    Ok(Some(true))
                }
                Err(e) => Err(io_err("unlink", child)(e)),
            };
        }
        let fd = match open_beneath(dir, name, dir_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::XDEV) => {
                st.kept.push(child.to_owned());
                return Ok(Some(true));
            }
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP | Errno::NOTDIR) => return Ok(Some(false)),
            Err(e) => return Err(io_err("open", child)(e)),
        };
        if !fstat(fd.as_fd(), child)?.same_inode(&m) {
            return Ok(Some(false));
        }
        let kept_before = st.kept.len();
        self.remove_contents(fd.as_fd(), child, depth + 1, st)?;
        drop(fd);
        match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
            Ok(()) => {
                st.removed += 1;
                Ok(None)
            }
            Err(Errno::NOENT) => Ok(None),
            // Holds a mount point we kept: keep it too (already reported below it).
            Err(Errno::NOTEMPTY | Errno::EXIST) if st.kept.len() > kept_before => Ok(Some(true)),
            Err(Errno::NOTEMPTY | Errno::EXIST | Errno::NOTDIR) => Ok(Some(false)),
            Err(Errno::BUSY) => {
                st.kept.push(child.to_owned());
                Ok(Some(true))
            }
            Err(e) => Err(io_err("rmdir", child)(e)),
        }
    }
}

struct DeleteState {
    dev: u64,
    removed: u64,
    kept: Vec<String>,
}

/// Reads all names of a directory (without `.` and `..`) through a fresh fd of it.
fn read_names(dir: BorrowedFd<'_>, shown: &str) -> Result<Vec<CString>, FsError> {
    let mut d = Dir::read_from(dir).map_err(io_err("read directory", shown))?;
    let mut names = Vec::new();
    while let Some(entry) = d.read() {
        let entry = entry.map_err(io_err("read directory", shown))?;
        let n = entry.file_name();
        if n.to_bytes() != b"." && n.to_bytes() != b".." {
            names.push(n.to_owned());
        }
    }
    Ok(names)
}
