//! Recursive delete of a volume, on fds and names only.
//!
//! The walk is iterative and streams each directory's entries, so neither the depth nor the
//! width of a tree a tenant builds can exhaust the agent: it holds at most [`DELETE_FD_DEPTH`]
//! directory fds, and when a tree is deeper, the directory at that depth is moved up into the
//! volume itself (`renameat2(RENAME_NOREPLACE)` between two fds of the volume, to a name
//! `.berth-delete-…`) and deleted from there. Nothing is ever looked up by path, nothing leaves
//! the volume, and a rename cannot cross a mount point. Files, symlinks, FIFOs, sockets and
//! devices are unlinked by name, never opened.

use std::{
    collections::HashSet,
    ffi::{CStr, CString},
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::atomic::{AtomicU64, Ordering},
};

use rustix::{
    fs::{AtFlags, Dir, RenameFlags},
    io::Errno,
};
use tracing::{debug, info};

use super::{
    DELETE_FD_DEPTH, DELETE_PASSES, FsError, SafeRoot, cstr, io_err, join, last, lstat_at,
    subvolume::{Boundary, is_subvolume_root},
    usage::{is_dot, open_child_dir, rel_path},
};
use crate::{
    agent::api::EntryType,
    tenant::{TenantRoot, VolumePath},
};

/// Names given to subtrees moved up while deleting: unique in this process.
static MOVE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A directory being deleted.
struct Frame {
    dir: Dir,
    /// Entries left in place on purpose (mount points): skipped when the directory is re-read.
    kept: HashSet<CString>,
    /// How many entries of the whole delete were kept when this directory was entered.
    kept_before: usize,
    /// Re-reads of this directory so far.
    passes: usize,
    /// Something other than a kept entry was seen in the current read.
    saw_entries: bool,
}

impl Frame {
    fn new(dir: Dir, kept_before: usize) -> Self {
        Self {
            dir,
            kept: HashSet::new(),
            kept_before,
            passes: 0,
            saw_entries: false,
        }
    }
}

/// What became of one entry.
enum Step {
    /// Removed, or already gone.
    Done,
    /// Left in place on purpose (a mount point or busy entry): reported.
    Keep,
    /// Could not be removed this pass (swapped meanwhile): the directory is read again.
    Retry,
    /// A directory to empty first (an fd of it, checked to be the inode listed).
    Descend(OwnedFd),
}

struct DeleteState<'a> {
    boundary: Boundary,
    removed: u64,
    kept: Vec<String>,
    /// Subtrees moved up since the volume's directory was last read from its start.
    moved: bool,
    progress: &'a AtomicU64,
}

impl DeleteState<'_> {
    fn count(&mut self) {
        self.removed += 1;
        self.progress.fetch_add(1, Ordering::Relaxed);
    }
}

impl SafeRoot {
    /// Deletes a volume and everything below it. Returns `Ok(None)` when nothing was there,
    /// else the number of objects removed; `progress` counts them as they go. Mount points
    /// found inside are left in place (and reported as [`FsError::DeleteIncomplete`]).
    pub fn delete(
        &self,
        root: &TenantRoot,
        path: &VolumePath,
        progress: &AtomicU64,
    ) -> Result<Option<u64>, FsError> {
        let Some(parents) = self.walk_parents(root, path, false)? else {
            return Ok(None);
        };
        let dir = parents.dir;
        let leaf = last(path);
        let shown = join(&parents.shown, leaf);
        let name = cstr(leaf, &shown)?;
        let meta = match lstat_at(dir.as_fd(), &name) {
            Ok(m) => m,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(io_err("stat", &shown)(e)),
        };
        let mut st = DeleteState {
            boundary: Boundary::of(dir.as_fd(), meta.dev),
            removed: 0,
            kept: Vec::new(),
            moved: false,
            progress,
        };
        if meta.entry_type() == EntryType::Directory {
            let fd = self.open_checked_dir(dir.as_fd(), &name, &meta, &shown)?;
            let subvolume = is_subvolume_root(fd.as_fd(), &meta);
            self.remove_tree(fd, &shown, &mut st)?;
            match rustix::fs::unlinkat(dir.as_fd(), name.as_c_str(), AtFlags::REMOVEDIR) {
                Ok(()) => st.count(),
                // rmdir removes an empty subvolume since Linux 4.18; before, only the ioctl does.
                Err(Errno::PERM) if subvolume && st.kept.is_empty() => {
                    self.destroy_empty_subvolume(dir.as_fd(), &name, &shown)?;
                    st.count();
                }
                Err(Errno::NOENT) => {}
                Err(Errno::NOTEMPTY | Errno::EXIST) if !st.kept.is_empty() => {}
                Err(Errno::NOTEMPTY | Errno::EXIST) => {
                    return Err(FsError::Raced { path: shown });
                }
                Err(Errno::BUSY) => return Err(FsError::MountPoint { path: shown }),
                Err(e) => return Err(io_err("rmdir", &shown)(e)),
            }
        } else {
            match rustix::fs::unlinkat(dir.as_fd(), name.as_c_str(), AtFlags::empty()) {
                Ok(()) => st.count(),
                Err(Errno::NOENT) => {}
                Err(Errno::BUSY) => return Err(FsError::MountPoint { path: shown }),
                Err(Errno::ISDIR) => return Err(FsError::Raced { path: shown }),
                Err(e) => return Err(io_err("unlink", &shown)(e)),
            }
        }
        if !st.kept.is_empty() {
            return Err(FsError::DeleteIncomplete {
                path: shown,
                remaining: st.kept,
            });
        }
        info!(path = %shown, removed = st.removed, "deleted volume");
        Ok(Some(st.removed))
    }

