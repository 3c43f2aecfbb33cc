//! Codec core against the committed fixtures in `tests/fixtures/audio` (see its manifest.json
//! and tools/make_audio_fixtures.py): decoding, error variants, resampling vs soxr, channel
//! operations, encoder round trips and `.npy` output. Run with `--nocapture` to see the
//! measured numbers the thresholds are set around.

use std::path::PathBuf;

use serde_json::Value;
use sluice_audio::decode::{decode, Decoder};
use sluice_audio::encode::encode;
use sluice_audio::{npy, Audio, AudioError, AudioFormat, ChannelOp, ResamplerCache, WavSample};

fn fixtures() -> PathBuf {
    sluice_testkit::fixture("audio")
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).expect("manifest.json");
    serde_json::from_str(&text).expect("manifest parses")
}

fn entry(path: &str) -> Value {
    manifest()["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == path)
        .unwrap_or_else(|| panic!("{path} not in manifest"))
        .clone()
}

fn decode_fixture(rel: &str) -> Result<Audio, AudioError> {
    let bytes = std::fs::read(fixtures().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    decode(&bytes, rel.rsplit_once('.').map(|(_, ext)| ext))
}

/// Reads a `.npy` v1 file of little-endian f32 (what the fixture generator writes).
fn read_npy(bytes: &[u8]) -> (String, Vec<usize>, Vec<f32>) {
    assert_eq!(&bytes[..6], b"\x93NUMPY", "npy magic");
    assert_eq!(&bytes[6..8], &[1, 0], "npy version 1.0");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len])
        .unwrap()
        .to_string();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    assert!(header.ends_with('\n'), "{header:?}");
    let dims = header
        .split("'shape': (")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .expect("shape");
    let shape: Vec<usize> = dims
        .split(',')
        .filter_map(|d| d.trim().parse().ok())
        .collect();
    let data: Vec<f32> = bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(shape.iter().product::<usize>(), data.len(), "{header}");
    (header, shape, data)
}

/// A (frames, channels) fixture array as planar channels.
fn read_planar(rel: &str) -> Vec<Vec<f32>> {
    let (_, shape, data) = read_npy(&std::fs::read(fixtures().join(rel)).unwrap());
    let channels = shape[1];
    (0..channels)
        .map(|c| data.iter().skip(c).step_by(channels).copied().collect())
        .collect()
}

fn assert_bitwise_eq(what: &str, got: &[Vec<f32>], want: &[Vec<f32>]) {
    assert_eq!(got.len(), want.len(), "{what}: channel count");
    for (c, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}: channel {c} length");
        if let Some(t) = (0..g.len()).find(|&t| g[t].to_bits() != w[t].to_bits()) {
            panic!("{what}: channel {c} frame {t}: got {} want {}", g[t], w[t]);
        }
    }
}

// ------------------------------------------------------------------------------------ decode

#[test]
fn every_decodable_file_decodes_with_its_rate_channels_and_length() {
    for file in manifest()["files"].as_array().unwrap() {
        if file["decodes"] != true {
            continue;
        }
        let rel = file["path"].as_str().unwrap();
        let audio = decode_fixture(rel).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let written = file["frames_written"].as_u64().unwrap() as usize;
        println!(
            "{rel}: {} Hz, {} ch, {} frames (written {written}, ffmpeg {})",
            audio.sample_rate,
            audio.channel_count(),
            audio.frames(),
            file["frames_ffmpeg"]
        );
        assert_eq!(u64::from(audio.sample_rate), file["sample_rate"], "{rel}");
        assert_eq!(audio.channel_count() as u64, file["channels"], "{rel}");
        assert!(
            audio.channels.iter().all(|c| c.len() == audio.frames()),
            "{rel}"
        );
        // Exact for every file, lossy ones included: MP3 through the LAME header (symphonia
        // gapless), Ogg Vorbis through the last granule position and M4A through the MP4 edit
        // list (both applied by `decode`, as symphonia 0.5 does not).
        assert_eq!(audio.frames(), written, "{rel}: frames");
        if let Some(samples) = file["samples"].as_str() {
            assert_bitwise_eq(rel, &audio.channels, &read_planar(samples));
        }
    }
}

