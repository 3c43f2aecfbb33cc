#!/usr/bin/env python3
"""Server under the original service's load pattern: `sluice serve` vs FastAPI + uvicorn +
transformers (bench/fastapi_baseline.py), both driven by `sluice stress`.

Pattern (from the issue): pay-size 1 and 16 records per request, 100 requests, request starts
spaced 0.5 s, 0.1 s and 0.01 s apart (open loop), 30 s client timeout. Each run gets a freshly
started server so one run's backlog cannot leak into the next; peak RSS of the server processes
(VmHWM, summed over uvicorn's workers) is read before stopping it.

The model is a random-weight M2M100 with the real 128k vocabulary and a reduced body (d_model 256,
3+3 layers), greedy, at most 16 new tokens per record: the full 418M model with 5 beams needs
several seconds per 16-record request on 2 cores, so the 100-request patterns would take hours.
Both servers run the same model on the same cores (sluice: its own threads; baseline: 2 workers x
1 torch thread).

Usage (repository root, after `cargo build --release`):
    python bench/serve_bench.py [--work bench/.work] [--out bench/results-serve.json]
Needs: pip install -r tools/requirements.txt fastapi uvicorn
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from translate_bench import write_tokenizer  # noqa: E402

SLUICE = ROOT / "target" / "release" / "sluice"
PAY_SIZES = [1, 16]
SPACINGS = [0.5, 0.1, 0.01]
NUM_REQ = 100
TIMEOUT = 30
NEW_TOKENS = 16


def build_model(work: Path) -> Path:
    model_dir = work / "m2m100-small-random"
    if not (model_dir / "model.safetensors").exists():
        import torch
        from transformers import GenerationConfig, M2M100Config, M2M100ForConditionalGeneration

        config = M2M100Config(
            vocab_size=128112, d_model=256, encoder_layers=3, decoder_layers=3,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=1024,
            decoder_ffn_dim=1024, max_position_embeddings=1024, scale_embedding=True,
            activation_function="relu", pad_token_id=1, bos_token_id=0, eos_token_id=2,
            decoder_start_token_id=2,
        )
        torch.manual_seed(0)
        model = M2M100ForConditionalGeneration(config).eval()
        model.generation_config = GenerationConfig(
            bos_token_id=0, decoder_start_token_id=2, eos_token_id=2, pad_token_id=1,
            max_length=200, num_beams=1,
        )
        model_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(model_dir), safe_serialization=True)
    write_tokenizer(model_dir)
    return model_dir


def wait_ready(url: str, proc: subprocess.Popen, limit: float = 120.0):
    start = time.time()
    while time.time() - start < limit:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready in {limit} s")


def peak_rss_mib(pid: int) -> float:
    """VmHWM of a process and its children (uvicorn's workers), in MiB."""
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        pids += [int(p) for p in out.split()]
    except OSError:
        pass
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def start(server: str, model_dir: Path, port: int, python: str) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if server.startswith("sluice"):
        cmd = [str(SLUICE), "serve", "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port)]
        if server == "sluice-deadline":
            # What a user sets when clients give up after TIMEOUT: refuse at once what would not
            # be answered in time, instead of queueing it (with a margin for the client's side).
            cmd += ["--deadline-ms", str((TIMEOUT - 5) * 1000)]
        env["SLUICE_LOG"] = "warn"
        ready = f"http://127.0.0.1:{port}/readyz"
    else:
        cmd = [python, "-m", "uvicorn", "fastapi_baseline:app", "--app-dir", str(ROOT / "bench"),
               "--workers", "2", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        env.update(MODEL_DIR=str(model_dir), TORCH_THREADS="1")
        ready = f"http://127.0.0.1:{port}/healthz"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_ready(ready, proc)
    if not server.startswith("sluice"):
        time.sleep(3)  # both workers loaded: /healthz answers as soon as the first one is
    return proc, f"http://127.0.0.1:{port}/translation"


def stop(proc: subprocess.Popen):
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / ".work")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results-serve.json")
    ap.add_argument("--servers", default="sluice,sluice-deadline,fastapi")
    ap.add_argument("--pay-sizes", default=",".join(map(str, PAY_SIZES)), help="records per request, comma-separated")
    ap.add_argument("--spacings", default=",".join(map(str, SPACINGS)), help="seconds between request starts")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = build_model(args.work)
    rows = []
    for server in args.servers.split(","):
        for pay in [int(p) for p in args.pay_sizes.split(",")]:
            for spacing in [float(x) for x in args.spacings.split(",")]:
                proc, url = start(server, model_dir, 9531, sys.executable)
                out = args.work / f"stress-{server}-{pay}-{spacing}.json"
                subprocess.run(
                    [str(SLUICE), "stress", "--url", url, "--pay-size", str(pay), "--num-req", str(NUM_REQ),
                     "--sleep", str(spacing), "--timeout", str(TIMEOUT), "--from", "en", "--to", "fr",
                     "--beams", "1", "--max-new-tokens", str(NEW_TOKENS), "--json", str(out)],
                    check=True, stdout=subprocess.DEVNULL,
                )
                rss = peak_rss_mib(proc.pid)
                stop(proc)
                s = json.loads(out.read_text())["summary"]
                row = {"server": server, "pay_size": pay, "spacing_s": spacing, "peak_rss_mib": round(rss),
                       **{k: s[k] for k in ("success_percent", "requests_per_s", "records_per_s", "duration_s")},
                       "mean_s": s["latency"]["mean"], "p50_s": s["latency"]["p50"], "p99_s": s["latency"]["p99"],
                       "statuses": s["statuses"]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "num_req": NUM_REQ, "timeout_s": TIMEOUT,
            "new_tokens": NEW_TOKENS, "model": "random M2M100, vocab 128112, d_model 256, 3+3 layers, greedy"}
    if args.out.exists():
        # Keep rows of servers not run this time (e.g. --servers sluice reuses the baseline's).
        old = json.loads(args.out.read_text())["rows"]
        rows = [r for r in old if r["server"] not in args.servers.split(",")] + rows
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print("| server | records/req | spacing | success | mean | p50 | p99 | req/s | records/s | statuses | peak RSS |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        st = ", ".join(f"{k}×{v}" for k, v in r["statuses"].items())
        print(f"| {r['server']} | {r['pay_size']} | {r['spacing_s']} s | {r['success_percent']:.0f}% | "
              f"{r['mean_s']:.2f} s | {r['p50_s']:.2f} s | {r['p99_s']:.2f} s | {r['requests_per_s']:.1f} | "
              f"{r['records_per_s']:.1f} | {st} | {r['peak_rss_mib']} MiB |")


if __name__ == "__main__":
    main()
