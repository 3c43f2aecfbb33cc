//! `sluice audio resample` end to end with the real binary: the same job on a real S3-compatible
//! server (moto on loopback) writes the same bytes as on local disk, and a killed run leaves only
//! whole outputs and reruns exactly the rest.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_core::storage::{Location, Matcher};
use sluice_testkit::S3Server;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

fn fixtures() -> PathBuf {
    sluice_testkit::fixture("audio/src")
}

fn resample_args(source: &str, target: &str, summary: &Path) -> Vec<String> {
    [
        "audio",
        "resample",
        "--source",
        source,
        "--target",
        target,
        "--suffix",
        ".wav",
        "--suffix",
        ".flac",
        "--suffix",
        ".mp3",
        "--suffix",
        ".ogg",
        "--suffix",
        ".m4a",
        "--sample-rate",
        "16000",
        "--channels",
        "mono",
        "--format",
        "flac",
        "--progress",
        "off",
        "--summary",
        summary.to_str().unwrap(),
        "--failures",
        summary.with_extension("failures.jsonl").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run_ok(args: &[String], env: &[(String, String)]) -> serde_json::Value {
    let out = Command::new(SLUICE)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = args
        .iter()
        .position(|a| a == "--summary")
        .map(|i| &args[i + 1])
        .unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(summary).unwrap())
        .unwrap_or_else(|e| panic!("no summary ({e}): {stderr}"));
    let failed = summary["failed"].as_u64().unwrap();
    sluice_testkit::assert_run_exit(out.status, failed, &stderr);
    summary
}

/// The job over the fixtures on local disk, into `work/local`: its summary and that directory.
fn local_reference(work: &Path) -> (serde_json::Value, std::path::PathBuf) {
    let out = work.join("local");
    let summary = run_ok(
        &resample_args(
            fixtures().to_str().unwrap(),
            out.to_str().unwrap(),
            &work.join("local.json"),
        ),
        &[],
    );
    (summary, out)
}

/// `got` holds the FLAC files of the local directory `want`, byte for byte.
fn assert_same_flac_files(want: &Path, got: &Location) {
    let flac = Matcher::suffixes(&[".flac"]);
    let want_files = Location::parse(want.to_str().unwrap())
        .unwrap()
        .list_blocking(&flac)
        .unwrap();
    let names = |files: &[sluice_core::storage::FileEntry]| -> Vec<String> {
        files.iter().map(|f| f.rel.clone()).collect()
    };
    assert_eq!(
        names(&want_files),
        names(&got.list_blocking(&flac).unwrap())
    );
    for file in &want_files {
        let bytes = std::fs::read(want.join(&file.rel)).unwrap();
        assert!(
            got.read_blocking(&file.rel).unwrap()[..] == bytes[..],
            "{} differs",
            file.rel
        );
    }
}

/// The job on a store (`store` is its URL, e.g. `s3://audio`; `options` and `env` its settings)
/// writes the same outputs as on local disk, and a rerun skips every finished file.
fn store_job_writes_the_same_outputs_as_local_disk(
    store: &str,
    options: &[(String, String)],
    env: &[(String, String)],
) {
    let local_src = Location::parse(fixtures().to_str().unwrap()).unwrap();
    let bucket = Location::parse_with(store, options).unwrap();
    for file in local_src.list_blocking(&Matcher::All).unwrap() {
        let bytes = local_src.read_blocking(&file.rel).unwrap();
        bucket
            .write_blocking(&format!("in/{}", file.rel), bytes)
            .unwrap();
    }

    let work = tempfile::tempdir().unwrap();
    let (local, local_out) = local_reference(work.path());
    let remote = run_ok(
        &resample_args(
            &format!("{store}/in"),
            &format!("{store}/out/"),
            &work.path().join("store.json"),
        ),
        env,
    );
    for key in ["items_out", "failed"] {
        assert_eq!(local[key], remote[key], "{key}: {local} vs {remote}");
    }
    assert_eq!(local["audio"]["failed"], remote["audio"]["failed"]);
    assert!(local["items_out"].as_u64().unwrap() >= 7, "{local}");

    let remote_out = Location::parse_with(&format!("{store}/out"), options).unwrap();
    assert_same_flac_files(&local_out, &remote_out);

    // The rerun against the store lists the target once and skips every finished file.
    let again = run_ok(
        &resample_args(
            &format!("{store}/in"),
            &format!("{store}/out"),
            &work.path().join("store-again.json"),
        ),
        env,
    );
    assert_eq!(again["skipped"], local["items_out"], "{again}");
    assert_eq!(again["items_out"], 0);
}

#[test]
fn s3_job_writes_the_same_outputs_as_local_disk() {
    let server = S3Server::start();
    server.create_bucket("audio");
    store_job_writes_the_same_outputs_as_local_disk("s3://audio", &server.options(), &server.env());
}

#[test]
fn azure_job_writes_the_same_outputs_as_local_disk() {
    let server = sluice_testkit::AzuriteServer::start();
    server.create_container("audio");
    store_job_writes_the_same_outputs_as_local_disk("az://audio", &server.options(), &server.env());
}

#[test]
fn a_killed_job_leaves_whole_outputs_and_the_rerun_does_the_rest() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let one = std::fs::read(fixtures().join("music/sweep_48k_stereo_pcm16.wav")).unwrap();
    const FILES: usize = 150;
    for i in 0..FILES {
        let path = src.path().join(format!("d{}/f{i:03}.wav", i % 5));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, &one).unwrap();
    }
    let summary = out.path().join("_summary.json");
    let mut args = resample_args(
        src.path().to_str().unwrap(),
        out.path().join("t").to_str().unwrap(),
        &summary,
    );
    args.extend(["--batch-size", "1", "--cpus", "1"].map(String::from));
    let outputs = |dir: &Path| -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten() {
                let p = e.unwrap().path();
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                if p.is_dir() {
                    stack.push(p);
                } else if !name.starts_with(".sluice-") {
                    // `.sluice-*.part` is the staging file of an output cut short by the kill:
                    // never an output's name.
                    found.push(p);
                }
            }
        }
        found
    };
    let mut child = Command::new(SLUICE)
        .args(&args)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while outputs(&out.path().join("t")).len() < 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = outputs(&out.path().join("t"));
    assert!(
        (20..FILES).contains(&before.len()),
        "killed after {} outputs",
        before.len()
    );
    // Only whole outputs under their final names: each decodes to the full second.
    for path in &before {
        assert_eq!(
            path.extension().and_then(|e| e.to_str()),
            Some("flac"),
            "{path:?}"
        );
        let audio =
            sluice_audio::decode::decode(&std::fs::read(path).unwrap(), Some("flac")).unwrap();
        assert_eq!(audio.frames(), 16_000, "{path:?}");
    }

    let rerun = run_ok(&args, &[]);
    assert_eq!(rerun["skipped"], before.len(), "{rerun}");
    assert_eq!(rerun["items_out"], FILES - before.len());
    let after = outputs(&out.path().join("t"));
    assert_eq!(after.len(), FILES);
}

