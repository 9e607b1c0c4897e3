//! File operations beneath one directory fd, never following a symlink, never crossing a mount.
//!
//! Everything the agent does on disk goes through [`SafeRoot`], which holds an fd of the directory
//! holding the tenant roots (e.g. `/containerdata`), opened once at start-up. Every path is walked
//! one component at a time with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)` and `O_NOFOLLOW` from the previous component's fd, and
//! the result is `fstat`-ed before use. Ownership and mode change through the opened fd
//! (`fchown`/`fchmod`), regular files with more than one hard link are never changed, and deletion
//! works on fds and names only (`unlinkat`), so a tenant who swaps a directory for a symlink or a
//! mount can at worst make an operation fail, never redirect it outside its tree.

use std::{
    ffi::{CStr, CString},
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

use rustix::{
    fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags},
    io::Errno,
};
use thiserror::Error;
use tracing::debug;

mod delete;
mod ensure;
mod reown;
mod seed;
mod staging;
pub mod stamp;
mod subvolume;
mod usage;

pub use ensure::NewDir;
pub use seed::SeedSource;
use seed::read_seed;
pub use subvolume::{VolumeDir, fs_magic, is_subvolume_root, mount_id_at};

use super::api::{EntryType, FsSpace, VolumeType};
use crate::tenant::{TenantRoot, VolumePath};

/// The resolve flags of every open below the root.
pub const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);
/// How often an `openat2` that failed with `EAGAIN` (a concurrent rename) is retried.
pub const EAGAIN_RETRIES: usize = 64;
/// Deepest directory nesting an inspect counts (each level holds one fd); deeper parts are not
/// counted and the answer says so.
pub const MAX_USAGE_DEPTH: usize = 256;
/// Most directory fds a delete holds at once. A deeper subtree is moved up (within the volume)
/// and deleted from there, so any depth is deleted with at most this many fds.
pub const DELETE_FD_DEPTH: usize = 64;
/// How many times a directory is re-read while deleting it, when a tenant keeps adding entries.
const DELETE_PASSES: usize = 4;
/// Mode of directories the agent creates above a volume (and of a new tenant root).
pub const PARENT_DIR_MODE: u32 = 0o755;
/// Bits never kept or set on a regular file: setuid and setgid.
pub const FILE_PRIVILEGE_BITS: u32 = 0o6000;

/// A filesystem failure, with a message that names the path and says what to do.
#[derive(Debug, Error)]
pub enum FsError {
    #[error(
        "{path} is a symbolic link; berth never follows symbolic links inside a tenant root. Remove the link and retry"
    )]
    Symlink { path: String },
    #[error(
        "{path} is a mount point (or lies on another filesystem); berth never crosses mount points. Unmount it or choose another hostPath"
    )]
    MountPoint { path: String },
    #[error(
        "{path} exists as {} but the volume is declared type {declared:?}; berth does not replace it. Remove it or change the volume's type",
        found.describe()
    )]
    TypeMismatch {
        path: String,
        found: EntryType,
        declared: VolumeType,
    },
    #[error(
        "{path} must be a directory because the volume lies below it, but it exists as {}; remove it or choose another hostPath",
        found.describe()
    )]
    ParentNotDirectory { path: String, found: EntryType },
    #[error(
        "{path} is a regular file with {nlink} hard links; berth never changes the owner or mode of a hard-linked file, because another link may be a file outside the volume. Remove the extra links (or the file) and retry"
    )]
    HardLinked { path: String, nlink: u64 },
    #[error("{path} changed while berth was working on it; stop the app that uses it and retry")]
    Raced { path: String },
    #[error(
        "{path} was not deleted completely: {} {remaining:?} (mount points or busy files) were left in place, because berth never deletes across a mount point. Unmount them and retry",
        if remaining.len() == 1 { "this path is" } else { "these paths are" }
    )]
    DeleteIncomplete { path: String, remaining: Vec<String> },
    #[error(
        "{path} lies above the volume but {problem}. Every directory above a volume (the tenant root included) must be owned by root and not writable by group or others, or a container could swap what lies below it before Docker mounts it. It is often the data of an earlier volume kept by reclaimPolicy: Retain: move that data elsewhere and remove {path}, or ask the host's administrator to run `chown root {path}; chmod go-w {path}`; then retry"
    )]
    UnsafeParent { path: String, problem: String },
    #[error(
        "the agent is shutting down: it stopped working on {path} after {done} entries; nothing is lost, retry"
    )]
    Interrupted { path: String, done: u64 },
    #[error("seed file {path} cannot be copied on this host ({why}); ask the host's administrator")]
    SeedSource { path: String, why: String },
    #[error(
        "{op} {path} failed: {source}; check the agent host's filesystem (permissions, free space, read-only mount)"
    )]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: Errno,
    },
}

