//! Text that came from outside (a manifest, a flag, Vault) on its way into a message: control
//! characters escaped, so a value cannot move the cursor, recolour or clear the operator's
//! terminal, and length capped, so a 1 MB value cannot bury the message it is part of.
//!
//! Only names, paths and flag values go through here: secret values never reach a message
//! at all.

/// The most characters of one echoed value a message shows.
pub const ECHO_MAX: usize = 100;

/// The most characters a whole message may have (a backstop for echoes not capped at their
/// source, e.g. the YAML parser's).
pub const MESSAGE_MAX: usize = 2000;

/// `e` and its causes, `outer: inner: …`. Many libraries' own Display is only the top line
/// (reqwest's is "builder error", a driver's says which kind of failure), while the causes
/// say why.
#[must_use]
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `s` quoted for a message, as `{:?}` would write it (control characters escaped), with at
/// most [`ECHO_MAX`] characters of it and, when cut, `…` and its full length after the quote.
#[must_use]
pub fn echo(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(ECHO_MAX) + 16);
    out.push('"');
    for (i, c) in s.chars().enumerate() {
        if i == ECHO_MAX {
            out.push_str(&format!("\"… ({} bytes)", s.len()));
            return out;
        }
        out.extend(c.escape_debug());
    }
    out.push('"');
    out
}

/// `s` with every control character escaped (`\u{1b}`, `\n`, …) and at most `max`
/// characters kept, then `…`. For text that is a sentence rather than a value, so it is not
/// quoted.
#[must_use]
pub fn clean(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 8);
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_is_quoted_escaped_and_capped() {
        assert_eq!(echo("a/b"), "\"a/b\"");
        assert_eq!(echo("\u{1b}[2J"), "\"\\u{1b}[2J\"");
        let big = "x".repeat(1 << 20);
        let e = echo(&big);
        assert_eq!(e.len(), 1 + ECHO_MAX + "\"… (1048576 bytes)".len());
        assert!(e.ends_with("\"… (1048576 bytes)"), "{e}");
    }

    #[test]
    fn clean_text_keeps_words_and_escapes_control_characters() {
        assert_eq!(
            clean("no handler \u{1b}[31mred\u{7}", 100),
            "no handler \\u{1b}[31mred\\u{7}"
        );
        assert_eq!(clean("abcdef", 3), "abc…");
    }
}
