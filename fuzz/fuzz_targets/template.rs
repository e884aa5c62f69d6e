//! The template engine: parse any text, then render what parses with a fixed secret and a
//! second secret reachable through `with secret`. Rendering may fail (no such field, output
//! too large) but never panic or loop.
#![no_main]

use keyturn_core::SecretValue;
use keyturn_core::vault::SecretData;
use keyturn_init::fetch::{Engine, Fetched, FetchedSet, ReadKey};
use keyturn_init::render::SecretBuf;
use keyturn_init::render::template::Template;
use libfuzzer_sys::fuzz_target;

fn data(pairs: &[(&str, &str)]) -> SecretData {
    let mut d = SecretData::new();
    for (k, v) in pairs {
        d.insert(*k, SecretValue::from_str_copy(v));
    }
    d
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(src) = std::str::from_utf8(bytes) else {
        return;
    };
    let Ok(t) = Template::parse(src) else {
        return;
    };
    let _ = t.secret_paths();
    let root = data(&[
        ("user", "orders"),
        ("password", "p@ss word\"\\\n\u{1b}"),
        ("api-key", ""),
        ("n", "42"),
    ]);
    let mut all = FetchedSet::default();
    for path in ["secret/data/app", "secret/data/other", "kv/one"] {
        all.insert(
            ReadKey {
                path: path.into(),
                version: None,
            },
            Fetched {
                engine: Engine::Kv2,
                data: data(&[("x", "X"), ("user", "u"), ("password", "p")]),
                version: Some(1),
                lease: None,
            },
        );
    }
    let mut out = SecretBuf::with_capacity(64);
    let _ = t.render("secret/data/app", &root, &all, &mut out);
});
