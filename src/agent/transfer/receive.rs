//! The target's side: apply a stream to a staging area, treating every byte as hostile.
//!
//! The staging area of a transfer is `<tenant root>/.berth-staging/<id>/` (root-owned, 0700;
//! no volume may lie below `/.berth-staging`, so no container can reach it). The tree is built
//! in its `data` entry; the state (identity, target path, last complete pass) is kept in the
//! `trusted.berth.transfer` attribute of `<id>`, so it survives a restart of the agent.
//!
//! Every name is checked ([`wire::check_path`]); every parent is opened from the staging fd one
//! component at a time with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)`,
//! so a symlink the stream created is never followed (writing "through" it is refused); links
//! are created with `symlinkat`/`linkat` (which never follow), hard links only to files this
//! stream wrote; files with `O_CREAT | O_EXCL | O_NOFOLLOW`; setuid/setgid never set. A record
//! a stream should not hold (devices, FIFOs, sockets, unknown tags, data beyond a file's size,
//! a digest that does not match, counts that do not add up, a truncated stream) refuses the
//! whole stream; what was written stays in the staging area and is never put in place.

use std::{
    collections::HashSet,
    ffi::{CStr, CString},
    io::Read,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::atomic::Ordering,
};

use rustix::{
    fs::{AtFlags, Dir, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid},
    io::Errno,
};

use super::{
    Incoming, TransferError,
    walk::{fstat, open_dir, stat_at},
    wire::{self, Begin, FrameReader, MAX_CHUNK, MAX_LINK},
};
use crate::agent::{
    api::{PassMode, ReceiveResult},
    manifest::{BLOCK, FileHasher, SETID_BITS, is_zero, show},
    remap::IdMap,
    safe_fs::open_beneath,
};

/// The staging area's directory below the tenant root.
pub const STAGING_DIR: &str = ".berth-staging";
/// The tree's name inside a transfer's staging directory.
pub const DATA: &CStr = c"data";
/// The attribute holding a staging area's state.
pub const STATE_XATTR: &str = "trusted.berth.transfer";

/// A staging area's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagingState {
    pub identity: String,
    pub host_path: String,
    pub last_complete: Option<u32>,
}

pub fn read_state(dir: BorrowedFd<'_>) -> Result<Option<StagingState>, Errno> {
    let mut buf = [0u8; 4096];
    let n = match rustix::fs::fgetxattr(dir, STATE_XATTR, &mut buf[..]) {
        Ok(n) => n,
        Err(Errno::NODATA) => return Ok(None),
        Err(e) => return Err(e),
    };
    let text = String::from_utf8_lossy(&buf[..n]);
    let mut lines = text.split('\n');
    let (Some(identity), Some(host_path), Some(pass)) = (lines.next(), lines.next(), lines.next()) else {
        return Ok(None);
    };
    Ok(Some(StagingState {
        identity: identity.to_owned(),
        host_path: host_path.to_owned(),
        last_complete: pass.parse().ok(),
    }))
}

pub fn write_state(dir: BorrowedFd<'_>, s: &StagingState) -> Result<(), Errno> {
    let pass = s.last_complete.map_or("-".to_owned(), |p| p.to_string());
    let v = format!("{}\n{}\n{pass}", s.identity, s.host_path);
    rustix::fs::fsetxattr(dir, STATE_XATTR, v.as_bytes(), rustix::fs::XattrFlags::empty())
}

/// Removes `name` in `dir` and everything below it (a staging tree: only the agent writes it).
pub fn remove_all(dir: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
    let st = match stat_at(dir, name) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if st.file_type() != FileType::Directory {
        return rustix::fs::unlinkat(dir, name, AtFlags::empty());
    }
    let fd = open_dir(dir, name)?;
    let mut names: Vec<CString> = Vec::new();
    {
        let mut d = Dir::read_from(&fd)?;
        while let Some(e) = d.read() {
            let e = e?;
            if !matches!(e.file_name().to_bytes(), b"." | b"..") {
                names.push(e.file_name().to_owned());
            }
        }
    }
    for n in names {
        remove_all(fd.as_fd(), &n)?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

/// Applies records to `<id>/data`.
struct Apply<'a, R: Read> {
    r: FrameReader<R>,
    /// The transfer's staging directory (holding `data`).
    top: BorrowedFd<'a>,
    /// Open directories from `data` down: (name, fd); `[0]` is `data` itself.
    cursor: Vec<(Vec<u8>, OwnedFd)>,
    maps: (&'a IdMap, &'a IdMap),
    progress: &'a Incoming,
    file_volume: bool,
    /// A full pass into an emptied staging area: nothing is there to replace.
    fresh: bool,
    /// Files this stream wrote that have further links.
    linked: HashSet<Vec<u8>>,
    dir_times: Vec<(Vec<u8>, (i64, u32))>,
    /// The buffer file data is read into (allocated once).
    buf: Vec<u8>,
    /// The process umask, when it could be read.
    umask: Option<u32>,
    out: ReceiveResult,
    entries: u64,
}

fn io<'a>(op: &'static str, rel: &'a [u8]) -> impl FnOnce(Errno) -> TransferError + 'a {
    move |e| TransferError::io(op, &show(rel), e)
}

fn split(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|b| *b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[], rel),
    }
}

