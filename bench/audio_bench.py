"""Audio resample benchmark: Sluice vs Apache Beam (DirectRunner) vs sox.

What is measured
----------------
One job, run by each engine on the same files on the same machine: for every
``.wav``/``.mp3`` file under a source directory, decode, resample 48 kHz ->
16 kHz keeping the channels (stereo), and write a 16-bit PCM WAV to the same
relative path under a target directory (suffix replaced by ``.wav``).

Before an engine's timed runs, it gets one untimed warm-up run on a hard-linked
subset of 2 x cores files (``--no-warmup`` skips it): the first Beam run in a
fresh venv otherwise pays ~12 s of one-off cache filling.  Then for each
repeat the harness empties a fresh target directory under
bench/.work/audio-out/, pre-reads every input once (so every run starts
from a warm page cache, the same for all engines), then times the engine's
command wall-clock from spawn to exit.  While it runs, the harness samples the
whole process tree every 50 ms and records the peak of the summed RSS
(``peak_rss_mib``; shared library pages of multi-process engines are counted
once per process) and of the summed PSS (``peak_pss_mib``; shared pages split
between processes, so closer to the real footprint).  Afterwards every output
is checked with soundfile: one output per input at the mirrored path, 16 kHz,
same channel count as its input (2), PCM_16, frame count within 1 % of
16000 x input seconds.  A run that fails any check is reported with
``"ok": false`` and the reasons, and the harness exits non-zero.

One JSON line per run is appended to ``--out`` (default
bench/results-audio.jsonl): engine, version, files, audio_seconds,
wall_seconds, files_per_s, audio_hours_per_s (hours of audio processed per
wall-clock second), peak_rss_mib, peak_pss_mib, cores, date, machine (lscpu
model name), command (exactly what was run), ok, errors.  The same JSON lines
are printed to stdout; everything else (progress, the engines' own output, and
the summary table printed at the end) goes to stderr.

Engines and why they are set up this way
----------------------------------------
* ``sluice``: ``SLUICE audio resample --source SRC --target DST --suffix .wav
  --suffix .mp3 --sample-rate 16000 --channels keep --format wav --progress off
  --summary DST/_summary.json``.  Sluice picks its own parallelism (all cores).
  ``--sluice PATH`` selects the binary (default target/release/sluice; build it
  with ``cargo build --release -p sluice-cli`` first).
* ``beam``: bench/beam_resample.py, a klay-beam-style pipeline (MatchFiles ->
  Reshuffle -> ReadMatches -> librosa.load -> librosa.resample soxr_hq ->
  soundfile PCM_16 -> FileSystems.create) on the DirectRunner with
  ``--direct_num_workers <cores> --direct_running_mode multi_processing``:
  the only DirectRunner mode that uses more than one core for Python DoFns
  (in_memory and multi_threading are bound by the GIL).  Its wall time
  includes interpreter start, imports and worker-process start-up, which is
  what a user of that job pays too.
* ``sox``: ``find | xargs -0 -P <cores>`` running one ``sox IN -r 16000 -b 16
  OUT.wav`` per file: the shell loop a person would write, using every core.
  sox's default ``rate`` quality is "high" (libsoxr HQ), the same resampler
  family as librosa's soxr_hq.  sox decodes MP3 with libmad and does not trim
  the encoder padding (~40 ms per file here; libsndfile/mpg123 does), so its
  MP3 outputs are slightly long: fine for the 1 % check on clips of >= ~5 s.
* ``sox1``: the same ``sox`` command in a plain sequential ``while read``
  loop (one core), for reference.

How to run
----------
All Python here (data generation, verification with soundfile, psutil) runs in
the Beam venv::

    python3 -m venv bench/.work/beam-venv      # Python 3.11
    bench/.work/beam-venv/bin/pip install -r bench/requirements-beam.txt
    apt-get install -y sox libsox-fmt-mp3      # plus ffmpeg (for --make-data)
    cargo build --release -p sluice-cli

    PY=bench/.work/beam-venv/bin/python
    $PY bench/audio_bench.py --make-data bench/.work/audio-data \\
        --files 200 --seconds 30
    $PY bench/audio_bench.py --data bench/.work/audio-data \\
        --engines sluice,beam,sox,sox1 --repeat 2 --out bench/results-audio.jsonl

``--make-data DIR --files N --seconds S`` writes N deterministic 48 kHz stereo
clips (numpy default_rng seeded per file: a log sine sweep per channel plus
white noise, peak-normalised to -12 dBFS), half 16-bit WAV and half 192 kb/s
MP3 (ffmpeg libmp3lame), spread over a few nested subdirectories.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as _dt
import io
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / ".work"
SUFFIXES = (".wav", ".mp3")
SRC_RATE = 48000
DST_RATE = 16000
SEED = 20240611
SUBDIRS = ("speech", "music/live", "music/studio", "misc")
ENGINES = ("sluice", "beam", "sox", "sox1")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# data generation
# --------------------------------------------------------------------------


def _clip(i: int, seconds: float):
    import numpy as np

    rng = np.random.default_rng([SEED, i])
    n = int(round(seconds * SRC_RATE))
    t = np.arange(n, dtype=np.float64) / SRC_RATE
    chans = []
    for _c in range(2):
        f0 = rng.uniform(40.0, 400.0)
        f1 = rng.uniform(2000.0, 20000.0)
        k = np.log(f1 / f0) / seconds
        phase = 2 * np.pi * f0 * (np.expm1(k * t) / k)  # log sweep f0 -> f1
        sweep = np.sin(phase + rng.uniform(0, 2 * np.pi))
        noise = rng.standard_normal(n)
        mix = rng.uniform(0.2, 0.8)
        chans.append((1 - mix) * sweep + mix * 0.3 * noise)
    y = np.stack(chans, axis=1)
    peak = 10 ** (-12 / 20)  # -12 dBFS
    y *= peak / np.max(np.abs(y))
    return y.astype(np.float32)


def _write_one(root: Path, i: int, n_files: int, seconds: float) -> Path:
    import soundfile as sf

    # Odd indices are MP3 (half of the files, rounded down); pairs of
    # consecutive files share a directory so every directory gets both kinds.
    sub = SUBDIRS[(i // 2) % len(SUBDIRS)]
    is_mp3 = i % 2 == 1
    ext = ".mp3" if is_mp3 else ".wav"
    out = root / sub / f"clip_{i:04d}{ext}"
    out.parent.mkdir(parents=True, exist_ok=True)
    y = _clip(i, seconds)
    if not is_mp3:
        sf.write(out, y, SRC_RATE, subtype="PCM_16")
        return out
    buf = io.BytesIO()
    sf.write(buf, y, SRC_RATE, format="WAV", subtype="PCM_16")
    cmd = [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "wav", "-i", "pipe:0",
        "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact",
        "-c:a", "libmp3lame", "-b:a", "192k", str(out),
    ]
    # -nostdin only stops ffmpeg reading keys; pipe:0 is still the input.
    subprocess.run(cmd, input=buf.getvalue(), check=True)
    return out


def make_data(root: Path, n_files: int, seconds: float, jobs: int) -> None:
    if shutil.which("ffmpeg") is None:
        sys.exit("--make-data needs ffmpeg on PATH (for the MP3 half)")
    if root.exists():
        old = [p for p in root.rglob("*") if p.is_file() and p.suffix in SUFFIXES]
        if old:
            log(f"removing {len(old)} old audio files under {root}")
            shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(max_workers=jobs) as ex:
        outs = list(ex.map(lambda i: _write_one(root, i, n_files, seconds), range(n_files)))
    n_mp3 = sum(p.suffix == ".mp3" for p in outs)
    log(
        f"wrote {len(outs)} files ({len(outs) - n_mp3} wav, {n_mp3} mp3), "
        f"{seconds:g}s each @ {SRC_RATE} Hz stereo, under {root} "
        f"in {time.perf_counter() - t0:.1f}s"
    )


# --------------------------------------------------------------------------
# inputs, outputs, verification
# --------------------------------------------------------------------------


def list_inputs(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in SUFFIXES)


def probe_inputs(files: list[Path]) -> dict[Path, tuple[float, int]]:
    """path -> (seconds, channels), read with soundfile."""
    import soundfile as sf

    info = {}
    for p in files:
        i = sf.info(str(p))
        info[p] = (i.frames / i.samplerate, i.channels)
    return info


def warm_cache(files: list[Path]) -> None:
    for p in files:
        with open(p, "rb") as fh:
            while fh.read(1 << 20):
                pass


def verify(src: Path, dst: Path, inputs: dict[Path, tuple[float, int]]) -> list[str]:
    import soundfile as sf

    errors: list[str] = []
    outs = sorted(p for p in dst.rglob("*.wav") if p.is_file())
    if len(outs) != len(inputs):
        errors.append(f"{len(outs)} .wav outputs for {len(inputs)} inputs")
    seen = set(outs)
    for p, (secs, ch) in inputs.items():
        rel = p.relative_to(src)
        cands = [dst / rel.with_suffix(".wav"), dst / (str(rel) + ".wav")]
        out = next((c for c in cands if c in seen), None)
        if out is None:
            errors.append(f"no output for {rel}")
            continue
        try:
            i = sf.info(str(out))
        except Exception as e:  # noqa: BLE001
            errors.append(f"{out.relative_to(dst)}: unreadable: {e}")
            continue
        want = DST_RATE * secs
        bad = []
        if i.samplerate != DST_RATE:
            bad.append(f"rate {i.samplerate}")
        if i.channels != ch:
            bad.append(f"channels {i.channels} != {ch}")
        if i.subtype != "PCM_16":
            bad.append(f"subtype {i.subtype}")
        if abs(i.frames - want) > 0.01 * want:
            bad.append(f"frames {i.frames} vs {want:.0f}")
        if bad:
            errors.append(f"{out.relative_to(dst)}: " + ", ".join(bad))
    if len(errors) > 20:
        errors = errors[:20] + [f"... and {len(errors) - 20} more"]
    return errors


# --------------------------------------------------------------------------
# process-tree memory sampling
# --------------------------------------------------------------------------


def _children_proc(pid: int) -> list[int]:
    """All descendants of pid, from /proc (no psutil)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                stat = fh.read()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def _mem_kib(pid: int) -> tuple[int, int]:
    """(rss, pss) in KiB for one pid; pss falls back to rss."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
        return rss, pss
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return rss, rss


class TreeSampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak_rss = 0
        self.peak_pss = 0
        self.max_procs = 0
        self._halt = threading.Event()
        try:
            import psutil

            self._psutil = psutil
            self._root = psutil.Process(pid)
        except Exception:  # noqa: BLE001 - psutil missing or process gone
            self._psutil = None

    def _pids(self) -> list[int]:
        if self._psutil is not None:
            try:
                return [self.pid] + [c.pid for c in self._root.children(recursive=True)]
            except self._psutil.Error:
                return [self.pid]
        return [self.pid] + _children_proc(self.pid)

    def run(self):
        while not self._halt.is_set():
            rss = pss = 0
            pids = self._pids()
            for p in pids:
                r, s = _mem_kib(p)
                rss += r
                pss += s
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self.max_procs = max(self.max_procs, len(pids))
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join()


# --------------------------------------------------------------------------
# engines
# --------------------------------------------------------------------------


def _capture(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except Exception as e:  # noqa: BLE001
        return f"unknown ({e})"


def sluice_cmd(a, src: Path, dst: Path) -> list[str]:
    return [
        str(a.sluice), "audio", "resample",
        "--source", str(src), "--target", str(dst),
        "--suffix", ".wav", "--suffix", ".mp3",
        "--sample-rate", str(DST_RATE), "--channels", "keep",
        "--format", "wav", "--progress", "off",
        "--summary", str(dst / "_summary.json"),
    ]


def beam_cmd(a, src: Path, dst: Path) -> list[str]:
    return [
        str(a.beam_python), str(REPO / "bench" / "beam_resample.py"),
        "--source", str(src), "--target", str(dst),
        "--suffix", ".wav", "--suffix", ".mp3",
        "--target_sr", str(DST_RATE),
        "--runner", "DirectRunner",
        "--direct_num_workers", str(a.cores),
        "--direct_running_mode", "multi_processing",
    ]


# Shared by sox and sox1: mirror the directory tree, then one sox per file.
# $1 = source, $2 = target; file names come NUL-separated from find.
_SOX_ONE = 'o="$T/${f%.*}.wav"; sox "$f" -r ' + str(DST_RATE) + ' -b 16 "$o"'
_FIND = r"find . -type f \( -name '*.wav' -o -name '*.mp3' \) -print0"
_MKDIRS = r'find . -type d -print0 | (cd "$T" && xargs -0 mkdir -p)'


def sox_cmd(a, src: Path, dst: Path) -> list[str]:
    script = (
        f'set -eo pipefail; export T="$2"; cd "$1"; {_MKDIRS}; '
        f"{_FIND} | xargs -0 -r -n 1 -P {a.cores} "
        f"bash -c 'f=\"$1\"; {_SOX_ONE}' _"
    )
    return ["bash", "-c", script, "sox-xargs", str(src), str(dst)]


def sox1_cmd(a, src: Path, dst: Path) -> list[str]:
    script = (
        f'set -eo pipefail; T="$2"; cd "$1"; {_MKDIRS}; '
        f"{_FIND} | while IFS= read -r -d '' f; do {_SOX_ONE}; done"
    )
    return ["bash", "-c", script, "sox-loop", str(src), str(dst)]


def engine_version(engine: str, a) -> str:
    if engine == "sluice":
        return _capture([str(a.sluice), "--version"])
    if engine == "beam":
        code = (
            "import sys, apache_beam, librosa, soxr, soundfile, numpy;"
            "print(f'apache-beam {apache_beam.__version__}, librosa {librosa.__version__}"
            " (soxr_hq, soxr {soxr.__version__}), soundfile {soundfile.__version__}"
            " (libsndfile {soundfile.__libsndfile_version__}), numpy {numpy.__version__},"
            " python {sys.version.split()[0]}')"
        )
        return _capture([str(a.beam_python), "-c", code])
    return _capture(["sox", "--version"]).replace("sox:", "").strip()


CMDS = {"sluice": sluice_cmd, "beam": beam_cmd, "sox": sox_cmd, "sox1": sox1_cmd}


def machine_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sluice_preflight(a) -> str | None:
    """None if the Sluice binary has `audio resample`, else why not."""
    if not Path(a.sluice).is_file():
        return f"{a.sluice} not found (cargo build --release -p sluice-cli)"
    r = subprocess.run([str(a.sluice), "audio", "resample", "--help"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        why = (r.stderr or r.stdout).strip().splitlines()
        return f"{a.sluice} has no `audio resample` subcommand ({why[0] if why else r.returncode})"
    return None


def make_warmup_set(src: Path, files: list[Path], n: int) -> Path:
    """Hard-link (or copy) the first n inputs into bench/.work/audio-warmup."""
    dst = WORK / "audio-warmup"
    if dst.exists():
        shutil.rmtree(dst)
    for p in files[:n]:
        out = dst / p.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(p, out)
        except OSError:
            shutil.copy2(p, out)
    return dst


def warm_up(engine: str, a, wsrc: Path) -> None:
    """One untimed run on a few files: fills .pyc/numba caches, page cache of
    binaries and libraries, so the timed runs measure steady-state cost."""
    dst = WORK / "audio-out" / f"{engine}-warmup"
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    cmd = CMDS[engine](a, wsrc, dst)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log(f"[{engine} warm-up] {time.perf_counter() - t0:.2f}s on "
        f"{sum(1 for _ in list_inputs(wsrc))} files, exit {r.returncode} (not recorded)")
    shutil.rmtree(dst, ignore_errors=True)


def run_once(engine: str, a, src: Path, inputs, version: str, machine: str, rep: int):
    dst = WORK / "audio-out" / f"{engine}-{rep}"
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    cmd = CMDS[engine](a, src, dst)
    warm_cache(list(inputs))
    log(f"[{engine} #{rep}] {shlex.join(cmd)}")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=sys.stderr)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    try:
        rc = proc.wait(timeout=a.timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
        log(f"[{engine} #{rep}] timed out after {a.timeout}s")
    wall = time.perf_counter() - t0
    sampler.stop()
    errors = [f"exit status {rc}"] if rc != 0 else []
    errors += verify(src, dst, inputs)
    audio_s = sum(s for s, _ in inputs.values())
    rec = {
        "engine": engine,
        "version": version,
        "files": len(inputs),
        "audio_seconds": round(audio_s, 3),
        "wall_seconds": round(wall, 3),
        "files_per_s": round(len(inputs) / wall, 3),
        "audio_hours_per_s": round(audio_s / 3600 / wall, 5),
        "peak_rss_mib": round(sampler.peak_rss / 1024, 1),
        "peak_pss_mib": round(sampler.peak_pss / 1024, 1),
        "max_processes": sampler.max_procs,
        "cores": a.cores,
        "repeat": rep,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "command": shlex.join(cmd),
        "ok": not errors,
        "errors": errors,
    }
    status = "ok" if not errors else "FAILED: " + "; ".join(errors[:5])
    log(f"[{engine} #{rep}] {wall:.2f}s, peak rss {rec['peak_rss_mib']} MiB: {status}")
    if not a.keep_output:
        shutil.rmtree(dst, ignore_errors=True)
    return rec


def print_table(recs: list[dict]) -> None:
    hdr = ("engine", "rep", "ok", "files", "audio_h", "wall_s", "files/s",
           "audio_h/s", "rss_MiB", "pss_MiB")
    rows = [
        (r["engine"], str(r["repeat"]), "yes" if r["ok"] else "NO", str(r["files"]),
         f"{r['audio_seconds'] / 3600:.3f}", f"{r['wall_seconds']:.2f}",
         f"{r['files_per_s']:.2f}", f"{r['audio_hours_per_s']:.4f}",
         f"{r['peak_rss_mib']:.0f}", f"{r['peak_pss_mib']:.0f}")
        for r in recs
    ]
    w = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(hdr)]
    log("  ".join(h.ljust(w[i]) for i, h in enumerate(hdr)))
    for row in rows:
        log("  ".join(c.ljust(w[i]) for i, c in enumerate(row)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Sluice vs Beam DirectRunner vs sox: audio resample benchmark",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring for what is measured and how.",
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--make-data", type=Path, metavar="DIR", help="generate test audio in DIR")
    g.add_argument("--data", type=Path, metavar="DIR", help="benchmark on audio in DIR")
    p.add_argument("--files", type=int, default=200, help="--make-data: number of files")
    p.add_argument("--seconds", type=float, default=30.0, help="--make-data: seconds per file")
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results-audio.jsonl")
    p.add_argument("--sluice", type=Path, default=REPO / "target" / "release" / "sluice")
    p.add_argument("--beam-python", type=Path,
                   default=WORK / "beam-venv" / "bin" / "python")
    p.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--timeout", type=float, default=3600.0, help="per run, seconds")
    p.add_argument("--no-warmup", action="store_true",
                   help="skip the untimed warm-up run of each engine on a few files")
    p.add_argument("--keep-output", action="store_true",
                   help="keep bench/.work/audio-out/<engine>-<rep> after verifying")
    a = p.parse_args(argv)

    if a.make_data:
        make_data(a.make_data.resolve(), a.files, a.seconds, a.cores)
        return 0

    engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    bad = [e for e in engines if e not in CMDS]
    if bad:
        p.error(f"unknown engine(s) {bad}; choose from {list(CMDS)}")
    src = a.data.resolve()
    files = list_inputs(src)
    if not files:
        sys.exit(f"no {'/'.join(SUFFIXES)} files under {src}")
    inputs = probe_inputs(files)
    machine = machine_name()
    log(f"{len(files)} files, {sum(s for s, _ in inputs.values()) / 3600:.3f} h of audio, "
        f"{a.cores} cores, {machine}")

    wsrc = None if a.no_warmup else make_warmup_set(src, files, 2 * a.cores)
    recs, skipped = [], []
    for engine in engines:
        if engine == "sluice":
            why = sluice_preflight(a)
            if why:
                log(f"[sluice] SKIPPED: {why}")
                skipped.append("sluice")
                continue
        version = engine_version(engine, a)
        log(f"[{engine}] {version}")
        if wsrc is not None:
            warm_up(engine, a, wsrc)
        for rep in range(1, a.repeat + 1):
            rec = run_once(engine, a, src, inputs, version, machine, rep)
            recs.append(rec)
            a.out.parent.mkdir(parents=True, exist_ok=True)
            with open(a.out, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            print(json.dumps(rec), flush=True)
    log(f"\nappended {len(recs)} result(s) to {a.out}")
    if recs:
        print_table(recs)
    if skipped:
        log(f"skipped: {', '.join(skipped)}")
    return 0 if recs and not skipped and all(r["ok"] for r in recs) else 1


if __name__ == "__main__":
    sys.exit(main())
