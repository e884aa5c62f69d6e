//! Log filter defaults shared by keyturn's binaries.

/// Libraries that log every failed HTTP request at ERROR, repeating what keyturn's own
/// retry warning and failure line already say (a 404 during a state read is normal).
const NOISY: &[&str] = &["rustify", "vaultrs"];

/// `filter` with the noisy libraries switched off, unless the filter names them.
#[must_use]
pub fn with_quiet_libraries(filter: &str) -> String {
    let mut directives = filter.to_owned();
    for lib in NOISY {
        if !directives.contains(lib) {
            if !directives.is_empty() {
                directives.push(',');
            }
            directives.push_str(lib);
            directives.push_str("=off");
        }
    }
    directives
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noisy_libraries_are_off_unless_named() {
        assert_eq!(with_quiet_libraries("info"), "info,rustify=off,vaultrs=off");
        assert_eq!(
            with_quiet_libraries("info,vaultrs=debug"),
            "info,vaultrs=debug,rustify=off"
        );
    }
}
