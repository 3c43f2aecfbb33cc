#!/usr/bin/env python3
"""Builds the audio test fixtures in tests/fixtures/audio/ and their manifest.json.

Rerun (from the repository root):

    python3 -m venv tools/.venv-audio
    tools/.venv-audio/bin/pip install -r tools/requirements-audio.txt
    apt-get install -y ffmpeg            # ffmpeg CLI with libmp3lame, libvorbis and aac
    tools/.venv-audio/bin/python tools/make_audio_fixtures.py

The script deletes tests/fixtures/audio/ and writes it anew. Every signal comes from a fixed
formula or from numpy.random.default_rng with a fixed seed, the WAV writer is told not to add
libsndfile's time-stamped PEAK chunk, and ffmpeg runs with +bitexact (no encoder/creation-time
tags, fixed Ogg serial numbers), so the same tool versions give byte-identical files. Other
versions of libFLAC, LAME, libvorbis or ffmpeg may give other bytes for the compressed files
(the decoded samples of the lossless files stay the same). It ends by reading everything back
and printing a table; it exits non-zero if a check fails.

Signals
  sweep  logarithmic sine sweep, amplitude 0.5, 100 Hz -> min(8000, 0.4 * sample_rate)
  noise  white noise, uniform in [-0.3, 0.3), numpy default_rng(seed), a new seed per file
  tone   0.25 * sine (440 Hz; the right channel of the stereo MP3 is 660 Hz)
Stereo lossless files are [sweep, noise] so channel selection/downmix is testable; the
three-channel file is [sweep, noise, 0.25 * sine 440 Hz].

Files (paths relative to tests/fixtures/audio/)
  src/music/sweep_48k_stereo_pcm16.wav        WAV PCM_16, 48000 Hz, 2 ch, 48000 frames
  src/music/sweep_44k1_mono_pcm24.flac        FLAC 24-bit, 44100 Hz, 1 ch, 33075 frames
  src/music/deep/noise_22k05_mono_f32.wav     WAV IEEE float32, 22050 Hz, 1 ch, 11025 frames
  src/music/deep/three_16k_pcm32.wav          WAV PCM_32, 16000 Hz, 3 ch, 8000 frames
      -> lossless decoding: must equal ref/<name>.samples.npy bit for bit; nested folders
         test recursive directory walks.
  src/speech/tone_48k_stereo.mp3              MP3 (libmp3lame CBR 128k, Xing/LAME tag), 48000 frames
  src/speech/tone_44k1_mono.ogg               Ogg Vorbis (libvorbis q4), 35280 frames
  src/speech/tone_48k_mono.m4a                AAC-LC in MP4 (ffmpeg native aac), 28800 frames
      -> lossy decoding: rate, channels and length; frames_ffmpeg is what ffmpeg decodes.
  src/bad/truncated.wav     first 60% of the bytes of a 16000 Hz mono PCM_16 WAV of 8000 frames;
                            its header still claims all 8000 frames
  src/bad/truncated.flac    first 40% of the bytes of a 44100 Hz mono 16-bit FLAC of 44100 frames
  src/bad/empty.mp3         zero bytes
  src/bad/notaudio.mp3      UTF-8 text with an audio suffix
  src/bad/readme.txt        text with a non-audio suffix (for suffix filtering; it is not audio)
      -> error handling: "decodes": false with a "reason" (truncated, empty, not_audio,
         not_audio_suffix). For the truncated ones sample_rate/channels/frames_written describe
         the original file; a lenient decoder may return a prefix of it (frames_ffmpeg says
         how many frames ffmpeg returns; null where ffmpeg fails).
  ref/<name>.samples.npy    (<name> = file name without suffix) the exact samples written to
                            each lossless file, float32,
                            shape (frames, channels): PCM values are int / 2**(bits-1)
                            rounded to float32 (exact for 16 and 24 bit; for PCM_32 the
                            nearest float32, as libsndfile and `i as f32 / 2^31` give)
  ref/<name>.to<rate>.npy   soxr.resample(samples, in_rate, out_rate, quality="VHQ") of those
                            samples, float32, shape (frames, channels)
  manifest.json             everything above, read by the Rust tests

Tolerances (what the numbers in the manifest promise, and what they do not)
  * Lossless files: tolerance 0. A correct decoder's float output equals samples.npy exactly.
  * Lossy files: no sample values are promised. frames_written is the length of the signal fed
    to the encoder; frames_ffmpeg is what the ffmpeg CLI returns, which is not always the same
    (ffmpeg 5.1: MP3 48000 = exact, the LAME tag's delay/padding are applied; Vorbis 35152 =
    128 frames short at the end, while libvorbis via libsndfile returns the exact 35280 from the
    last granule position; AAC 29696 = 29 * 1024: the 1024 priming frames are cut by the MP4
    edit list but the end padding is not, although the edit list says 28800). A decoder that
    ignores delay/padding returns more frames: for MP3 up to the 1152-frame granule grid plus
    the encoder delay, for AAC whole 1024-frame blocks plus 1024 priming frames. Length checks
    for lossy files therefore need a tolerance of about one codec frame (1152 MP3, 1024 AAC,
    the 2048 long Vorbis block) unless the decoder is known to be gapless.
  * Resampler references: soxr VHQ is one particular filter. Another correct resampler will not
    match it bit for bit; compare with a tolerance (e.g. max abs difference or SNR over the
    frames away from the edges, where filter transients differ most). The frame count of the
    references is round(frames * to_rate / from_rate), here exact (no rounding needed).
"""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "audio"
SIZE_LIMIT = 2_500_000