    /// Empties the directory `top` (the volume), depth first, holding at most
    /// [`DELETE_FD_DEPTH`] directory fds.
    fn remove_tree(&self, top: OwnedFd, shown: &str, st: &mut DeleteState<'_>) -> Result<(), FsError> {
        // A second fd of the volume, the destination of subtrees moved up. (It shares the file
        // offset with the first, which only getdents uses.)
        let volume = rustix::io::fcntl_dupfd_cloexec(&top, 0).map_err(io_err("dup", shown))?;
        let top = Dir::new(top).map_err(io_err("read directory", shown))?;
        let mut stack: Vec<(Frame, CString)> = vec![(Frame::new(top, 0), CString::default())];
        loop {
            if self.is_cancelled() {
                return Err(FsError::Interrupted {
                    path: shown.to_owned(),
                    done: st.removed,
                });
            }
            let depth = stack.len();
            let Some((frame, _)) = stack.last_mut() else {
                return Ok(());
            };
            let entry = match frame.dir.read() {
                None => {
                    self.end_of_directory(&mut stack, shown, st)?;
                    continue;
                }
                Some(Err(e)) => return Err(io_err("read directory", &rel_path(shown, &stack, None))(e)),
                Some(Ok(entry)) => entry,
            };
            let name = entry.file_name();
            if is_dot(name) || frame.kept.contains(name) {
                continue;
            }
            frame.saw_entries = true;
            let Some(Ok(dir)) = stack.last().map(|(f, _)| f.dir.fd()) else {
                return Ok(());
            };
            let step = self.remove_entry(dir, name, st).map_err(|e| {
                let child = rel_path(shown, &stack, Some(name));
                io_err(e.0, &child)(e.1)
            })?;
            let step = match step {
                Step::Descend(fd) if depth >= DELETE_FD_DEPTH => {
                    drop(fd);
                    self.move_up(dir, name, volume.as_fd(), st)
                        .map_err(|e| io_err("move", &rel_path(shown, &stack, Some(name)))(e))?
                }
                other => other,
            };
            match step {
                Step::Done => {}
                Step::Retry => {}
                Step::Keep => {
                    st.kept.push(rel_path(shown, &stack, Some(name)));
                    if let Some((f, _)) = stack.last_mut() {
                        f.kept.insert(name.to_owned());
                    }
                }
                Step::Descend(fd) => {
                    let child = Dir::new(fd).map_err(io_err("read directory", shown))?;
                    stack.push((Frame::new(child, st.kept.len()), name.to_owned()));
                }
            }
        }
    }

