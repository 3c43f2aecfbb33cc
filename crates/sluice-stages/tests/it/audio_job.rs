//! The resample job on the fixture tree, on local disk: outputs mirror the tree with the asked
//! rate, channels and format; broken files are failures with their reason; the audio summary adds
//! up; reruns skip what exists, redo what is older than its source, and `overwrite` redoes all.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use sluice_audio::{decode::decode, AudioFormat, ChannelOp, WavSample};
use sluice_core::storage::Matcher;
use sluice_pipeline::{Progress, RunOptions};
use sluice_stages::audio::job::{JobReport, ResampleJob};

fn fixtures() -> PathBuf {
    sluice_testkit::fixture("audio")
}

fn manifest() -> Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("manifest.json")).unwrap()).unwrap()
}

fn job(source: &Path, target: &Path) -> ResampleJob {
    ResampleJob {
        source: source.display().to_string(),
        matcher: Matcher::suffixes(&[".wav", ".flac", ".mp3", ".ogg", ".m4a"]),
        target: target.display().to_string(),
        sample_rate: 16_000,
        channels: ChannelOp::Mono,
        format: AudioFormat::Wav(WavSample::I16),
        overwrite: false,
        redo_if_older: false,
        options: RunOptions {
            failures_path: Some(target.join("_failures.jsonl")),
            summary_path: Some(target.join("_summary.json")),
            progress: Progress::Off,
            ..RunOptions::default()
        },
        batch_size: 2,
        // Chunks of about a thousand frames, so every fixture crosses many chunk boundaries.
        memory_budget: Some(64 << 10),
    }
}

fn run(job: ResampleJob) -> JobReport {
    job.run().unwrap().unwrap()
}

#[test]
fn resample_job_mirrors_the_tree_and_reports_audio_totals() {
    let out = tempfile::tempdir().unwrap();
    let source = fixtures().join("src");
    let report = run(job(&source, out.path()));

    let m = manifest();
    let files = m["files"].as_array().unwrap();
    let good: Vec<&Value> = files.iter().filter(|f| f["decodes"] == true).collect();
    let bad: Vec<&Value> = files
        .iter()
        .filter(|f| f["decodes"] == false && f["format"] != "txt")
        .collect();
    assert_eq!(
        report.run.items_out as usize,
        good.len(),
        "{}",
        report.render()
    );
    assert_eq!(report.audio.files_written as usize, good.len());
    assert_eq!(report.audio.files_decoded as usize, good.len());

    let mut expected_seconds = 0.0;
    for f in &good {
        let rel = f["path"].as_str().unwrap().strip_prefix("src/").unwrap();
        let (rate, frames) = (
            f["sample_rate"].as_u64().unwrap(),
            f["frames_written"].as_u64().unwrap(),
        );
        expected_seconds += frames as f64 / rate as f64;
        let wav = rel.rsplit_once('.').unwrap().0.to_string() + ".wav";
        let bytes = std::fs::read(out.path().join(&wav)).unwrap_or_else(|e| panic!("{wav}: {e}"));
        let audio = decode(&bytes, Some("wav")).unwrap();
        assert_eq!(
            (audio.sample_rate, audio.channel_count()),
            (16_000, 1),
            "{wav}"
        );
        let want = (frames as f64 * 16_000.0 / rate as f64).round() as i64;
        let lossless = f["lossless"] == true || f["format"] == "mp3";
        let slack = if lossless {
            0
        } else {
            1024 * 16_000 / rate as i64 + 1
        };
        assert!(
            (audio.frames() as i64 - want).abs() <= slack,
            "{wav}: {} frames, want {want} ± {slack}",
            audio.frames()
        );
    }
    // Lossy decoders may trim priming differently by up to one codec frame per file.
    assert!(
        (report.audio.decoded_seconds - expected_seconds).abs() < 0.05,
        "{} vs {expected_seconds}",
        report.audio.decoded_seconds
    );
    assert!((report.audio.decoded_hours * 3600.0 - report.audio.decoded_seconds).abs() < 1e-9);

    // Every broken file is listed once, in the load stage, with a reason; nothing written for it.
    assert_eq!(report.audio.files_failed, bad.len(), "{}", report.render());
    for f in &bad {
        let rel = f["path"].as_str().unwrap().strip_prefix("src/").unwrap();
        let failed = report
            .audio
            .failed
            .iter()
            .find(|x| x.file == rel)
            .unwrap_or_else(|| panic!("{rel} not among the failures"));
        assert_eq!(failed.stage, "convert");
        let reason = f["reason"].as_str().unwrap();
        let word = match reason {
            "truncated" => "truncated",
            "empty" => "empty",
            _ => "not",
        };
        assert!(
            failed.error.to_lowercase().contains(word),
            "{rel}: {}",
            failed.error
        );
        assert!(!out.path().join(rel).with_extension("wav").exists());
    }
    // The summary file holds the engine's figures and the audio ones.
    let summary: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("_summary.json")).unwrap()).unwrap();
    assert_eq!(summary["items_out"], good.len());
    assert_eq!(summary["audio"]["files_failed"], bad.len());
    assert_eq!(
        summary["audio"]["failed"].as_array().unwrap().len(),
        bad.len()
    );
    assert!(report.render().contains("failed: bad/empty.mp3 (convert)"));

    // A second run skips every finished file (the broken ones are tried again and fail again).
    let again = run(job(&source, out.path()));
    assert_eq!(
        (
            again.run.skipped as usize,
            again.run.items_out,
            again.audio.files_failed
        ),
        (good.len(), 0, bad.len())
    );
}

#[test]
fn reruns_redo_older_outputs_and_overwrite_redoes_all() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    for name in [
        "music/sweep_44k1_mono_pcm24.flac",
        "music/deep/three_16k_pcm32.wav",
    ] {
        let to = src.path().join(name);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(fixtures().join("src").join(name), &to).unwrap();
    }
    let first = run(job(src.path(), out.path()));
    assert_eq!(first.run.items_out, 2);

    // Make one source newer than its output.
    let newer = src.path().join("music/deep/three_16k_pcm32.wav");
    let later = SystemTime::now() + Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&newer)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let plain = run(job(src.path(), out.path()));
    assert_eq!((plain.run.skipped, plain.run.items_out), (2, 0));
    let mut redo = job(src.path(), out.path());
    redo.redo_if_older = true;
    let redo = run(redo);
    assert_eq!((redo.run.skipped, redo.run.items_out), (1, 1));
    assert_eq!(redo.run.failures.len(), 0);

    let mut all = job(src.path(), out.path());
    all.overwrite = true;
    let all = run(all);
    assert_eq!((all.run.skipped, all.run.items_out), (0, 2));

    // Another format is another output name: nothing of it exists yet.
    let mut flac = job(src.path(), out.path());
    flac.format = AudioFormat::Flac { bits: 16 };
    let flac = run(flac);
    assert_eq!((flac.run.skipped, flac.run.items_out), (0, 2));
    let bytes = std::fs::read(out.path().join("music/deep/three_16k_pcm32.flac")).unwrap();
    let audio = decode(&bytes, Some("flac")).unwrap();
    assert_eq!(
        (audio.sample_rate, audio.channel_count(), audio.frames()),
        (16_000, 1, 8000)
    );
}