/// The lossy fixtures are `0.25 * sin(2 pi f t / sr)` from t = 0: a length that is right but
/// shifted (priming left in front, audio cut at the end) would not match the formula. Bounds
/// are the measured coding error (MP3 0.0088, Vorbis 0.0015, AAC 0.0086 RMS) plus about 25 %;
/// a shift by one codec frame gives about 0.25.
#[test]
fn lossy_files_are_time_aligned_with_what_was_encoded() {
    for (rel, freqs, bound) in [
        ("src/speech/tone_48k_stereo.mp3", &[440.0, 660.0][..], 0.011),
        ("src/speech/tone_44k1_mono.ogg", &[440.0][..], 0.002),
        ("src/speech/tone_48k_mono.m4a", &[440.0][..], 0.011),
    ] {
        let audio = decode_fixture(rel).unwrap();
        let rate = f64::from(audio.sample_rate);
        for (c, &freq) in freqs.iter().enumerate() {
            let x = &audio.channels[c];
            let err: f64 = x
                .iter()
                .enumerate()
                .map(|(t, &v)| {
                    let want = 0.25 * (2.0 * std::f64::consts::PI * freq * t as f64 / rate).sin();
                    (f64::from(v) - want).powi(2)
                })
                .sum();
            let rms = (err / x.len() as f64).sqrt();
            println!("{rel} channel {c}: rms error vs the encoded sine {rms:.5} (bound {bound})");
            assert!(rms < bound, "{rel} channel {c}: rms error {rms}");
        }
    }
}

#[test]
fn bad_files_fail_with_the_right_error() {
    let truncated = |rel: &str, want_expected: u64, want_decoded: u64| {
        let err = decode_fixture(rel).unwrap_err();
        let message = err.to_string();
        println!("{rel}: {message}");
        match err {
            AudioError::Truncated { expected, decoded } => {
                assert_eq!((expected, decoded), (want_expected, want_decoded), "{rel}");
            }
            other => panic!("{rel}: expected Truncated, got {other:?}"),
        }
        assert!(message.contains("truncated"), "{message}");
        assert!(message.contains(&want_expected.to_string()), "{message}");
        assert!(message.contains(&want_decoded.to_string()), "{message}");
    };
    // The manifest's frames_ffmpeg is the prefix that does decode.
    let wav = entry("src/bad/truncated.wav");
    truncated(
        "src/bad/truncated.wav",
        wav["frames_written"].as_u64().unwrap(),
        wav["frames_ffmpeg"].as_u64().unwrap(),
    );
    let flac = entry("src/bad/truncated.flac");
    truncated(
        "src/bad/truncated.flac",
        flac["frames_written"].as_u64().unwrap(),
        flac["frames_ffmpeg"].as_u64().unwrap(),
    );

    let err = decode_fixture("src/bad/empty.mp3").unwrap_err();
    println!("empty.mp3: {err}");
    assert!(matches!(err, AudioError::Empty), "{err:?}");
    assert!(err.to_string().contains("zero bytes"), "{err}");

    for rel in ["src/bad/notaudio.mp3", "src/bad/readme.txt"] {
        let err = decode_fixture(rel).unwrap_err();
        println!("{rel}: {err}");
        assert!(matches!(err, AudioError::NotAudio(_)), "{rel}: {err:?}");
        assert!(err.to_string().contains("not audio"), "{err}");
    }
    // The hint names the suffix, so a user sees why an ".mp3" was refused.
    let err = decode_fixture("src/bad/notaudio.mp3").unwrap_err();
    assert!(err.to_string().contains(".mp3"), "{err}");
}

