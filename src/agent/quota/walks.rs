//! Usage by walking, for volumes without quota accounting: each volume's last result is kept and
//! walked again at most every `--usage-walk-interval`, by one walker thread at a time that rests
//! four times as long as it walked (at most a fifth of one core), so asking for the usage of many
//! volumes never walks them in the request and never loads the host.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Condvar, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime},
};

/// A volume: (tenant, hostPath) as validated strings.
pub type Key = (String, String);

/// Most volumes remembered; beyond it new ones are not walked (they answer without figures).
pub const MAX_ENTRIES: usize = 100_000;
/// The walker rests this many times as long as its last walk took.
pub const REST_FACTOR: u32 = 4;

/// The result of one walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walked {
    pub bytes: u64,
    pub inodes: u64,
    /// Mount points were skipped or directories nested too deep were not counted.
    pub partial: bool,
    pub at: SystemTime,
}

struct Slot {
    walked: Option<Walked>,
    /// When the last walk finished (monotonic), to decide when it is due again.
    done: Option<Instant>,
    queued: bool,
}

#[derive(Default)]
struct State {
    slots: HashMap<Key, Slot>,
    queue: VecDeque<Key>,
    worker: bool,
    stopped: bool,
}

/// The cache and the walker's queue.
pub struct WalkCache {
    interval: Duration,
    state: Mutex<State>,
    wake: Condvar,
}

impl std::fmt::Debug for WalkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalkCache")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl WalkCache {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last walk of a volume (`None` before the first one). Queues a walk when there is
    /// none yet or the last is older than the interval; returns `true` when the caller must start
    /// a walker thread (none runs).
    pub fn get(&self, key: &Key) -> (Option<Walked>, bool) {
        let mut st = self.lock();
        if st.stopped {
            return (st.slots.get(key).and_then(|s| s.walked), false);
        }
        if !st.slots.contains_key(key) && st.slots.len() >= MAX_ENTRIES {
            return (None, false);
        }
        let interval = self.interval;
        let slot = st.slots.entry(key.clone()).or_insert(Slot {
            walked: None,
            done: None,
            queued: false,
        });
        let due = slot.done.is_none_or(|d| d.elapsed() >= interval);
        let walked = slot.walked;
        if due && !slot.queued {
            slot.queued = true;
            st.queue.push_back(key.clone());
        }
        let start = !st.queue.is_empty() && !st.worker;
        if start {
            st.worker = true;
        }
        (walked, start)
    }

    /// Forgets a volume (it was deleted).
    pub fn forget(&self, key: &Key) {
        let mut st = self.lock();
        st.slots.remove(key);
        st.queue.retain(|k| k != key);
    }

    /// The next volume to walk; `None` when there is none (the walker then ends) or the agent
    /// stops.
    pub fn next(&self) -> Option<Key> {
        let mut st = self.lock();
        let next = if st.stopped { None } else { st.queue.pop_front() };
        if next.is_none() {
            st.worker = false;
        }
        next
    }

    /// Records a walk's result (`None`: the volume is gone or could not be walked).
    pub fn store(&self, key: &Key, walked: Option<Walked>) {
        let mut st = self.lock();
        match (st.slots.get_mut(key), walked) {
            (Some(slot), Some(w)) => {
                slot.walked = Some(w);
                slot.done = Some(Instant::now());
                slot.queued = false;
            }
            (Some(_), None) => {
                st.slots.remove(key);
            }
            (None, _) => {}
        }
    }

    /// Rests after a walk that took `spent`; returns early when the agent stops.
    pub fn rest(&self, spent: Duration) {
        let st = self.lock();
        let _ = self
            .wake
            .wait_timeout_while(st, spent * REST_FACTOR, |s| !s.stopped);
    }

    /// The walker thread could not be started: the next request tries again.
    pub fn walker_failed(&self) {
        self.lock().worker = false;
    }

    /// Stops the walker (for shutdown); results are kept.
    pub fn stop(&self) {
        self.lock().stopped = true;
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: &str) -> Key {
        ("toto".into(), p.into())
    }

    #[test]
    fn a_volume_is_queued_once_and_walked_again_only_after_the_interval() {
        let c = WalkCache::new(Duration::from_secs(3600));
        assert_eq!(
            c.get(&key("/a")),
            (None, true),
            "first ask: queued, a walker is needed"
        );
        assert_eq!(c.get(&key("/a")), (None, false), "queued once, one walker");
        assert_eq!(c.next(), Some(key("/a")));
        let w = Walked {
            bytes: 4096,
            inodes: 1,
            partial: false,
            at: SystemTime::now(),
        };
        c.store(&key("/a"), Some(w));
        assert_eq!(c.next(), None, "the queue is empty: the walker ends");
        assert_eq!(
            c.get(&key("/a")),
            (Some(w), false),
            "fresh: answered from the cache, not queued"
        );
        let c0 = WalkCache::new(Duration::ZERO);
        c0.get(&key("/a"));
        c0.next();
        c0.store(&key("/a"), Some(w));
        assert_eq!(c0.next(), None);
        assert_eq!(
            c0.get(&key("/a")),
            (Some(w), true),
            "stale: answered and queued again"
        );
    }

    #[test]
    fn forgotten_and_vanished_volumes_are_dropped() {
        let c = WalkCache::new(Duration::from_secs(60));
        c.get(&key("/a"));
        c.forget(&key("/a"));
        assert_eq!(c.next(), None);
        c.get(&key("/b"));
        assert_eq!(c.next(), Some(key("/b")));
        c.store(&key("/b"), None);
        assert_eq!(
            c.get(&key("/b")),
            (None, false),
            "asked again, queued again; the walker still runs"
        );
        assert_eq!(c.next(), Some(key("/b")));
        c.stop();
        assert_eq!(c.next(), None, "a stopped cache hands out no work");
    }
}
