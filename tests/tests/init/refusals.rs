//! keyturn-init's refusals: each leaves the output directory exactly as it was.

use crate::support::{Fixture, StdoutIs, snapshot};
use serde_json::json;

/// A manifest reading `secret/data/orders/a` into `file`, logging in with the root token.
fn manifest(f: &Fixture, file: &str) -> String {
    let tf = f.file("token", f.bao.root_token());
    format!(
        "vault: {{ auth: token, token-file: {} }}\nsecrets:\n  - {{ path: secret/data/orders/a, file: {file}, key: v }}\n",
        tf.display()
    )
}

async fn fixture_with_a_secret() -> Fixture {
    let mut f = Fixture::start().await;
    let v = f.canary("a");
    f.kv2("orders/a", json!({"v": v})).await;
    // Something already there, which no refusal may touch.
    std::fs::write(f.out.join("existing"), "keep me").unwrap();
    f
}

#[tokio::test]
async fn an_output_directory_on_disk_is_refused_before_any_network_call() {
    let f = fixture_with_a_secret().await;
    let disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    if keyturn_core::sys::is_memory_backed(disk.path()).unwrap() {
        eprintln!("note: the target directory is on tmpfs here; nothing to check");
        return;
    }
    let m = f.file("m.yaml", &manifest(&f, "a"));
    let args = [
        "--manifest",
        m.to_str().unwrap(),
        "--out",
        disk.path().to_str().unwrap(),
    ];
    let r = f.run(&args, &[]).await;
    assert_eq!(r.code, 74, "{}", r.stderr);
    assert!(
        r.failure_lines()[0].contains("not on tmpfs or ramfs"),
        "{}",
        r.stderr
    );
    assert!(std::fs::read_dir(disk.path()).unwrap().next().is_none());
    assert_eq!(f.bao.requests_for("read", "secret/data/orders/a"), 0);
    // --allow-disk lifts exactly that rule.
    let mut with_flag = args.to_vec();
    with_flag.push("--allow-disk");
    let r = f.run(&with_flag, &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    f.assert_no_canary_leaked(&r);
}

#[tokio::test]
async fn a_symlink_in_the_output_path_or_at_a_target_is_refused_and_nothing_is_written() {
    let f = fixture_with_a_secret().await;
    let before = f.snapshot();
    // A symlink to the output directory.
    let link = f.out.parent().unwrap().join("link");
    std::os::unix::fs::symlink(&f.out, &link).unwrap();
    let m = f.file("m.yaml", &manifest(&f, "a"));
    let r = f
        .run(
            &[
                "--manifest",
                m.to_str().unwrap(),
                "--out",
                link.to_str().unwrap(),
            ],
            &[],
        )
        .await;
    assert_eq!(r.code, 74, "{}", r.stderr);
    assert!(
        r.failure_lines()[0].contains("is a symbolic link"),
        "{}",
        r.stderr
    );
    assert_eq!(f.snapshot(), before);
    // A symlink where a secret would go, pointing outside.
    let victim = f.scratch.path().join("victim");
    std::fs::write(&victim, "victim").unwrap();
    std::os::unix::fs::symlink(&victim, f.out.join("a")).unwrap();
    let before = f.snapshot();
    let r = f.run_manifest(&manifest(&f, "a"), &[], &[]).await;
    assert_eq!(r.code, 74, "{}", r.stderr);
    assert!(
        r.failure_lines()[0].contains("/a: is a symbolic link"),
        "{}",
        r.stderr
    );
    assert_eq!(f.snapshot(), before);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim");
    assert_eq!(f.bao.requests_for("read", "secret/data/orders/a"), 0);
    f.assert_no_canary_leaked(&r);
}

#[tokio::test]
async fn absolute_dot_dot_and_duplicate_files_are_refused_before_any_network_call() {
    let f = fixture_with_a_secret().await;
    let before = f.snapshot();
    let tf = f.file("token", f.bao.root_token());
    let cases = [
        ("/etc/passwd", "is absolute"),
        ("../escape", "contains \"..\""),
        ("sub/../../escape", "contains \"..\""),
    ];
    for (file, why) in cases {
        let r = f.run_manifest(&manifest(&f, file), &[], &[]).await;
        assert_eq!(r.code, 64, "{file}: {}", r.stderr);
        let lines = r.failure_lines();
        assert_eq!(lines.len(), 1, "{}", r.stderr);
        assert!(
            lines[0].contains("manifest.yaml:3:") && lines[0].contains(why),
            "{}",
            lines[0]
        );
    }
    let dup = format!(
        "vault: {{ auth: token, token-file: {} }}\nsecrets:\n  - {{ path: secret/data/orders/a, file: x }}\n  - {{ path: secret/data/orders/b, file: ./x }}\n",
        tf.display()
    );
    let r = f.run_manifest(&dup, &[], &[]).await;
    assert_eq!(r.code, 64, "{}", r.stderr);
    assert!(
        r.failure_lines()[0]
            .contains("manifest.yaml:4:5: file x is also written by the entry at line 3"),
        "{}",
        r.stderr
    );
    assert_eq!(f.snapshot(), before);
    assert_eq!(f.bao.requests_for("read", "secret/data/orders/a"), 0);
    f.assert_no_canary_leaked(&r);
}

#[tokio::test]
async fn a_failure_after_fetching_writes_nothing_and_keeps_existing_files() {
    let mut f = fixture_with_a_secret().await;
    let big = "x".repeat(1024 * 1024 + 1);
    f.kv2("orders/big", json!({"v": big})).await;
    let c = f.canary("c");
    f.kv2("orders/c", json!({"v": c})).await;
    let tf = f.file("token", f.bao.root_token());
    // "existing" is a target too: it must keep its old content.
    let head = format!(
        "vault: {{ auth: token, token-file: {} }}\nsecrets:\n",
        tf.display()
    );
    let ok = "  - { path: secret/data/orders/a, file: existing, key: v }\n  - { path: secret/data/orders/c, file: new/c, key: v }\n";
    let before = f.snapshot();
    let cases = [
        // Over the 1 MiB limit: found after reading, so 65 (64 promises no network call).
        (
            "  - { path: secret/data/orders/big, file: big, key: v }\n",
            65,
            "over the 1024 KiB limit",
        ),
        // A template naming a field the secret lacks.
        (
            "  - { path: secret/data/orders/c, file: t, template: '{{ .nope }}' }\n",
            65,
            "secret/data/orders/c: no field \"nope\"",
        ),
        // A path that does not exist.
        (
            "  - { path: secret/data/orders/missing, file: m }\n",
            66,
            "secret/data/orders/missing: not found",
        ),
    ];
    for (bad, code, msg) in cases {
        let r = f.run_manifest(&format!("{head}{ok}{bad}"), &[], &[]).await;
        assert_eq!(r.code, code, "{bad}: {}", r.stderr);
        let lines = r.failure_lines();
        assert_eq!(lines.len(), 1, "{}", r.stderr);
        assert!(
            lines[0].contains(msg) && lines[0].contains("manifest.yaml:5:5"),
            "{}",
            lines[0]
        );
        assert_eq!(f.snapshot(), before, "{bad}");
        assert_eq!(f.read_out("existing"), "keep me");
        f.assert_no_canary_leaked(&r);
    }
    let r = f.run_manifest(&format!("{head}{ok}"), &[], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(f.read_out("new/c"), c);
}

#[tokio::test]
async fn usage_errors_exit_64_before_any_network_call() {
    let f = fixture_with_a_secret().await;
    let before = f.snapshot();
    let m = f.file("m.yaml", &manifest(&f, "a"));
    let out = f.out.to_str().unwrap();
    let m = m.to_str().unwrap();
    for args in [
        vec!["--manifest", m, "--out", out, "--no-such-flag"],
        vec!["--manifest", m, "--out", out, "--deadline", "soon"],
        vec!["--out", out],
        vec!["--manifest", m, "--out", out, "--owner", "root"],
        vec!["--manifest", "/nonexistent.yaml", "--out", out],
    ] {
        let r = f.run(&args, &[]).await;
        assert_eq!(r.code, 64, "{args:?}: {}", r.stderr);
        assert_eq!(r.failure_lines().len(), 1, "{args:?}: {}", r.stderr);
    }
    // An argument clap refuses is quoted in its message: escaped and capped, never whole.
    let huge = format!("--{}\u{1b}[2J", "x".repeat(100_000));
    let r = f.run(&["--manifest", m, "--out", out, &huge], &[]).await;
    assert_eq!(r.code, 64, "{}", &r.stderr[..200.min(r.stderr.len())]);
    assert!(r.stderr.len() < 4096, "{} bytes of stderr", r.stderr.len());
    assert!(
        !r.stderr.contains('\u{1b}'),
        "a raw escape reached the terminal"
    );
    let bad_manifest = f.file(
        "bad.yaml",
        "vault: { auth: token }\nsecrets:\n  - { path: a/b, file: x, fromat: env }\n",
    );
    let r = f
        .run(
            &["--manifest", bad_manifest.to_str().unwrap(), "--out", out],
            &[],
        )
        .await;
    assert_eq!(r.code, 64, "{}", r.stderr);
    assert!(
        r.failure_lines()[0].contains("bad.yaml:3:27: unknown field `fromat`"),
        "{}",
        r.stderr
    );
    assert_eq!(f.snapshot(), before);
    assert_eq!(f.bao.requests_for("read", "secret/data/orders/a"), 0);
}

#[tokio::test]
async fn an_unusable_audit_log_stops_the_run_before_anything_is_read_or_written() {
    let f = fixture_with_a_secret().await;
    let before = f.snapshot();
    let r = f
        .run_manifest(
            &manifest(&f, "a"),
            &[],
            &[("KEYTURN_AUDIT_FILE", "/nonexistent-dir/audit.jsonl")],
        )
        .await;
    assert_ne!(r.code, 0);
    assert!(r.failure_lines()[0].contains("audit"), "{}", r.stderr);
    assert_eq!(f.snapshot(), before);
    assert_eq!(f.bao.requests_for("read", "secret/data/orders/a"), 0);
    let _ = snapshot;
}

#[tokio::test]
async fn a_template_reading_a_dot_dot_path_is_refused_before_any_network_call() {
    let mut f = fixture_with_a_secret().await;
    // What `secret/data/orders/x/../one` would resolve to: it must never be read.
    let one = f.canary("one");
    f.kv2("orders/one", json!({"v": one})).await;
    let before = f.snapshot();
    let tf = f.file("token", f.bao.root_token());
    let m = format!(
        "vault: {{ auth: token, token-file: {} }}\nsecrets:\n  - path: secret/data/orders/a\n    file: t\n    template: '{{{{ with secret \"secret/data/orders/x/../one\" }}}}{{{{ .Data.data.v }}}}{{{{ end }}}}'\n",
        tf.display()
    );
    let r = f.run_manifest(&m, &[], &[]).await;
    assert_eq!(r.code, 64, "{}", r.stderr);
    let lines = r.failure_lines();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(
        lines[0].contains("manifest.yaml:5:15: template:")
            && lines[0].contains("secret/data/orders/x/../one")
            && lines[0].contains(".. segment"),
        "{}",
        lines[0]
    );
    // The same through the injector's annotations names the annotation.
    let ann = f.file(
        "annotations",
        "vault.hashicorp.com/role=\"r\"\nvault.hashicorp.com/agent-inject-secret-t=\"secret/data/orders/a\"\nvault.hashicorp.com/agent-inject-template-t=\"{{ with secret \\\"secret/data/orders/x/../one\\\" }}{{ .Data.data.v }}{{ end }}\"\n",
    );
    let r2 = f
        .run(
            &[
                "--annotations",
                ann.to_str().unwrap(),
                "--out",
                f.out.to_str().unwrap(),
            ],
            &[],
        )
        .await;
    assert_eq!(r2.code, 64, "{}", r2.stderr);
    let lines = r2.failure_lines();
    assert_eq!(lines.len(), 1, "{}", r2.stderr);
    assert!(
        lines[0].contains("annotations:3:1: vault.hashicorp.com/agent-inject-template-t:")
            && lines[0].contains(".. segment"),
        "{}",
        lines[0]
    );
    assert_eq!(f.snapshot(), before);
    for path in ["secret/data/orders/one", "secret/data/orders/x/../one"] {
        assert_eq!(f.bao.requests_for("read", path), 0, "{path}");
    }
    assert!(f.audit_entries().is_empty(), "{:?}", f.audit_entries());
    f.assert_no_canary_leaked(&r);
    f.assert_no_canary_leaked(&r2);
}

#[tokio::test]
async fn an_audit_event_stdout_cannot_take_fails_the_run_with_74_and_writes_nothing() {
    let f = fixture_with_a_secret().await;
    let before = f.snapshot();
    let m = f.file("m.yaml", &manifest(&f, "a"));
    let args = [
        "--manifest",
        m.to_str().unwrap(),
        "--out",
        f.out.to_str().unwrap(),
    ];

    // Stdout closed: refused before any network call, since nothing could be recorded.
    let r = f.run_audit_to_stdout(&args, StdoutIs::Closed).await;
    assert_eq!(r.code, 74, "{}", r.stderr);
    let lines = r.failure_lines();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(
        lines[0].contains("audit: stdout is closed or /dev/null")
            && lines[0].contains("--audit-file"),
        "{}",
        lines[0]
    );
    assert_eq!(f.snapshot(), before);
    assert_eq!(f.bao.requests_for("read", "secret/data/orders/a"), 0);
    f.assert_no_canary_leaked(&r);

    // A pipe nobody reads: the write of the read's event fails, and the file is not written.
    let r = f.run_audit_to_stdout(&args, StdoutIs::ReaderGone).await;
    assert_eq!(r.code, 74, "{}", r.stderr);
    let lines = r.failure_lines();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(
        lines[0].contains("was not recorded") && lines[0].contains("no secret file was written"),
        "{}",
        lines[0]
    );
    assert_eq!(f.snapshot(), before);
    f.assert_no_canary_leaked(&r);

    // The same run with a reader: the event is on stdout and the file is written.
    let r = f.run_audit_to_stdout(&args, StdoutIs::Read).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let events = String::from_utf8(r.stdout.clone()).unwrap();
    assert!(
        events.contains("\"secret.read\"") && events.contains("secret/data/orders/a"),
        "{events}"
    );
    assert!(f.out.join("a").exists());
    f.assert_no_canary_leaked(&r);
}

#[tokio::test]
async fn a_boolean_or_owner_that_is_not_one_exits_64_naming_the_flag_before_any_network_call() {
    let f = fixture_with_a_secret().await;
    let before = f.snapshot();
    let m = f.file("m.yaml", &manifest(&f, "a"));
    let m = m.to_str().unwrap();
    let out = f.out.to_str().unwrap();
    let base = ["--manifest", m, "--out", out];
    // (extra flags, environment, what the one failure line says)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case<'_>; 4] = [
        (
            &[],
            &[("KEYTURN_INIT_ALLOW_DISK", "maybe")],
            "--allow-disk (KEYTURN_INIT_ALLOW_DISK): \"maybe\" is not a boolean; write true, false, 1 or 0",
        ),
        (
            &[],
            &[("KEYTURN_AUDIT_STDOUT", "yes")],
            "--audit-stdout (KEYTURN_AUDIT_STDOUT): \"yes\" is not a boolean",
        ),
        (
            &["--owner", "4294967295:1000"],
            &[],
            "--owner (KEYTURN_INIT_OWNER): uid 4294967295 is -1 to chown",
        ),
        (
            &[],
            &[("KEYTURN_INIT_OWNER", "1000:99999999999")],
            "--owner (KEYTURN_INIT_OWNER): gid \"99999999999\" is out of range",
        ),
    ];
    for (extra, env, want) in cases {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let r = f.run(&args, env).await;
        assert_eq!(r.code, 64, "{extra:?} {env:?}: {}", r.stderr);
        let lines = r.failure_lines();
        assert_eq!(lines.len(), 1, "{}", r.stderr);
        assert!(lines[0].contains(want), "{}", lines[0]);
        f.assert_no_canary_leaked(&r);
    }
    assert_eq!(f.snapshot(), before);
    assert_eq!(f.bao.requests_for("read", "secret/data/orders/a"), 0);
}

#[tokio::test]
async fn a_mode_sharing_a_secret_needs_an_opt_in_and_a_writable_one_is_refused() {
    let f = fixture_with_a_secret().await;
    let before = f.snapshot();
    let tf = f.file("token", f.bao.root_token());
    let entry = |mode: &str| {
        format!(
            "vault: {{ auth: token, token-file: {} }}\nsecrets:\n  - {{ path: secret/data/orders/a, file: a, key: v, mode: {mode} }}\n",
            tf.display()
        )
    };
    let cases = [
        (
            "\"0777\"",
            "mode \"0777\" lets the group or others write the file",
        ),
        (
            "\"0666\", shared: true",
            "mode \"0666\" lets the group or others write the file",
        ),
        (
            "\"0440\"",
            "mode \"0440\" lets the group or others read the file; add shared: true",
        ),
    ];
    for (mode, want) in cases {
        let r = f.run_manifest(&entry(mode), &[], &[]).await;
        assert_eq!(r.code, 64, "{mode}: {}", r.stderr);
        let lines = r.failure_lines();
        assert_eq!(lines.len(), 1, "{}", r.stderr);
        assert!(
            lines[0].contains("manifest.yaml:3:") && lines[0].contains(want),
            "{}",
            lines[0]
        );
        f.assert_no_canary_leaked(&r);
    }
    // An annotation file without perms was 0644 and is 0400 now; 0644 needs keyturn's opt-in.
    let ann = |extra: &str| {
        f.file(
            "annotations",
            &format!(
                "vault.hashicorp.com/role=\"r\"\nvault.hashicorp.com/agent-inject-secret-a=\"secret/data/orders/a\"\nvault.hashicorp.com/agent-inject-perms-a=\"0644\"\n{extra}"
            ),
        )
    };
    let a = ann("");
    let r = f
        .run(
            &[
                "--annotations",
                a.to_str().unwrap(),
                "--out",
                f.out.to_str().unwrap(),
            ],
            &[],
        )
        .await;
    assert_eq!(r.code, 64, "{}", r.stderr);
    assert!(
        r.failure_lines()[0].contains(
            "annotations:3:1: vault.hashicorp.com/agent-inject-perms-a: mode \"0644\" lets the group or others read the file; add keyturn.dev/shared-a=\"true\""
        ),
        "{}",
        r.stderr
    );
    assert_eq!(f.snapshot(), before);
    assert_eq!(f.bao.requests_for("read", "secret/data/orders/a"), 0);
    f.assert_no_canary_leaked(&r);
    // With the opt-in the mode is accepted (the run then gets as far as logging in).
    let a = ann("keyturn.dev/shared-a=\"true\"\n");
    let r = f
        .run(
            &[
                "--annotations",
                a.to_str().unwrap(),
                "--out",
                f.out.to_str().unwrap(),
            ],
            &[
                ("KEYTURN_INIT_JWT_FILE", tf.to_str().unwrap()),
                ("KEYTURN_INIT_DEADLINE", "2s"),
            ],
        )
        .await;
    assert!(
        r.failure_lines().iter().all(|l| !l.contains("mode")),
        "{}",
        r.stderr
    );
}
