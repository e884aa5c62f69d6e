//! The audit log reader: an entry parsed from one line (`keyturn audit tail`, `search`), and
//! the keyed chain verifier over a small file (`keyturn audit verify`), the first line of the
//! input being the file's first line as the fuzzer mutates it.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use keyturn_core::audit::{Entry, HmacKey, VerifyOptions, verify_with};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    file: PathBuf,
    options: VerifyOptions,
}

/// One scratch file and the key of the seed corpus's lines (32 bytes of 0x11, as in
/// tests/hostile/fixtures/audit.key), so that mutations of valid lines reach the MAC and
/// chain checks rather than stopping at the hash.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("keyturn-fuzz-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key_file = dir.join("audit.key");
        std::fs::write(&key_file, "11".repeat(32)).unwrap();
        let key = HmacKey::load(&key_file).unwrap();
        Fixture {
            file: dir.join("audit.jsonl"),
            options: VerifyOptions {
                key: Some(key.chain_key()),
                ..VerifyOptions::default()
            },
        }
    })
}

fuzz_target!(|data: &[u8]| {
    for line in data.split(|b| *b == b'\n') {
        if let Ok(e) = Entry::parse(line) {
            let _ = e.time_rfc3339();
        }
    }
    let f = fixture();
    std::fs::write(&f.file, data).unwrap();
    let report = verify_with(std::slice::from_ref(&f.file), &f.options);
    let _ = report.is_ok();
    if let Some(failure) = &report.failure {
        let _ = format!("{failure:?}");
    }
});
