//! keyturn-init's reader of Vault Agent Injector annotations (downward-API `key="value"` lines,
//! Go-quoted), which also parses any templates they carry.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = keyturn_init::annotations::parse("fuzz-annotations", text);
        let _ = keyturn_init::annotations::go_unquote(text);
    }
});