fn io_err<'a>(op: &'static str, path: &'a str) -> impl FnOnce(Errno) -> FsError + 'a {
    move |source| FsError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The parts of `struct stat` the agent uses, as fixed-width integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub size: u64,
    pub blocks: u64,
}

impl Meta {
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    fn from_stat(st: &rustix::fs::Stat) -> Self {
        Self {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            mode: st.st_mode as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            nlink: st.st_nlink as u64,
            size: u64::try_from(st.st_size).unwrap_or(0),
            blocks: u64::try_from(st.st_blocks).unwrap_or(0),
        }
    }

    pub fn entry_type(&self) -> EntryType {
        match FileType::from_raw_mode(self.mode) {
            FileType::Directory => EntryType::Directory,
            FileType::RegularFile => EntryType::File,
            FileType::Symlink => EntryType::Symlink,
            FileType::Fifo => EntryType::Fifo,
            FileType::Socket => EntryType::Socket,
            FileType::CharacterDevice => EntryType::CharDevice,
            FileType::BlockDevice => EntryType::BlockDevice,
            FileType::Unknown => EntryType::Unknown,
        }
    }

    /// Permission bits (`0o7777`).
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }

    fn same_inode(&self, other: &Meta) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }
}

fn fstat(fd: BorrowedFd<'_>, path: &str) -> Result<Meta, FsError> {
    rustix::fs::fstat(fd)
        .map(|s| Meta::from_stat(&s))
        .map_err(io_err("fstat", path))
}

fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<Meta, Errno> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map(|s| Meta::from_stat(&s))
}

/// `openat2(dir, name, flags | O_NOFOLLOW | O_CLOEXEC, RESOLVE)`, retrying `EAGAIN`/`EINTR`.
pub fn open_beneath<P: rustix::path::Arg + Copy>(
    dir: BorrowedFd<'_>,
    name: P,
    flags: OFlags,
    mode: Mode,
) -> Result<OwnedFd, Errno> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut last = Errno::AGAIN;
    for _ in 0..EAGAIN_RETRIES {
        match rustix::fs::openat2(dir, name, flags, mode, RESOLVE) {
            Err(e @ (Errno::AGAIN | Errno::INTR)) => last = e,
            r => return r,
        }
    }
    Err(last)
}

/// What [`SafeRoot::ensure`] should make. Ids are host ids (already mapped).
#[derive(Debug, Clone)]
pub struct EnsureSpec {
    pub kind: VolumeType,
    /// Owner to set; `None` keeps an existing owner and gives a new volume `default_owner`.
    pub owner: Option<(u32, u32)>,
    pub default_owner: (u32, u32),
    /// Mode to set; `None` keeps an existing mode and gives a new volume the type's default.
    pub mode: Option<u32>,
    pub seed: Option<SeedSource>,
}

/// The result of an ensure.
#[derive(Debug, Clone, Copy)]
pub struct EnsureOutcome {
    pub meta: Meta,
    pub created: bool,
    pub changed: bool,
    /// What a change of owner did below a directory volume.
    pub reowned: Option<crate::agent::api::ReownReport>,
}

/// Usage of a tree.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub bytes: u64,
    pub entries: u64,
    pub skipped_mounts: Vec<String>,
    /// Directories nested deeper than [`MAX_USAGE_DEPTH`] were not counted.
    pub depth_limited: bool,
}

