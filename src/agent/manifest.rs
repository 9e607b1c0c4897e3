//! Manifests: a BLAKE3 digest over everything that makes two copies of a volume the same.
//!
//! Entries are taken depth first, each directory's entries in byte order of their names (the
//! order of [`crate::agent::transfer::walk`]). Each entry adds to the digest its path (relative
//! to the volume, `/`-separated bytes), its type and, by type:
//!
//! - directory: permission bits, container uid and gid;
//! - regular file: permission bits, container uid and gid, size, mtime (s, ns), and the file's
//!   own digest ([`FileHasher`]);
//! - symbolic link: container uid and gid, mtime, target bytes;
//! - a further link of a file already seen: the path of its first link.
//!
//! Permission bits never include setuid/setgid (a transfer never copies them). Ids are
//! container-relative (through the host's remap), or "unmapped". FIFOs, sockets, devices and
//! mount points are left out and counted as skipped. Directory mtimes are left out: renaming a
//! directory into place may change them.

use std::{collections::HashMap, num::NonZeroU64, os::fd::BorrowedFd};

use rustix::{
    fs::{Advice, SeekFrom},
    io::Errno,
};

use super::api::ManifestSummary;

/// Files are hashed and sent in blocks of this size; blocks of zeros are skipped (holes).
pub const BLOCK: usize = 64 * 1024;
/// Largest read at once.
pub const READ_CHUNK: usize = 4 * BLOCK;
/// How many skipped paths a summary lists.
pub const SHOWN_SKIPPED: usize = 100;
/// Bits a transfer never copies: setuid and setgid.
pub const SETID_BITS: u32 = 0o6000;

/// The digest of a file's contents, whatever its holes: BLAKE3 over its size and, for every
/// [`BLOCK`] that is not all zeros, the block's index and bytes. Equal contents give equal
/// digests whether the zeros are holes or written, and holes are never read.
pub struct FileHasher {
    h: blake3::Hasher,
    size: u64,
    /// Offset the next fed bytes may start at (no block is fed twice).
    next: u64,
}

/// A block fed out of order, misaligned or past the file's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadBlock;

impl FileHasher {
    pub fn new(size: u64) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"berth-file-v1\0");
        h.update(&size.to_le_bytes());
        Self { h, size, next: 0 }
    }

    /// Feeds `data` found at `offset` (a multiple of [`BLOCK`], not before earlier data; whole
    /// blocks, except the file's last). Returns how many bytes were not zeros.
    pub fn feed(&mut self, offset: u64, data: &[u8]) -> Result<u64, BadBlock> {
        let end = offset.checked_add(data.len() as u64).ok_or(BadBlock)?;
        if !offset.is_multiple_of(BLOCK as u64) || offset < self.next || end > self.size {
            return Err(BadBlock);
        }
        if !data.len().is_multiple_of(BLOCK) && end != self.size {
            return Err(BadBlock);
        }
        let mut nonzero = 0;
        for (i, block) in data.chunks(BLOCK).enumerate() {
            if is_zero(block) {
                continue;
            }
            let index = offset / BLOCK as u64 + i as u64;
            self.h.update(&index.to_le_bytes());
            self.h.update(block);
            nonzero += block.len() as u64;
        }
        self.next = end;
        Ok(nonzero)
    }

    pub fn finish(&self) -> [u8; 32] {
        *self.h.finalize().as_bytes()
    }
}

static ZEROS: [u8; BLOCK] = [0; BLOCK];

/// True when every byte is zero. A comparison with a block of zeros (`memcmp`): it stops at the
/// first byte that is not, which for data is the first one.
pub fn is_zero(block: &[u8]) -> bool {
    match ZEROS.get(..block.len()) {
        Some(zeros) => block == zeros,
        None => block.chunks(BLOCK).all(is_zero),
    }
}

