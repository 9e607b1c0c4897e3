//! Re-owning a directory volume's tree when its owner changes, on fds only.
//!
//! A user who changes `spec.owner` expects the uid they name to be able to use the data that is
//! already there. So when a directory volume's owner changes, every entry below it that the
//! previous owner owned (uid and gid separately) is given to the new one: through the entry's
//! parent directory fd (`fchownat(…, AT_SYMLINK_NOFOLLOW)`: a symlink's own owner changes, never
//! its target), descending only into real directories opened without following links and
//! checked to be the inode that was listed, never across a mount, and never touching a regular
//! file with more than one hard link (its other link may be a host file). Entries other users
//! own stay as they are. The walk is iterative, holds one fd per level and stops descending at
//! [`MAX_USAGE_DEPTH`]; the volume's own directory is changed last, so an interrupted walk is
//! resumed by the next ensure.

use std::{ffi::CString, os::fd::BorrowedFd};

use rustix::{
    fs::{AtFlags, Dir, Gid, Uid},
    io::Errno,
};

use super::{
    FsError, MAX_USAGE_DEPTH, SafeRoot, io_err, lstat_at,
    subvolume::Boundary,
    usage::{is_dot, open_child_dir, rel_path},
};
use crate::agent::api::{EntryType, ReownReport};

/// Host ids before and after.
#[derive(Debug, Clone, Copy)]
pub struct Reown {
    pub from: (u32, u32),
    pub to: (u32, u32),
}

impl Reown {
    /// The ids an entry owned by (`uid`, `gid`) gets: only what the previous owner held
    /// changes. `None` when nothing changes.
    fn new_ids(&self, uid: u32, gid: u32) -> Option<(Option<Uid>, Option<Gid>)> {
        let uid = (uid == self.from.0 && uid != self.to.0).then(|| Uid::from_raw(self.to.0));
        let gid = (gid == self.from.1 && gid != self.to.1).then(|| Gid::from_raw(self.to.1));
        (uid.is_some() || gid.is_some()).then_some((uid, gid))
    }
}

impl SafeRoot {
    /// Re-owns what lies below the directory `top` (not `top` itself), never across `boundary`.
    pub(super) fn reown_tree(
        &self,
        top: BorrowedFd<'_>,
        boundary: Boundary,
        shown: &str,
        ids: Reown,
    ) -> Result<ReownReport, FsError> {
        let mut report = ReownReport::default();
        let mut stack: Vec<(Dir, CString)> = vec![(
            Dir::read_from(top).map_err(io_err("read directory", shown))?,
            CString::default(),
        )];
        while let Some((dir, _)) = stack.last_mut() {
            let entry = match dir.read() {
                None => {
                    stack.pop();
                    continue;
                }
                Some(Err(e)) => return Err(io_err("read directory", &rel_path(shown, &stack, None))(e)),
                Some(Ok(entry)) => entry,
            };
            let name = entry.file_name().to_owned();
            if is_dot(&name) {
                continue;
            }
            let Some(Ok(fd)) = stack.last().map(|(d, _)| d.fd()) else {
                break;
            };
            let Ok(m) = lstat_at(fd, &name) else {
                continue; // removed meanwhile
            };
            if boundary.crosses(fd, &name, &m) {
                report.skipped_mounts += 1;
                continue;
            }
            let is_dir = m.entry_type() == EntryType::Directory;
            if !is_dir && m.entry_type() == EntryType::File && m.nlink > 1 {
                if ids.new_ids(m.uid, m.gid).is_some() {
                    report.skipped_hard_links += 1;
                }
                continue;
            }
            if is_dir {
                // Descend into the directory itself (checked to be the inode listed); change it
                // after its contents, so an interrupted walk finds it still to do.
                if stack.len() >= MAX_USAGE_DEPTH {
                    report.depth_limited = true;
                    continue;
                }
                match open_child_dir(fd, &name, &m) {
                    Ok(Some(child)) => {
                        if let Some((uid, gid)) = ids.new_ids(m.uid, m.gid) {
                            rustix::fs::fchown(&child, uid, gid)
                                .map_err(io_err("chown", &rel_path(shown, &stack, Some(&name))))?;
                            report.entries += 1;
                        }
                        let child = Dir::new(child).map_err(io_err("read directory", shown))?;
                        stack.push((child, name));
                    }
                    Ok(None) | Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => {}
                    Err(Errno::XDEV) => report.skipped_mounts += 1,
                    Err(e) => return Err(io_err("open", &rel_path(shown, &stack, Some(&name)))(e)),
                }
                continue;
            }
            let Some((uid, gid)) = ids.new_ids(m.uid, m.gid) else {
                continue;
            };
            match rustix::fs::chownat(fd, &name, uid, gid, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(()) => report.entries += 1,
                Err(Errno::NOENT) => {}
                Err(e) => return Err(io_err("chown", &rel_path(shown, &stack, Some(&name)))(e)),
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_previous_owner_held_changes() {
        let r = Reown {
            from: (166536, 166536),
            to: (167536, 166536),
        };
        assert_eq!(
            r.new_ids(166536, 166536),
            Some((Some(Uid::from_raw(167536)), None))
        );
        assert_eq!(r.new_ids(170000, 166536), None, "gid already the new one");
        assert_eq!(r.new_ids(170000, 170000), None, "another user's entry");
        let both = Reown {
            from: (1, 2),
            to: (3, 4),
        };
        assert_eq!(both.new_ids(1, 9), Some((Some(Uid::from_raw(3)), None)));
        assert_eq!(both.new_ids(9, 2), Some((None, Some(Gid::from_raw(4)))));
    }
}
