//! A depth-first walk of a volume for transfers and manifests, on fds only.
//!
//! Each directory is read whole and its names sorted by bytes, so two copies of a tree are
//! walked in the same order. Nothing is followed: entries are `lstat`-ed relative to their
//! directory's fd, directories are opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_XDEV)` and checked to be the inode listed, mount points (another `st_dev`, or
//! `EXDEV`) and special files are reported to [`Visit::skip`] and never opened.

use std::{
    ffi::{CStr, CString},
    os::fd::{AsFd, BorrowedFd, OwnedFd},
};

use rustix::{
    fs::{AtFlags, Dir, FileType, Mode, OFlags},
    io::Errno,
};

use super::TransferError;
use crate::agent::{manifest::show, safe_fs::open_beneath};

/// Deepest nesting walked; a deeper tree is refused (a transfer must be complete).
pub const MAX_DEPTH: usize = 256;
/// Most entries read from one directory.
pub const MAX_DIR_ENTRIES: usize = 2_000_000;

/// The parts of `struct stat` a transfer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub size: u64,
    pub blocks: u64,
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
}

impl Stat {
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    pub fn from_raw(st: &rustix::fs::Stat) -> Self {
        Self {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            mode: st.st_mode as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            nlink: st.st_nlink as u64,
            size: u64::try_from(st.st_size).unwrap_or(0),
            blocks: u64::try_from(st.st_blocks).unwrap_or(0),
            mtime: (st.st_mtime as i64, st.st_mtime_nsec as u32),
            ctime: (st.st_ctime as i64, st.st_ctime_nsec as u32),
        }
    }

    pub fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.mode)
    }

    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }

    pub fn same_inode(&self, o: &Stat) -> bool {
        self.dev == o.dev && self.ino == o.ino
    }
}

pub fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<Stat, Errno> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map(|s| Stat::from_raw(&s))
}

pub fn fstat(fd: BorrowedFd<'_>) -> Result<Stat, Errno> {
    rustix::fs::fstat(fd).map(|s| Stat::from_raw(&s))
}

