//! Moving a volume's data from one agent to another.
//!
//! The **source** agent walks the volume ([`walk`]) and streams it ([`wire`]) straight to the
//! **target** agent, authenticated by a [`ticket`] the controller minted with the target's
//! token; the target writes it into a staging area below the tenant root that no container can
//! reach ([`receive`]), and puts it in place only when the controller asks it to commit a copy
//! whose manifest equals the source's. The controller never carries the data.
//!
//! - [`send`]: the source's side, two kinds of pass: everything, or what changed since the last
//!   pass the target acknowledged (size, mtime, ctime, inode, owner, mode).
//! - [`receive`]: the target's side, and its staging areas.
//! - [`verify`]: manifests of trees ([`crate::agent::manifest`]).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, MutexGuard, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use rustix::io::Errno;
use thiserror::Error;

use super::{
    api::{ManifestSummary, PassMode, ReceiveResult, TransferState, TransferStatus},
    identity::IdentityError,
};

pub mod receive;
pub mod send;
pub mod ticket;
pub mod verify;
pub mod walk;
pub mod wire;

pub use ticket::TicketClaims;

/// Sends running at once (more wait, `Queued`); receives at once (more are refused, `busy`).
pub const MAX_SENDS: usize = 2;
pub const MAX_RECEIVES: usize = 4;

/// Why a transfer, a manifest or a commit failed. Messages name only the tenant's own paths.
#[derive(Debug, Error)]
pub enum TransferError {
    #[error("{op} {path} failed: {errno}; check the agent host's filesystem (permissions, free space)")]
    Io {
        op: &'static str,
        path: String,
        errno: Errno,
    },
    #[error(
        "the volume is nested deeper than berth moves at {path} (256 levels); flatten the tree, then retry"
    )]
    TooDeep { path: String },
    #[error("the directory {path} has more entries than berth moves at once; split it, then retry")]
    TooWide { path: String },
    #[error("{path} is {what}, which berth does not move")]
    Unsupported { path: String, what: String },
    #[error("{path} changed while berth was reading it; stop the app and retry")]
    Changed { path: String },
    #[error("the transfer was cancelled (or the agent is shutting down); start it again")]
    Cancelled,
    #[error("the stream was refused: {0}")]
    InvalidStream(String),
    #[error("the stream broke off: {0}; start the pass again")]
    Disconnected(String),
    #[error("{0}")]
    Ticket(String),
    #[error("the ticket has expired; ask the controller for a new one")]
    TicketExpired,
    #[error("the ticket was used already; every pass needs a new ticket")]
    TicketReplayed,
    #[error("this agent is receiving as many transfers as it may; retry later")]
    Busy,
    #[error("transfer {0} is already running here; wait for it, or cancel it first")]
    InProgress(String),
    #[error(
        "the staging area holds pass {have:?} of transfer {id}, not pass {base} this stream builds on; send a full pass"
    )]
    BaseMismatch {
        id: String,
        base: u32,
        have: Option<u32>,
    },
    #[error("{0}")]
    Conflict(String),
    #[error(
        "the stream announces {need} bytes but the target has {free} free; free space, or choose another host"
    )]
    NoSpace { need: u64, free: u64 },
    #[error("{0}")]
    NotFound(String),
    #[error(
        "the staged copy does not match the source (manifest {found}, expected {expected}); send another pass, then commit again"
    )]
    ManifestMismatch { expected: String, found: String },
    #[error(
        "{path} already holds data; berth never replaces existing data with a moved volume. Remove it, or choose another hostPath"
    )]
    Occupied { path: String },
    #[error("the target agent refused the stream ({status} {code}): {message}")]
    TargetRefused {
        status: u16,
        code: String,
        message: String,
    },
    #[error("the target agent could not be reached ({0}); the source data is unaffected, retry later")]
    Unreachable(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("internal error: {0}; retry, and report it if it persists")]
    Internal(String),
}

impl TransferError {
    pub fn io(op: &'static str, path: &str, errno: Errno) -> Self {
        TransferError::Io {
            op,
            path: path.to_owned(),
            errno,
        }
    }

    pub fn stream(why: &str) -> Self {
        TransferError::InvalidStream(why.to_owned())
    }

    pub fn code(&self) -> &'static str {
        use TransferError::*;
        match self {
            Io { .. } => "io",
            TooDeep { .. } => "too_deep",
            TooWide { .. } => "too_wide",
            Unsupported { .. } => "type_mismatch",
            Changed { .. } => "concurrent_change",
            Cancelled => "cancelled",
            InvalidStream(_) => "invalid_stream",
            Disconnected(_) => "disconnected",
            Ticket(_) => "invalid_ticket",
            TicketExpired => "ticket_expired",
            TicketReplayed => "ticket_replayed",
            Busy => "busy",
            InProgress(_) => "transfer_in_progress",
            BaseMismatch { .. } => "base_mismatch",
            Conflict(_) => "staging_conflict",
            NoSpace { .. } => "insufficient_space",
            NotFound(_) => "not_found",
            ManifestMismatch { .. } => "manifest_mismatch",
            Occupied { .. } => "target_occupied",
            TargetRefused { .. } => "target_refused",
            Unreachable(_) => "target_unreachable",
            BadRequest(_) => "invalid_request",
            Identity(e) => e.code(),
            Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> u16 {
        use TransferError::*;
        match self {
            Io { .. } | Internal(_) => 500,
            InvalidStream(_) | BadRequest(_) | Disconnected(_) => 400,
            Ticket(_) | TicketExpired => 401,
            NotFound(_) => 404,
            NoSpace { .. } => 507,
            Busy | Cancelled => 503,
            TargetRefused { .. } | Unreachable(_) => 502,
            _ => 409,
        }
    }
}

impl From<Errno> for TransferError {
    fn from(e: Errno) -> Self {
        TransferError::io("read", "a file", e)
    }
}

/// What the source remembers of an entry it sent, to send only changes next time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snap {
    Dir { key: Key },
    File { key: Key, digest: [u8; 32] },
    Symlink { key: Key, target: Vec<u8> },
    Link { key: Key, first: Vec<u8> },
}

