//! docs/init-manifest.md cannot rot: every manifest and annotations file it shows is read by
//! the functions `keyturn-init` reads them with. A block fenced `yaml` or `annotations` must be
//! accepted; one fenced `yaml refused` or `annotations refused` must be refused with exactly
//! the lines of the `text` block after it, as keyturn-init prints them.

use keyturn_core::config::ConfigError;
use keyturn_init::annotations;
use keyturn_init::manifest::Manifest;

/// The doc's fenced blocks, in order: (info string, body).
fn blocks(doc: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in doc.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => open = Some((info.trim().to_owned(), String::new())),
            (Some(_), Some("")) => out.push(open.take().unwrap()),
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "an unclosed block");
    out
}

/// What `keyturn-init --manifest manifest.yaml` or `--annotations annotations` makes of `body`.
fn read(kind: &str, body: &str) -> Result<Manifest, Vec<ConfigError>> {
    match kind {
        "yaml" => Manifest::parse("manifest.yaml", body),
        "annotations" => annotations::parse("annotations", body),
        other => panic!("no reader for {other}"),
    }
}

#[test]
fn every_example_in_the_manifest_doc_is_read_as_it_says() {
    let doc = include_str!("../../docs/init-manifest.md");
    let blocks = blocks(doc);
    let (mut accepted, mut refused) = (0, 0);
    for (i, (info, body)) in blocks.iter().enumerate() {
        let mut words = info.split_whitespace();
        let kind = words.next().unwrap_or_default();
        if kind != "yaml" && kind != "annotations" {
            continue;
        }
        // A Kubernetes fragment beside the examples (a volume), not a manifest.
        if kind == "yaml" && !body.contains("secrets") {
            continue;
        }
        match words.next() {
            None => {
                let m = read(kind, body).unwrap_or_else(|e| {
                    let e: Vec<String> = e.iter().map(ToString::to_string).collect();
                    panic!("block {i} ({info}) is refused:\n{}\n{body}", e.join("\n"))
                });
                assert!(!m.secrets.is_empty(), "block {i}");
                accepted += 1;
            }
            Some("refused") => {
                let errors: Vec<String> = read(kind, body)
                    .err()
                    .unwrap_or_else(|| panic!("block {i} ({info}) is accepted:\n{body}"))
                    .iter()
                    .map(|e| format!("keyturn-init: {e}"))
                    .collect();
                let (next_info, expected) = blocks
                    .get(i + 1)
                    .unwrap_or_else(|| panic!("block {i}: no text block after it"));
                assert_eq!(next_info, "text", "block {i}: the messages follow it");
                assert_eq!(errors.join("\n"), expected.trim_end(), "block {i}");
                refused += 1;
            }
            Some(other) => panic!("block {i}: unknown fence word {other}"),
        }
    }
    // The doc holds what this test is for: manifests, annotations, and refusals of each.
    assert!(accepted >= 8, "{accepted} accepted examples");
    assert!(refused >= 3, "{refused} refused examples");
    for kind in [
        "```annotations\n",
        "```annotations refused\n",
        "```yaml refused\n",
    ] {
        assert!(doc.contains(kind), "{kind}");
    }
}
