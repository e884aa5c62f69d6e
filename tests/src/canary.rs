//! Canary secret values: planted by tests, then looked for everywhere they must not be.

/// A unique, greppable canary value for `label`.
#[must_use]
pub fn canary(label: &str) -> String {
    format!("KTCANARY-{label}-{}", uuid::Uuid::new_v4().simple())
}

/// Panics naming `place` if any canary appears in `haystack`.
///
/// # Panics
/// That is its job.
pub fn assert_absent(place: &str, haystack: &[u8], canaries: &[&str]) {
    for c in canaries {
        let found = haystack.windows(c.len()).any(|w| w == c.as_bytes());
        assert!(!found, "canary secret value leaked into {place}");
    }
}

/// Every log line keyturn writes on this thread, in memory, in the binaries' own JSON line
/// format: what a leak check reads.
#[derive(Clone, Default)]
pub struct LogCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::fmt::Debug for LogCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogCapture").finish_non_exhaustive()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Captures every event of this thread (`#[tokio::test]` runs everything on it) at
    /// `filter` (`trace`, or with directives for libraries keyturn quiets by default) until
    /// the guard is dropped.
    ///
    /// # Panics
    /// When `filter` is not a valid filter.
    #[must_use]
    pub fn install(&self, filter: &str) -> tracing::subscriber::DefaultGuard {
        let sink = self.clone();
        let subscriber = keyturn_core::process::subscriber(
            keyturn_core::process::LogFormat::Json,
            filter,
            move || sink.clone(),
            false,
        )
        .unwrap();
        tracing::subscriber::set_default(subscriber)
    }

    /// What was logged so far.
    #[must_use]
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }

    /// What was logged so far, as text.
    #[must_use]
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }
}