pub fn open_dir(dir: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd, Errno> {
    open_beneath(dir, name, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty())
}

/// Opens a file of the agent's own staging area for reading (no tenant can reach it).
pub fn open_file(dir: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd, Errno> {
    open_beneath(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
    )
}

/// Opens for reading the regular file a walk listed as `expected`, without ever opening
/// anything else put there meanwhile (a device node, a FIFO): the name is opened `O_PATH`,
/// checked with `fstat`, and the very inode is reopened through its `/proc/self/fd` link.
/// `Ok(None)` when it is no longer that file.
pub fn open_listed_file(dir: BorrowedFd<'_>, name: &CStr, expected: &Stat) -> Result<Option<OwnedFd>, Errno> {
    match open_listed_path(dir, name)? {
        Some(pfd) => reopen_listed(pfd.as_fd(), expected),
        None => Ok(None),
    }
}

/// The first half of [`open_listed_file`]: the name opened `O_PATH` (nothing followed; no
/// data can be read through it). `Ok(None)` when it is gone or no longer a plain name.
pub fn open_listed_path(dir: BorrowedFd<'_>, name: &CStr) -> Result<Option<OwnedFd>, Errno> {
    match open_beneath(dir, name, OFlags::PATH, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The second half of [`open_listed_file`]: the `O_PATH` fd checked to be the regular file
/// `expected` and reopened for reading. `Ok(None)` when it is another inode or type.
pub fn reopen_listed(pfd: BorrowedFd<'_>, expected: &Stat) -> Result<Option<OwnedFd>, Errno> {
    let st = fstat(pfd)?;
    if !st.same_inode(expected) || st.file_type() != FileType::RegularFile {
        return Ok(None);
    }
    let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&pfd));
    rustix::fs::open(
        link.as_str(),
        OFlags::RDONLY | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::NOATIME | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map(Some)
}

/// One entry of the walk.
pub struct Entry<'a> {
    /// Path relative to the volume (`/`-separated; empty for the volume itself).
    pub rel: &'a [u8],
    /// The directory holding it, and its name there.
    pub dir: BorrowedFd<'a>,
    pub name: &'a CStr,
    pub st: Stat,
}

/// Why an entry was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    MountPoint,
    Special(FileType),
}

pub trait Visit {
    /// A directory (before its entries), regular file or symbolic link.
    fn visit(&mut self, e: &Entry<'_>) -> Result<(), TransferError>;
    /// A special file or mount point, never opened.
    fn skip(&mut self, rel: &[u8], why: SkipReason);
}

struct Frame {
    fd: OwnedFd,
    names: Vec<CString>,
    next: usize,
    /// Length of the relative path of this directory.
    rel_len: usize,
}

fn read_names(fd: BorrowedFd<'_>, rel: &[u8]) -> Result<Vec<CString>, TransferError> {
    let io = |op: &'static str| move |e: Errno| TransferError::io(op, &show(rel), e);
    let mut dir = Dir::read_from(fd).map_err(io("read directory"))?;
    let mut names = Vec::new();
    while let Some(entry) = dir.read() {
        let entry = entry.map_err(io("read directory"))?;
        let name = entry.file_name();
        if matches!(name.to_bytes(), b"." | b"..") {
            continue;
        }
        if names.len() >= MAX_DIR_ENTRIES {
            return Err(TransferError::TooWide { path: show(rel) });
        }
        names.push(name.to_owned());
    }
    names.sort_unstable();
    Ok(names)
}

/// Walks the volume `name` in `parent`. `cancelled` is polled between entries.
pub fn walk(
    parent: BorrowedFd<'_>,
    name: &CStr,
    cancelled: &dyn Fn() -> bool,
    v: &mut dyn Visit,
) -> Result<(), TransferError> {
    let root = stat_at(parent, name).map_err(|e| TransferError::io("stat", "/", e))?;
    match root.file_type() {
        FileType::Directory => {}
        FileType::RegularFile => {
            return v.visit(&Entry {
                rel: b"",
                dir: parent,
                name,
                st: root,
            });
        }
        other => {
            return Err(TransferError::Unsupported {
                path: "/".into(),
                what: format!("{other:?}"),
            });
        }
    }
    let fd = open_dir(parent, name).map_err(|e| TransferError::io("open", "/", e))?;
    if !fstat(fd.as_fd()).is_ok_and(|s| s.same_inode(&root)) {
        return Err(TransferError::Changed { path: "/".into() });
    }
    v.visit(&Entry {
        rel: b"",
        dir: parent,
        name,
        st: root,
    })?;
    let names = read_names(fd.as_fd(), b"")?;
    let mut rel: Vec<u8> = Vec::new();
    let mut stack = vec![Frame {
        fd,
        names,
        next: 0,
        rel_len: 0,
    }];
    loop {
        let depth = stack.len();
        let Some(top) = stack.last_mut() else {
            break;
        };
        if cancelled() {
            return Err(TransferError::Cancelled);
        }
        let Some(name) = top.names.get(top.next) else {
            stack.pop();
            if let Some(parent) = stack.last() {
                rel.truncate(parent.rel_len);
            }
            continue;
        };
        let name = name.clone();
        top.next += 1;
        let base = top.rel_len;
        rel.truncate(base);
        if base > 0 {
            rel.push(b'/');
        }
        rel.extend_from_slice(name.to_bytes());
        let dirfd = top.fd.as_fd();
        let st = match stat_at(dirfd, &name) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue, // removed meanwhile
            Err(e) => return Err(TransferError::io("stat", &show(&rel), e)),
        };
        if st.dev != root.dev {
            v.skip(&rel, SkipReason::MountPoint);
            continue;
        }
        match st.file_type() {
            FileType::RegularFile | FileType::Symlink => {
                v.visit(&Entry {
                    rel: &rel,
                    dir: dirfd,
                    name: &name,
                    st,
                })?;
            }
            FileType::Directory => {
                if depth >= MAX_DEPTH {
                    return Err(TransferError::TooDeep { path: show(&rel) });
                }
                let child = match open_dir(dirfd, &name) {
                    Ok(fd) => fd,
                    Err(Errno::XDEV) => {
                        v.skip(&rel, SkipReason::MountPoint);
                        continue;
                    }
                    Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => continue, // swapped meanwhile
                    Err(e) => return Err(TransferError::io("open", &show(&rel), e)),
                };
                if !fstat(child.as_fd()).is_ok_and(|s| s.same_inode(&st)) {
                    continue;
                }
                v.visit(&Entry {
                    rel: &rel,
                    dir: dirfd,
                    name: &name,
                    st,
                })?;
                let names = read_names(child.as_fd(), &rel)?;
                stack.push(Frame {
                    fd: child,
                    names,
                    next: 0,
                    rel_len: rel.len(),
                });
            }
            other => v.skip(&rel, SkipReason::Special(other)),
        }
    }
    Ok(())
}
