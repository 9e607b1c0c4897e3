//! Creating a volume and converging its owner and mode.

use std::{
    ffi::CStr,
    fs::File,
    io::Write,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
};

use rustix::{
    fs::{AtFlags, Gid, Mode, OFlags, Uid},
    io::Errno,
};
use tracing::{info, warn};

use super::{
    EnsureOutcome, EnsureSpec, FILE_PRIVILEGE_BITS, FsError, Parents, SafeRoot, cstr, dir_flags, fstat,
    io_err, join, last, open_beneath, read_seed, reown::Reown, subvolume::Boundary,
};
use crate::{
    agent::api::{EntryType, VolumeType},
    tenant::{TenantRoot, VolumePath},
};

/// How a directory volume that does not exist yet is made.
#[derive(Clone, Copy, Default)]
pub enum NewDir<'a> {
    #[default]
    Plain,
    /// A btrfs subvolume, whose qgroup can hold a limit (a plain directory if btrfs refuses).
    Subvolume,
    /// A plain directory, handed to the function before it gets its owner and mode (e.g. to tag
    /// it with an XFS project id while it is still empty and root's).
    Prepared(&'a dyn Fn(BorrowedFd<'_>)),
}

impl SafeRoot {
    /// Creates the volume if missing (parents as 0755 directories owned by the agent's user),
    /// then converges its owner and mode. Never replaces an object of another type, and never
    /// keeps or sets setuid/setgid on a file.
    pub fn ensure(
        &self,
        root: &TenantRoot,
        path: &VolumePath,
        spec: &EnsureSpec,
    ) -> Result<EnsureOutcome, FsError> {
        self.ensure_as(root, path, spec, NewDir::Plain)
    }

    /// [`SafeRoot::ensure`], making a missing directory volume as `new_dir` says.
    pub fn ensure_as(
        &self,
        root: &TenantRoot,
        path: &VolumePath,
        spec: &EnsureSpec,
        new_dir: NewDir<'_>,
    ) -> Result<EnsureOutcome, FsError> {
        let Some(Parents {
            dir,
            shown: parent_display,
            created: parents_created,
        }) = self.walk_parents(root, path, true)?
        else {
            return Err(FsError::Raced {
                path: root.path().display().to_string(),
            });
        };
        if parents_created > 0 {
            info!(parent = %parent_display, created = parents_created, "created parent directories (root-owned, 0755)");
        }
        let leaf = last(path);
        let shown = join(&parent_display, leaf);
        let name = cstr(leaf, &shown)?;
        let (fd, created) = match spec.kind {
            VolumeType::Directory => self.open_or_create_dir(dir.as_fd(), &name, &shown, new_dir)?,
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
        // A file's setuid/setgid bits are never kept (a container may have set them) nor set:
        // after a chown to another owner they would grant that owner's ids. Requests cannot ask
        // for them (see `ops::parse_mode`); this strips what a tenant left behind.
        let mode = if spec.kind == VolumeType::File {
            if mode & FILE_PRIVILEGE_BITS != 0 {
                warn!(path = %shown, mode = %format!("{mode:04o}"), "removing setuid/setgid bits from a file volume");
            }
            mode & !FILE_PRIVILEGE_BITS
        } else {
            mode
        };
        let mut changed = created;
        let mut reowned = None;
        if (meta.uid, meta.gid) != owner
            && !created
            && spec.owner.is_some()
            && spec.kind == VolumeType::Directory
        {
            // The owner changes: what the previous owner held below it goes to the new one
            // first, the directory itself last (an interrupted walk is resumed next time).
            let report = self.reown_tree(
                fd.as_fd(),
                Boundary::of(fd.as_fd(), meta.dev),
                &shown,
                Reown {
                    from: (meta.uid, meta.gid),
                    to: owner,
                },
            )?;
            info!(path = %shown, entries = report.entries, skipped_hard_links = report.skipped_hard_links,
                  skipped_mounts = report.skipped_mounts, "re-owned the volume's tree");
            reowned = Some(report);
        }
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
            reowned,
        })
    }

    fn open_or_create_dir(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        shown: &str,
        new_dir: NewDir<'_>,
    ) -> Result<(OwnedFd, bool), FsError> {
        // 0700 until the owner and mode are set, so no one else can use it in between (a new
        // subvolume is root's 0755 until then).
        let made = match new_dir {
            NewDir::Subvolume => self.make_subvolume(dir, name, shown),
            NewDir::Plain | NewDir::Prepared(_) => rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)),
        };
        let created = match made {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(e) => return Err(io_err("mkdir", shown)(e)),
        };
        match open_beneath(dir, name, dir_flags(), Mode::empty()) {
            Ok(fd) => {
                if let (true, NewDir::Prepared(prepare)) = (created, new_dir) {
                    prepare(fd.as_fd());
                }
                Ok((fd, created))
            }
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

fn default_mode(kind: VolumeType) -> u32 {
    match kind {
        VolumeType::Directory => 0o755,
        VolumeType::File => 0o644,
    }
}

/// Reopens an `O_PATH` fd of a regular file for reading, through its own magic link: the same
/// inode, with no path lookup an attacker could redirect.
pub(super) fn reopen(pfd: &OwnedFd, shown: &str) -> Result<OwnedFd, FsError> {
    let link = format!("/proc/self/fd/{}", pfd.as_raw_fd());
    rustix::fs::open(
        link.as_str(),
        OFlags::RDONLY | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err("reopen", shown))
}