SFC_SET_ADD_PEAK_CHUNK = 0x1050  # sndfile.h; the PEAK chunk holds time(NULL)

FFMPEG_QUIET = ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error"]
FFMPEG_BITEXACT = ["-fflags", "+bitexact", "-flags:a", "+bitexact", "-map_metadata", "-1"]


# ---------------------------------------------------------------------------------- signals
def sweep(sr: int, n: int, amp: float = 0.5, f0: float = 100.0) -> np.ndarray:
    f1 = min(8000.0, 0.4 * sr)
    t = np.arange(n, dtype=np.float64) / sr
    dur = n / sr
    k = np.log(f1 / f0)
    phase = 2.0 * np.pi * f0 * dur / k * (np.exp(t / dur * k) - 1.0)
    return amp * np.sin(phase)


def noise(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.3, 0.3, n)


def sine(sr: int, n: int, freq: float, amp: float = 0.25) -> np.ndarray:
    return amp * np.sin(2.0 * np.pi * freq * np.arange(n, dtype=np.float64) / sr)


# ---------------------------------------------------------------------------------- writers
PCM_BITS = {"PCM_16": 16, "PCM_24": 24, "PCM_32": 32}


def quantize(x: np.ndarray, bits: int) -> np.ndarray:
    """Float in [-1, 1) -> integers of `bits` bits (round half to even, clipped)."""
    scale = 2.0 ** (bits - 1)
    return np.clip(np.round(x * scale), -scale, scale - 1).astype(np.int64)


