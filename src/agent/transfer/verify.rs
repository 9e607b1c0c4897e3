//! The manifest of a tree on disk ([`crate::agent::manifest`]), read through fds.

use std::{ffi::CStr, os::fd::AsFd};

use rustix::fs::FileType;

use super::{
    TransferError,
    walk::{self, Entry, SkipReason, Visit},
};
use crate::agent::{
    api::ManifestSummary,
    manifest::{FileHasher, Item, ManifestBuilder, read_data, show},
    remap::IdMap,
};

/// Container ids of a host owner (`None`: outside the remap).
pub fn container_ids(uid_map: &IdMap, gid_map: &IdMap, uid: u32, gid: u32) -> (Option<u32>, Option<u32>) {
    (uid_map.to_container(uid), gid_map.to_container(gid))
}

/// Reads a regular file found by a walk and returns its digest ([`FileHasher`]); the file is
/// opened without following anything and checked to be the inode listed.
pub fn file_digest(e: &Entry<'_>, drop_cache: bool, buf: &mut Vec<u8>) -> Result<[u8; 32], TransferError> {
    let fd = walk::open_listed_file(e.dir, e.name, &e.st)
        .map_err(|err| TransferError::io("open", &show(e.rel), err))?
        .ok_or_else(|| TransferError::Changed { path: show(e.rel) })?;
    let mut h = FileHasher::new(e.st.size);
    read_data::<TransferError>(
        fd.as_fd(),
        e.st.size,
        e.st.blocks.saturating_mul(512),
        drop_cache,
        buf,
        |off, data| {
            h.feed(off, data)
                .map(|_| ())
                .map_err(|_| TransferError::Internal("misaligned read".into()))
        },
    )
    .map_err(|err| match err {
        TransferError::Io { errno, .. } => TransferError::io("read", &show(e.rel), errno),
        other => other,
    })?;
    Ok(h.finish())
}

/// Reads a symlink's target without following it.
pub fn link_target(e: &Entry<'_>) -> Result<Vec<u8>, TransferError> {
    rustix::fs::readlinkat(e.dir, e.name, Vec::new())
        .map(|c| c.into_bytes())
        .map_err(|err| TransferError::io("read link", &show(e.rel), err))
}

struct Manifest<'a> {
    b: ManifestBuilder,
    uid_map: &'a IdMap,
    gid_map: &'a IdMap,
    drop_cache: bool,
    buf: Vec<u8>,
}

impl Visit for Manifest<'_> {
    fn visit(&mut self, e: &Entry<'_>) -> Result<(), TransferError> {
        let st = &e.st;
        let (uid, gid) = container_ids(self.uid_map, self.gid_map, st.uid, st.gid);
        match st.file_type() {
            FileType::Directory => self.b.add(
                e.rel,
                &Item::Dir {
                    perm: st.perm(),
                    uid,
                    gid,
                },
            ),
            FileType::Symlink => {
                let target = link_target(e)?;
                self.b.add(
                    e.rel,
                    &Item::Symlink {
                        uid,
                        gid,
                        mtime: st.mtime,
                        target: &target,
                    },
                );
            }
            _ => {
                if let Some(first) = self.b.first_link(st.dev, st.ino, st.nlink, e.rel) {
                    self.b.add(e.rel, &Item::HardLink { first: &first });
                    return Ok(());
                }
                let digest = file_digest(e, self.drop_cache, &mut self.buf)?;
                self.b.add(
                    e.rel,
                    &Item::File {
                        perm: st.perm(),
                        uid,
                        gid,
                        size: st.size,
                        mtime: st.mtime,
                        digest,
                    },
                );
            }
        }
        Ok(())
    }

    fn skip(&mut self, rel: &[u8], _why: SkipReason) {
        self.b.skip(rel);
    }
}

/// The manifest of the volume `name` in the directory `parent`. With `drop_cache`, file data
/// is read from the disk, not from the page cache (after a sync: to check what was written).
pub fn tree_manifest(
    parent: std::os::fd::BorrowedFd<'_>,
    name: &CStr,
    uid_map: &IdMap,
    gid_map: &IdMap,
    drop_cache: bool,
    cancelled: &dyn Fn() -> bool,
) -> Result<ManifestSummary, TransferError> {
    let mut m = Manifest {
        b: ManifestBuilder::default(),
        uid_map,
        gid_map,
        drop_cache,
        buf: Vec::new(),
    };
    walk::walk(parent, name, cancelled, &mut m)?;
    Ok(m.b.finish())
}
