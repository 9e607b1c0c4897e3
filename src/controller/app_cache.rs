//! Marathon apps as berth last read them, so that a pass over an app nothing happened to costs no
//! Marathon read.
//!
//! An entry is fresh while Marathon's event stream is connected, no event has named the app
//! since it was read, and it is younger than the cache's age limit; a periodic bulk list of every
//! app renews them all in one request. A read that started before an event about its app is not
//! stored (the event may describe a change the read missed), and losing the event stream
//! forgets everything: events missed meanwhile cannot be trusted to arrive.
//!
//! The cache only ever saves a read. A pass that decides to write to an app reads it once more
//! first, because Marathon replaces `container` and `constraints` whole.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use crate::marathon::App;

struct Entry {
    app: Arc<App>,
    at: Instant,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// Counts invalidations; a read remembers the count when it starts.
    seq: u64,
    /// The count at each app's last invalidation.
    invalidated: HashMap<String, u64>,
    /// Whether the event stream is connected (without it, nothing is fresh).
    live: bool,
}

pub struct AppCache {
    state: Mutex<State>,
    max_age: Duration,
}

/// Taken before a read; the read is stored only if nothing invalidated its app meanwhile.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

impl AppCache {
    pub fn new(max_age: Duration) -> Self {
        Self {
            state: Mutex::default(),
            max_age,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The app, if the cached copy can be trusted.
    pub fn fresh(&self, id: &str) -> Option<Arc<App>> {
        let state = self.lock();
        if !state.live {
            return None;
        }
        state
            .entries
            .get(id)
            .filter(|e| e.at.elapsed() < self.max_age)
            .map(|e| e.app.clone())
    }

    pub fn ticket(&self) -> Ticket {
        Ticket(self.lock().seq)
    }

    /// Stores what a read that started at `ticket` returned.
    pub fn store(&self, ticket: Ticket, id: &str, app: Arc<App>) {
        let mut state = self.lock();
        if state.invalidated.get(id).is_some_and(|&at| at >= ticket.0) || !state.live {
            return;
        }
        state.entries.insert(
            id.to_owned(),
            Entry {
                app,
                at: Instant::now(),
            },
        );
    }

    /// Something happened to the app: the next pass reads it again.
    pub fn invalidate(&self, id: &str) {
        let mut state = self.lock();
        state.seq += 1;
        let seq = state.seq;
        state.invalidated.insert(id.to_owned(), seq);
        state.entries.remove(id);
    }

    /// The event stream (re)connected: from now on, events keep the cache honest.
    pub fn stream_connected(&self) {
        let mut state = self.lock();
        state.entries.clear();
        state.seq += 1;
        state.live = true;
    }

    /// The event stream broke: nothing cached can be trusted until it is back.
    pub fn stream_lost(&self) {
        let mut state = self.lock();
        state.entries.clear();
        state.seq += 1;
        state.live = false;
    }

    /// An app Marathon reported gone.
    pub fn forget(&self, id: &str) {
        self.lock().entries.remove(id);
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(id: &str) -> Arc<App> {
        Arc::new(serde_json::from_value(serde_json::json!({"id": id})).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_only_while_the_stream_is_up_and_nothing_happened() {
        let cache = AppCache::new(Duration::from_secs(60));
        let t = cache.ticket();
        cache.store(t, "/a", app("/a"));
        assert!(
            cache.fresh("/a").is_none(),
            "nothing is trusted before the stream connects"
        );
        cache.stream_connected();
        let t = cache.ticket();
        cache.store(t, "/a", app("/a"));
        assert!(cache.fresh("/a").is_some());
        cache.invalidate("/a");
        assert!(cache.fresh("/a").is_none(), "an event about the app");
        let t = cache.ticket();
        cache.store(t, "/a", app("/a"));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(cache.fresh("/a").is_none(), "too old");
        let t = cache.ticket();
        cache.store(t, "/a", app("/a"));
        cache.stream_lost();
        assert!(cache.fresh("/a").is_none(), "the stream broke");
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_overtaken_by_an_event_is_not_stored() {
        let cache = AppCache::new(Duration::from_secs(60));
        cache.stream_connected();
        let before = cache.ticket();
        cache.invalidate("/a"); // the app changed while the read was in flight
        cache.store(before, "/a", app("/a"));
        assert!(cache.fresh("/a").is_none());
        cache.store(before, "/b", app("/b"));
        assert!(cache.fresh("/b").is_some(), "other apps are not affected");
    }
}
