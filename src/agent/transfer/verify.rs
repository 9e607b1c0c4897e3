//! The manifest of a tree on disk ([`crate::agent::manifest`]), read through fds.

use std::{
    collections::{HashMap, VecDeque},
    ffi::CStr,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::{
        Mutex,
        mpsc::{self, Receiver, Sender, SyncSender},
    },
};

use rustix::fs::FileType;

use super::{
    TransferError,
    walk::{self, Entry, SkipReason, Stat, Visit},
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
    fd_digest(
        fd.as_fd(),
        e.rel,
        e.st.size,
        e.st.blocks.saturating_mul(512),
        drop_cache,
        buf,
    )
}

/// The digest ([`FileHasher`]) of an open regular file of `size` bytes.
fn fd_digest(
    fd: BorrowedFd<'_>,
    rel: &[u8],
    size: u64,
    allocated: u64,
    drop_cache: bool,
    buf: &mut Vec<u8>,
) -> Result<[u8; 32], TransferError> {
    let mut h = FileHasher::new(size);
    read_data::<TransferError>(fd, size, allocated, drop_cache, buf, |off, data| {
        h.feed(off, data)
            .map(|_| ())
            .map_err(|_| TransferError::Internal("misaligned read".into()))
    })
    .map_err(|err| match err {
        TransferError::Io { errno, .. } => TransferError::io("read", &show(rel), errno),
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

/// Files go to readers in batches of this many (or of [`BATCH_BYTES`]): one hand-over per
/// small file cost more than reading it. At most [`IN_FLIGHT`] batches wait for a reader, so
/// a few hundred names are open at once. Most entries held back waiting for a digest:
/// [`HELD_BACK`].
const BATCH: usize = 32;
const BATCH_BYTES: u64 = 1 << 20;
const IN_FLIGHT: usize = 4;
const HELD_BACK: usize = 4_096;

/// A file handed to a reader: its place in the walk, its name opened and what the walk listed.
struct Job {
    slot: u64,
    /// Opened `O_PATH`: not yet checked, no data readable through it.
    path: OwnedFd,
    rel: Vec<u8>,
    st: Stat,
}

/// A reader's answer for one file.
type Digest = (u64, Result<[u8; 32], TransferError>);

/// An entry walked, waiting until every file before it (and itself) has its digest, so that
/// the manifest is built in walk order.
enum Held {
    Dir {
        rel: Vec<u8>,
        perm: u32,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    File {
        rel: Vec<u8>,
        perm: u32,
        uid: Option<u32>,
        gid: Option<u32>,
        size: u64,
        mtime: (i64, u32),
        slot: u64,
    },
    Symlink {
        rel: Vec<u8>,
        uid: Option<u32>,
        gid: Option<u32>,
        mtime: (i64, u32),
        target: Vec<u8>,
    },
    HardLink {
        rel: Vec<u8>,
        first: Vec<u8>,
    },
    Skip {
        rel: Vec<u8>,
    },
}

/// Walks in one thread and reads files in `readers` others: the walk opens each file (checking
/// it is the inode listed), readers hash it, and entries join the manifest in walk order. The
/// commit's re-read of a copy is the app's downtime, and one core hashing while the others idle
/// made it the slowest part of a move.
struct Manifest<'a> {
    b: ManifestBuilder,
    uid_map: &'a IdMap,
    gid_map: &'a IdMap,
    drop_cache: bool,
    /// Files are read here when there are no readers.
    buf: Vec<u8>,
    jobs: Option<SyncSender<Vec<Job>>>,
    /// Files not yet handed over, and their bytes.
    batch: Vec<Job>,
    batch_bytes: u64,
    digests: Receiver<Vec<Digest>>,
    done: HashMap<u64, [u8; 32]>,
    held: VecDeque<Held>,
    next_slot: u64,
}

impl Manifest<'_> {
    /// Adds to the manifest the held entries whose digests are known, waiting for readers
    /// until at most `limit` entries are held.
    fn drain(&mut self, limit: usize) -> Result<(), TransferError> {
        loop {
            while let Ok(digests) = self.digests.try_recv() {
                self.take(digests)?;
            }
            while let Some(front) = self.held.front() {
                if let Held::File { slot, .. } = front
                    && !self.done.contains_key(slot)
                {
                    break;
                }
                let Some(h) = self.held.pop_front() else { break };
                self.add(h);
            }
            if self.held.len() <= limit {
                return Ok(());
            }
            // What is waited for may still be in the batch.
            self.hand_over()?;
            match self.digests.recv() {
                Ok(digests) => self.take(digests)?,
                Err(_) => return Err(TransferError::Internal("a manifest reader stopped".into())),
            }
        }
    }

    fn take(&mut self, digests: Vec<Digest>) -> Result<(), TransferError> {
        for (slot, digest) in digests {
            self.done.insert(slot, digest?);
        }
        Ok(())
    }

    /// Hands the batch to the readers (waits while [`IN_FLIGHT`] batches wait for one).
    fn hand_over(&mut self) -> Result<(), TransferError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        match &self.jobs {
            // Readers only stop early when this side has gone: a closed queue means one died.
            Some(jobs) => jobs
                .send(batch)
                .map_err(|_| TransferError::Internal("the manifest readers stopped".into())),
            None => Err(TransferError::Internal("no manifest readers".into())),
        }
    }

    fn add(&mut self, h: Held) {
        match h {
            Held::Dir { rel, perm, uid, gid } => self.b.add(&rel, &Item::Dir { perm, uid, gid }),
            Held::File {
                rel,
                perm,
                uid,
                gid,
                size,
                mtime,
                slot,
            } => {
                let digest = self.done.remove(&slot).unwrap_or_default();
                self.b.add(
                    &rel,
                    &Item::File {
                        perm,
                        uid,
                        gid,
                        size,
                        mtime,
                        digest,
                    },
                );
            }
            Held::Symlink {
                rel,
                uid,
                gid,
                mtime,
                target,
            } => self.b.add(
                &rel,
                &Item::Symlink {
                    uid,
                    gid,
                    mtime,
                    target: &target,
                },
            ),
            Held::HardLink { rel, first } => self.b.add(&rel, &Item::HardLink { first: &first }),
            Held::Skip { rel } => self.b.skip(&rel),
        }
    }

    fn hold(&mut self, h: Held) -> Result<(), TransferError> {
        self.held.push_back(h);
        self.drain(HELD_BACK)
    }
}

impl Visit for Manifest<'_> {
    fn visit(&mut self, e: &Entry<'_>) -> Result<(), TransferError> {
        let st = &e.st;
        let (uid, gid) = container_ids(self.uid_map, self.gid_map, st.uid, st.gid);
        let rel = e.rel.to_vec();
        match st.file_type() {
            FileType::Directory => self.hold(Held::Dir {
                rel,
                perm: st.perm(),
                uid,
                gid,
            }),
            FileType::Symlink => {
                let target = link_target(e)?;
                self.hold(Held::Symlink {
                    rel,
                    uid,
                    gid,
                    mtime: st.mtime,
                    target,
                })
            }
            _ => {
                if let Some(first) = self.b.first_link(st.dev, st.ino, st.nlink, e.rel) {
                    return self.hold(Held::HardLink { rel, first });
                }
                let slot = self.next_slot;
                self.next_slot += 1;
                let file = Held::File {
                    rel,
                    perm: st.perm(),
                    uid,
                    gid,
                    size: st.size,
                    mtime: st.mtime,
                    slot,
                };
                match &self.jobs {
                    Some(_) => {
                        // The walk only opens the name (`O_PATH`); the reader checks the inode
                        // and reopens it, so that many small files keep every core busy.
                        let path = walk::open_listed_path(e.dir, e.name)
                            .map_err(|err| TransferError::io("open", &show(e.rel), err))?
                            .ok_or_else(|| TransferError::Changed { path: show(e.rel) })?;
                        self.batch_bytes += st.size;
                        self.batch.push(Job {
                            slot,
                            path,
                            rel: e.rel.to_vec(),
                            st: *st,
                        });
                        if self.batch.len() >= BATCH || self.batch_bytes >= BATCH_BYTES {
                            self.hand_over()?;
                        }
                    }
                    None => {
                        let digest = file_digest(e, self.drop_cache, &mut self.buf)?;
                        self.done.insert(slot, digest);
                    }
                }
                self.hold(file)
            }
        }
    }

    fn skip(&mut self, rel: &[u8], _why: SkipReason) {
        self.held.push_back(Held::Skip { rel: rel.to_vec() });
    }
}

