//! Channel remixing: keep, downmix to mono, make stereo, or pick one channel.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::audio::{Audio, AudioError};

/// What to do with the channels of decoded audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChannelOp {
    /// Leave the channels as they are.
    Keep,
    /// Average all channels into one.
    Mono,
    /// Two channels: mono is duplicated, stereo kept; more channels are refused.
    Stereo,
    /// Keep only the channel with this zero-based index.
    Pick(usize),
}

const CHOICES: &str = "keep, mono, stereo, or a channel index (0, 1, ...)";

impl FromStr for ChannelOp {
    type Err = AudioError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "keep" => Ok(Self::Keep),
            "mono" => Ok(Self::Mono),
            "stereo" => Ok(Self::Stereo),
            other => other.parse::<usize>().map(Self::Pick).map_err(|_| {
                AudioError::Invalid(format!("unknown channel operation {s:?}; use {CHOICES}"))
            }),
        }
    }
}

impl std::fmt::Display for ChannelOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Keep => f.write_str("keep"),
            Self::Mono => f.write_str("mono"),
            Self::Stereo => f.write_str("stereo"),
            Self::Pick(i) => write!(f, "{i}"),
        }
    }
}

impl ChannelOp {
    /// Applies the operation, consuming `audio` so that `Keep` and `Pick` move rather than copy.
    pub fn apply(self, mut audio: Audio) -> Result<Audio, AudioError> {
        let n = audio.channel_count();
        match self {
            Self::Keep => Ok(audio),
            Self::Mono if n == 1 => Ok(audio),
            Self::Mono => {
                if n == 0 {
                    return Err(AudioError::Invalid(
                        "the audio has no channels to mix to mono".into(),
                    ));
                }
                audio.channels = vec![mix_mono(&audio.channels)];
                Ok(audio)
            }
            Self::Stereo => match n {
                1 => {
                    let mono = audio.channels[0].clone();
                    audio.channels.push(mono);
                    Ok(audio)
                }
                2 => Ok(audio),
                _ => Err(AudioError::Invalid(format!(
                    "the audio has {n} channels; stereo needs 1 or 2 (use mono or pick)"
                ))),
            },
            Self::Pick(i) if i < n => {
                let picked = audio.channels.swap_remove(i);
                audio.channels = vec![picked];
                Ok(audio)
            }
            Self::Pick(i) => Err(AudioError::Invalid(format!(
                "cannot pick channel {i}: the audio has {n} channel{} (indices start at 0)",
                if n == 1 { "" } else { "s" }
            ))),
        }
    }
}

/// Sums in f64 so the additions of audio-range f32 values are exact and only the final
/// division and cast round.
fn mix_mono(channels: &[Vec<f32>]) -> Vec<f32> {
    if let [left, right] = channels {
        // The common stereo case as a plain zip, which the compiler vectorises; same arithmetic.
        return left
            .iter()
            .zip(right)
            .map(|(&l, &r)| ((f64::from(l) + f64::from(r)) / 2.0) as f32)
            .collect();
    }
    let n = channels.len() as f64;
    (0..channels[0].len())
        .map(|t| (channels.iter().map(|c| f64::from(c[t])).sum::<f64>() / n) as f32)
        .collect()
}
