//! A keyed debouncer: requests for the same key that arrive within a window are run once,
//! together, and every requester gets that one run's result.
//!
//! The window is fixed from the first request of a batch, not sliding: a steady trickle of
//! requests must not postpone a restart forever. A request that arrives while its key's batch
//! is already running starts the next batch.
//!
//! Each batch runs on a task of its own (`tokio::spawn`), so a requester that gives up
//! (its future dropped, e.g. on shutdown) neither cancels the run for the others nor leaves
//! them waiting. If the run itself dies, the waiters see the channel close and report it.
//! Timers are tokio timers, so tests drive them with `tokio::time::pause()`.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

/// What runs a batch: the key and every item requested for it, in arrival order.
pub(crate) type Action<K, V, R> =
    Arc<dyn Fn(K, Vec<V>) -> Pin<Box<dyn Future<Output = R> + Send>> + Send + Sync>;

/// The result of a batch, once it has run.
pub(crate) type Outcome<R> = watch::Receiver<Option<R>>;

struct Batch<V, R> {
    items: Vec<V>,
    done: watch::Sender<Option<R>>,
}

/// See the module docs.
pub(crate) struct Debouncer<K, V, R> {
    window: Duration,
    pending: Arc<Mutex<HashMap<K, Batch<V, R>>>>,
    action: Action<K, V, R>,
}

impl<K, V, R> std::fmt::Debug for Debouncer<K, V, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Debouncer")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl<K, V, R> Debouncer<K, V, R>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Send + 'static,
    R: Clone + Send + Sync + 'static,
{
    pub(crate) fn new(window: Duration, action: Action<K, V, R>) -> Self {
        Self {
            window,
            pending: Arc::new(Mutex::new(HashMap::new())),
            action,
        }
    }

    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    /// Adds `item` to `key`'s open batch, or opens one that runs `window` from now.
    /// Must be called within a tokio runtime.
    pub(crate) fn submit(&self, key: K, item: V) -> Outcome<R> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(batch) = pending.get_mut(&key) {
            batch.items.push(item);
            return batch.done.subscribe();
        }
        let (done, outcome) = watch::channel(None);
        pending.insert(
            key.clone(),
            Batch {
                items: vec![item],
                done,
            },
        );
        drop(pending);

        let (window, pending, action) = (
            self.window,
            Arc::clone(&self.pending),
            Arc::clone(&self.action),
        );
        tokio::spawn(async move {
            tokio::time::sleep(window).await;
            // Closing the batch before running it: later requests open the next one.
            let batch = pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
            if let Some(Batch { items, done }) = batch {
                let result = action(key, items).await;
                // `send_replace` stores the result even when every waiter has gone away.
                done.send_replace(Some(result));
            }
        });
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type Runs = Arc<Mutex<Vec<(String, Vec<u32>)>>>;

    fn recorder(runs: &Runs, calls: &Arc<AtomicUsize>) -> Action<String, u32, usize> {
        let (runs, calls) = (Arc::clone(runs), Arc::clone(calls));
        Arc::new(move |key, items| {
            let (runs, calls) = (Arc::clone(&runs), Arc::clone(&calls));
            Box::pin(async move {
                runs.lock().unwrap().push((key, items));
                calls.fetch_add(1, Ordering::SeqCst) + 1
            })
        })
    }

    async fn result(mut o: Outcome<usize>) -> Option<usize> {
        o.wait_for(Option::is_some).await.ok().and_then(|r| *r)
    }

    #[tokio::test(start_paused = true)]
    async fn requests_within_the_window_run_once_together_and_share_the_result() {
        let (runs, calls) = (Runs::default(), Arc::new(AtomicUsize::new(0)));
        let d = Debouncer::new(Duration::from_secs(2), recorder(&runs, &calls));
        let a = d.submit("web".to_owned(), 1);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let b = d.submit("web".to_owned(), 2);
        let other = d.submit("api".to_owned(), 9);
        tokio::time::sleep(Duration::from_millis(1400)).await;
        let c = d.submit("web".to_owned(), 3);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "nothing runs before the window closes"
        );

        let (ra, rb, rc) = (result(a).await, result(b).await, result(c).await);
        assert_eq!(ra, rb);
        assert_eq!(rb, rc);
        assert!(result(other).await.is_some());
        let runs = runs.lock().unwrap().clone();
        assert_eq!(runs.len(), 2, "one run per key");
        let web = runs.iter().find(|(k, _)| k == "web").unwrap();
        assert_eq!(web.1, vec![1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_after_the_window_starts_a_new_batch() {
        let (runs, calls) = (Runs::default(), Arc::new(AtomicUsize::new(0)));
        let d = Debouncer::new(Duration::from_secs(2), recorder(&runs, &calls));
        let first = result(d.submit("web".to_owned(), 1)).await;
        let second = result(d.submit("web".to_owned(), 2)).await;
        assert_eq!((first, second), (Some(1), Some(2)));
        assert_eq!(runs.lock().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gives_up_does_not_cancel_the_run_for_the_others() {
        let (runs, calls) = (Runs::default(), Arc::new(AtomicUsize::new(0)));
        let d = Debouncer::new(Duration::from_secs(2), recorder(&runs, &calls));
        drop(d.submit("web".to_owned(), 1));
        let kept = d.submit("web".to_owned(), 2);
        assert_eq!(result(kept).await, Some(1));
        assert_eq!(runs.lock().unwrap()[0].1, vec![1, 2]);
    }
}