/// An fd of the directory holding all tenant roots, and everything done beneath it.
#[derive(Debug)]
pub struct SafeRoot {
    base: OwnedFd,
    base_path: PathBuf,
    /// The agent's effective uid: the owner every directory above a volume must have.
    owner_uid: u32,
    /// Set when the agent shuts down: long walks stop at the next entry.
    cancelled: AtomicBool,
}

/// The directory holding the last component of a path, as [`SafeRoot::walk_parents`] found it.
struct Parents {
    dir: OwnedFd,
    shown: String,
    /// Directories created on the way (the tenant root included).
    created: usize,
}

/// Display form of a path below the base, for messages and logs.
fn join(shown: &str, name: &str) -> String {
    format!("{shown}/{name}")
}

fn cstr(name: &str, shown: &str) -> Result<CString, FsError> {
    CString::new(name).map_err(|_| FsError::Io {
        op: "use name",
        path: shown.to_owned(),
        source: Errno::INVAL,
    })
}

impl SafeRoot {
    /// Opens the base directory (trusted configuration: it may itself be reached through a
    /// symlink, e.g. `/containerdata -> /data/containerdata`). It must exist.
    pub fn open(base: &Path) -> Result<Self, FsError> {
        let shown = base.display().to_string();
        let fd = rustix::fs::open(
            base,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err("open the agent root", &shown))?;
        Ok(Self {
            base: fd,
            base_path: base.to_path_buf(),
            owner_uid: rustix::process::geteuid().as_raw(),
            cancelled: AtomicBool::new(false),
        })
    }

    pub fn base_path(&self) -> &Path {
        &self.base_path
    }

    /// The state of the base directory itself.
    pub fn base_meta(&self) -> Result<Meta, FsError> {
        fstat(self.base.as_fd(), &self.base_path.display().to_string())
    }

    /// Makes running and future walks (delete, usage) stop at their next entry with
    /// [`FsError::Interrupted`]; for the agent's shutdown.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Why an existing directory above a volume is unsafe to build on, if it is: not owned by
    /// the agent's user, or writable by group or others.
    fn parent_problem(&self, meta: &Meta) -> Option<String> {
        if meta.uid != self.owner_uid {
            Some(format!(
                "is owned by uid {} instead of the agent's uid {}",
                meta.uid, self.owner_uid
            ))
        } else if meta.mode & 0o022 != 0 {
            Some(format!(
                "is writable by group or others (mode {:04o})",
                meta.perm()
            ))
        } else {
            None
        }
    }

    /// Free and total bytes of the filesystem holding the base (`fstatvfs`).
    pub fn space(&self) -> Result<FsSpace, FsError> {
        let v = rustix::fs::fstatvfs(&self.base)
            .map_err(io_err("statvfs", &self.base_path.display().to_string()))?;
        Ok(FsSpace {
            free_bytes: v.f_bavail.saturating_mul(v.f_frsize),
            total_bytes: v.f_blocks.saturating_mul(v.f_frsize),
            // Filesystems that allocate inodes as needed (btrfs) report none.
            free_inodes: (v.f_files > 0).then_some(v.f_favail),
            total_inodes: (v.f_files > 0).then_some(v.f_files),
        })
    }

