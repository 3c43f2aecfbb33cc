//! Audio pipeline files: a `features` sink writes `.npy` arrays named by the path rule, `--set
//! sink.path=` moves the output as in every pipeline, and a file that cannot make an audio
//! pipeline says where and why.

use std::path::{Path, PathBuf};

use sluice_pipeline::config::RawConfig;
use sluice_pipeline::Progress;
use sluice_stages::audio::config::AudioPipeline;

fn fixtures() -> PathBuf {
    sluice_testkit::fixture("audio/src")
}

fn build(text: &str) -> Result<AudioPipeline, String> {
    build_with(text, &[])
}

fn build_with(text: &str, sets: &[String]) -> Result<AudioPipeline, String> {
    let raw = RawConfig::parse(Path::new("audio.toml"), text, sets).map_err(|e| e.to_string())?;
    AudioPipeline::from_raw(raw).map_err(|e| e.to_string())
}

#[test]
fn features_sink_writes_npy_arrays_under_moved_prefixes_at_the_path_set_on_the_command_line() {
    let out = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[source]
kind = "match_files"
url = "{src}"
glob = "music/**/*.wav"

[[stage]]
kind = "load_audio"

[[stage]]
kind = "resample"
sample_rate = 8000

[sink]
kind = "features"
path = "not-here"
from_prefix = "music/"
to_prefix = "features/v1/"
"#,
        src = fixtures().display(),
    );
    let set = format!("sink.path={}", out.path().display());
    let mut pipeline = build_with(&text, &[set]).unwrap();
    pipeline.options.progress = Progress::Off;
    let report = pipeline.run().unwrap().unwrap();
    assert_eq!(report.run.items_out, 3, "{}", report.render());

    // (frames, channels) little-endian f32, named `<source name>.npy` under the new prefix.
    let expect = [
        ("features/v1/sweep_48k_stereo_pcm16.wav.npy", "(8000, 2)"),
        ("features/v1/deep/noise_22k05_mono_f32.wav.npy", "(4000, 1)"),
        ("features/v1/deep/three_16k_pcm32.wav.npy", "(4000, 3)"),
    ];
    for (rel, shape) in expect {
        let bytes = std::fs::read(out.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(&bytes[..6], b"\x93NUMPY", "{rel}");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
        assert!(header.contains("'descr': '<f4'"), "{header}");
        assert!(
            header.contains(&format!("'shape': {shape}")),
            "{rel}: {header}"
        );
        let (frames, channels): (usize, usize) = {
            let inner = shape.trim_matches(|c| c == '(' || c == ')');
            let mut it = inner.split(", ").map(|n| n.parse().unwrap());
            (it.next().unwrap(), it.next().unwrap())
        };
        assert_eq!(
            bytes.len() - 10 - header_len,
            frames * channels * 4,
            "{rel}"
        );
    }
}

#[test]
fn malformed_audio_pipelines_name_the_place_and_the_problem() {
    let head = "[source]\nkind = \"match_files\"\nurl = \"x\"\n";
    let cases = [
        (
            format!("{head}\n[[stage]]\nkind = \"resample\"\nsample_rate = 1\n"),
            "starts with a [[stage]] of kind = \"load_audio\"",
        ),
        (
            format!("{head}\n[[stage]]\nkind = \"load_audio\"\n"),
            "audio.toml: an audio pipeline needs a [sink] of kind = \"audio\" or \"features\"",
        ),
        (
            format!(
                "{head}\n[[stage]]\nkind = \"load_audio\"\n\n[[stage]]\nkind = \"write_audio\"\n\
                 target = \"o\"\n"
            ),
            "audio.toml:8: [[stage]] 1 (write_audio): audio is written by the sink now: replace \
             this stage with [sink] kind = \"audio\"",
        ),
        (
            format!(
                "{head}\n[[stage]]\nkind = \"load_audio\"\n\n[[stage]]\nkind = \"channels\"\n\
                 to = \"left\"\n"
            ),
            "audio.toml:8: [[stage]] 1 (channels):",
        ),
        (
            format!(
                "{head}\n[[stage]]\nkind = \"load_audio\"\n\n[sink]\nkind = \"audio\"\n\
                 path = \"o\"\nformat = \"mp3\"\n"
            ),
            "audio.toml:8: [sink] (audio):",
        ),
        (
            format!(
                "{head}\n[[stage]]\nkind = \"load_audio\"\n\n[sink]\nkind = \"features\"\n\
                 path = \"o\"\nformat = \"wav\"\n"
            ),
            "audio.toml:8: [sink] (features): format only applies to kind = \"audio\"",
        ),
        (
            format!(
                "{head}\n[[stage]]\nkind = \"load_audio\"\n\n[sink]\nkind = \"jsonl\"\n\
                 path = \"o\"\n"
            ),
            "audio.toml:8: [sink] (jsonl): unknown kind \"jsonl\"",
        ),
        (
            format!(
                "{head}\n[[stage]]\nkind = \"load_audio\"\n\n[sink]\nkind = \"audio\"\n\
                 target = \"o\"\n"
            ),
            "audio.toml:8: [sink] (audio): unknown field `target`",
        ),
        (
            format!(
                "{head}\n[[stage]]\nkind = \"load_audio\"\n\n[[stage]]\nkind = \"resample\"\n\
                 sample_rate = 8000\nworkers = 4\n\n[sink]\nkind = \"audio\"\npath = \"o\"\n"
            ),
            "audio.toml:8: [[stage]] 1 (resample): runs inside each file's streaming conversion",
        ),
        (
            format!("{head}glob = \"[\"\n\n[[stage]]\nkind = \"load_audio\"\n"),
            "audio.toml:1: [source]:",
        ),
    ];
    for (text, want) in cases {
        let e = build(&text)
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{text}"));
        assert!(e.contains(want), "{e}\nwanted: {want}\n{text}");
    }
}
