//! The work queue of app passes.
//!
//! Every trigger names a Marathon app: a volume changed, Marathon reported something about the
//! app, or a pass asked to look again later. The queue keeps one due time per app (the earliest
//! asked for), hands each app to one worker at a time, and remembers a trigger that arrives while
//! the app is being passed so the next pass sees it. However many volumes an app has and however
//! many triggers arrive together, the app is passed once per batch.
//!
//! A change is delayed by the debounce, so the volumes of one app applied together (a GitOps
//! sync, `kubectl apply -f dir/`) reach the same pass; a later trigger never pushes an app further
//! back, so a stream of events cannot starve it.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Mutex,
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

#[derive(Default)]
struct State {
    /// When each waiting app is due.
    due: HashMap<String, Instant>,
    /// The same, ordered by time.
    order: BTreeSet<(Instant, String)>,
    /// Apps being passed now.
    running: HashSet<String>,
    /// Triggers that arrived for running apps: scheduled when their pass ends.
    again: HashMap<String, Instant>,
    closed: bool,
}

impl State {
    fn schedule(&mut self, app: &str, at: Instant) {
        if self.running.contains(app) {
            let slot = self.again.entry(app.to_owned()).or_insert(at);
            *slot = (*slot).min(at);
            return;
        }
        match self.due.get(app) {
            Some(&current) if current <= at => {}
            Some(&current) => {
                self.order.remove(&(current, app.to_owned()));
                self.order.insert((at, app.to_owned()));
                self.due.insert(app.to_owned(), at);
            }
            None => {
                self.order.insert((at, app.to_owned()));
                self.due.insert(app.to_owned(), at);
            }
        }
    }
}

/// Apps waiting for a pass, each at most once.
pub struct AppQueue {
    state: Mutex<State>,
    wake: Notify,
    debounce: Duration,
}

impl AppQueue {
    pub fn new(debounce: Duration) -> Self {
        Self {
            state: Mutex::default(),
            wake: Notify::new(),
            debounce,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Something about `app` changed: pass it after the debounce (or sooner if it is due sooner).
    pub fn trigger(&self, app: &str) {
        self.schedule(app, Instant::now() + self.debounce);
    }

    /// Pass `app` no later than `delay` from now.
    pub fn schedule_in(&self, app: &str, delay: Duration) {
        self.schedule(app, Instant::now() + delay);
    }

    fn schedule(&self, app: &str, at: Instant) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        state.schedule(app, at);
        drop(state);
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    /// Waits for the next app that is due and not being passed, and marks it running. `None`
    /// once the queue is closed.
    pub async fn next(&self) -> Option<String> {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait_until = {
                let mut state = self.lock();
                if state.closed {
                    return None;
                }
                match state.order.first().cloned() {
                    Some((at, app)) if at <= Instant::now() => {
                        state.order.remove(&(at, app.clone()));
                        state.due.remove(&app);
                        state.running.insert(app.clone());
                        return Some(app);
                    }
                    Some((at, _)) => Some(at),
                    None => None,
                }
            };
            match wait_until {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = &mut notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// The pass of `app` ended: look again in `requeue`, or sooner if a trigger came meanwhile.
    pub fn done(&self, app: &str, requeue: Option<Duration>) {
        let mut state = self.lock();
        state.running.remove(app);
        let again = state.again.remove(app);
        let later = requeue.map(|d| Instant::now() + d);
        if let Some(at) = [again, later].into_iter().flatten().min()
            && !state.closed
        {
            state.schedule(app, at);
        }
        drop(state);
        self.wake.notify_waiters();
    }

    /// Apps waiting or running (for metrics).
    pub fn len(&self) -> usize {
        let state = self.lock();
        state.due.len() + state.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops handing out work; running passes finish.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    async fn next_now(q: &AppQueue) -> Option<String> {
        tokio::time::timeout(Duration::from_millis(1), q.next())
            .await
            .ok()
            .flatten()
    }

    #[tokio::test(start_paused = true)]
    async fn many_triggers_of_one_app_make_one_pass_after_the_debounce() {
        let q = AppQueue::new(Duration::from_secs(1));
        for _ in 0..10 {
            q.trigger("/t/web");
        }
        assert_eq!(next_now(&q).await, None, "not before the debounce");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(q.next().await.as_deref(), Some("/t/web"));
        q.done("/t/web", None);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(next_now(&q).await, None, "one pass for the batch");
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_trigger_never_pushes_an_app_back() {
        let q = AppQueue::new(Duration::from_secs(1));
        q.trigger("/t/web");
        tokio::time::advance(Duration::from_millis(900)).await;
        q.trigger("/t/web");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(next_now(&q).await.as_deref(), Some("/t/web"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_app_is_never_passed_twice_at_once_and_a_trigger_during_a_pass_is_kept() {
        let q = Arc::new(AppQueue::new(Duration::ZERO));
        q.trigger("/t/web");
        assert_eq!(q.next().await.as_deref(), Some("/t/web"));
        q.trigger("/t/web");
        q.trigger("/t/db");
        assert_eq!(q.next().await.as_deref(), Some("/t/db"), "the running app waits");
        assert_eq!(next_now(&q).await, None);
        q.done("/t/web", Some(Duration::from_secs(300)));
        assert_eq!(
            q.next().await.as_deref(),
            Some("/t/web"),
            "the trigger that came during the pass wins over the requeue"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requeues_come_back_at_their_time_and_the_earliest_wins() {
        let q = AppQueue::new(Duration::ZERO);
        q.trigger("/t/a");
        assert_eq!(q.next().await.as_deref(), Some("/t/a"));
        q.done("/t/a", Some(Duration::from_secs(30)));
        q.schedule_in("/t/a", Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(next_now(&q).await, None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(next_now(&q).await.as_deref(), Some("/t/a"));
        assert_eq!(q.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn closing_ends_the_workers() {
        let q = Arc::new(AppQueue::new(Duration::ZERO));
        let worker = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        tokio::task::yield_now().await;
        q.close();
        assert_eq!(worker.await.unwrap(), None);
        q.trigger("/t/web");
        assert!(q.is_empty(), "nothing is queued after close");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_worker_wakes_for_a_new_app() {
        let q = Arc::new(AppQueue::new(Duration::ZERO));
        let worker = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        tokio::task::yield_now().await;
        q.trigger("/t/web");
        assert_eq!(worker.await.unwrap().as_deref(), Some("/t/web"));
    }
}
