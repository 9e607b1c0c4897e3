//! The source's side: walk the volume and write the stream.
//!
//! A pass walks the tree twice: once to count what it will send (the totals of the progress),
//! once to send it. A full pass sends every entry; a delta pass sends the entries whose
//! [`Key`] (or symlink target, or first link) differs from the last pass the target
//! acknowledged, then a deletion for every path that is gone. Either way the walk also builds
//! the manifest of the whole tree after the pass (unchanged files keep the digest of the pass
//! that sent them), which the target's commit checks its copy against.

use std::{
    collections::BTreeMap,
    ffi::CStr,
    os::fd::{AsFd, BorrowedFd},
    sync::atomic::Ordering,
};

use rustix::fs::FileType;

use super::{
    Baseline, Key, Outgoing, Snap, TransferError,
    verify::{container_ids, link_target},
    walk::{self, Entry, SkipReason, Visit},
    wire::{self, FrameWriter, MAX_CHUNK, Put},
};
use crate::agent::{
    api::{Compression, ManifestSummary},
    manifest::{BLOCK, FileHasher, Item, ManifestBuilder, SETID_BITS, read_data, show},
    remap::IdMap,
};

/// What a pass sends, before it sends it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Plan {
    pub files: u64,
    pub bytes: u64,
}

fn changed(base: Option<&BTreeMap<Vec<u8>, Snap>>, rel: &[u8], now: &Snap) -> bool {
    match base.and_then(|b| b.get(rel)) {
        None => true,
        Some(old) => match (old, now) {
            (Snap::File { key: a, .. }, Snap::File { key: b, .. }) => a != b,
            (a, b) => a != b,
        },
    }
}

struct Counter<'a> {
    base: Option<&'a BTreeMap<Vec<u8>, Snap>>,
    plan: Plan,
    firsts: ManifestBuilder,
}

impl Visit for Counter<'_> {
    fn visit(&mut self, e: &Entry<'_>) -> Result<(), TransferError> {
        let st = &e.st;
        if st.file_type() != FileType::RegularFile
            || self.firsts.first_link(st.dev, st.ino, st.nlink, e.rel).is_some()
        {
            return Ok(());
        }
        let snap = Snap::File {
            key: Key::of(st),
            digest: [0; 32],
        };
        if changed(self.base, e.rel, &snap) {
            self.plan.files += 1;
            self.plan.bytes += st.size.min(st.blocks.saturating_mul(512));
        }
        Ok(())
    }
    fn skip(&mut self, _: &[u8], _: SkipReason) {}
}

/// Counts the files (and their allocated bytes) a pass will send.
pub fn plan(
    parent: BorrowedFd<'_>,
    name: &CStr,
    base: Option<&Baseline>,
    cancelled: &dyn Fn() -> bool,
) -> Result<Plan, TransferError> {
    let mut c = Counter {
        base: base.map(|b| &b.entries),
        plan: Plan::default(),
        firsts: ManifestBuilder::default(),
    };
    walk::walk(parent, name, cancelled, &mut c)?;
    Ok(c.plan)
}

struct Sender<'a, F: FnMut(Vec<u8>) -> Result<(), TransferError>> {
    w: FrameWriter<F>,
    base: Option<&'a BTreeMap<Vec<u8>, Snap>>,
    now: BTreeMap<Vec<u8>, Snap>,
    manifest: ManifestBuilder,
    uid_map: &'a IdMap,
    gid_map: &'a IdMap,
    progress: &'a Outgoing,
    buf: Vec<u8>,
    entries: u64,
    data_bytes: u64,
}

