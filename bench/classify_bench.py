"""Audio classification benchmark: Sluice (in-process and through `sluice serve`) vs a plain
Python onnxruntime loop, on the same files, model and machine.

What is measured
----------------
The job: for every WAV file under a directory (48 kHz stereo recordings), decode, mix to mono,
resample to the model's 16 kHz, cut 1 s windows every 0.5 s (the last one zero-padded), score
every window with the tone-detector ONNX classifier of tests/fixtures/onnx (sigmoid outputs), and
write one row per window (file, start, end, scores).  Wall-clock from spawn to exit, best of
``--repeats``; the files are pre-read once so every run starts from a warm page cache.

Engines
-------
* ``sluice``: ``sluice audio classify --source DIR --model tests/fixtures/onnx/tone-detector
  --output OUT.parquet`` (tract, windows of a batch of files scored together, all cores).
* ``sluice-2w``: the same with ``--workers 2`` (the balancer starts a stage at one worker and
  adds workers at its first 2 s balance interval, a large part of a 3 s run).
* ``sluice-serve-path``: the same command with ``--model http://127.0.0.1:PORT/v1/models/tone
  --data-root DIR`` against a ``sluice serve --data-root DIR`` started before timing: files go
  as paths, the server decodes and batches windows across requests.
* ``sluice-serve-data``: the same without ``--data-root``: the audio is sent base64 in the body.
* ``onnxruntime``: this script's own loop, what a user writes without Sluice: ``wave`` + numpy
  decode, soxr (``HQ``) resampling, numpy windows, one ``InferenceSession.run`` per file with all
  its windows, rows appended to a JSON-lines file; onnxruntime uses every core for each run.

Checks: every engine gives the same number of rows per file; the scores are compared with the
onnxruntime loop's (different resamplers, so not bit-identical) and the largest difference is
reported.  One JSON line per engine is appended to ``--out``.

How to run
----------
    python3 -m venv bench/.work/classify-venv
    bench/.work/classify-venv/bin/pip install -r bench/requirements-classify.txt
    cargo build --release -p sluice-cli
    bench/.work/classify-venv/bin/python bench/classify_bench.py --files 120 --seconds 30
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
import soxr

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "tests/fixtures/onnx/tone-detector"
WORK = ROOT / "bench/.work/classify"
RATE, WINDOW, HOP = 16000, 16000, 8000


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def make_data(n, seconds, src_rate=48000):
    """n stereo 48 kHz WAVs: tones, sweeps and noise at seeded random places."""
    data = WORK / f"data-{n}x{seconds}s"
    if data.exists() and len(list(data.glob("*.wav"))) == n:
        return data
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    rng = np.random.default_rng(7)
    t = np.arange(int(seconds * src_rate)) / src_rate
    for i in range(n):
        x = 0.05 * rng.standard_normal((2, t.size))
        for _ in range(4):
            s = rng.uniform(0, seconds - 2)
            m = (t >= s) & (t < s + 1.5)
            f = rng.uniform(200, 3000)
            x[:, m] += 0.4 * np.sin(2 * np.pi * f * t[m])
        pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").T.copy()
        with wave.open(str(data / f"rec-{i:04d}.wav"), "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(src_rate)
            w.writeframes(pcm.tobytes())
    return data


def windows(x):
    n = len(x)
    if n <= WINDOW:
        starts = [0]
    else:
        full = (n - WINDOW) // HOP + 1
        starts = [k * HOP for k in range(full)]
        if (full - 1) * HOP + WINDOW < n:
            starts.append(full * HOP)
    out = np.zeros((len(starts), WINDOW), dtype=np.float32)
    for j, s in enumerate(starts):
        seg = x[s : s + WINDOW]
        out[j, : len(seg)] = seg
    return starts, out


def onnx_loop(data, out_path):
    sess = ort.InferenceSession(str(MODEL / "model.onnx"), providers=["CPUExecutionProvider"])
    with open(out_path, "w") as out:
        for f in sorted(data.glob("*.wav")):
            with wave.open(str(f)) as w:
                rate, ch = w.getframerate(), w.getnchannels()
                pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
            x = pcm.reshape(-1, ch).astype(np.float32).mean(axis=1) / 32768.0
            x = soxr.resample(x, rate, RATE, quality="HQ").astype(np.float32)
            starts, win = windows(x)
            logits = sess.run(None, {"waveform": win})[0]
            scores = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
            for s, row in zip(starts, scores):
                out.write(json.dumps({"id": f.name, "start": s / RATE, "scores": row.tolist()}) + "\n")


def rows_sluice(table):
    rows = {}
    for part in sorted(Path(table).glob("*.parquet")):
        for r in pq.read_table(part).to_pylist():
            rows[(r["id"], round(r["start"], 6))] = r["scores"]
    return rows


def rows_onnx(path):
    rows = {}
    for line in open(path):
        r = json.loads(line)
        rows[(r["id"], round(r["start"], 6))] = r["scores"]
    return rows


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(sluice, data):
    port = free_port()
    proc = subprocess.Popen(
        [sluice, "serve", "--host", "127.0.0.1", "--port", str(port), "--model", f"tone={MODEL}",
         "--data-root", str(data), "--max-batch-size", "64", "--window-capacity", "16384",
         "--max-body-bytes", str(64 << 20)],
        stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "every model is loaded" in line:
            break
    return proc, port


def timed(cmd):
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    took = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{r.stderr}")
    return took


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=120)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sluice", default=str(ROOT / "target/release/sluice"))
    ap.add_argument("--out", default=str(ROOT / "bench/results-classify.jsonl"))
    args = ap.parse_args()
    data = make_data(args.files, args.seconds)
    for f in data.glob("*.wav"):
        f.read_bytes()
    audio_s = args.files * args.seconds
    server, port = start_server(args.sluice, data)
    url = f"http://127.0.0.1:{port}/v1/models/tone"
    base = [args.sluice, "audio", "classify", "--source", str(data), "--progress", "off"]
    engines = {
        "sluice": lambda o: base + ["--model", str(MODEL), "--output", o],
        "sluice-2w": lambda o: base + ["--model", str(MODEL), "--workers", "2", "--output", o],
        "sluice-serve-path": lambda o: base + ["--model", url, "--data-root", str(data),
                                              "--batch-size", "8", "--workers", "2", "--output", o],
        "sluice-serve-data": lambda o: base + ["--model", url, "--batch-size", "8",
                                              "--workers", "2", "--output", o],
    }
    results = {}
    ref_path = WORK / "onnx-rows.jsonl"
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        onnx_loop(data, ref_path)
        times.append(time.perf_counter() - t)
    results["onnxruntime"] = (min(times), "bench/classify_bench.py onnx_loop (wave + soxr HQ + onnxruntime)")
    ref = rows_onnx(ref_path)
    diffs = {"onnxruntime": 0.0}
    try:
        for name, cmd in engines.items():
            times = []
            for _ in range(args.repeats):
                out = WORK / f"out-{name}.parquet"
                shutil.rmtree(out, ignore_errors=True)
                times.append(timed(cmd(str(out))))
            rows = rows_sluice(out)
            if rows.keys() != ref.keys():
                raise SystemExit(f"{name}: {len(rows)} rows vs {len(ref)} for onnxruntime")
            diffs[name] = max(max(abs(a - b) for a, b in zip(rows[k], ref[k])) for k in ref)
            results[name] = (min(times), " ".join(cmd("OUT")))
    finally:
        server.terminate()
        server.wait()
    machine = platform.processor() or platform.machine()
    try:
        machine = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except StopIteration:
        pass
    with open(args.out, "a") as out:
        for name, (secs, cmd) in results.items():
            line = {
                "engine": name, "files": args.files, "audio_seconds": audio_s,
                "windows": len(ref), "wall_seconds": round(secs, 3),
                "files_per_s": round(args.files / secs, 1),
                "windows_per_s": round(len(ref) / secs, 1),
                "audio_hours_per_s": round(audio_s / 3600 / secs, 3),
                "max_score_diff_vs_onnxruntime": diffs[name],
                "cores": os.cpu_count(), "machine": machine,
                "date": datetime.date.today().isoformat(), "command": cmd,
            }
            print(json.dumps(line))
            out.write(json.dumps(line) + "\n")
            log(f"{name:20s} {secs:7.2f} s  {args.files / secs:7.1f} files/s  "
                f"{audio_s / 3600 / secs:6.3f} audio-h/s  max diff {diffs[name]:.2e}")


if __name__ == "__main__":
    main()
