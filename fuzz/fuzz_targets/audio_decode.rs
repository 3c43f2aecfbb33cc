//! cargo-fuzz target `audio_decode`: see crates/sluice-fuzz.
//!
//! The decoder turns a panic inside symphonia into a "corrupt file" error (`unpanicked`), which is
//! what the server and pipelines see; libfuzzer-sys's panic hook aborts on every panic, caught or
//! not, so it is replaced by a silent one here. A panic that escapes the target still aborts (its
//! wrapper's `catch_unwind` does), and libFuzzer saves the input.
#![no_main]

static CAUGHT_PANICS_ARE_ERRORS: std::sync::Once = std::sync::Once::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    CAUGHT_PANICS_ARE_ERRORS.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    sluice_fuzz::audio_decode(data)
});
