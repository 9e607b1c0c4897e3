//! Directories transfers need: a transfer's staging directory below the tenant root, and the
//! directory holding a volume (made like ensure makes a volume's parents).

use std::{ffi::CString, os::fd::OwnedFd};

use rustix::fs::Mode;

use super::{FsError, Parents, SafeRoot, cstr, io_err, join, last};
use crate::tenant::{TenantRoot, VolumePath};

/// Mode of a transfer's staging directory: the agent's alone.
const STAGING_MODE: u32 = 0o700;

impl SafeRoot {
    /// `<tenant root>/<staging>/<id>`, created (root-owned, 0700; parents like ensure's) with
    /// `create`; `Ok(None)` when it does not exist. `staging` and `id` are single, checked names.
    pub(crate) fn staging_dir(
        &self,
        root: &TenantRoot,
        staging: &str,
        id: &str,
        create: bool,
    ) -> Result<Option<(OwnedFd, String)>, FsError> {
        let path = VolumePath::parse(&format!("/{staging}/{id}/x")).map_err(|_| FsError::Io {
            op: "use staging name",
            path: id.to_owned(),
            source: rustix::io::Errno::INVAL,
        })?;
        let Some(Parents { dir, shown, .. }) = self.walk_parents(root, &path, create)? else {
            return Ok(None);
        };
        if create {
            rustix::fs::fchmod(&dir, Mode::from_raw_mode(STAGING_MODE)).map_err(io_err("chmod", &shown))?;
        }
        Ok(Some((dir, shown)))
    }

    /// The directory holding the volume at `path`, the volume's name in it and its display path.
    /// With `create`, missing parents are made as ensure makes them (root-owned 0755) and
    /// existing ones must be safe to build on; without it, `Ok(None)` when one is missing.
    pub(crate) fn volume_parent(
        &self,
        root: &TenantRoot,
        path: &VolumePath,
        create: bool,
    ) -> Result<Option<(OwnedFd, CString, String)>, FsError> {
        let Some(p) = self.walk_parents(root, path, create)? else {
            return Ok(None);
        };
        let leaf = last(path);
        let shown = join(&p.shown, leaf);
        let name = cstr(leaf, &shown)?;
        Ok(Some((p.dir, name, shown)))
    }
}
