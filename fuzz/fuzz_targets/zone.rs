//! The zone-file loader on arbitrary text: never panics; every rejection names a line.
#![no_main]

use std::path::PathBuf;

use hickory_proto::rr::Name;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(origin) = Name::from_ascii("gto.example.com.") else {
        return;
    };
    if let Err(errors) = gto::zone::parse(text, &origin, PathBuf::from("fuzz.zone")) {
        assert!(errors.iter().all(|e| e.line.is_some()));
    }
});
