//! cargo-fuzz target `tokenizer`: see crates/sluice-fuzz.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::tokenizer(data));