impl<F: FnMut(Vec<u8>) -> Result<(), TransferError>> Sender<'_, F> {
    fn head(&mut self, tag: u8, rel: &[u8]) {
        self.w.raw.u8(tag);
        self.w.raw.bytes32(rel);
        self.entries += 1;
        self.progress.entries_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends a regular file; `Ok(None)` when it was replaced since the walk listed it (a live
    /// tree): it is then left to the next pass.
    fn send_file(
        &mut self,
        e: &Entry<'_>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<Option<Snap>, TransferError> {
        let st = &e.st;
        let Some(fd) = walk::open_listed_file(e.dir, e.name, st)
            .map_err(|err| TransferError::io("open", &show(e.rel), err))?
        else {
            return Ok(None);
        };
        if st.perm() & SETID_BITS != 0 {
            self.progress.setid.fetch_add(1, Ordering::Relaxed);
        }
        self.head(wire::T_FILE, e.rel);
        let raw = &mut self.w.raw;
        raw.u16((st.perm() & !SETID_BITS) as u16);
        raw.id(uid);
        raw.id(gid);
        raw.time(st.mtime);
        raw.u64(st.size);
        raw.u8(u8::from(st.nlink > 1));
        let mut h = FileHasher::new(st.size);
        let mut buf = std::mem::take(&mut self.buf);
        let w = &mut self.w;
        let progress = self.progress;
        let mut data_bytes = 0u64;
        read_data::<TransferError>(
            fd.as_fd(),
            st.size,
            st.blocks.saturating_mul(512),
            false,
            &mut buf,
            |off, data| {
                h.feed(off, data)
                    .map_err(|_| TransferError::Internal("misaligned read".into()))?;
                for (i, chunk) in data.chunks(MAX_CHUNK).enumerate() {
                    let at = off + (i * MAX_CHUNK) as u64;
                    // Runs of zero blocks are holes: not sent.
                    for (j, block) in chunk.chunks(BLOCK).enumerate() {
                        if crate::agent::manifest::is_zero(block) {
                            continue;
                        }
                        w.raw.u8(wire::T_CHUNK);
                        w.raw.u64(at + (j * BLOCK) as u64);
                        w.raw.bytes32(block);
                        data_bytes += block.len() as u64;
                    }
                    w.maybe_flush()?;
                }
                progress
                    .bytes_done
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                Ok(())
            },
        )
        .map_err(|err| match err {
            TransferError::Io { errno, .. } => TransferError::io("read", &show(e.rel), errno),
            other => other,
        })?;
        self.buf = buf;
        self.data_bytes += data_bytes;
        let digest = h.finish();
        self.w.raw.u8(wire::T_FILE_END);
        self.w.raw.extend_from_slice(&digest);
        self.progress.files_done.fetch_add(1, Ordering::Relaxed);
        // The key is the one listed before reading: a file written while (or after) it was read
        // has a newer ctime, so the next pass sends it again.
        Ok(Some(Snap::File {
            key: Key::of(st),
            digest,
        }))
    }
}

impl<F: FnMut(Vec<u8>) -> Result<(), TransferError>> Visit for Sender<'_, F> {
    fn visit(&mut self, e: &Entry<'_>) -> Result<(), TransferError> {
        let st = &e.st;
        let (uid, gid) = container_ids(self.uid_map, self.gid_map, st.uid, st.gid);
        let key = Key::of(st);
        let snap = match st.file_type() {
            FileType::Directory => {
                let snap = Snap::Dir { key };
                if changed(self.base, e.rel, &snap) {
                    self.head(wire::T_DIR, e.rel);
                    let raw = &mut self.w.raw;
                    raw.u16((st.perm() & !SETID_BITS) as u16);
                    raw.id(uid);
                    raw.id(gid);
                    raw.time(st.mtime);
                }
                self.manifest.add(
                    e.rel,
                    &Item::Dir {
                        perm: st.perm(),
                        uid,
                        gid,
                    },
                );
                snap
            }
            FileType::Symlink => {
                let target = link_target(e)?;
                if target.is_empty() || target.len() > wire::MAX_LINK {
                    return Err(TransferError::Unsupported {
                        path: show(e.rel),
                        what: "a symbolic link with an empty or over-long target".into(),
                    });
                }
                let snap = Snap::Symlink { key, target };
                let Snap::Symlink { target, .. } = &snap else {
                    unreachable!()
                };
                if changed(self.base, e.rel, &snap) {
                    self.head(wire::T_SYMLINK, e.rel);
                    let raw = &mut self.w.raw;
                    raw.bytes16(target);
                    raw.id(uid);
                    raw.id(gid);
                    raw.time(st.mtime);
                }
                self.manifest.add(
                    e.rel,
                    &Item::Symlink {
                        uid,
                        gid,
                        mtime: st.mtime,
                        target,
                    },
                );
                snap
            }
            _ => {
                if let Some(first) = self.manifest.first_link(st.dev, st.ino, st.nlink, e.rel) {
                    let snap = Snap::Link { key, first };
                    let Snap::Link { first, .. } = &snap else {
                        unreachable!()
                    };
                    if changed(self.base, e.rel, &snap) {
                        self.head(wire::T_HARDLINK, e.rel);
                        self.w.raw.bytes32(first);
                    }
                    self.manifest.add(e.rel, &Item::HardLink { first });
                    snap
                } else {
                    let unchanged = match self.base.and_then(|b| b.get(e.rel)) {
                        Some(Snap::File { key: k, digest }) if *k == key => Some(*digest),
                        _ => None,
                    };
                    let snap = match unchanged {
                        Some(digest) => Snap::File { key, digest },
                        None => match self.send_file(e, uid, gid)? {
                            Some(snap) => snap,
                            None => return Ok(()),
                        },
                    };
                    let Snap::File { digest, .. } = &snap else {
                        unreachable!()
                    };
                    self.manifest.add(
                        e.rel,
                        &Item::File {
                            perm: st.perm(),
                            uid,
                            gid,
                            size: st.size,
                            mtime: st.mtime,
                            digest: *digest,
                        },
                    );
                    snap
                }
            }
        };
        self.now.insert(e.rel.to_vec(), snap);
        self.w.maybe_flush()
    }

    fn skip(&mut self, rel: &[u8], _why: SkipReason) {
        self.manifest.skip(rel);
    }
}

