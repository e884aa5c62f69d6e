//! Retrying what may clear up on its own, and nothing else.
//!
//! Capped exponential backoff with jitter (from `backon`), applied only to errors that
//! [`VaultError::is_retryable`] says are transient. A 403 or 404 returns at once.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use super::VaultError;

/// How hard to retry one Vault operation.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// The first delay.
    pub min_delay: Duration,
    /// The cap on one delay.
    pub max_delay: Duration,
    /// Retries after the first attempt.
    pub max_retries: usize,
}

impl Default for RetryPolicy {
    /// 100 ms doubling to a 5 s cap, 12 retries: about 40 s of trying, which sits inside the
    /// init container's default 60 s deadline.
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_retries: 12,
        }
    }
}

impl RetryPolicy {
    /// No retries: the first failure is final.
    #[must_use]
    pub fn none() -> Self {
        Self {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// Runs `attempt` until it succeeds, fails with a final error, or retries run out.
    ///
    /// # Errors
    /// The last error seen.
    pub async fn run<T, F, Fut>(&self, attempt: F) -> Result<T, VaultError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, VaultError>>,
    {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_retries)
            .with_jitter();
        attempt
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(VaultError::is_retryable)
            .notify(|e, after| {
                tracing::warn!(error = %e, retry_in_ms = after.as_millis() as u64, "vault request failed; retrying");
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn unavailable() -> VaultError {
        VaultError::Unavailable {
            op: "read",
            path: "p".into(),
            code: 503,
            messages: vec![],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_a_transient_failure_until_it_clears() {
        let n = AtomicUsize::new(0);
        let out = RetryPolicy::default()
            .run(|| async {
                if n.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(unavailable())
                } else {
                    Ok(7)
                }
            })
            .await
            .unwrap();
        assert_eq!(out, 7);
        assert_eq!(n.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_retry_permission_denied() {
        let n = AtomicUsize::new(0);
        let e = RetryPolicy::default()
            .run(|| async {
                n.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(VaultError::PermissionDenied {
                    op: "read",
                    path: "p".into(),
                })
            })
            .await
            .unwrap_err();
        assert!(matches!(e, VaultError::PermissionDenied { .. }));
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_retries() {
        let n = AtomicUsize::new(0);
        let policy = RetryPolicy {
            max_retries: 2,
            ..RetryPolicy::default()
        };
        let e = policy
            .run(|| async {
                n.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(unavailable())
            })
            .await
            .unwrap_err();
        assert!(e.is_retryable());
        assert_eq!(n.load(Ordering::SeqCst), 3);
    }
}
