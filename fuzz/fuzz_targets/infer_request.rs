//! cargo-fuzz target `infer_request`: see crates/sluice-fuzz.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::infer_request(data));
