//! The app of the "never fails through rotations" tests: a task that reads CURRENT and logs
//! in with it, again and again, while the test rotates.
//!
//! Each login that works records how many rotations had finished before it read CURRENT.
//! The test starts rotation n+1 only after such a login for rotation n ([`LoopingApp::rotated`]):
//! that is what a real app does between two scheduled rotations, and it makes every
//! interleaving of one rotation with the app's read-then-login happen without any timing in
//! the test.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The running app; see the module docs.
#[derive(Debug)]
pub struct LoopingApp {
    /// How many rotations have finished; `u64::MAX` stops the app.
    done: watch::Sender<u64>,
    /// The rotation count the last working login had seen.
    ok: watch::Receiver<u64>,
    /// One line per failed login (user and version, never the password).
    failures: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<u64>,
    /// "app" or "client", for messages.
    who: &'static str,
}

impl LoopingApp {
    /// Spawns the app. `login` reads CURRENT and logs in with it; its error says which user
    /// and version failed and why, and must hold no password.
    pub fn spawn<F, Fut>(who: &'static str, mut login: F) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send,
    {
        let (done, done_rx) = watch::channel(0u64);
        let (ok_tx, ok) = watch::channel(0u64);
        let failures = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let failures = failures.clone();
            async move {
                let mut logins = 0u64;
                loop {
                    let generation = *done_rx.borrow();
                    if generation == u64::MAX {
                        return logins;
                    }
                    match login().await {
                        Ok(()) => {
                            logins += 1;
                            ok_tx.send_replace(generation);
                        }
                        Err(failure) => failures.lock().unwrap().push(failure),
                    }
                }
            }
        });
        Self {
            done,
            ok,
            failures,
            task,
            who,
        }
    }

    /// Rotation `n` has finished: waits (up to a minute, a synchronisation point, not a timing
    /// assertion) for a login that read CURRENT after it.
    ///
    /// # Panics
    /// When none comes.
    pub async fn rotated(&mut self, n: u64) {
        self.done.send_replace(n);
        let caught_up =
            tokio::time::timeout(Duration::from_secs(60), self.ok.wait_for(|g| *g >= n)).await;
        assert!(
            caught_up.is_ok(),
            "the {} never logged in after rotation {n}: {:?}",
            self.who,
            self.failures.lock().unwrap()
        );
    }

    /// Stops the app and checks it logged in at least `min_logins` times and never failed.
    ///
    /// # Panics
    /// When it did not.
    pub async fn stop(self, min_logins: u64) {
        self.done.send_replace(u64::MAX);
        let logins = self.task.await.unwrap();
        assert!(
            logins >= min_logins,
            "the {} logged in only {logins} times",
            self.who
        );
        let failures = self.failures.lock().unwrap().clone();
        assert!(
            failures.is_empty(),
            "logins with CURRENT failed: {failures:?}"
        );
    }
}
