//! keyturn-init's manifest parser and validator: any text gives a manifest or located errors.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The binary reads the manifest as UTF-8 and refuses anything else before parsing.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = keyturn_init::manifest::Manifest::parse("fuzz.yaml", text);
    }
});