def write_lossless(path: Path, x: np.ndarray, sr: int, fmt: str, subtype: str) -> np.ndarray:
    """Writes x (frames, channels) float64; returns the exact written samples as float32."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if subtype in PCM_BITS:
        bits = PCM_BITS[subtype]
        q = quantize(x, bits)
        # libsndfile takes int32 data as full-scale 32-bit: shift 16/24-bit values up.
        data = (q << (32 - bits)).astype(np.int32)
        samples = (q.astype(np.float64) / 2.0 ** (bits - 1)).astype(np.float32)
    elif subtype == "FLOAT":
        data = x.astype(np.float32)
        samples = data.copy()
    else:
        raise ValueError(subtype)
    with sf.SoundFile(path, "w", sr, x.shape[1], subtype=subtype, format=fmt) as f:
        if fmt == "WAV":
            sf._snd.sf_command(f._file, SFC_SET_ADD_PEAK_CHUNK, sf._ffi.NULL, 0)
        f.write(np.ascontiguousarray(data))
    return np.ascontiguousarray(samples)


def ffmpeg_encode(path: Path, x: np.ndarray, sr: int, codec_args: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = np.ascontiguousarray(x.astype("<f4")).tobytes()
    cmd = (
        FFMPEG_QUIET
        + ["-f", "f32le", "-ar", str(sr), "-ac", str(x.shape[1]), "-i", "pipe:0"]
        + FFMPEG_BITEXACT
        + codec_args
        + ["-y", str(path)]
    )
    subprocess.run(cmd, input=raw, check=True)


def ffmpeg_frames(path: Path, channels: int | None) -> int | None:
    """Frames ffmpeg decodes (f32le bytes / 4 / channels); None if ffmpeg fails."""
    cmd = FFMPEG_QUIET + ["-i", str(path), "-map", "0:a:0", "-f", "f32le", "-c:a", "pcm_f32le", "pipe:1"]
    r = subprocess.run(cmd, capture_output=True)
    if r.returncode != 0 or channels is None:
        return None
    return len(r.stdout) // 4 // channels


def ffmpeg_decode(path: Path, channels: int) -> np.ndarray:
    cmd = FFMPEG_QUIET + ["-i", str(path), "-map", "0:a:0", "-f", "f32le", "-c:a", "pcm_f32le", "pipe:1"]
    r = subprocess.run(cmd, capture_output=True, check=True)
    return np.frombuffer(r.stdout, dtype="<f4").reshape(-1, channels)


def save_npy(rel: str, a: np.ndarray) -> str:
    p = OUT / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    a = np.ascontiguousarray(a, dtype="<f4")
    assert a.ndim == 2
    np.save(p, a, allow_pickle=False)
    return rel


def stem(rel: str) -> str:
    return Path(rel).stem


# ---------------------------------------------------------------------------------- main
def main() -> int:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)

    ffmpeg_version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=True)
    versions = {
        "numpy": np.__version__,
        "soundfile": sf.__version__,
        "libsndfile": sf.__libsndfile_version__,
        "soxr": soxr.__version__,
        "ffmpeg": ffmpeg_version.stdout.splitlines()[0].strip(),
    }

    files: list[dict] = []
    samples_of: dict[str, np.ndarray] = {}

    def lossless(rel, sr, x, fmt, subtype):
        s = write_lossless(OUT / rel, x, sr, fmt, subtype)
        samples_of[rel] = s
        files.append({
            "path": rel, "format": fmt.lower(), "subtype": subtype, "sample_rate": sr,
            "channels": x.shape[1], "frames_written": x.shape[0], "lossless": True,
            "decodes": True, "frames_ffmpeg": None,
            "samples": save_npy(f"ref/{stem(rel)}.samples.npy", s),
        })

    def lossy(rel, sr, x, fmt, subtype, codec_args):
        ffmpeg_encode(OUT / rel, x, sr, codec_args)
        files.append({
            "path": rel, "format": fmt, "subtype": subtype, "sample_rate": sr,
            "channels": x.shape[1], "frames_written": x.shape[0], "lossless": False,
            "decodes": True, "frames_ffmpeg": None, "samples": None,
        })

    # --- lossless
    sr, n = 48000, 48000
    lossless("src/music/sweep_48k_stereo_pcm16.wav", sr,
             np.stack([sweep(sr, n), noise(n, 1001)], axis=1), "WAV", "PCM_16")
    sr, n = 44100, 33075
    lossless("src/music/sweep_44k1_mono_pcm24.flac", sr, sweep(sr, n)[:, None], "FLAC", "PCM_24")
    sr, n = 22050, 11025
    lossless("src/music/deep/noise_22k05_mono_f32.wav", sr, noise(n, 1002)[:, None], "WAV", "FLOAT")
    sr, n = 16000, 8000
    lossless("src/music/deep/three_16k_pcm32.wav", sr,
             np.stack([sweep(sr, n), noise(n, 1003), sine(sr, n, 440.0)], axis=1), "WAV", "PCM_32")

    # --- lossy (ffmpeg)
    sr, n = 48000, 48000
    lossy("src/speech/tone_48k_stereo.mp3", sr,
          np.stack([sine(sr, n, 440.0), sine(sr, n, 660.0)], axis=1), "mp3", "MP3",
          ["-c:a", "libmp3lame", "-b:a", "128k", "-write_xing", "1"])
    sr, n = 44100, 35280
    lossy("src/speech/tone_44k1_mono.ogg", sr, sine(sr, n, 440.0)[:, None], "ogg", "VORBIS",
          ["-c:a", "libvorbis", "-q:a", "4"])
    sr, n = 48000, 28800
    lossy("src/speech/tone_48k_mono.m4a", sr, sine(sr, n, 440.0)[:, None], "m4a", "AAC_LC",
          ["-c:a", "aac", "-profile:a", "aac_low", "-b:a", "96k", "-f", "mp4"])

    # --- bad files
    bad = OUT / "src" / "bad"
    bad.mkdir(parents=True, exist_ok=True)
    tmp = OUT / "_tmp"
    tmp.mkdir()

    sr, n = 16000, 8000
    write_lossless(tmp / "full.wav", sweep(sr, n)[:, None], sr, "WAV", "PCM_16")
    data = (tmp / "full.wav").read_bytes()
    (bad / "truncated.wav").write_bytes(data[: int(len(data) * 0.6)])
    files.append({"path": "src/bad/truncated.wav", "format": "wav", "subtype": "PCM_16",
                  "sample_rate": sr, "channels": 1, "frames_written": n, "lossless": True,
                  "decodes": False, "reason": "truncated", "frames_ffmpeg": None, "samples": None})

    sr, n = 44100, 44100
    write_lossless(tmp / "full.flac", np.stack([sweep(sr, n)], axis=1), sr, "FLAC", "PCM_16")
    data = (tmp / "full.flac").read_bytes()
    (bad / "truncated.flac").write_bytes(data[: int(len(data) * 0.4)])
    files.append({"path": "src/bad/truncated.flac", "format": "flac", "subtype": "PCM_16",
                  "sample_rate": sr, "channels": 1, "frames_written": n, "lossless": True,
                  "decodes": False, "reason": "truncated", "frames_ffmpeg": None, "samples": None})
    shutil.rmtree(tmp)

    (bad / "empty.mp3").write_bytes(b"")
    (bad / "notaudio.mp3").write_text(
        "This is not an MP3 file.\n"
        "It is UTF-8 text with an audio suffix — décodeurs should reject it.\n"
        "Ein Decoder muss das ablehnen. 这不是音频。\n",
        encoding="utf-8",
    )
    (bad / "readme.txt").write_text(
        "Fixture: a plain text file in an audio folder.\n"
        "Directory scans that match on audio suffixes must skip it.\n",
        encoding="utf-8",
    )
    for rel, fmt, reason in [("src/bad/empty.mp3", "mp3", "empty"),
                             ("src/bad/notaudio.mp3", "mp3", "not_audio"),
                             ("src/bad/readme.txt", "txt", "not_audio_suffix")]:
        files.append({"path": rel, "format": fmt, "subtype": None, "sample_rate": None,
                      "channels": None, "frames_written": None, "lossless": False,
                      "decodes": False, "reason": reason, "frames_ffmpeg": None, "samples": None})

    # --- frames as ffmpeg decodes them
    for e in files:
        e["frames_ffmpeg"] = ffmpeg_frames(OUT / e["path"], e["channels"])

    # --- resampler references
    resample_refs = []
    for rel, to_rates in [("src/music/sweep_48k_stereo_pcm16.wav", [16000]),
                          ("src/music/sweep_44k1_mono_pcm24.flac", [16000, 48000])]:
        entry = next(e for e in files if e["path"] == rel)
        x = samples_of[rel]
        for to in to_rates:
            y = soxr.resample(x, entry["sample_rate"], to, quality="VHQ").astype(np.float32)
            y = y.reshape(y.shape[0], -1)
            ref = save_npy(f"ref/{stem(rel)}.to{to}.npy", y)
            resample_refs.append({"source": rel, "from_rate": entry["sample_rate"], "to_rate": to,
                                  "reference": ref, "resampler": "soxr VHQ", "frames": int(y.shape[0])})

    manifest = {"generated_by": "tools/make_audio_fixtures.py", "versions": versions,
                "files": files, "resample_refs": resample_refs}
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                                       encoding="utf-8")

    return verify(manifest, samples_of)


# ---------------------------------------------------------------------------------- checks
def verify(manifest: dict, samples_of: dict[str, np.ndarray]) -> int:
    failures = []
    print(f"{'path':42} {'bytes':>8} {'written':>8} {'ffmpeg':>8}  check")
    for e in manifest["files"]:
        p = OUT / e["path"]
        note = ""
        if e["lossless"] and e["decodes"]:
            expect = np.load(OUT / e["samples"])
            assert expect.shape == (e["frames_written"], e["channels"]) and expect.dtype == np.float32
            assert np.array_equal(expect, samples_of[e["path"]])
            got, sr = sf.read(p, dtype="float32", always_2d=True)
            info = sf.info(p)
            ok = (np.array_equal(got, expect) and sr == e["sample_rate"]
                  and info.subtype == e["subtype"] and info.frames == e["frames_written"])
            ff_exact = np.array_equal(ffmpeg_decode(p, e["channels"]), expect)
            note = ("soundfile bit-exact" if ok else "SOUNDFILE MISMATCH") + \
                   (", ffmpeg bit-exact" if ff_exact else ", ffmpeg differs")
            if not ok:
                failures.append(e["path"])
        elif e["decodes"]:
            info = sf.info(p) if e["format"] != "m4a" else None
            if info is not None:
                note = f"soundfile: {info.frames} frames, {info.samplerate} Hz, {info.channels} ch"
            if e["frames_ffmpeg"] is None:
                failures.append(e["path"])
        else:
            note = e["reason"]
        print(f"{e['path']:42} {p.stat().st_size:>8} {str(e['frames_written']):>8} "
              f"{str(e['frames_ffmpeg']):>8}  {note}")
    for r in manifest["resample_refs"]:
        y = np.load(OUT / r["reference"])
        src = next(e for e in manifest["files"] if e["path"] == r["source"])
        exp_frames = round(src["frames_written"] * r["to_rate"] / r["from_rate"])
        ok = y.dtype == np.float32 and y.shape == (r["frames"], src["channels"]) and r["frames"] == exp_frames
        print(f"{r['reference']:42} {(OUT / r['reference']).stat().st_size:>8} "
              f"{src['frames_written']:>8} {r['frames']:>8}  {'ok' if ok else 'BAD SHAPE'}")
        if not ok:
            failures.append(r["reference"])

    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    digest = hashlib.sha256()
    for f in sorted(OUT.rglob("*")):
        if f.is_file():
            digest.update(str(f.relative_to(OUT)).encode() + b"\0" + f.read_bytes())
    print(f"total {total} bytes in {OUT.relative_to(ROOT)}; tree sha256 {digest.hexdigest()[:16]}")
    if total >= SIZE_LIMIT:
        failures.append(f"total size {total} >= {SIZE_LIMIT}")
    if failures:
        print("FAILED:", failures, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
