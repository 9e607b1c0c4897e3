//! Deletes that can outlive their request.
//!
//! A big tree takes a while to delete. The walk of one path runs once at a time: a DELETE of a
//! path whose walk is still running does not start another one but gets `409
//! delete_in_progress` with the progress so far, and so do ensures and inspects of that path (or
//! of a path above or below it). When the request that started a walk has stopped waiting, the
//! walk's result is kept (for [`RESULT_TTL`]) and given, without a new walk, to the next DELETE
//! of the path.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::{api::DeleteResult, ops::OpError};
use crate::tenant::{TenantId, VolumePath};

/// How long the result of a finished walk is kept for a later DELETE to collect.
pub const RESULT_TTL: Duration = Duration::from_secs(600);

/// The progress of one walk.
#[derive(Debug)]
pub struct Progress {
    /// Entries removed so far.
    pub removed: AtomicU64,
    pub started: Instant,
    /// The absolute path being deleted (for messages).
    pub shown: String,
}

impl Progress {
    /// The error other requests of the path get while it runs.
    pub fn in_progress(&self) -> OpError {
        OpError::DeleteInProgress {
            path: self.shown.clone(),
            removed: self.removed.load(Ordering::Relaxed),
            seconds: self.started.elapsed().as_secs(),
        }
    }
}

type Key = (TenantId, VolumePath);

enum State {
    Running,
    Finished {
        result: Result<DeleteResult, OpError>,
        at: Instant,
    },
}

struct Entry {
    progress: Arc<Progress>,
    state: State,
}

/// What [`Deletes::begin`] found.
pub enum Begin {
    /// A walk this caller now owns: run it, then [`Deletes::finish`] it.
    Started(Arc<Progress>),
    /// The result of a walk that finished after its request stopped waiting.
    Finished(Result<DeleteResult, OpError>),
}

/// The deletes of one agent.
#[derive(Default)]
pub struct Deletes {
    entries: Mutex<HashMap<Key, Entry>>,
    walks: AtomicU64,
}

impl std::fmt::Debug for Deletes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deletes")
            .field("walks", &self.walks.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Deletes {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Entry>> {
        // A panic while holding the lock leaves a consistent map (every update is one insert
        // or remove), so a poisoned lock is still usable.
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, e| !matches!(e.state, State::Finished { at, .. } if at.elapsed() > RESULT_TTL));
        map
    }

    /// Starts a walk of the path, hands over the uncollected result of a finished one, or says
    /// (the error) that one is running.
    pub fn begin(&self, tenant: &TenantId, path: &VolumePath, shown: &str) -> Result<Begin, OpError> {
        let mut map = self.lock();
        let key = (tenant.clone(), path.clone());
        match map.remove(&key) {
            Some(
                e @ Entry {
                    state: State::Running,
                    ..
                },
            ) => {
                let err = e.progress.in_progress();
                map.insert(key, e);
                return Err(err);
            }
            Some(Entry {
                state: State::Finished { result, .. },
                ..
            }) => return Ok(Begin::Finished(result)),
            None => {}
        }
        let progress = Arc::new(Progress {
            removed: AtomicU64::new(0),
            started: Instant::now(),
            shown: shown.to_owned(),
        });
        map.insert(
            key,
            Entry {
                progress: progress.clone(),
                state: State::Running,
            },
        );
        self.walks.fetch_add(1, Ordering::Relaxed);
        Ok(Begin::Started(progress))
    }

    /// Records the result of a walk; `keep` leaves it for a later DELETE to collect (the
    /// request that started it may have stopped waiting), else the entry is removed and the
    /// result returned.
    pub fn finish(
        &self,
        tenant: &TenantId,
        path: &VolumePath,
        progress: Arc<Progress>,
        result: Result<DeleteResult, OpError>,
        keep: bool,
    ) -> Option<Result<DeleteResult, OpError>> {
        let mut map = self.lock();
        let key = (tenant.clone(), path.clone());
        if keep {
            map.insert(
                key,
                Entry {
                    progress,
                    state: State::Finished {
                        result,
                        at: Instant::now(),
                    },
                },
            );
            None
        } else {
            map.remove(&key);
            Some(result)
        }
    }

    /// Takes the result of the walk of `key` when it has finished; the in-progress error while
    /// it runs; `None` when there is no walk (another request collected it).
    pub fn collect(&self, tenant: &TenantId, path: &VolumePath) -> Option<Result<DeleteResult, OpError>> {
        let mut map = self.lock();
        let key = (tenant.clone(), path.clone());
        match map.remove(&key)? {
            Entry {
                state: State::Finished { result, .. },
                ..
            } => Some(result),
            e => {
                let err = e.progress.in_progress();
                map.insert(key, e);
                Some(Err(err))
            }
        }
    }

    /// Forgets a walk that could not be started.
    pub fn abandon(&self, tenant: &TenantId, path: &VolumePath) {
        self.lock().remove(&(tenant.clone(), path.clone()));
    }

    /// The in-progress error when a walk of `path`, or of a path above or below it, is running.
    pub fn conflict(&self, tenant: &TenantId, path: &VolumePath) -> Result<(), OpError> {
        let map = self.lock();
        for ((t, p), e) in map.iter() {
            if matches!(e.state, State::Running) && t == tenant && (p.contains(path) || path.contains(p)) {
                return Err(e.progress.in_progress());
            }
        }
        Ok(())
    }

    /// How many walks were started (each DELETE that found no running walk of its path starts one).
    pub fn walks_started(&self) -> u64 {
        self.walks.load(Ordering::Relaxed)
    }
}