    /// Opens a tenant root; `Ok(None)` when it does not exist.
    fn open_tenant_root(&self, root: &TenantRoot) -> Result<Option<OwnedFd>, FsError> {
        let shown = root.path().display().to_string();
        let name = cstr(root.dir_name(), &shown)?;
        match open_beneath(self.base.as_fd(), name.as_c_str(), dir_flags(), Mode::empty()) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.classify_open_error(self.base.as_fd(), &name, &shown, e, None)),
        }
    }

    /// Creates (if missing, mode 0755, owned by the agent's user) and opens one directory
    /// component above a volume; `true` when it was created. An existing one must be owned by
    /// the agent's user and not writable by group or others ([`FsError::UnsafeParent`]).
    fn ensure_dir_component(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        shown: &str,
    ) -> Result<(OwnedFd, bool), FsError> {
        let created = match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(e) => return Err(io_err("mkdir", shown)(e)),
        };
        let fd = match open_beneath(dir, name, dir_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(e) => return Err(self.classify_open_error(dir, name, shown, e, None)),
        };
        let meta = fstat(fd.as_fd(), shown)?;
        if meta.entry_type() != EntryType::Directory {
            return Err(FsError::ParentNotDirectory {
                path: shown.to_owned(),
                found: meta.entry_type(),
            });
        }
        if created {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(PARENT_DIR_MODE)).map_err(io_err("chmod", shown))?;
            debug!(path = %shown, mode = "0755", "created directory");
        } else if let Some(problem) = self.parent_problem(&meta) {
            return Err(FsError::UnsafeParent {
                path: shown.to_owned(),
                problem,
            });
        }
        Ok((fd, created))
    }

    /// Turns an `openat2` failure on `dir/name` into an error a user understands.
    fn classify_open_error(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        shown: &str,
        err: Errno,
        declared: Option<VolumeType>,
    ) -> FsError {
        match err {
            Errno::XDEV => FsError::MountPoint {
                path: shown.to_owned(),
            },
            Errno::LOOP | Errno::NOTDIR => {
                let found = lstat_at(dir, name).map(|m| m.entry_type());
                // What we tried to open as (a directory unless a file type was declared).
                let wanted = declared.map_or(EntryType::Directory, EntryType::from);
                match (found, declared) {
                    (Ok(EntryType::Symlink), _) => FsError::Symlink {
                        path: shown.to_owned(),
                    },
                    // It is the right type now: it was swapped while we looked.
                    (Ok(found), _) if found == wanted => FsError::Raced {
                        path: shown.to_owned(),
                    },
                    (Ok(found), Some(declared)) => FsError::TypeMismatch {
                        path: shown.to_owned(),
                        found,
                        declared,
                    },
                    (Ok(found), None) => FsError::ParentNotDirectory {
                        path: shown.to_owned(),
                        found,
                    },
                    (Err(_), _) => FsError::Raced {
                        path: shown.to_owned(),
                    },
                }
            }
            e => io_err("open", shown)(e),
        }
    }

    /// Walks to the directory holding the last component. With `create`, missing directories
    /// (and the tenant root) are created and existing ones must be safe to build on; without
    /// it, `Ok(None)` when something is missing.
    fn walk_parents(
        &self,
        root: &TenantRoot,
        path: &VolumePath,
        create: bool,
    ) -> Result<Option<Parents>, FsError> {
        let mut created = 0;
        let mut shown = root.path().display().to_string();
        let mut dir = if create {
            let name = cstr(root.dir_name(), &shown)?;
            let (fd, new) = self.ensure_dir_component(self.base.as_fd(), &name, &shown)?;
            created += usize::from(new);
            fd
        } else {
            match self.open_tenant_root(root)? {
                Some(fd) => fd,
                None => return Ok(None),
            }
        };
        let comps = path.components();
        for c in &comps[..comps.len().saturating_sub(1)] {
            shown = join(&shown, c);
            let name = cstr(c, &shown)?;
            dir = if create {
                let (fd, new) = self.ensure_dir_component(dir.as_fd(), &name, &shown)?;
                created += usize::from(new);
                fd
            } else {
                match open_beneath(dir.as_fd(), name.as_c_str(), dir_flags(), Mode::empty()) {
                    Ok(fd) => fd,
                    Err(Errno::NOENT) => return Ok(None),
                    Err(e) => {
                        return Err(self.classify_open_error(dir.as_fd(), &name, &shown, e, None));
                    }
                }
            };
        }
        Ok(Some(Parents { dir, shown, created }))
    }
}

fn dir_flags() -> OFlags {
    OFlags::DIRECTORY | OFlags::RDONLY
}

fn last(path: &VolumePath) -> &str {
    // A VolumePath always has at least one component (the root itself is refused).
    path.components().last().map(String::as_str).unwrap_or("")
}
