//! cargo-fuzz target `pipeline_toml`: see crates/sluice-fuzz.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::pipeline_toml(data));