/// Reads the data of a regular file of `size` bytes in [`BLOCK`]-aligned pieces, skipping holes
/// (`SEEK_DATA`/`SEEK_HOLE`; not looked for when `allocated` bytes cover the size, as in most
/// files), and calls `f(offset, bytes)` for each. Stops early when the file
/// is shorter than `size` (it shrank). With `drop_cache`, cached pages are dropped first, so the
/// bytes come from the disk (after a sync), not from what was just written.
pub fn read_data<E: From<Errno>>(
    fd: BorrowedFd<'_>,
    size: u64,
    allocated: u64,
    drop_cache: bool,
    buf: &mut Vec<u8>,
    mut f: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<(), E> {
    if drop_cache {
        let _ = rustix::fs::fadvise(fd, 0, None::<NonZeroU64>, Advice::DontNeed);
    }
    buf.resize(READ_CHUNK, 0);
    let block = BLOCK as u64;
    let mut pos = 0u64;
    let dense = allocated >= size;
    while pos < size {
        let data = match dense {
            true => pos,
            false => match rustix::fs::seek(fd, SeekFrom::Data(pos)) {
                Ok(d) => d,
                Err(Errno::NXIO) => return Ok(()), // only a hole is left
                Err(e) => return Err(e.into()),
            },
        };
        if data >= size {
            return Ok(());
        }
        let hole = match dense {
            true => size,
            false => rustix::fs::seek(fd, SeekFrom::Hole(data))?.min(size),
        };
        let mut at = data / block * block;
        let end = hole.div_ceil(block).saturating_mul(block).min(size);
        while at < end {
            let want = ((end - at) as usize).min(READ_CHUNK);
            let n = read_full(fd, &mut buf[..want], at)?;
            if n == 0 {
                return Ok(());
            }
            // Whole blocks only, unless this is the end of the file.
            let whole = if at + n as u64 >= size {
                n
            } else {
                n / BLOCK * BLOCK
            };
            if whole == 0 {
                return Ok(());
            }
            f(at, &buf[..whole])?;
            at += whole as u64;
            if whole < want {
                return Ok(()); // the file shrank
            }
        }
        pos = end.max(at);
    }
    Ok(())
}

fn read_full(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(fd, &mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// One entry of a manifest.
pub enum Item<'a> {
    Dir {
        perm: u32,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    File {
        perm: u32,
        uid: Option<u32>,
        gid: Option<u32>,
        size: u64,
        mtime: (i64, u32),
        digest: [u8; 32],
    },
    Symlink {
        uid: Option<u32>,
        gid: Option<u32>,
        mtime: (i64, u32),
        target: &'a [u8],
    },
    HardLink {
        first: &'a [u8],
    },
}

/// Builds a manifest from entries given in walk order.
pub struct ManifestBuilder {
    h: blake3::Hasher,
    sum: ManifestSummary,
    /// First link of each hard-linked inode seen.
    firsts: HashMap<(u64, u64), Vec<u8>>,
}

impl Default for ManifestBuilder {
    fn default() -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"berth-manifest-v1\0");
        Self {
            h,
            sum: ManifestSummary::default(),
            firsts: HashMap::new(),
        }
    }
}

impl ManifestBuilder {
    /// For a regular file with `nlink > 1`: the path of the inode's first link when one was
    /// seen already (this entry is then a [`Item::HardLink`]), else records this one as first.
    pub fn first_link(&mut self, dev: u64, ino: u64, nlink: u64, rel: &[u8]) -> Option<Vec<u8>> {
        if nlink < 2 {
            return None;
        }
        if let Some(first) = self.firsts.get(&(dev, ino)) {
            return Some(first.clone());
        }
        self.firsts.insert((dev, ino), rel.to_vec());
        None
    }

    pub fn add(&mut self, rel: &[u8], item: &Item<'_>) {
        let h = &mut self.h;
        put_bytes(h, rel);
        self.sum.entries += 1;
        match item {
            Item::Dir { perm, uid, gid } => {
                h.update(b"d");
                h.update(&(perm & !SETID_BITS).to_le_bytes());
                put_id(h, *uid);
                put_id(h, *gid);
                self.sum.directories += 1;
            }
            Item::File {
                perm,
                uid,
                gid,
                size,
                mtime,
                digest,
            } => {
                h.update(b"f");
                h.update(&(perm & !SETID_BITS).to_le_bytes());
                put_id(h, *uid);
                put_id(h, *gid);
                h.update(&size.to_le_bytes());
                h.update(&mtime.0.to_le_bytes());
                h.update(&mtime.1.to_le_bytes());
                h.update(digest);
                self.sum.files += 1;
                self.sum.bytes = self.sum.bytes.saturating_add(*size);
            }
            Item::Symlink {
                uid,
                gid,
                mtime,
                target,
            } => {
                h.update(b"l");
                put_id(h, *uid);
                put_id(h, *gid);
                h.update(&mtime.0.to_le_bytes());
                h.update(&mtime.1.to_le_bytes());
                put_bytes(h, target);
                self.sum.symlinks += 1;
            }
            Item::HardLink { first } => {
                h.update(b"h");
                put_bytes(h, first);
                self.sum.hard_links += 1;
            }
        }
    }

    /// An entry left out (special file or mount point).
    pub fn skip(&mut self, rel: &[u8]) {
        self.sum.skipped += 1;
        if self.sum.skipped_paths.len() < SHOWN_SKIPPED {
            self.sum.skipped_paths.push(show(rel));
        }
    }

    pub fn finish(mut self) -> ManifestSummary {
        self.sum.digest = self.h.finalize().to_hex().to_string();
        self.sum
    }
}

fn put_bytes(h: &mut blake3::Hasher, b: &[u8]) {
    h.update(&(b.len() as u64).to_le_bytes());
    h.update(b);
}

fn put_id(h: &mut blake3::Hasher, id: Option<u32>) {
    match id {
        Some(id) => {
            h.update(&[1]);
            h.update(&id.to_le_bytes());
        }
        None => {
            h.update(&[0]);
        }
    }
}

/// A relative path for messages: `/`-prefixed, non-UTF-8 bytes and control characters escaped.
pub fn show(rel: &[u8]) -> String {
    let mut s = String::from("/");
    for chunk in rel.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                s.extend(c.escape_default());
            } else {
                s.push(c);
            }
        }
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_digests_ignore_where_the_zeros_are_and_check_the_feeding() {
        let size = (3 * BLOCK + 10) as u64;
        let mut data = vec![0u8; size as usize];
        data[BLOCK + 5] = 7;
        data[3 * BLOCK + 9] = 1;
        let mut all = FileHasher::new(size);
        all.feed(0, &data).unwrap();
        let mut sparse = FileHasher::new(size);
        sparse.feed(BLOCK as u64, &data[BLOCK..2 * BLOCK]).unwrap();
        sparse.feed(3 * BLOCK as u64, &data[3 * BLOCK..]).unwrap();
        assert_eq!(all.finish(), sparse.finish());
        let mut other = FileHasher::new(size + 1);
        other.feed(BLOCK as u64, &data[BLOCK..2 * BLOCK]).unwrap();
        assert_ne!(all.finish(), other.finish(), "the size counts");
        let mut h = FileHasher::new(size);
        assert_eq!(h.feed(1, &data[..BLOCK]), Err(BadBlock), "misaligned");
        assert_eq!(
            h.feed(0, &data[..10]),
            Err(BadBlock),
            "a partial block inside the file"
        );
        h.feed(BLOCK as u64, &data[BLOCK..2 * BLOCK]).unwrap();
        assert_eq!(h.feed(0, &data[..BLOCK]), Err(BadBlock), "backwards");
        assert_eq!(
            h.feed(3 * BLOCK as u64, &data[..BLOCK]),
            Err(BadBlock),
            "past the end"
        );
        assert!(is_zero(&[0; 13]) && !is_zero(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 1]));
    }

    #[test]
    fn shown_paths_escape_what_a_log_or_status_should_not_carry() {
        assert_eq!(show(b"a/b"), "/a/b");
        assert_eq!(show(b"new\nline/\xff"), "/new\\nline/\\xff");
    }
}
