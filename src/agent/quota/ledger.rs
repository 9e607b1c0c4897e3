//! The ledger of the XFS project ids berth gave to volumes: `<agent root>/.berth/projects`,
//! outside every tenant root (tenant roots are named after DNS labels, which never start with a
//! dot), root-owned 0700, changed under an exclusive `flock` of `projects.lock` and replaced
//! atomically (written to a temporary file, synced, renamed).
//!
//! Ids are handed out in increasing order from `next`, which never goes down: an id is never
//! given twice, even after its entry was released. An id the filesystem already accounts data to
//! (a project someone else made) is skipped. An entry is released only once its volume was
//! deleted completely, so no data tagged with it is left.

use std::{
    collections::BTreeMap,
    ffi::CStr,
    io::{Read, Write},
    os::fd::{AsFd, BorrowedFd, OwnedFd},
};

use rustix::{
    fs::{AtFlags, FlockOperation, Mode, OFlags},
    io::Errno,
};
use thiserror::Error;

use crate::agent::safe_fs::open_beneath;

const DIR: &CStr = c".berth";
const FILE: &CStr = c"projects";
const TMP: &CStr = c"projects.tmp";
const LOCK: &CStr = c"projects.lock";
/// The first id berth gives, far above the small ids administrators use by hand.
pub const FIRST_ID: u32 = 1_000_000;
/// Ids berth skips in a row (in use by someone else) before giving up.
const MAX_SKIPS: u32 = 10_000;

/// Why the ledger could not be read or changed. For the agent's log: it names host paths.
#[derive(Debug, Error)]
pub enum LedgerError {
    #[error("{op} of the project id ledger (.berth/projects below the agent root) failed: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: Errno,
    },
    #[error(
        "the project id ledger (.berth/projects below the agent root) is damaged at line {line}: {why}; restore it from a backup, or rebuild it from the project ids of the volumes (`xfs_io -c lsproj`)"
    )]
    Corrupt { line: usize, why: String },
    #[error(
        "the agent root's .berth directory must be owned by the agent's user and not writable by group or others"
    )]
    Unsafe,
    #[error("no free project id left above {0}")]
    Exhausted(u32),
}

fn io(op: &'static str) -> impl FnOnce(Errno) -> LedgerError {
    move |source| LedgerError::Io { op, source }
}

/// What the ledger holds: the next id to give and the id of each (tenant, hostPath).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entries {
    pub next: u32,
    pub ids: BTreeMap<(String, String), u32>,
}

impl Default for Entries {
    fn default() -> Self {
        Self {
            next: FIRST_ID,
            ids: BTreeMap::new(),
        }
    }
}

impl Entries {
    /// `next <id>` then one `<id>\t<tenant>\t<hostPath>` per line (paths hold no control
    /// characters, so a tab never appears in one); `#` starts a comment.
    pub fn parse(text: &str) -> Result<Self, LedgerError> {
        let mut e = Entries::default();
        for (i, line) in text.lines().enumerate() {
            let bad = |why: &str| LedgerError::Corrupt {
                line: i + 1,
                why: why.to_owned(),
            };
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(n) = line.strip_prefix("next ") {
                e.next = n.parse().map_err(|_| bad("`next` is not a number"))?;
                continue;
            }
            let mut parts = line.split('\t');
            let (Some(id), Some(tenant), Some(path), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(bad("expected `<id>\\t<tenant>\\t<hostPath>`"));
            };
            let id: u32 = id.parse().map_err(|_| bad("the id is not a number"))?;
            if e.ids.values().any(|&v| v == id) {
                return Err(bad("an id is recorded twice"));
            }
            e.ids.insert((tenant.to_owned(), path.to_owned()), id);
        }
        // Never below an id already given, whatever `next` says.
        let highest = e.ids.values().max().map_or(0, |m| m.saturating_add(1));
        e.next = e.next.max(highest).max(FIRST_ID);
        Ok(e)
    }

    pub fn render(&self) -> String {
        let mut s = format!(
            "# XFS project ids of berth's volumes; written by the berth agent, do not edit while it runs\nnext {}\n",
            self.next
        );
        for ((tenant, path), id) in &self.ids {
            s.push_str(&format!("{id}\t{tenant}\t{path}\n"));
        }
        s
    }

    /// The id of a volume: the recorded one, else the next free one (recorded). `in_use` says
    /// whether the filesystem accounts data to an id (it is then skipped).
    pub fn allocate(
        &mut self,
        tenant: &str,
        path: &str,
        in_use: impl Fn(u32) -> bool,
    ) -> Result<u32, LedgerError> {
        if let Some(&id) = self.ids.get(&(tenant.to_owned(), path.to_owned())) {
            return Ok(id);
        }
        for _ in 0..MAX_SKIPS {
            let id = self.next;
            self.next = id.checked_add(1).ok_or(LedgerError::Exhausted(id))?;
            if !in_use(id) {
                self.ids.insert((tenant.to_owned(), path.to_owned()), id);
                return Ok(id);
            }
        }
        Err(LedgerError::Exhausted(self.next))
    }
}

/// The ledger's directory, opened once.
#[derive(Debug)]
pub struct Ledger {
    dir: OwnedFd,
}

impl Ledger {
    /// Opens (creating it, 0700) `.berth` below the agent root `base`.
    pub fn open(base: BorrowedFd<'_>) -> Result<Self, LedgerError> {
        match rustix::fs::mkdirat(base, DIR, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(io("create")(e)),
        }
        let dir =
            open_beneath(base, DIR, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).map_err(io("open"))?;
        let st = rustix::fs::fstat(&dir).map_err(io("stat"))?;
        if st.st_uid != rustix::process::geteuid().as_raw() || st.st_mode & 0o022 != 0 {
            return Err(LedgerError::Unsafe);
        }
        Ok(Self { dir })
    }

