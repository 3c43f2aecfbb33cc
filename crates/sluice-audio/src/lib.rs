//! Audio codec core of Sluice: turns audio files of any common format into planar `f32`
//! [`Audio`], converts its sample rate and channels, and writes WAV, FLAC or `.npy`. The work is
//! done by pure-Rust crates so the crate builds anywhere `cargo` does, with no system codec
//! libraries: symphonia decodes (WAV, FLAC, MP3, Ogg Vorbis, MP4/AAC, ADPCM) with gapless
//! trimming, rubato resamples (FFT-based, measured against soxr), hound writes WAV and flacenc
//! writes FLAC; the `.npy` writer is a few lines by hand.
//!
//! It depends on no pipeline or server crate: the pipeline stages, output naming and `sluice audio
//! resample` built on it live in `sluice-stages` (`sluice_stages::audio`), and the server's
//! classifiers decode with it directly.
pub mod audio;
pub mod channels;
pub mod decode;
mod edit_list;
pub mod encode;
pub mod npy;
pub mod resample;

pub use audio::{Audio, AudioError};
pub use channels::ChannelOp;
pub use encode::{AudioFormat, WavSample};
pub use resample::ResamplerCache;
