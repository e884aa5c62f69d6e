//! The hostile input corpus (`tests/hostile/`, see its README.md): every file is fed to the
//! real binary that parses its kind, and each run must
//!
//! - exit with the code `expect.tsv` gives, and say the message fragment it gives;
//! - show no canary (`KTCANARY…`, planted where a value would be), no control character (a
//!   terminal escape in the input must come out escaped) and no more than [`OUTPUT_MAX`]
//!   bytes (a 1 MB value is never echoed whole);
//! - write nothing: the output directory stays empty and the scratch directory the input
//!   was copied into holds exactly what it held before, byte for byte (the input included),
//!   except the audit record of a login attempt in the runs that got as far as Vault (69).
//!
//! A case marked `known-failure:` in `expect.tsv` is run and its problems printed with the
//! reason, without failing the test, so a known bug stays visible until it is fixed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every run's output is at most this long: errors are a few lines each, and a manifest's
/// problems are capped at a hundred.
const OUTPUT_MAX: usize = 64 * 1024;

/// A hung parser (a YAML bomb, deep nesting) fails its case instead of the whole suite.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The prefix of every canary in the corpus and in the token file the runs are given.
const CANARY: &str = "KTCANARY";

/// The kinds of input, each the name of a folder under `tests/hostile/`.
const KINDS: &[&str] = &[
    "policies",
    "manifests",
    "annotations",
    "audit",
    "audit-tail",
    "audit-keys",
];

fn corpus() -> PathBuf {
    keyturn_tests::tools::repo_root().join("tests/hostile")
}

#[derive(Debug)]
struct Case {
    path: String,
    code: i32,
    fragment: String,
    known_failure: Option<String>,
}

fn expectations() -> Vec<Case> {
    let text = std::fs::read_to_string(corpus().join("expect.tsv")).unwrap();
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(i, l)| {
            let cols: Vec<&str> = l.split('\t').collect();
            assert!(
                (3..=4).contains(&cols.len()),
                "expect.tsv:{}: want PATH, CODE, FRAGMENT[, NOTE]",
                i + 1
            );
            let note = cols.get(3).copied().unwrap_or("");
            let known_failure = note.strip_prefix("known-failure:").map(|r| r.trim().into());
            assert!(
                note.is_empty() || known_failure.is_some(),
                "expect.tsv:{}: the only note is `known-failure: WHY`",
                i + 1
            );
            Case {
                path: cols[0].into(),
                code: cols[1]
                    .parse()
                    .unwrap_or_else(|_| panic!("expect.tsv:{}: exit code", i + 1)),
                fragment: cols[2].into(),
                known_failure,
            }
        })
        .collect()
}