    /// Removes one entry of `dir`, or says to descend into it. Errors are the failed operation
    /// and its errno (the caller names the path).
    fn remove_entry(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        st: &mut DeleteState<'_>,
    ) -> Result<Step, (&'static str, Errno)> {
        let m = match lstat_at(dir, name) {
            Ok(m) => m,
            Err(Errno::NOENT) => return Ok(Step::Done),
            Err(e) => return Err(("stat", e)),
        };
        if st.boundary.crosses(dir, name, &m) {
            return Ok(Step::Keep);
        }
        if m.entry_type() != EntryType::Directory {
            // Files, symlinks, FIFOs, sockets and devices are unlinked by name, never opened.
            return match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
                Ok(()) => {
                    st.count();
                    Ok(Step::Done)
                }
                Err(Errno::NOENT) => Ok(Step::Done),
                Err(Errno::ISDIR) => Ok(Step::Retry),
                Err(Errno::BUSY) => Ok(Step::Keep),
                Err(e) => Err(("unlink", e)),
            };
        }
        match open_child_dir(dir, name, &m) {
            Ok(Some(fd)) => Ok(Step::Descend(fd)),
            Ok(None) => Ok(Step::Retry),
            Err(Errno::XDEV) => Ok(Step::Keep),
            Err(Errno::NOENT) => Ok(Step::Done),
            Err(Errno::LOOP | Errno::NOTDIR) => Ok(Step::Retry),
            Err(e) => Err(("open", e)),
        }
    }

    /// Moves the directory `dir/name` into the volume under a fresh name, to delete it from
    /// there with fewer fds open. Only fds of directories inside the volume are used.
    fn move_up(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        volume: BorrowedFd<'_>,
        st: &mut DeleteState<'_>,
    ) -> Result<Step, Errno> {
        for _ in 0..16 {
            let n = MOVE_COUNTER.fetch_add(1, Ordering::Relaxed);
            let to = format!(".berth-delete-{}-{n}", std::process::id());
            match rustix::fs::renameat_with(dir, name, volume, to.as_str(), RenameFlags::NOREPLACE) {
                Ok(()) => {
                    debug!(to = %to, "moved a deep subtree up to delete it");
                    st.moved = true;
                    return Ok(Step::Done);
                }
                // A tenant made that name: take another.
                Err(Errno::EXIST) => continue,
                Err(Errno::NOENT) => return Ok(Step::Done),
                // A mount point (or a busy entry): left in place.
                Err(Errno::BUSY) => return Ok(Step::Keep),
                Err(e) => return Err(e),
            }
        }
        Err(Errno::EXIST)
    }

    /// The current directory has been read to its end: read it again if entries were seen (a
    /// tenant may have added some; subtrees moved into the volume must be found), else remove
    /// it from its parent.
    fn end_of_directory(
        &self,
        stack: &mut Vec<(Frame, CString)>,
        shown: &str,
        st: &mut DeleteState<'_>,
    ) -> Result<(), FsError> {
        let is_volume = stack.len() == 1;
        let Some((frame, _)) = stack.last_mut() else {
            return Ok(());
        };
        if frame.saw_entries {
            if is_volume && st.moved {
                // Our own moves added entries: that pass does not count.
                st.moved = false;
                frame.saw_entries = false;
                frame.dir.rewind();
                return Ok(());
            }
            if frame.passes + 1 < DELETE_PASSES {
                frame.passes += 1;
                frame.saw_entries = false;
                frame.dir.rewind();
                return Ok(());
            }
        }
        let Some((done, name)) = stack.pop() else {
            return Ok(());
        };
        drop(done.dir);
        let Some((parent, _)) = stack.last_mut() else {
            return Ok(()); // the volume itself: the caller removes it
        };
        let Ok(dir) = parent.dir.fd() else {
            return Ok(());
        };
        match rustix::fs::unlinkat(dir, name.as_c_str(), AtFlags::REMOVEDIR) {
            Ok(()) => st.count(),
            Err(Errno::NOENT) => {}
            // Holds a mount point we kept: keep it too (already reported below it).
            Err(Errno::NOTEMPTY | Errno::EXIST) if st.kept.len() > done.kept_before => {
                parent.kept.insert(name);
            }
            // Refilled or swapped meanwhile: the parent is read again.
            Err(Errno::NOTEMPTY | Errno::EXIST | Errno::NOTDIR) => parent.saw_entries = true,
            Err(Errno::BUSY) => {
                parent.kept.insert(name.clone());
                st.kept.push(rel_path(shown, stack, Some(&name)));
            }
            Err(e) => return Err(io_err("rmdir", &rel_path(shown, stack, Some(&name)))(e)),
        }
        Ok(())
    }
}
