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
