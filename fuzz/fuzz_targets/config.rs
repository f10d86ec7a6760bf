//! The config parser on arbitrary text: never panics; a config it accepts round-trips
//! through a second parse of the same text to the same result.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = gto::config::parse(text, Path::new("fuzz.toml"));
    let second = gto::config::parse(text, Path::new("fuzz.toml"));
    assert_eq!(first.is_ok(), second.is_ok());
    if let Err(errors) = first {
        assert!(
            !errors.is_empty(),
            "a rejected config names at least one problem"
        );
    }
});