fn cname(name: &[u8]) -> Result<CString, TransferError> {
    CString::new(name).map_err(|_| TransferError::stream("a name holds a NUL byte"))
}

impl<R: Read> Apply<'_, R> {
    fn host_ids(&mut self, uid: Option<u32>, gid: Option<u32>) -> (u32, u32) {
        let mut map = |id: Option<u32>, m: &IdMap| match id {
            None => 0,
            Some(id) => m.to_host(id).unwrap_or_else(|| {
                self.out.unmapped_owners += 1;
                0
            }),
        };
        let u = map(uid, self.maps.0);
        let g = map(gid, self.maps.1);
        (u, g)
    }

    /// The directory holding `rel` (not the volume itself), opened along the cursor.
    fn parent(&mut self, rel: &[u8]) -> Result<(BorrowedFd<'_>, CString), TransferError> {
        if self.file_volume {
            return Err(TransferError::stream(
                "a file volume's stream holds more than the file",
            ));
        }
        if self.cursor.is_empty() {
            return Err(TransferError::stream(
                "an entry comes before the volume's own directory",
            ));
        }
        let (dir, name) = split(rel);
        let comps: Vec<&[u8]> = if dir.is_empty() {
            Vec::new()
        } else {
            dir.split(|b| *b == b'/').collect()
        };
        let mut keep = 1;
        while keep < self.cursor.len() && keep - 1 < comps.len() && self.cursor[keep].0 == comps[keep - 1] {
            keep += 1;
        }
        self.cursor.truncate(keep);
        for c in &comps[keep - 1..] {
            let Some((_, fd)) = self.cursor.last() else {
                return Err(TransferError::Internal("empty cursor".into()));
            };
            let n = cname(c)?;
            let child = match open_dir(fd.as_fd(), &n) {
                Ok(child) => child,
                Err(Errno::LOOP) => {
                    return Err(TransferError::stream(&format!(
                        "{} goes through a symbolic link",
                        show(rel)
                    )));
                }
                Err(Errno::NOENT) => {
                    return Err(TransferError::stream(&format!(
                        "{} comes before its directory",
                        show(rel)
                    )));
                }
                Err(Errno::NOTDIR) => {
                    return Err(TransferError::stream(&format!(
                        "{} goes through something that is not a directory",
                        show(rel)
                    )));
                }
                Err(e) => return Err(io("open", rel)(e)),
            };
            self.cursor.push((c.to_vec(), child));
        }
        let Some((_, fd)) = self.cursor.last() else {
            return Err(TransferError::Internal("empty cursor".into()));
        };
        Ok((fd.as_fd(), cname(name)?))
    }

    fn run(&mut self, begin: &Begin) -> Result<(), TransferError> {
        loop {
            let tag = self.r.u8()?;
            match tag {
                wire::T_DIR => self.dir()?,
                wire::T_FILE => self.file()?,
                wire::T_SYMLINK => self.symlink()?,
                wire::T_HARDLINK => self.hardlink()?,
                wire::T_DELETE => self.delete(begin)?,
                wire::T_END => return self.end(),
                t if wire::T_SPECIALS.contains(&t) => {
                    return Err(TransferError::stream(
                        "it holds a device node, FIFO or socket; berth never copies those",
                    ));
                }
                wire::T_CHUNK | wire::T_FILE_END => {
                    return Err(TransferError::stream("file data comes outside a file"));
                }
                _ => {
                    return Err(TransferError::stream(&format!(
                        "it holds an unknown record ({tag})"
                    )));
                }
            }
            self.progress.entries.store(self.entries, Ordering::Relaxed);
        }
    }

    fn counted(&mut self) -> Result<(), TransferError> {
        self.entries += 1;
        if self.entries > 100_000_000 {
            return Err(TransferError::stream("it holds more entries than berth accepts"));
        }
        Ok(())
    }

    fn dir(&mut self) -> Result<(), TransferError> {
        let rel = self.r.path()?;
        let perm = u32::from(self.r.u16()?);
        let (uid, gid) = (self.r.id()?, self.r.id()?);
        let mtime = self.r.time()?;
        self.counted()?;
        let (uid, gid) = self.host_ids(uid, gid);
        let fd = if rel.is_empty() {
            if self.file_volume {
                return Err(TransferError::stream("a file volume's stream holds a directory"));
            }
            let fd = make_dir(self.top, DATA, &rel)?;
            self.cursor.clear();
            self.cursor.push((Vec::new(), fd));
            self.cursor[0].1.as_fd()
        } else {
            let (dir, name) = self.parent(&rel)?;
            let fd = make_dir(dir, &name, &rel)?;
            let (_, n) = split(&rel);
            self.cursor.push((n.to_vec(), fd));
            let Some((_, fd)) = self.cursor.last() else {
                return Err(TransferError::Internal("empty cursor".into()));
            };
            fd.as_fd()
        };
        rustix::fs::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(io("chown", &rel))?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(perm & 0o1777)).map_err(io("chmod", &rel))?;
        if perm & SETID_BITS != 0 {
            self.out.setid_stripped += 1;
        }
        self.dir_times.push((rel, mtime));
        Ok(())
    }

    fn file(&mut self) -> Result<(), TransferError> {
        let rel = self.r.path()?;
        let perm = u32::from(self.r.u16()?);
        let (uid, gid) = (self.r.id()?, self.r.id()?);
        let mtime = self.r.time()?;
        let size = self.r.u64()?;
        let linked = self.r.u8()? != 0;
        self.counted()?;
        let (uid, gid) = self.host_ids(uid, gid);
        // Created with its mode when the umask leaves it whole (saves a chmod per file).
        let exact = matches!(self.umask, Some(u) if perm & 0o777 & u == 0);
        let mode = if exact { perm & 0o777 } else { 0o600 };
        let fd = if rel.is_empty() {
            if !self.file_volume {
                return Err(TransferError::stream(
                    "a directory volume's stream starts with a file",
                ));
            }
            remove_all(self.top, DATA).map_err(io("replace", &rel))?;
            create_file(self.top, DATA, &rel, 0o600)?
        } else {
            let fresh = self.fresh;
            let (dir, name) = self.parent(&rel)?;
            if !fresh {
                remove_all(dir, &name).map_err(io("replace", &rel))?;
            }
            create_file(dir, &name, &rel, mode)?
        };
        let mut h = FileHasher::new(size);
        let mut data = std::mem::take(&mut self.buf);
        data.resize(MAX_CHUNK, 0);
        let mut written_end = 0u64;
        loop {
            match self.r.u8()? {
                wire::T_CHUNK => {}
                wire::T_FILE_END => break,
                _ => return Err(TransferError::stream("a file's data is cut by another record")),
            }
            let offset = self.r.u64()?;
            let len = self.r.u32()? as usize;
            if len == 0 || len > MAX_CHUNK {
                return Err(TransferError::stream("a data chunk is empty or too large"));
            }
            self.r.fill(&mut data[..len])?;
            let chunk = &data[..len];
            h.feed(offset, chunk).map_err(|_| {
                TransferError::stream(&format!(
                    "{} has data past its size, out of order or misaligned",
                    show(&rel)
                ))
            })?;
            for (i, block) in chunk.chunks(BLOCK).enumerate() {
                if !is_zero(block) {
                    let at = offset + (i * BLOCK) as u64;
                    write_all(fd.as_fd(), block, at).map_err(io("write", &rel))?;
                    written_end = at + block.len() as u64;
                }
            }
            self.out.data_bytes += len as u64;
            self.progress.data_bytes.fetch_add(len as u64, Ordering::Relaxed);
        }
        self.buf = data;
        let digest = self.r.digest()?;
        if digest != h.finish() {
            return Err(TransferError::stream(&format!(
                "the contents of {} do not match their digest",
                show(&rel)
            )));
        }
        if written_end != size {
            // Holes at the end (or a file of zeros): the size makes them.
            rustix::fs::ftruncate(&fd, size).map_err(io("set the size of", &rel))?;
        }
        rustix::fs::fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(io("chown", &rel))?;
        if rel.is_empty() || !exact {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(perm & 0o777)).map_err(io("chmod", &rel))?;
        }
        if perm & SETID_BITS != 0 {
            self.out.setid_stripped += 1;
        }
        rustix::fs::futimens(&fd, &times(mtime)).map_err(io("set the mtime of", &rel))?;
        if linked {
            self.linked.insert(rel);
        }
        Ok(())
    }

    fn symlink(&mut self) -> Result<(), TransferError> {
        let rel = self.r.path()?;
        let target = self.r.bytes16(MAX_LINK, "a symbolic link's target")?;
        let (uid, gid) = (self.r.id()?, self.r.id()?);
        let mtime = self.r.time()?;
        self.counted()?;
        if rel.is_empty() {
            return Err(TransferError::stream(
                "the volume itself cannot be a symbolic link",
            ));
        }
        if target.is_empty() || target.contains(&0) {
            return Err(TransferError::stream(
                "a symbolic link's target is empty or holds NUL",
            ));
        }
        let (uid, gid) = self.host_ids(uid, gid);
        let fresh = self.fresh;
        let (dir, name) = self.parent(&rel)?;
        if !fresh {
            remove_all(dir, &name).map_err(io("replace", &rel))?;
        }
        // The target is only text: it is stored, never resolved.
        let target = cname(&target)?;
        rustix::fs::symlinkat(target.as_c_str(), dir, &name).map_err(|e| match e {
            Errno::EXIST => TransferError::stream(&format!("{} comes twice", show(&rel))),
            e => io("create link", &rel)(e),
        })?;
        rustix::fs::chownat(
            dir,
            &name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io("chown", &rel))?;
        rustix::fs::utimensat(dir, &name, &times(mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io("set the mtime of", &rel))?;
        Ok(())
    }

    fn hardlink(&mut self) -> Result<(), TransferError> {
        let rel = self.r.path()?;
        let first = self.r.path()?;
        self.counted()?;
        if rel.is_empty() || !self.linked.contains(&first) {
            return Err(TransferError::stream(&format!(
                "{} is a hard link to {}, which is not a file this stream sent",
                show(&rel),
                show(&first)
            )));
        }
        // The first link's directory, opened from `data` (not along the cursor).
        let (fdir, fname) = split(&first);
        let mut fd = match self.cursor.first() {
            Some((_, fd)) => rustix::io::fcntl_dupfd_cloexec(fd, 0).map_err(io("open", &first))?,
            None => return Err(TransferError::Internal("no volume directory".into())),
        };
        if !fdir.is_empty() {
            for c in fdir.split(|b| *b == b'/') {
                fd = open_dir(fd.as_fd(), &cname(c)?).map_err(io("open", &first))?;
            }
        }
        let fname = cname(fname)?;
        let st = stat_at(fd.as_fd(), &fname).map_err(io("stat", &first))?;
        if st.file_type() != FileType::RegularFile {
            return Err(TransferError::stream(
                "a hard link points at something that is not a file",
            ));
        }
        let (dir, name) = self.parent(&rel)?;
        remove_all(dir, &name).map_err(io("replace", &rel))?;
        rustix::fs::linkat(fd.as_fd(), &fname, dir, &name, AtFlags::empty()).map_err(io("link", &rel))?;
        Ok(())
    }

    fn delete(&mut self, begin: &Begin) -> Result<(), TransferError> {
        let rel = self.r.path()?;
        if rel.is_empty() || !begin.delta {
            return Err(TransferError::stream(
                "a deletion of the volume itself, or in a full pass",
            ));
        }
        self.out.deleted += 1;
        // Anything missing on the way means it is gone already.
        let Some((_, root)) = self.cursor.first() else {
            return Ok(());
        };
        let (dir, name) = split(&rel);
        let mut fd = rustix::io::fcntl_dupfd_cloexec(root, 0).map_err(io("open", &rel))?;
        if !dir.is_empty() {
            for c in dir.split(|b| *b == b'/') {
                fd = match open_dir(fd.as_fd(), &cname(c)?) {
                    Ok(fd) => fd,
                    Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => return Ok(()),
                    Err(e) => return Err(io("open", &rel)(e)),
                };
            }
        }
        // The cursor may hold the deleted directory: it is reopened when needed.
        self.cursor.truncate(1);
        remove_all(fd.as_fd(), &cname(name)?).map_err(io("delete", &rel))
    }

    fn end(&mut self) -> Result<(), TransferError> {
        let entries = self.r.u64()?;
        let data = self.r.u64()?;
        let deleted = self.r.u64()?;
        if entries != self.entries || data != self.out.data_bytes || deleted != self.out.deleted {
            return Err(TransferError::stream(&format!(
                "its end record claims {entries} entries, {data} bytes and {deleted} deletions, but it held {}, {} and {}",
                self.entries, self.out.data_bytes, self.out.deleted
            )));
        }
        if !self.r.at_end()? {
            return Err(TransferError::stream("data follows its end record"));
        }
        Ok(())
    }
}

