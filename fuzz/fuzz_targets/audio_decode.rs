//! cargo-fuzz target `audio_decode`: see crates/sluice-fuzz.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::audio_decode(data));