/// Writes `seconds` of 48 kHz stereo 16-bit WAV to `path` as it generates it (a sweep on the left,
/// a tone on the right), so the test itself holds no more than the file's header in memory.
pub(crate) fn write_long_wav(path: &Path, seconds: u32) {
    use std::io::Write;
    const RATE: u32 = 48_000;
    let frames = RATE * seconds;
    let data = frames * 4;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    out.write_all(b"RIFF").unwrap();
    out.write_all(&(36 + data).to_le_bytes()).unwrap();
    out.write_all(b"WAVEfmt ").unwrap();
    for field in [
        16u32.to_le_bytes().as_slice(),
        &1u16.to_le_bytes(),
        &2u16.to_le_bytes(),
    ] {
        out.write_all(field).unwrap();
    }
    out.write_all(&RATE.to_le_bytes()).unwrap();
    out.write_all(&(RATE * 4).to_le_bytes()).unwrap();
    out.write_all(&4u16.to_le_bytes()).unwrap();
    out.write_all(&16u16.to_le_bytes()).unwrap();
    out.write_all(b"data").unwrap();
    out.write_all(&data.to_le_bytes()).unwrap();
    let mut phase = 0.0f64;
    for t in 0..frames {
        let secs = f64::from(t) / f64::from(RATE);
        // 100 Hz to 7 kHz and back every 10 s, across every chunk boundary.
        let freq = 100.0 + 6900.0 * (1.0 - ((secs % 10.0) / 5.0 - 1.0).abs());
        phase += std::f64::consts::TAU * freq / f64::from(RATE);
        let left = (0.3 * phase.sin() * 32767.0) as i16;
        let right = (0.2 * (std::f64::consts::TAU * 440.0 * secs).sin() * 32767.0) as i16;
        out.write_all(&left.to_le_bytes()).unwrap();
        out.write_all(&right.to_le_bytes()).unwrap();
    }
    out.flush().unwrap();
}