/// The umask, from `/proc/self/status` (reading it with umask(2) would change it meanwhile).
fn umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let v = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(v.trim(), 8).ok()
}

fn times(t: (i64, u32)) -> Timestamps {
    let ts = Timespec {
        tv_sec: t.0,
        tv_nsec: i64::from(t.1) as _,
    };
    Timestamps {
        last_access: ts,
        last_modification: ts,
    }
}

fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8], mut offset: u64) -> Result<(), Errno> {
    while !buf.is_empty() {
        match rustix::io::pwrite(fd, buf, offset) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Creates (or keeps) the directory `name` in `dir` and opens it; anything else there goes.
fn make_dir(dir: BorrowedFd<'_>, name: &CStr, rel: &[u8]) -> Result<OwnedFd, TransferError> {
    match stat_at(dir, name) {
        Ok(st) if st.file_type() == FileType::Directory => {}
        Ok(_) => {
            remove_all(dir, name).map_err(io("replace", rel))?;
            rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)).map_err(io("mkdir", rel))?;
        }
        Err(Errno::NOENT) => {
            rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)).map_err(io("mkdir", rel))?;
        }
        Err(e) => return Err(io("stat", rel)(e)),
    }
    let fd = open_dir(dir, name).map_err(io("open", rel))?;
    if fstat(fd.as_fd()).map_err(io("stat", rel))?.file_type() != FileType::Directory {
        return Err(TransferError::Changed { path: show(rel) });
    }
    Ok(fd)
}

