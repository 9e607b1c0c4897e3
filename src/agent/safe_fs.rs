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
    fs::File,
    io::{Read, Write},
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
};

use rustix::{
    fs::{AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Uid},
    io::Errno,
};
use thiserror::Error;
use tracing::info;

mod tree;

use super::api::{EntryType, FsSpace, VolumeType};
use crate::tenant::{TenantRoot, VolumePath};

/// The resolve flags of every open below the root.
pub const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);
/// How often an `openat2` that failed with `EAGAIN` (a concurrent rename) is retried.
pub const EAGAIN_RETRIES: usize = 64;
/// Deepest directory nesting the agent walks (each level holds one fd).
pub const MAX_DEPTH: usize = 512;
/// How many times a directory is re-read while deleting it, when a tenant keeps adding entries.
const DELETE_PASSES: usize = 4;
/// Mode of directories the agent creates above a volume (and of a new tenant root).
pub const PARENT_DIR_MODE: u32 = 0o755;

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
        "{path} is nested more than {MAX_DEPTH} directories deep; berth stops there. Flatten the tree from inside the container and retry"
    )]
    TooDeep { path: String },
    #[error("seed file {path}: {why}; fix the agent's --seed-allow list or the file on the host")]
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

/// What to create a new file with.
#[derive(Debug, Clone)]
pub enum SeedSource {
    Bytes(Vec<u8>),
    /// An allowlisted host file (trusted agent configuration; symlinks such as `/etc/localtime`
    /// are followed) and the largest size accepted.
    HostFile {
        path: PathBuf,
        max_bytes: u64,
    },
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
}

/// Usage of a tree.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub bytes: u64,
    pub entries: u64,
    pub skipped_mounts: Vec<String>,
}