/// Runs the binary and returns its summary and peak resident memory in KiB: the child's own
/// high-water mark (`VmHWM`, which only grows) read from /proc until it exits. (`wait4`'s
/// `ru_maxrss` would not do: a child spawned with a shared address space before `exec` is
/// charged the parent's peak.)
fn run_measured(args: &[String]) -> (serde_json::Value, u64) {
    let mut child = Command::new(SLUICE)
        .args(args)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut peak_kib = 0;
    let status = loop {
        if let Some(kib) = sluice_testkit::proc_status_kib(child.id(), "VmHWM") {
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(status.success(), "{status}");
    let summary_at = args.iter().position(|a| a == "--summary").unwrap() + 1;
    let summary = std::fs::read_to_string(&args[summary_at]).unwrap();
    (serde_json::from_str(&summary).unwrap(), peak_kib)
}

/// Long files stream: converting 8 minutes takes no more memory than 1 minute (tiny chunks,
/// so a growing buffer would show at once), the output is the whole length, the summary's
/// duration is exact and its peak of decoded audio stays inside the budget.
#[test]
fn memory_does_not_grow_with_the_length_of_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut peaks = Vec::new();
    // Small enough for CI's disk (the 8-minute WAV is 92 MB), long enough to show growth.
    for minutes in [1u32, 8] {
        let src = dir.path().join(format!("src{minutes}"));
        std::fs::create_dir_all(&src).unwrap();
        write_long_wav(&src.join("long.wav"), minutes * 60);
        let out = dir.path().join(format!("out{minutes}"));
        let summary = dir.path().join(format!("s{minutes}.json"));
        let mut args = resample_args(src.to_str().unwrap(), out.to_str().unwrap(), &summary);
        args.extend(["--memory-budget", "256K"].map(String::from));
        let (summary, peak_kib) = run_measured(&args);
        let seconds = f64::from(minutes * 60);
        assert_eq!(summary["audio"]["decoded_seconds"], seconds, "{summary}");
        let held = summary["audio"]["peak_decoded_bytes"].as_u64().unwrap();
        assert!(
            held > 0 && held <= 256 << 10,
            "{held} bytes decoded at once"
        );
        let flac = std::fs::read(out.join("long.flac")).unwrap();
        let audio = sluice_audio::decode::decode(&flac, Some("flac")).unwrap();
        assert_eq!(audio.frames(), 16_000 * minutes as usize * 60);
        eprintln!("{minutes} min: peak RSS {peak_kib} KiB, {held} bytes decoded at once");
        peaks.push(peak_kib);
    }
    // 8x the audio (160 MB more decoded samples than the short file) within a few MiB: the
    // allocator's and the kernel's noise, not the file.
    assert!(
        peaks[1] <= peaks[0] + 8 * 1024,
        "peak RSS {} KiB for 8 min vs {} KiB for 1 min",
        peaks[1],
        peaks[0]
    );
}

/// A run killed in the middle of a long file leaves nothing under the output's name (the file is
/// staged beside it), and the rerun converts it whole.
#[test]
fn a_kill_in_the_middle_of_a_file_leaves_no_output_and_the_rerun_redoes_it() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    write_long_wav(&src.join("long.wav"), 4 * 60);
    let out = dir.path().join("out");
    let summary = dir.path().join("s.json");
    let mut args = resample_args(src.to_str().unwrap(), out.to_str().unwrap(), &summary);
    args.extend(["--memory-budget", "256K"].map(String::from));
    let mut child = Command::new(SLUICE)
        .args(&args)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the staged output has data: the file is half-way.
    let staged = || -> Option<u64> {
        std::fs::read_dir(&out)
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(".sluice-"))
            .and_then(|e| e.metadata().ok())
            .map(|m| m.len())
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while staged().unwrap_or(0) < 100_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        staged().unwrap_or(0) >= 100_000,
        "the run was not caught mid-file"
    );
    assert!(
        !out.join("long.flac").exists(),
        "a partial output has the final name"
    );

    let rerun = run_ok(&args, &[]);
    assert_eq!(rerun["items_out"], 1, "{rerun}");
    let flac = std::fs::read(out.join("long.flac")).unwrap();
    let audio = sluice_audio::decode::decode(&flac, Some("flac")).unwrap();
    assert_eq!(audio.frames(), 16_000 * 4 * 60);
}