/// What a pass produced: the tree as sent (the next baseline) and its manifest.
pub struct Sent {
    pub entries: BTreeMap<Vec<u8>, Snap>,
    pub manifest: ManifestSummary,
}

/// Writes one pass of the volume `name` in `parent` into frames handed to `out`.
#[allow(clippy::too_many_arguments)]
pub fn send(
    parent: BorrowedFd<'_>,
    name: &CStr,
    begin: &wire::Begin,
    base: Option<&Baseline>,
    maps: (&IdMap, &IdMap),
    compression: Compression,
    progress: &Outgoing,
    out: impl FnMut(Vec<u8>) -> Result<(), TransferError>,
) -> Result<Sent, TransferError> {
    let mut s = Sender {
        w: FrameWriter::new(compression, out)?,
        base: base.map(|b| &b.entries),
        now: BTreeMap::new(),
        manifest: ManifestBuilder::default(),
        uid_map: maps.0,
        gid_map: maps.1,
        progress,
        buf: Vec::new(),
        entries: 0,
        data_bytes: 0,
    };
    wire::put_begin(&mut s.w.raw, begin);
    let cancelled = || progress.cancel.load(Ordering::Relaxed);
    walk::walk(parent, name, &cancelled, &mut s)?;
    // What is gone since the last pass: the topmost gone path of each gone subtree.
    let mut deleted = 0u64;
    if let Some(base) = s.base {
        let mut gone_dir: Option<&[u8]> = None;
        for (path, _) in base.iter() {
            if path.is_empty() || s.now.contains_key(path) {
                continue;
            }
            if let Some(d) = gone_dir
                && path.starts_with(d)
                && path.get(d.len()) == Some(&b'/')
            {
                continue;
            }
            s.w.raw.u8(wire::T_DELETE);
            s.w.raw.bytes32(path);
            deleted += 1;
            gone_dir = Some(path);
            s.w.maybe_flush()?;
        }
    }
    progress.deleted.store(deleted, Ordering::Relaxed);
    s.w.raw.u8(wire::T_END);
    s.w.raw.u64(s.entries);
    s.w.raw.u64(s.data_bytes);
    s.w.raw.u64(deleted);
    s.w.flush()?;
    progress.raw_bytes.store(s.w.raw_bytes, Ordering::Relaxed);
    progress.wire_bytes.store(s.w.wire_bytes, Ordering::Relaxed);
    Ok(Sent {
        entries: s.now,
        manifest: s.manifest.finish(),
    })
}