/// Creates a file (in the private staging area) with `mode`, less the process umask.
fn create_file(dir: BorrowedFd<'_>, name: &CStr, rel: &[u8], mode: u32) -> Result<OwnedFd, TransferError> {
    open_beneath(
        dir,
        name,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOCTTY,
        Mode::from_raw_mode(mode),
    )
    .map_err(|e| match e {
        Errno::EXIST => TransferError::stream(&format!("{} comes twice", show(rel))),
        e => io("create", rel)(e),
    })
}

/// Applies a stream to the staging directory `top` (the begin record was read and checked by
/// the caller, who also emptied `data` for a full pass). Syncs the filesystem at the end.
pub fn apply<R: Read>(
    r: FrameReader<R>,
    begin: &Begin,
    top: BorrowedFd<'_>,
    maps: (&IdMap, &IdMap),
    progress: &Incoming,
) -> Result<ReceiveResult, TransferError> {
    let mut a = Apply {
        r,
        top,
        cursor: Vec::new(),
        maps,
        progress,
        file_volume: begin.file,
        fresh: !begin.delta,
        linked: HashSet::new(),
        dir_times: Vec::new(),
        buf: Vec::new(),
        umask: umask(),
        out: ReceiveResult {
            transfer_id: begin.transfer_id.clone(),
            pass: begin.pass,
            mode: Some(if begin.delta {
                PassMode::Delta
            } else {
                PassMode::Full
            }),
            ..ReceiveResult::default()
        },
        entries: 0,
    };
    if begin.delta && !begin.file {
        // The tree of the pass this one builds on.
        match open_dir(top, DATA) {
            Ok(fd) => a.cursor.push((Vec::new(), fd)),
            Err(e) => return Err(io("open", b"")(e)),
        }
    }
    a.run(begin)?;
    // Directory times last: writing entries changed them.
    for (rel, mtime) in a.dir_times.iter().rev() {
        let (dir, name) = split(rel);
        let mut fd = rustix::io::fcntl_dupfd_cloexec(top, 0).map_err(io("open", rel))?;
        let mut comps: Vec<&[u8]> = vec![DATA.to_bytes()];
        if !rel.is_empty() {
            if !dir.is_empty() {
                comps.extend(dir.split(|b| *b == b'/'));
            }
            comps.push(name);
        }
        let (last, path) = comps.split_last().map_or((&[][..], &[][..]), |(l, p)| (*l, p));
        for c in path {
            fd = open_dir(fd.as_fd(), &cname(c)?).map_err(io("open", rel))?;
        }
        rustix::fs::utimensat(
            fd.as_fd(),
            &cname(last)?,
            &times(*mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io("set the mtime of", rel))?;
    }
    // No sync here: the commit syncs before it verifies, and a pass lost to a crash of the host
    // is found by that verification.
    a.out.entries = a.entries;
    Ok(a.out)
}