/// Classification streams too: the test classifier over 8 minutes takes no more memory than
/// over 1 (windows are scored in runs as they are cut from the decoded chunks, and their rows
/// written out as they are scored), and every window of the file is scored.
#[test]
fn classifying_a_long_file_takes_no_more_memory_than_a_short_one() {
    let dir = tempfile::tempdir().unwrap();
    let model = sluice_testkit::fixture("onnx").join("tone-detector");
    let mut peaks = Vec::new();
    for minutes in [1u32, 8] {
        let src = dir.path().join(format!("src{minutes}"));
        std::fs::create_dir_all(&src).unwrap();
        write_long_wav(&src.join("long.wav"), minutes * 60);
        let output = dir.path().join(format!("scores{minutes}"));
        let summary = dir.path().join(format!("s{minutes}.json"));
        let args: Vec<String> = [
            "audio",
            "classify",
            "--progress",
            "off",
            "--source",
            src.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--summary",
            summary.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec();
        let (summary, peak_kib) = run_measured(&args);
        assert_eq!(summary["items_out"], 1, "{summary}");
        // One table row per window.
        let windows: i64 =
            sluice_pipeline::PartSink::part_files(&output, sluice_pipeline::PartFormat::Parquet)
                .unwrap()
                .iter()
                .map(|p| {
                    use parquet::file::reader::FileReader;
                    let file = std::fs::File::open(p).unwrap();
                    let reader = parquet::file::reader::SerializedFileReader::new(file).unwrap();
                    reader.metadata().file_metadata().num_rows()
                })
                .sum();
        eprintln!("{minutes} min: peak RSS {peak_kib} KiB, {windows} windows");
        assert!(
            windows as u32 >= minutes * 60,
            "{windows} windows for {minutes} min"
        );
        peaks.push(peak_kib);
    }
    // Neither the audio (8 minutes decoded would be 184 MB, at the model's rate 31 MB) nor the
    // rows are held: past 512 windows they go to a row file as they are scored.
    assert!(
        peaks[1] <= peaks[0] + 16 * 1024,
        "peak RSS {} KiB for 8 min vs {} KiB for 1 min",
        peaks[1],
        peaks[0]
    );
}

#[test]
fn gcs_job_writes_the_same_outputs_as_local_disk() {
    let server = sluice_testkit::GcsServer::start();
    server.create_bucket("audio");
    store_job_writes_the_same_outputs_as_local_disk("gs://audio", &server.options(), &server.env());
}
