//! cargo-fuzz target `v2_request`: see crates/sluice-fuzz.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::v2_request(data));