/// Every file and its content, relative to `root`, recursively.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_owned();
            if p.is_dir() {
                out.insert(rel, b"<dir>".to_vec());
                walk(root, &p, out);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

struct Outcome {
    code: Option<i32>,
    output: Vec<u8>,
    timed_out: bool,
}

/// Runs `cmd` to the end or [`RUN_TIMEOUT`], with stdout and stderr read concurrently (a
/// large error output must not block the child on a full pipe).
fn run(mut cmd: Command) -> Outcome {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > RUN_TIMEOUT {
            timed_out = true;
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut output = out.join().unwrap();
    output.extend(err.join().unwrap());
    Outcome {
        code: status.code(),
        output,
        timed_out,
    }
}

/// The command for `case`'s kind, with the input at `input` inside `scratch`.
fn command(kind: &str, input: &Path, scratch: &Path, out: &Path, vault: &str) -> Command {
    let key = scratch.join("audit.key");
    let mut c;
    match kind {
        "policies" => {
            c = Command::new(keyturn_tests::bins::keyturn());
            c.args(["policy", "check"]).arg(input);
        }
        "manifests" | "annotations" => {
            c = Command::new(keyturn_tests::bins::keyturn_init());
            let flag = if kind == "manifests" {
                "--manifest"
            } else {
                "--annotations"
            };
            c.arg(flag).arg(input).arg("--out").arg(out);
            c.args(["--deadline", "1s", "--jwt-file"])
                .arg(scratch.join("jwt"));
            c.env("KEYTURN_AUDIT_FILE", scratch.join("audit.jsonl"))
                .env("KEYTURN_AUDIT_HMAC_KEY_FILE", &key);
        }
        "audit" => {
            c = Command::new(keyturn_tests::bins::keyturn());
            c.args(["audit", "verify", "--audit-hmac-key-file"])
                .arg(&key)
                .arg(input);
        }
        "audit-tail" => {
            c = Command::new(keyturn_tests::bins::keyturn());
            c.args(["audit", "tail"]).arg(input);
        }
        "audit-keys" => {
            c = Command::new(keyturn_tests::bins::keyturn());
            c.args(["audit", "verify", "--audit-hmac-key-file"])
                .arg(input)
                .arg(scratch.join("valid.jsonl"));
        }
        other => panic!("no command for kind {other}"),
    }
    // Only what the run is given: no VAULT_TOKEN, no KEYTURN_* from the developer's shell.
    c.env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", scratch.join("home"))
        .env("VAULT_ADDR", vault);
    c
}

/// Control characters a run may print: line ends and tabs. Anything else (ESC, BEL, a C1
/// control such as CSI U+009B) would reach the reader's terminal as a command.
fn control_in(output: &[u8]) -> Option<char> {
    String::from_utf8_lossy(output)
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
}

/// Runs one case; the problems found, empty if none.
fn check(kind: &str, case: &Case) -> Vec<String> {
    let fixtures = corpus().join("fixtures");
    let scratch = tempfile::tempdir().unwrap();
    let shm = tempfile::Builder::new()
        .prefix("keyturn-hostile-")
        .tempdir_in("/dev/shm")
        .unwrap();
    let input = scratch.path().join(
        Path::new(&case.path)
            .file_name()
            .expect("a file name in expect.tsv"),
    );
    std::fs::copy(corpus().join(&case.path), &input).unwrap();
    std::fs::copy(fixtures.join("audit.key"), scratch.path().join("audit.key")).unwrap();
    std::fs::copy(
        fixtures.join("valid.jsonl"),
        scratch.path().join("valid.jsonl"),
    )
    .unwrap();
    // The service-account token a run that gets as far as Vault logs in with: a credential,
    // so it must show up nowhere either.
    std::fs::write(
        scratch.path().join("jwt"),
        format!("eyJhbGciOiJub25lIn0.{CANARY}-jwt.sig\n"),
    )
    .unwrap();
    let before = snapshot(scratch.path());
    // Held until the run ends, so a run that gets as far as Vault is refused at once.
    let closed = keyturn_tests::process::ClosedPort::new();
    let vault = closed.url();

    let o = run(command(kind, &input, scratch.path(), shm.path(), &vault));
    let text = String::from_utf8_lossy(&o.output);
    let mut problems = Vec::new();
    if o.timed_out {
        problems.push(format!("still running after {RUN_TIMEOUT:?}"));
    }
    if o.code != Some(case.code) {
        problems.push(format!("exit {:?}, expected {}", o.code, case.code));
    }
    if !text.contains(&case.fragment) {
        problems.push(format!("output lacks {:?}", case.fragment));
    }
    // Never echoed: an assertion message must not carry the canary either, so only say so.
    if o.output
        .windows(CANARY.len())
        .any(|w| w == CANARY.as_bytes())
    {
        problems.push("a canary value appears in the output".into());
    }
    if let Some(c) = control_in(&o.output) {
        problems.push(format!("the output holds the control character {c:?}"));
    }
    if o.output.len() > OUTPUT_MAX {
        problems.push(format!("{} bytes of output", o.output.len()));
    }
    let written: Vec<_> = std::fs::read_dir(shm.path()).unwrap().collect();
    if !written.is_empty() {
        problems.push(format!(
            "{} entries written into the output directory",
            written.len()
        ));
    }
    let mut after = snapshot(scratch.path());
    // A login attempt is an access, recorded whether it succeeds or not; its record holds
    // no value.
    if case.code == 69
        && let Some(audit) = after.remove(Path::new("audit.jsonl"))
        && audit.windows(CANARY.len()).any(|w| w == CANARY.as_bytes())
    {
        problems.push("a canary value appears in the audit record".into());
    }
    let changed: BTreeSet<_> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    if !changed.is_empty() {
        problems.push(format!("files created or changed: {changed:?}"));
    }
    problems
}

fn run_kind(kind: &str) {
    let cases: Vec<Case> = expectations()
        .into_iter()
        .filter(|c| c.path.split('/').next() == Some(kind))
        .collect();
    assert!(!cases.is_empty(), "no cases for {kind} in expect.tsv");
    let mut failures = Vec::new();
    for case in &cases {
        let problems = check(kind, case);
        match (&case.known_failure, problems.is_empty()) {
            (None, true) => {}
            (None, false) => failures.push(format!("{}: {}", case.path, problems.join("; "))),
            (Some(why), false) => println!(
                "SKIPPED (known failure) {}: {why}: {}",
                case.path,
                problems.join("; ")
            ),
            (Some(why), true) => println!(
                "NOTE {} passes now; remove its known-failure note ({why})",
                case.path
            ),
        }
    }
    println!("{kind}: {} cases", cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} hostile {kind} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn the_corpus_has_an_expectation_for_every_file_and_at_least_150_files() {
    let listed: BTreeSet<String> = expectations().into_iter().map(|c| c.path).collect();
    let mut on_disk = BTreeSet::new();
    for kind in KINDS {
        for e in std::fs::read_dir(corpus().join(kind)).unwrap() {
            on_disk.insert(format!(
                "{kind}/{}",
                e.unwrap().file_name().to_string_lossy()
            ));
        }
    }
    let unlisted: Vec<_> = on_disk.difference(&listed).collect();
    let missing: Vec<_> = listed.difference(&on_disk).collect();
    assert!(
        unlisted.is_empty(),
        "files without an expectation: {unlisted:?}"
    );
    assert!(
        missing.is_empty(),
        "expectations without a file: {missing:?}"
    );
    assert!(on_disk.len() >= 150, "only {} hostile files", on_disk.len());
}

#[test]
fn hostile_policies_are_refused_by_policy_check_without_echo_or_side_effect() {
    run_kind("policies");
}

#[test]
fn hostile_manifests_are_refused_by_keyturn_init_before_anything_is_written() {
    run_kind("manifests");
}

#[test]
fn hostile_annotation_files_are_refused_by_keyturn_init_before_anything_is_written() {
    run_kind("annotations");
}

#[test]
fn hostile_audit_logs_get_a_verdict_from_audit_verify_and_are_left_untouched() {
    run_kind("audit");
}

#[test]
fn hostile_audit_logs_are_printed_escaped_by_audit_tail_and_left_untouched() {
    run_kind("audit-tail");
}

#[test]
fn hostile_audit_key_files_are_refused_or_fail_the_mac_check() {
    run_kind("audit-keys");
}