#[test]
fn damage_in_the_middle_is_corrupt_with_a_position() {
    let rel = "src/music/sweep_44k1_mono_pcm24.flac";
    let mut bytes = std::fs::read(fixtures().join(rel)).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle..middle + 64]
        .iter_mut()
        .for_each(|b| *b ^= 0x5a);
    let err = decode(&bytes, Some("flac")).unwrap_err();
    println!("damaged FLAC: {err}");
    assert!(matches!(err, AudioError::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains(" s)"), "names a time: {err}");

    let rel = "src/speech/tone_48k_stereo.mp3";
    let mut bytes = std::fs::read(fixtures().join(rel)).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle..middle + 64]
        .iter_mut()
        .for_each(|b| *b ^= 0x5a);
    let err = decode(&bytes, Some("mp3")).unwrap_err();
    println!("damaged MP3: {err}");
    assert!(matches!(err, AudioError::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains("frame"), "{err}");

    // Cut inside the Ogg structure: symphonia cannot even open it, but it is not "not audio".
    let bytes = std::fs::read(fixtures().join("src/speech/tone_44k1_mono.ogg")).unwrap();
    let err = decode(&bytes[..bytes.len() * 6 / 10], Some("ogg")).unwrap_err();
    println!("cut Ogg: {err}");
    assert!(matches!(err, AudioError::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains("cut off"), "{err}");
}

// ---------------------------------------------------------------------------------- resample

/// (max absolute error, SNR in dB) of `got` against `want`, over all channels and frames.
fn compare(got: &[Vec<f32>], want: &[Vec<f32>]) -> (f64, f64) {
    let (mut max, mut noise, mut signal) = (0f64, 0f64, 0f64);
    for (g, w) in got.iter().zip(want) {
        for (&g, &w) in g.iter().zip(w) {
            let e = f64::from(g) - f64::from(w);
            max = max.max(e.abs());
            noise += e * e;
            signal += f64::from(w) * f64::from(w);
        }
    }
    (max, 10.0 * (signal / noise).log10())
}

/// Thresholds sit just outside the values measured with rubato 0.16.2 `FftFixedIn` (printed by
/// this test). What limits agreement is the transition band (91-100 % of the lower Nyquist),
/// where two good filters differ: the 48 k stereo file's second channel is white noise with
/// energy there, and the 44.1 k sweep ends at 8 kHz, the 16 k Nyquist. A worse filter or a
/// one-sample shift lands far outside (checked below).
#[test]
fn resampling_matches_the_soxr_references() {
    // (reference, minimum SNR dB, maximum abs error); measured: 60.14 dB / 5.86e-3,
    // 45.79 dB / 3.18e-2, 84.70 dB / 9.52e-4.
    let bounds = [
        ("ref/sweep_48k_stereo_pcm16.to16000.npy", 59.5, 6.5e-3),
        ("ref/sweep_44k1_mono_pcm24.to16000.npy", 45.3, 3.5e-2),
        ("ref/sweep_44k1_mono_pcm24.to48000.npy", 84.0, 1.05e-3),
    ];
    let mut cache = ResamplerCache::default();
    for r in manifest()["resample_refs"].as_array().unwrap() {
        let reference = r["reference"].as_str().unwrap();
        let (_, min_snr, max_err) = *bounds
            .iter()
            .find(|b| b.0 == reference)
            .unwrap_or_else(|| panic!("no threshold for {reference}"));
        let source = decode_fixture(r["source"].as_str().unwrap()).unwrap();
        assert_eq!(u64::from(source.sample_rate), r["from_rate"]);
        let to_rate = r["to_rate"].as_u64().unwrap() as u32;
        let started = std::time::Instant::now();
        let out = cache.resample(&source, to_rate).unwrap();
        let elapsed = started.elapsed();
        let want = read_planar(reference);
        assert_eq!(out.sample_rate, to_rate);
        assert_eq!(out.frames() as u64, r["frames"], "{reference}: length");
        assert_eq!(out.frames(), want[0].len(), "{reference}: length");
        let (err, snr) = compare(&out.channels, &want);
        // The same output one frame late, to show the thresholds catch a shift.
        let shifted: Vec<Vec<f32>> = out
            .channels
            .iter()
            .map(|c| {
                std::iter::once(0.0)
                    .chain(c[..c.len() - 1].iter().copied())
                    .collect()
            })
            .collect();
        let (shift_err, shift_snr) = compare(&shifted, &want);
        println!(
            "{reference}: max abs error {err:.3e} (bound {max_err:.1e}), SNR {snr:.2} dB \
             (bound {min_snr} dB), {elapsed:?}; shifted one frame: {shift_err:.3e}, {shift_snr:.2} dB"
        );
        assert!(snr >= min_snr, "{reference}: SNR {snr} dB < {min_snr}");
        assert!(
            err <= max_err,
            "{reference}: max abs error {err} > {max_err}"
        );
        assert!(
            shift_snr < min_snr - 10.0 && shift_err > max_err,
            "{reference}: shift undetected"
        );
    }
}

fn sine(rate: u32, frames: usize, freq: f64, amp: f64) -> Vec<f32> {
    (0..frames)
        .map(|t| {
            (amp * (2.0 * std::f64::consts::PI * freq * t as f64 / f64::from(rate)).sin()) as f32
        })
        .collect()
}

#[test]
fn down_and_up_again_recovers_a_low_sine() {
    let original = Audio {
        sample_rate: 48_000,
        channels: vec![sine(48_000, 48_000, 440.0, 0.5)],
    };
    let mut cache = ResamplerCache::default();
    let down = cache.resample(&original, 16_000).unwrap();
    assert_eq!(down.frames(), 16_000);
    let back = cache.resample(&down, 48_000).unwrap();
    assert_eq!(back.frames(), 48_000);
    // The sine starts and stops abruptly, which has energy above 8 kHz; judge the interior.
    let interior = 2_000..46_000;
    let (err, snr) = compare(
        &[back.channels[0][interior.clone()].to_vec()],
        &[original.channels[0][interior].to_vec()],
    );
    println!("48k -> 16k -> 48k, 440 Hz: max abs error {err:.3e}, SNR {snr:.1} dB");
    // Measured 4.5e-7 and 129.8 dB.
    assert!(err < 2e-6 && snr > 120.0, "max {err}, SNR {snr}");
}

#[test]
fn same_rate_is_identity_and_lengths_round() {
    let audio = decode_fixture("src/music/sweep_48k_stereo_pcm16.wav").unwrap();
    let mut cache = ResamplerCache::default();
    assert_eq!(cache.resample(&audio, 48_000).unwrap(), audio);
    assert!(cache.is_empty(), "no filter is built for a same-rate call");

    for (frames, from, to) in [
        (1001, 44_100, 16_000),
        (1, 48_000, 16_000),
        (7, 8_000, 44_100),
    ] {
        let audio = Audio {
            sample_rate: from,
            channels: vec![vec![0.1; frames]],
        };
        let out = cache.resample(&audio, to).unwrap();
        let want = (frames as f64 * f64::from(to) / f64::from(from)).round() as usize;
        assert_eq!(out.frames(), want, "{frames} frames {from} -> {to}");
    }

    let err = cache.resample(&audio, 0).unwrap_err();
    assert!(matches!(err, AudioError::Invalid(_)), "{err:?}");
}

#[test]
fn the_cache_builds_one_resampler_per_rate_pair_and_resets_it() {
    let sweep = decode_fixture("src/music/sweep_48k_stereo_pcm16.wav").unwrap();
    // A second "file" with the same rate and channel count.
    let other = ChannelOp::Stereo
        .apply(ChannelOp::Pick(1).apply(sweep.clone()).unwrap())
        .unwrap();
    let mut cache = ResamplerCache::default();
    let first = cache.resample(&sweep, 16_000).unwrap();
    cache.resample(&other, 16_000).unwrap();
    assert_eq!(cache.len(), 1, "{cache:?}");
    // Reset between files: the reused resampler gives what a fresh one gives.
    assert_eq!(cache.resample(&sweep, 16_000).unwrap(), first);
    assert_eq!(
        ResamplerCache::default().resample(&sweep, 16_000).unwrap(),
        first
    );
    cache.resample(&sweep, 22_050).unwrap();
    let mono = ChannelOp::Mono.apply(sweep).unwrap();
    cache.resample(&mono, 16_000).unwrap();
    assert_eq!(cache.len(), 3, "{cache:?}");
}

// ---------------------------------------------------------------------------------- channels

#[test]
fn channel_operations_are_exact() {
    for rel in [
        "src/music/sweep_48k_stereo_pcm16.wav",
        "src/music/deep/three_16k_pcm32.wav",
    ] {
        let audio = decode_fixture(rel).unwrap();
        let n = audio.channel_count();

        let mono = ChannelOp::Mono.apply(audio.clone()).unwrap();
        let want: Vec<f32> = (0..audio.frames())
            .map(|t| {
                let sum: f64 = audio.channels.iter().map(|c| f64::from(c[t])).sum();
                (sum / n as f64) as f32
            })
            .collect();
        assert_bitwise_eq(rel, &mono.channels, &[want]);
        assert_eq!(mono.sample_rate, audio.sample_rate);

        for i in 0..n {
            let picked = ChannelOp::Pick(i).apply(audio.clone()).unwrap();
            assert_bitwise_eq(rel, &picked.channels, &audio.channels[i..=i]);
        }
        let err = ChannelOp::Pick(n).apply(audio.clone()).unwrap_err();
        assert!(matches!(err, AudioError::Invalid(_)), "{err:?}");
        assert!(err.to_string().contains(&format!("{n} channels")), "{err}");

        assert_eq!(ChannelOp::Keep.apply(audio.clone()).unwrap(), audio);
        let stereo = ChannelOp::Stereo.apply(audio.clone());
        if n == 2 {
            assert_eq!(stereo.unwrap(), audio);
        } else {
            let err = stereo.unwrap_err();
            println!("{rel}: {err}");
            assert!(matches!(err, AudioError::Invalid(_)), "{err:?}");
            assert!(
                err.to_string()
                    .contains("has 3 channels; stereo needs 1 or 2"),
                "{err}"
            );
        }
        let dup = ChannelOp::Stereo.apply(mono.clone()).unwrap();
        assert_bitwise_eq(
            rel,
            &dup.channels,
            &[mono.channels[0].clone(), mono.channels[0].clone()],
        );
    }
}

#[test]
fn channel_ops_parse() {
    assert_eq!("keep".parse::<ChannelOp>().unwrap(), ChannelOp::Keep);
    assert_eq!("mono".parse::<ChannelOp>().unwrap(), ChannelOp::Mono);
    assert_eq!("Stereo".parse::<ChannelOp>().unwrap(), ChannelOp::Stereo);
    assert_eq!("1".parse::<ChannelOp>().unwrap(), ChannelOp::Pick(1));
    let err = "left".parse::<ChannelOp>().unwrap_err().to_string();
    for choice in ["keep", "mono", "stereo", "0, 1"] {
        assert!(err.contains(choice), "{err}");
    }
}

// ------------------------------------------------------------------------------------ encode

/// Bits of precision a decoded fixture carries: integer PCM bits, or `None` for float.
fn source_bits(subtype: &str) -> Option<u32> {
    match subtype {
        "PCM_16" => Some(16),
        "PCM_24" => Some(24),
        "PCM_32" => Some(32),
        _ => None,
    }
}

#[test]
fn encoded_files_decode_back_exactly_when_precise_enough() {
    let formats = [
        ("wav16", Some(16)),
        ("wav24", Some(24)),
        ("wav32", Some(32)),
        ("wavf32", None),
        ("flac16", Some(16)),
        ("flac24", Some(24)),
    ];
    for file in manifest()["files"].as_array().unwrap() {
        if file["decodes"] != true || file["lossless"] != true {
            continue;
        }
        let rel = file["path"].as_str().unwrap();
        let audio = decode_fixture(rel).unwrap();
        let bits = source_bits(file["subtype"].as_str().unwrap());
        for (name, target_bits) in formats {
            let format: AudioFormat = name.parse().unwrap();
            let bytes = encode(&audio, format).unwrap();
            let back = decode(&bytes, Some(format.extension())).unwrap();
            assert_eq!(back.sample_rate, audio.sample_rate, "{rel} as {name}");
            let exact = match (bits, target_bits) {
                (_, None) => true, // f32 holds every decoded sample as it is
                (Some(b), Some(t)) => b <= t,
                (None, Some(_)) => false,
            };
            if exact {
                assert_bitwise_eq(&format!("{rel} as {name}"), &back.channels, &audio.channels);
            } else {
                let t = target_bits.unwrap();
                let (err, _) = compare(&back.channels, &audio.channels);
                let half_step = 0.5 / f64::from(1u32 << (t - 1));
                println!("{rel} as {name}: max abs error {err:.3e} (half a step: {half_step:.3e})");
                assert!(err <= half_step * 1.000_001, "{rel} as {name}: {err}");
                assert_eq!(back.frames(), audio.frames(), "{rel} as {name}");
            }
        }
    }
}

#[test]
fn integer_conversion_clamps_and_rounds_half_away_from_zero() {
    let step16 = 1.0 / 32768.0;
    let audio = Audio {
        sample_rate: 8_000,
        channels: vec![vec![
            1.0,
            -1.0,
            1.5,
            -7.0,
            0.5 * step16,
            -0.5 * step16,
            2.5 * step16,
            f32::NAN,
        ]],
    };
    let ints = |format: &str| -> Vec<i32> {
        let bytes = encode(&audio, format.parse().unwrap()).unwrap();
        let mut reader = hound::WavReader::new(std::io::Cursor::new(bytes)).unwrap();
        reader.samples::<i32>().map(Result::unwrap).collect()
    };
    assert_eq!(ints("wav16"), [32767, -32768, 32767, -32768, 1, -1, 3, 0]);
    let (max24, max32) = ((1 << 23) - 1, i32::MAX);
    assert_eq!(ints("wav24")[..4], [max24, -max24 - 1, max24, -max24 - 1]);
    assert_eq!(ints("wav32")[..4], [max32, i32::MIN, max32, i32::MIN]);

    for (name, bits) in [("flac16", 16), ("flac24", 24)] {
        let back = decode(
            &encode(&audio, name.parse().unwrap()).unwrap(),
            Some("flac"),
        )
        .unwrap();
        let full = f64::from(1u32 << (bits - 1));
        let top = ((full - 1.0) / full) as f32;
        assert_eq!(back.channels[0][..4], [top, -1.0, top, -1.0], "{name}");
    }
    // Float WAV keeps out-of-range values: clipping them would destroy headroom.
    let back = decode(
        &encode(&audio, "wavf32".parse().unwrap()).unwrap(),
        Some("wav"),
    )
    .unwrap();
    assert_eq!(back.channels[0][..4], [1.0, -1.0, 1.5, -7.0]);
}

#[test]
fn formats_parse_and_bad_requests_are_refused() {
    for (name, format, ext) in [
        ("wav", AudioFormat::Wav(WavSample::I16), "wav"),
        ("wav16", AudioFormat::Wav(WavSample::I16), "wav"),
        ("wav24", AudioFormat::Wav(WavSample::I24), "wav"),
        ("wav32", AudioFormat::Wav(WavSample::I32), "wav"),
        ("wavf32", AudioFormat::Wav(WavSample::F32), "wav"),
        ("flac", AudioFormat::Flac { bits: 16 }, "flac"),
        ("flac16", AudioFormat::Flac { bits: 16 }, "flac"),
        ("flac24", AudioFormat::Flac { bits: 24 }, "flac"),
    ] {
        assert_eq!(name.parse::<AudioFormat>().unwrap(), format, "{name}");
        assert_eq!(format.extension(), ext);
    }
    let err = "mp3".parse::<AudioFormat>().unwrap_err().to_string();
    assert!(err.contains("wav24") && err.contains("flac24"), "{err}");

    let audio = Audio {
        sample_rate: 16_000,
        channels: vec![vec![0.0; 10]],
    };
    let err = encode(&audio, AudioFormat::Flac { bits: 8 }).unwrap_err();
    assert!(matches!(err, AudioError::Invalid(_)), "{err:?}");
    let none = Audio {
        sample_rate: 16_000,
        channels: vec![],
    };
    assert!(matches!(
        encode(&none, AudioFormat::Wav(WavSample::I16)),
        Err(AudioError::Invalid(_))
    ));
}

// --------------------------------------------------------------------------------------- npy

#[test]
fn npy_output_parses_and_round_trips() {
    let audio = decode_fixture("src/music/sweep_48k_stereo_pcm16.wav").unwrap();
    let bytes = npy::encode_audio(&audio);
    let (header, shape, data) = read_npy(&bytes);
    assert_eq!(shape, [48_000, 2], "{header}");
    assert_eq!((10 + header.len()) % 64, 0, "data is 64-byte aligned");
    let planar: Vec<Vec<f32>> = (0..2)
        .map(|c| data.iter().skip(c).step_by(2).copied().collect())
        .collect();
    assert_bitwise_eq("npy", &planar, &audio.channels);
    // numpy.save writes the same bytes for the same array.
    let numpy = std::fs::read(fixtures().join("ref/sweep_48k_stereo_pcm16.samples.npy")).unwrap();
    assert!(bytes == numpy, "differs from numpy.save's file");

    let one_d = npy::encode_f32(&[3], &[1.0, -2.0, 0.5]).unwrap();
    let (header, shape, data) = read_npy(&one_d);
    assert!(header.contains("'shape': (3,)"), "{header}");
    assert_eq!((shape, data), (vec![3], vec![1.0, -2.0, 0.5]));

    let err = npy::encode_f32(&[2, 2], &[0.0; 3]).unwrap_err();
    assert!(matches!(err, AudioError::Invalid(_)), "{err:?}");
}

/// Joins chunks into one [`Audio`].
fn concat(chunks: Vec<Audio>) -> Audio {
    let mut all = chunks[0].clone();
    for chunk in &chunks[1..] {
        assert_eq!(chunk.sample_rate, all.sample_rate);
        assert_eq!(chunk.channel_count(), all.channel_count());
        for (a, c) in all.channels.iter_mut().zip(&chunk.channels) {
            a.extend_from_slice(c);
        }
    }
    all
}

/// Every decodable fixture read in chunks of a few hundred frames (so trims and packet
/// boundaries fall inside and across chunks) is the whole-file decode, bit for bit; a broken
/// file fails the same way chunked, at the latest when its end is read.
#[test]
fn chunked_decoding_is_the_whole_file_decoding_and_fails_the_same_way() {
    for file in manifest()["files"].as_array().unwrap() {
        let rel = file["path"].as_str().unwrap();
        let ext = rel.rsplit_once('.').map(|(_, e)| e);
        let whole = decode_fixture(rel);
        for chunk_frames in [1, 333, 4096] {
            let source = std::fs::File::open(fixtures().join(rel)).unwrap();
            let chunked = Decoder::new(source, ext, chunk_frames).and_then(|mut d| {
                let mut chunks = Vec::new();
                while let Some(c) = d.next_chunk()? {
                    assert!(c.frames() <= chunk_frames, "{rel}: chunk of {}", c.frames());
                    chunks.push(c);
                }
                Ok(concat(chunks))
            });
            match (&whole, chunked) {
                (Ok(w), Ok(c)) => {
                    assert_eq!(c.sample_rate, w.sample_rate, "{rel}");
                    assert_bitwise_eq(rel, &c.channels, &w.channels);
                }
                (Err(w), Err(c)) => assert_eq!(c.to_string(), w.to_string(), "{rel}"),
                (w, c) => panic!("{rel} in chunks of {chunk_frames}: {w:?} vs {c:?}"),
            }
            if chunk_frames == 1 && rel.contains("long") {
                break;
            }
        }
    }
}

/// A resampled stream is the whole-file resampling, sample for sample, whatever the chunking:
/// chunks shorter than one resampler block, chunk edges inside the sweep, and one sample.
#[test]
fn chunked_resampling_is_the_whole_file_resampling() {
    let mut cache = ResamplerCache::default();
    for (rel, to_rate) in [
        ("src/music/sweep_48k_stereo_pcm16.wav", 16000),
        ("src/music/sweep_44k1_mono_pcm24.flac", 48000),
        ("src/music/sweep_44k1_mono_pcm24.flac", 16000),
    ] {
        let source = decode_fixture(rel).unwrap();
        let whole = cache.resample(&source, to_rate).unwrap();
        for chunk in [1usize, 97, 1000, 7919, source.frames()] {
            let mut stream = cache
                .stream(source.sample_rate, to_rate, source.channel_count())
                .unwrap();
            let mut parts = Vec::new();
            for start in (0..source.frames()).step_by(chunk) {
                let end = (start + chunk).min(source.frames());
                let piece = Audio {
                    sample_rate: source.sample_rate,
                    channels: source
                        .channels
                        .iter()
                        .map(|c| c[start..end].to_vec())
                        .collect(),
                };
                parts.push(stream.push(&piece).unwrap());
            }
            parts.push(stream.finish().unwrap());
            let chunked = concat(parts);
            assert_eq!(
                chunked.frames(),
                whole.frames(),
                "{rel} in chunks of {chunk}"
            );
            assert_bitwise_eq(
                &format!("{rel} in chunks of {chunk}"),
                &chunked.channels,
                &whole.channels,
            );
        }
    }
}

/// A file written in chunks is byte for byte the file written at once, in every format: the
/// header's lengths (and FLAC's MD5 and frame sizes) are patched in at the end.
#[test]
fn chunked_writing_is_the_whole_file_writing() {
    use sluice_audio::encode::{Output, StreamWriter};
    let source = decode_fixture("src/music/sweep_48k_stereo_pcm16.wav").unwrap();
    let formats = ["wav", "wav24", "wav32", "wavf32", "flac", "flac24"]
        .map(|f| Output::Audio(f.parse().unwrap()))
        .into_iter()
        .chain([Output::Npy]);
    for output in formats {
        let write = |chunk: usize| {
            let mut bytes = Vec::new();
            let mut cursor = std::io::Cursor::new(&mut bytes);
            let mut w = StreamWriter::new(&mut cursor, output, source.sample_rate, 2).unwrap();
            for start in (0..source.frames()).step_by(chunk) {
                let end = (start + chunk).min(source.frames());
                w.write(&Audio {
                    sample_rate: source.sample_rate,
                    channels: source
                        .channels
                        .iter()
                        .map(|c| c[start..end].to_vec())
                        .collect(),
                })
                .unwrap();
            }
            w.finish().unwrap();
            bytes
        };
        let whole = write(source.frames());
        for chunk in [1, 1000, 4097] {
            assert!(write(chunk) == whole, "{output:?} in chunks of {chunk}");
        }
        match output {
            Output::Audio(format) => {
                assert_eq!(whole, encode(&source, format).unwrap(), "{output:?}");
                let back = decode(&whole, Some(format.extension())).unwrap();
                assert_eq!(back.frames(), source.frames(), "{output:?}");
            }
            Output::Npy => {
                let (descr, shape, data) = read_npy(&whole);
                assert!(descr.contains("'descr': '<f4'"), "{descr}");
                assert_eq!(shape, vec![source.frames(), 2]);
                assert_eq!(data[2 * 100 + 1], source.channels[1][100]);
            }
        }
    }
}
