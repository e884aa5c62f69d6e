//! A [`Store`] wrapper that counts requests for `keyturn_store_requests_total`.

use std::sync::Arc;

use async_trait::async_trait;

use super::metrics::{Metrics, StoreOp};
use crate::rotation::store::{Current, Fence, InFlight, StateRecord, Store, StoreError, StoreView};

/// Counts every call to the inner store by operation and outcome.
#[derive(Debug)]
pub struct Metered {
    inner: Arc<dyn Store>,
    kind: String,
    metrics: Metrics,
}

impl Metered {
    /// Wraps `inner`.
    #[must_use]
    pub fn new(inner: Arc<dyn Store>, metrics: Metrics) -> Self {
        let location = inner.location();
        let kind = location.split(':').next().unwrap_or("store").to_owned();
        Self {
            inner,
            kind,
            metrics,
        }
    }

    fn count<T>(&self, op: &str, r: &Result<T, StoreError>) {
        let outcome = match r {
            Ok(_) => "ok",
            Err(StoreError::Conflict { .. }) => "conflict",
            Err(_) => "error",
        };
        self.metrics
            .store_requests
            .get_or_create(&StoreOp {
                store: self.kind.clone(),
                op: op.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

#[async_trait]
impl Store for Metered {
    fn location(&self) -> String {
        self.inner.location()
    }

    async fn view(&self) -> Result<StoreView, StoreError> {
        let r = self.inner.view().await;
        self.count("view", &r);
        r
    }

    async fn state(&self) -> Result<StateRecord, StoreError> {
        let r = self.inner.state().await;
        self.count("read-state", &r);
        r
    }

    async fn current(&self) -> Result<Option<Current>, StoreError> {
        let r = self.inner.current().await;
        self.count("read-current", &r);
        r
    }

    async fn write_state(&self, fence: &Fence, state: &StateRecord) -> Result<Fence, StoreError> {
        let r = self.inner.write_state(fence, state).await;
        self.count("write-state", &r);
        r
    }

    async fn promote(&self, rec: &InFlight, base: Option<&Current>) -> Result<(), StoreError> {
        let r = self.inner.promote(rec, base).await;
        self.count("promote", &r);
        r
    }
}