/// An fd of the directory holding all tenant roots, and everything done beneath it.
#[derive(Debug)]
pub struct SafeRoot {
    base: OwnedFd,
    base_path: PathBuf,
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
        })
    }

    pub fn base_path(&self) -> &Path {
        &self.base_path
    }

    /// Free and total bytes of the filesystem holding the base (`fstatvfs`).
    pub fn space(&self) -> Result<FsSpace, FsError> {
        let v = rustix::fs::fstatvfs(&self.base)
            .map_err(io_err("statvfs", &self.base_path.display().to_string()))?;
        Ok(FsSpace {
            free_bytes: v.f_bavail.saturating_mul(v.f_frsize),
            total_bytes: v.f_blocks.saturating_mul(v.f_frsize),
        })
    }

    /// Opens (and with `create`, first creates, root-owned, mode 0755) a tenant root.
    /// `Ok(None)` when it does not exist and `create` is false.
    fn tenant_root(&self, root: &TenantRoot, create: bool) -> Result<Option<OwnedFd>, FsError> {
        let shown = root.path().display().to_string();
        let name = cstr(root.dir_name(), &shown)?;
        if create {
            return self
                .ensure_dir_component(self.base.as_fd(), &name, &shown)
                .map(Some);
        }
        match open_beneath(self.base.as_fd(), name.as_c_str(), dir_flags(), Mode::empty()) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.classify_open_error(self.base.as_fd(), &name, &shown, e, None)),
        }
    }

    /// Creates (if missing, mode 0755, owned by the agent's user) and opens one directory
    /// component. An existing directory is used as it is.
    fn ensure_dir_component(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        shown: &str,
    ) -> Result<OwnedFd, FsError> {
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
            info!(path = %shown, mode = "0755", "created directory");
        }
        Ok(fd)
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
    /// (and the tenant root) are created; without it, `Ok(None)` when something is missing.
    fn walk_parents(
        &self,
        root: &TenantRoot,
        path: &VolumePath,
        create: bool,
    ) -> Result<Option<(OwnedFd, String)>, FsError> {
        let Some(mut dir) = self.tenant_root(root, create)? else {
            return Ok(None);
        };
        let mut shown = root.path().display().to_string();
        let comps = path.components();
        for c in &comps[..comps.len().saturating_sub(1)] {
            shown = join(&shown, c);
            let name = cstr(c, &shown)?;
            dir = if create {
                self.ensure_dir_component(dir.as_fd(), &name, &shown)?
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
        Ok(Some((dir, shown)))
    }

    /// Creates the volume if missing (parents as 0755 directories owned by the agent's user),
    /// then converges its owner and mode. Never replaces an object of another type.
    pub fn ensure(
        &self,
        root: &TenantRoot,
        path: &VolumePath,
        spec: &EnsureSpec,
    ) -> Result<EnsureOutcome, FsError> {
        let Some((dir, parent_display)) = self.walk_parents(root, path, true)? else {
            return Err(FsError::Raced {
                path: root.path().display().to_string(),
            });
        };
        let leaf = last(path);
        let shown = join(&parent_display, leaf);
        let name = cstr(leaf, &shown)?;
        let (fd, created) = match spec.kind {
            VolumeType::Directory => self.open_or_create_dir(dir.as_fd(), &name, &shown)?,
            VolumeType::File => self.open_or_create_file(dir.as_fd(), &name, &shown, spec)?,
        };
        let meta = fstat(fd.as_fd(), &shown)?;
        let declared: EntryType = spec.kind.into();
        if meta.entry_type() != declared {
            return Err(FsError::TypeMismatch {
                path: shown,
                found: meta.entry_type(),
                declared: spec.kind,
            });
        }
        if meta.entry_type() == EntryType::File && meta.nlink > 1 {
            return Err(FsError::HardLinked {
                path: shown,
                nlink: meta.nlink,
            });
        }
        let owner = spec
            .owner
            .or(created.then_some(spec.default_owner))
            .unwrap_or((meta.uid, meta.gid));
        let mode = spec.mode.unwrap_or(if created {
            default_mode(spec.kind)
        } else {
            meta.perm()
        });
        let mut changed = created;
        if (meta.uid, meta.gid) != owner {
            rustix::fs::fchown(&fd, Some(Uid::from_raw(owner.0)), Some(Gid::from_raw(owner.1)))
                .map_err(io_err("chown", &shown))?;
            info!(path = %shown, host_uid = owner.0, host_gid = owner.1,
                  old_uid = meta.uid, old_gid = meta.gid, "changed owner");
            changed = true;
        }
        // chown clears setuid/setgid, so compare against a fresh stat.
        let now = fstat(fd.as_fd(), &shown)?;
        if now.perm() != mode {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(io_err("chmod", &shown))?;
            info!(path = %shown, mode = %format!("{mode:04o}"),
                  old_mode = %format!("{:04o}", now.perm()), "changed mode");
            changed = true;
        }
        let meta = fstat(fd.as_fd(), &shown)?;
        if created {
            info!(path = %shown, kind = ?spec.kind, host_uid = meta.uid, host_gid = meta.gid,
                  mode = %format!("{:04o}", meta.perm()), size = meta.size, "created volume");
        }
        Ok(EnsureOutcome {
            meta,
            created,
            changed,
        })
    }

    fn open_or_create_dir(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        shown: &str,
    ) -> Result<(OwnedFd, bool), FsError> {
        // 0700 until the owner and mode are set, so no one else can use it in between.
        let created = match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(e) => return Err(io_err("mkdir", shown)(e)),
        };
        match open_beneath(dir, name, dir_flags(), Mode::empty()) {
            Ok(fd) => Ok((fd, created)),
            Err(e) => Err(self.classify_open_error(dir, name, shown, e, Some(VolumeType::Directory))),
        }
    }

    fn open_or_create_file(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        shown: &str,
        spec: &EnsureSpec,
    ) -> Result<(OwnedFd, bool), FsError> {
        let create = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOCTTY;
        match open_beneath(dir, name, create, Mode::from_raw_mode(0o600)) {
            Ok(fd) => {
                if let Some(seed) = &spec.seed {
                    let bytes = match read_seed(seed) {
                        Ok(b) => b,
                        Err(e) => {
                            // Do not leave an empty file behind that a retry would not seed.
                            let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
                            return Err(e);
                        }
                    };
                    let mut file = File::from(fd);
                    if let Err(e) = file.write_all(&bytes).and_then(|()| file.sync_all()) {
                        let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
                        return Err(io_err("write seed to", shown)(
                            Errno::from_io_error(&e).unwrap_or(Errno::IO),
                        ));
                    }
                    info!(path = %shown, bytes = bytes.len(), "seeded new file");
                    return Ok((OwnedFd::from(file), true));
                }
                Ok((fd, true))
            }
            Err(Errno::EXIST) => {
                // Look without following or opening anything special, then reopen the very
                // same inode (through its O_PATH fd) to get an fd that fchmod accepts.
                let pfd = match open_beneath(dir, name, OFlags::PATH, Mode::empty()) {
                    Ok(fd) => fd,
                    Err(e) => {
                        return Err(self.classify_open_error(dir, name, shown, e, Some(VolumeType::File)));
                    }
                };
                let meta = fstat(pfd.as_fd(), shown)?;
                match meta.entry_type() {
                    EntryType::File => {}
                    EntryType::Symlink => {
                        return Err(FsError::Symlink {
                            path: shown.to_owned(),
                        });
                    }
                    found => {
                        return Err(FsError::TypeMismatch {
                            path: shown.to_owned(),
                            found,
                            declared: VolumeType::File,
                        });
                    }
                }
                let fd = reopen(&pfd, shown)?;
                if !fstat(fd.as_fd(), shown)?.same_inode(&meta) {
                    return Err(FsError::Raced {
                        path: shown.to_owned(),
                    });
                }
                Ok((fd, false))
            }
            Err(e) => Err(self.classify_open_error(dir, name, shown, e, Some(VolumeType::File))),
        }
    }
}