    /// Reads the ledger, lets `f` change it, and writes it back when `f` says it changed, all
    /// under the lock.
    pub fn update<T>(
        &self,
        f: impl FnOnce(&mut Entries) -> Result<(T, bool), LedgerError>,
    ) -> Result<T, LedgerError> {
        let lock = open_beneath(
            self.dir.as_fd(),
            LOCK,
            OFlags::CREATE | OFlags::RDWR,
            Mode::from_raw_mode(0o600),
        )
        .map_err(io("open the lock"))?;
        rustix::fs::flock(&lock, FlockOperation::LockExclusive).map_err(io("lock"))?;
        let mut entries = self.read()?;
        let (out, changed) = f(&mut entries)?;
        if changed {
            self.write(&entries)?;
        }
        Ok(out)
    }

    fn read(&self) -> Result<Entries, LedgerError> {
        let fd = match open_beneath(self.dir.as_fd(), FILE, OFlags::RDONLY, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(Entries::default()),
            Err(e) => return Err(io("open")(e)),
        };
        let mut text = String::new();
        std::fs::File::from(fd)
            .read_to_string(&mut text)
            .map_err(|e| io("read")(Errno::from_io_error(&e).unwrap_or(Errno::IO)))?;
        Entries::parse(&text)
    }

    fn write(&self, entries: &Entries) -> Result<(), LedgerError> {
        let dir = self.dir.as_fd();
        let _ = rustix::fs::unlinkat(dir, TMP, AtFlags::empty());
        let fd = open_beneath(
            dir,
            TMP,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY,
            Mode::from_raw_mode(0o600),
        )
        .map_err(io("create"))?;
        let mut f = std::fs::File::from(fd);
        f.write_all(entries.render().as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| io("write")(Errno::from_io_error(&e).unwrap_or(Errno::IO)))?;
        rustix::fs::renameat(dir, TMP, dir, FILE).map_err(io("rename"))?;
        rustix::fs::fsync(dir).map_err(io("sync"))?;
        Ok(())
    }

    /// The id recorded for a volume, if any.
    pub fn id_of(&self, tenant: &str, path: &str) -> Result<Option<u32>, LedgerError> {
        self.update(|e| Ok((e.ids.get(&(tenant.to_owned(), path.to_owned())).copied(), false)))
    }

    /// The id of a volume, allocating (and recording) one when it has none.
    pub fn allocate(
        &self,
        tenant: &str,
        path: &str,
        in_use: impl Fn(u32) -> bool,
    ) -> Result<u32, LedgerError> {
        self.update(|e| {
            let before = e.clone();
            let id = e.allocate(tenant, path, in_use)?;
            Ok((id, *e != before))
        })
    }

    /// Forgets a volume's id (its data is gone). The id is never given again.
    pub fn release(&self, tenant: &str, path: &str) -> Result<Option<u32>, LedgerError> {
        self.update(|e| {
            let id = e.ids.remove(&(tenant.to_owned(), path.to_owned()));
            Ok((id, id.is_some()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_given_twice_and_used_ids_are_skipped() {
        let mut e = Entries::default();
        let a = e.allocate("toto", "/a", |_| false).unwrap();
        assert_eq!(a, FIRST_ID);
        assert_eq!(
            e.allocate("toto", "/a", |_| false).unwrap(),
            a,
            "recorded ids are kept"
        );
        // The next id holds someone else's data: skipped.
        let b = e.allocate("toto", "/b", |id| id == FIRST_ID + 1).unwrap();
        assert_eq!(b, FIRST_ID + 2);
        e.ids.remove(&("toto".into(), "/a".into()));
        let c = e.allocate("toto", "/a", |_| false).unwrap();
        assert_eq!(c, FIRST_ID + 3, "a released id is not given again");
    }

    #[test]
    fn the_text_form_round_trips_and_next_never_goes_below_a_given_id() {
        let mut e = Entries::default();
        e.allocate("toto", "/var/log", |_| false).unwrap();
        e.allocate("titi", "/data with space", |_| false).unwrap();
        assert_eq!(Entries::parse(&e.render()).unwrap(), e);
        let hand_edited = "next 5\n1000007\ttoto\t/x\n";
        assert_eq!(Entries::parse(hand_edited).unwrap().next, 1_000_008);
        for bad in ["1\ttoto", "x\ttoto\t/a", "1\ta\t/a\n1\tb\t/b", "next y"] {
            assert!(Entries::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_ledger_file_is_written_atomically_below_the_agent_root() {
        let root = tempfile::tempdir().unwrap();
        let base = std::fs::File::open(root.path()).unwrap();
        let l = Ledger::open(base.as_fd()).unwrap();
        let a = l.allocate("toto", "/a", |_| false).unwrap();
        let b = l.allocate("toto", "/b", |_| false).unwrap();
        assert_eq!((a, b), (FIRST_ID, FIRST_ID + 1));
        // Another handle (another agent process) sees the same ledger.
        let l2 = Ledger::open(base.as_fd()).unwrap();
        assert_eq!(l2.id_of("toto", "/b").unwrap(), Some(b));
        assert_eq!(l2.release("toto", "/a").unwrap(), Some(a));
        assert_eq!(l.id_of("toto", "/a").unwrap(), None);
        assert_eq!(l.allocate("toto", "/c", |_| false).unwrap(), FIRST_ID + 2);
        let text = std::fs::read_to_string(root.path().join(".berth/projects")).unwrap();
        assert!(text.contains("next 1000003"), "{text}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.path().join(".berth"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(!root.path().join(".berth/projects.tmp").exists());
    }
}
