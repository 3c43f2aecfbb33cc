//! cargo-fuzz target `translation_request`: see crates/sluice-fuzz.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::translation_request(data));