fn dir_flags() -> OFlags {
    OFlags::DIRECTORY | OFlags::RDONLY
}

fn default_mode(kind: VolumeType) -> u32 {
    match kind {
        VolumeType::Directory => 0o755,
        VolumeType::File => 0o644,
    }
}

fn last(path: &VolumePath) -> &str {
    // A VolumePath always has at least one component (the root itself is refused).
    path.components().last().map(String::as_str).unwrap_or("")
}

/// Reopens an `O_PATH` fd of a regular file for reading, through its own magic link: the same
/// inode, with no path lookup an attacker could redirect.
fn reopen(pfd: &OwnedFd, shown: &str) -> Result<OwnedFd, FsError> {
    let link = format!("/proc/self/fd/{}", pfd.as_raw_fd());
    rustix::fs::open(
        link.as_str(),
        OFlags::RDONLY | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err("reopen", shown))
}

/// Reads seed bytes; a host file must be a regular file no larger than its limit.
fn read_seed(seed: &SeedSource) -> Result<Vec<u8>, FsError> {
    match seed {
        SeedSource::Bytes(b) => Ok(b.clone()),
        SeedSource::HostFile { path, max_bytes } => {
            let shown = path.display().to_string();
            let bad = |why: String| FsError::SeedSource {
                path: shown.clone(),
                why,
            };
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags_nonblock()
                .open(path)
                .map_err(|e| bad(format!("cannot open it ({e})")))?;
            let md = file
                .metadata()
                .map_err(|e| bad(format!("cannot stat it ({e})")))?;
            if !md.is_file() {
                return Err(bad("it is not a regular file".into()));
            }
            if md.len() > *max_bytes {
                return Err(bad(format!(
                    "it is {} bytes, more than the {max_bytes}-byte limit",
                    md.len()
                )));
            }
            let mut buf = Vec::with_capacity(md.len() as usize);
            file.take(*max_bytes + 1)
                .read_to_end(&mut buf)
                .map_err(|e| bad(format!("cannot read it ({e})")))?;
            if buf.len() as u64 > *max_bytes {
                return Err(bad(format!("it grew past the {max_bytes}-byte limit")));
            }
            Ok(buf)
        }
    }
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        // Never block on a FIFO that an admin mistakenly allowlisted.
        self.custom_flags((OFlags::NONBLOCK | OFlags::NOCTTY).bits() as i32)
    }
}