/// Reads and hashes the files handed over until the walk ends.
fn reader(jobs: &Mutex<Receiver<Vec<Job>>>, digests: &Sender<Vec<Digest>>, drop_cache: bool) {
    let mut buf = Vec::new();
    loop {
        let batch = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(batch) = batch else { return };
        let done = batch
            .into_iter()
            .map(|job| {
                let digest = match walk::reopen_listed(job.path.as_fd(), &job.st) {
                    Ok(Some(fd)) => fd_digest(
                        fd.as_fd(),
                        &job.rel,
                        job.st.size,
                        job.st.blocks.saturating_mul(512),
                        drop_cache,
                        &mut buf,
                    ),
                    Ok(None) => Err(TransferError::Changed { path: show(&job.rel) }),
                    Err(err) => Err(TransferError::io("open", &show(&job.rel), err)),
                };
                (job.slot, digest)
            })
            .collect();
        if digests.send(done).is_err() {
            return;
        }
    }
}

/// How many threads read files for a manifest besides the walk.
fn readers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(4)
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
    tree_manifest_with(parent, name, uid_map, gid_map, drop_cache, cancelled, readers())
}

/// [`tree_manifest`] with `readers` threads reading files (0: the walk reads them itself).
pub fn tree_manifest_with(
    parent: std::os::fd::BorrowedFd<'_>,
    name: &CStr,
    uid_map: &IdMap,
    gid_map: &IdMap,
    drop_cache: bool,
    cancelled: &dyn Fn() -> bool,
    readers: usize,
) -> Result<ManifestSummary, TransferError> {
    let (digest_tx, digest_rx) = mpsc::channel();
    let (job_tx, job_rx) = mpsc::sync_channel::<Vec<Job>>(IN_FLIGHT);
    let job_rx = Mutex::new(job_rx);
    std::thread::scope(|scope| {
        for _ in 0..readers {
            let digests = digest_tx.clone();
            let jobs = &job_rx;
            scope.spawn(move || reader(jobs, &digests, drop_cache));
        }
        drop(digest_tx);
        let mut m = Manifest {
            b: ManifestBuilder::default(),
            uid_map,
            gid_map,
            drop_cache,
            buf: Vec::new(),
            jobs: (readers > 0).then_some(job_tx),
            batch: Vec::new(),
            batch_bytes: 0,
            digests: digest_rx,
            done: HashMap::new(),
            held: VecDeque::new(),
            next_slot: 0,
        };
        let walked = walk::walk(parent, name, cancelled, &mut m).and_then(|()| m.hand_over());
        // Closing the queue lets the readers finish what they hold and stop.
        m.jobs = None;
        walked?;
        m.drain(0)?;
        Ok(m.b.finish())
    })
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        os::unix::fs::{PermissionsExt, symlink},
    };

    use super::*;

    /// A tree with every kind of entry, several directories and enough files to keep readers
    /// busy (more than [`IN_FLIGHT`] and, in one directory, more than [`HELD_BACK`] entries).
    fn tree(root: &std::path::Path) {
        let data = root.join("data");
        fs::create_dir_all(data.join("a/b")).unwrap();
        fs::create_dir_all(data.join("many")).unwrap();
        for i in 0..5_000 {
            fs::write(
                data.join(format!("many/{i:05}")),
                format!("file {i}\n").repeat(i % 7),
            )
            .unwrap();
        }
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(data.join("a/big"), &big).unwrap();
        let sparse = fs::File::create(data.join("a/sparse")).unwrap();
        sparse.set_len(10 << 20).unwrap();
        fs::hard_link(data.join("a/big"), data.join("a/b/big-again")).unwrap();
        symlink("../big", data.join("a/b/link")).unwrap();
        fs::write(data.join("a/b/secret"), b"x").unwrap();
        fs::set_permissions(data.join("a/b/secret"), fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn manifest(root: &std::path::Path, readers: usize) -> Result<ManifestSummary, TransferError> {
        let dir = rustix::fs::open(
            root,
            rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let map = IdMap::identity();
        tree_manifest_with(dir.as_fd(), c"data", &map, &map, false, &|| false, readers)
    }

    #[test]
    fn readers_in_parallel_give_the_manifest_of_one_reader() {
        let tmp = tempfile::tempdir().unwrap();
        tree(tmp.path());
        let alone = manifest(tmp.path(), 0).unwrap();
        assert_eq!(alone.files, 5_003, "{alone:?}");
        assert_eq!(alone.hard_links, 1);
        assert_eq!(alone.symlinks, 1);
        for readers in [1, 2, 4] {
            let m = manifest(tmp.path(), readers).unwrap();
            assert_eq!(m.digest, alone.digest, "{readers} readers");
            assert_eq!((m.entries, m.bytes), (alone.entries, alone.bytes));
        }
        // And it still sees a change in any file, however late in the walk.
        fs::write(tmp.path().join("data/many/04999"), b"changed").unwrap();
        assert_ne!(manifest(tmp.path(), 2).unwrap().digest, alone.digest);
    }

    #[test]
    fn a_cancelled_manifest_stops_its_readers_and_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        tree(tmp.path());
        let dir = rustix::fs::open(
            tmp.path(),
            rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let map = IdMap::identity();
        // Cancelled half way: the readers stop and the call returns, with no digest.
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let cancel = || calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) > 2_000;
        let out = tree_manifest_with(dir.as_fd(), c"data", &map, &map, false, &cancel, 2);
        assert!(matches!(out, Err(TransferError::Cancelled)), "{out:?}");
    }
}