/// The metadata compared between passes (ctime changes with any change of the inode and
/// cannot be set by a tenant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
}

impl Key {
    pub fn of(st: &walk::Stat) -> Self {
        Self {
            ino: st.ino,
            mode: st.mode,
            uid: st.uid,
            gid: st.gid,
            size: st.size,
            mtime: st.mtime,
            ctime: st.ctime,
        }
    }
}

/// The tree as the target acknowledged it after a pass.
#[derive(Debug)]
pub struct Baseline {
    pub tenant: String,
    pub host_path: String,
    pub identity: String,
    pub pass: u32,
    pub entries: BTreeMap<Vec<u8>, Snap>,
    pub at: Instant,
}

/// A transfer this agent sends.
#[derive(Debug)]
pub struct Outgoing {
    pub status: Mutex<TransferStatus>,
    pub files_done: AtomicU64,
    pub bytes_done: AtomicU64,
    pub entries_sent: AtomicU64,
    pub deleted: AtomicU64,
    pub raw_bytes: AtomicU64,
    pub wire_bytes: AtomicU64,
    pub setid: AtomicU64,
    pub cancel: AtomicBool,
    pub started: Instant,
}

impl Outgoing {
    pub fn new(status: TransferStatus) -> Self {
        Self {
            status: Mutex::new(status),
            files_done: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            entries_sent: AtomicU64::new(0),
            deleted: AtomicU64::new(0),
            raw_bytes: AtomicU64::new(0),
            wire_bytes: AtomicU64::new(0),
            setid: AtomicU64::new(0),
            cancel: AtomicBool::new(false),
            started: Instant::now(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, TransferStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The status with the counters as they are now.
    pub fn snapshot(&self) -> TransferStatus {
        let mut s = self.lock().clone();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        s.files_done = get(&self.files_done);
        s.bytes_done = get(&self.bytes_done);
        s.entries_sent = get(&self.entries_sent);
        s.deleted = get(&self.deleted);
        s.raw_bytes = get(&self.raw_bytes);
        s.wire_bytes = get(&self.wire_bytes);
        s.setid_stripped = get(&self.setid);
        if matches!(s.state, TransferState::Running | TransferState::Queued) {
            s.elapsed_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        }
        s
    }

    pub fn finish(&self, result: Result<(ManifestSummary, ReceiveResult), TransferError>) {
        let elapsed = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let cancelled = self.cancel.load(Ordering::Relaxed);
        let mut s = self.lock();
        s.elapsed_ms = elapsed;
        match result {
            Ok((manifest, received)) => {
                s.state = TransferState::Succeeded;
                s.manifest = Some(manifest);
                s.received = Some(received);
            }
            Err(e) => {
                s.state = if cancelled {
                    TransferState::Cancelled
                } else {
                    TransferState::Failed
                };
                s.error = Some(crate::agent::api::ErrorDetail {
                    code: e.code().to_owned(),
                    message: e.to_string(),
                });
            }
        }
    }
}

/// Progress of a stream being received.
#[derive(Debug, Default)]
pub struct Incoming {
    pub entries: AtomicU64,
    pub data_bytes: AtomicU64,
}

/// Everything the agent keeps about transfers (nothing survives a restart but staging areas).
pub struct Transfers {
    pub outgoing: Mutex<HashMap<String, Arc<Outgoing>>>,
    pub baselines: Mutex<HashMap<String, Arc<Baseline>>>,
    pub incoming: Mutex<HashMap<(String, String), Arc<Incoming>>>,
    pub used: ticket::Used,
    pub sends: tokio::sync::Semaphore,
    /// Streams being received now (at most [`MAX_RECEIVES`]).
    pub receives: std::sync::atomic::AtomicUsize,
    pub client: OnceLock<reqwest::Client>,
}

impl Default for Transfers {
    fn default() -> Self {
        Self {
            outgoing: Mutex::default(),
            baselines: Mutex::default(),
            incoming: Mutex::default(),
            used: ticket::Used::default(),
            sends: tokio::sync::Semaphore::new(MAX_SENDS),
            receives: std::sync::atomic::AtomicUsize::new(0),
            client: OnceLock::new(),
        }
    }
}

impl std::fmt::Debug for Transfers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfers").finish_non_exhaustive()
    }
}

/// Locks a mutex, taking over a poisoned one.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks a stream being received; removed (with its progress) when dropped.
pub struct ReceiveGuard {
    pub agent: Arc<crate::agent::Agent>,
    pub key: (String, String),
    pub progress: Arc<Incoming>,
}

impl Drop for ReceiveGuard {
    fn drop(&mut self) {
        self.agent.forget_incoming(&self.key);
    }
}

/// A fresh status of a transfer about to run.
pub fn new_status(id: &str, tenant: &str, host_path: &str, pass: u32, mode: PassMode) -> TransferStatus {
    TransferStatus {
        id: id.to_owned(),
        tenant: tenant.to_owned(),
        host_path: host_path.to_owned(),
        pass,
        mode,
        state: TransferState::Queued,
        files_total: 0,
        bytes_total: 0,
        files_done: 0,
        bytes_done: 0,
        entries_sent: 0,
        deleted: 0,
        raw_bytes: 0,
        wire_bytes: 0,
        setid_stripped: 0,
        elapsed_ms: 0,
        manifest: None,
        received: None,
        error: None,
    }
}
