"""Ray Data side of the Sluice-vs-Ray-Data pipeline benchmark.

What it measures
----------------
Wall-clock time for a small, fixed pipeline to run end to end on a
single-machine Ray cluster started by this process, so the numbers can be
set against Sluice running the mirror-image pipeline in Rust:

* ``noop3``: ``ray.data.range(N)`` (rows ``{"id": i}``) through three
  ``map_batches`` identity stages (numpy batches of ``--batch-size``, default
  1024).  This isolates per-item/per-batch scheduling and data-movement
  overhead: the stages do no work at all.
* ``cpu2``: the same rows through two CPU-bound stages, ``hash_a`` (SHA-256
  over the 8-byte id plus 256 KiB of a fixed buffer) and ``hash_b`` (SHA-256
  over digest_a plus 768 KiB, so three times the cost of ``hash_a``), in
  batches of ``--batch-size`` (default 16), ``num_cpus=1`` per task with Ray
  choosing the concurrency.  The 1:3 cost ratio is what lets an autoscaler
  show that it balances workers across stages.  A checksum (XOR of the first
  8 bytes, little-endian, of every digest_b) and the digests for ids 0 and 1
  are reported so the Rust side can be checked against this one.

Why it is built this way
------------------------
``ray.init`` plus dataset construction is reported separately as
``init_seconds``.  Datasets are lazy: each repeat builds a fresh (untimed)
plan, and the timed region runs from the start of execution to the last
output row having been consumed by the driver (``iter_batches`` with
``batch_size=None``, i.e. blocks as Ray produces them, so the driver does not
re-batch).  The best of ``--repeat`` runs is reported because the first run
also pays for worker-process warm-up.

Everything but the one JSON result goes to stderr; Ray runs with no dashboard,
no usage stats, no metrics export, and binds to 127.0.0.1 only.

Usage::

    bench/.work/ray-venv/bin/python bench/ray_pipeline_bench.py \\
        --workload noop3|cpu2 --items N [--batch-size B] [--cpus C] [--repeat R]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import secrets
import sys
import threading
import time

# Must be set before Ray is imported/initialised: no telemetry, no metrics
# exporter.  Ray's gRPC servers listen on all interfaces even when the node IP
# is 127.0.0.1, so keep token auth on, but hand Ray a throw-away per-run token
# through the environment instead of letting it write ~/.ray/auth_token.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "token")
if os.environ["RAY_AUTH_MODE"] == "token" and not (
    os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
):
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
os.environ.setdefault("RAY_enable_metrics_collection", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import numpy as np  # noqa: E402
import ray  # noqa: E402

try:
    import psutil  # noqa: E402
except ImportError:  # pragma: no cover - psutil is in requirements-ray.txt
    psutil = None

# 1 MiB deterministic buffer shared by both cpu2 stages.
BUF = bytes(i % 251 for i in range(1 << 20))
HASH_A_LEN = 256 * 1024
HASH_B_LEN = 768 * 1024

DEFAULT_BATCH = {"noop3": 1024, "cpu2": 16}


# --------------------------------------------------------------------------
# Stage functions (run inside Ray worker processes)
# --------------------------------------------------------------------------


def identity(batch: dict) -> dict:
    """noop3 stage: return the numpy batch unchanged."""
    return batch


def hash_a(batch: dict) -> dict:
    """cpu2 stage 1: a = sha256(id as 8 LE bytes + BUF[:256 KiB]), uint8 (n, 32)."""
    ids = batch["id"]
    view = memoryview(BUF)[:HASH_A_LEN]
    out = np.empty((len(ids), 32), dtype=np.uint8)
    for row, i in enumerate(ids):
        h = hashlib.sha256()
        h.update(int(i).to_bytes(8, "little"))
        h.update(view)
        out[row] = np.frombuffer(h.digest(), dtype=np.uint8)
    return {"id": ids, "a": out}


def hash_b(batch: dict) -> dict:
    """cpu2 stage 2: b = hex(sha256(a + BUF[:768 KiB])), 3x the cost of hash_a."""
    view = memoryview(BUF)[:HASH_B_LEN]
    digests = []
    for a in batch["a"]:
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(a, dtype=np.uint8).tobytes())
        h.update(view)
        digests.append(h.hexdigest())
    return {"id": batch["id"], "b": np.array(digests, dtype=object)}


# --------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------


def build_noop3(items: int, batch_size: int) -> "ray.data.Dataset":
    """Lazy plan: range(N) -> identity x3 (numpy batches)."""
    ds = ray.data.range(items)
    for _ in range(3):
        ds = ds.map_batches(identity, batch_size=batch_size, batch_format="numpy")
    return ds


def build_cpu2(items: int, batch_size: int) -> "ray.data.Dataset":
    """Lazy plan: range(N) -> hash_a -> hash_b, num_cpus=1 per task."""
    ds = ray.data.range(items)
    ds = ds.map_batches(hash_a, batch_size=batch_size, batch_format="numpy", num_cpus=1)
    ds = ds.map_batches(hash_b, batch_size=batch_size, batch_format="numpy", num_cpus=1)
    return ds


BUILDERS = {"noop3": build_noop3, "cpu2": build_cpu2}


def consume_noop3(ds: "ray.data.Dataset") -> dict:
    """Execute the plan and count output rows."""
    count = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        count += len(batch["id"])
    return {"count": count}


def consume_cpu2(ds: "ray.data.Dataset") -> dict:
    """Execute the plan, count rows, XOR-fold digest_b and keep b for ids 0/1."""
    count = 0
    checksum = 0
    picked: dict[int, str] = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        ids, bs = batch["id"], batch["b"]
        count += len(ids)
        for i, b in zip(ids, bs):
            checksum ^= int.from_bytes(bytes.fromhex(b[:16]), "little")
            if i < 2:
                picked[int(i)] = str(b)
    return {
        "count": count,
        "checksum": f"{checksum:016x}",
        "b0": picked.get(0),
        "b1": picked.get(1),
    }


CONSUMERS = {"noop3": consume_noop3, "cpu2": consume_cpu2}


# --------------------------------------------------------------------------
# Harness
# --------------------------------------------------------------------------


class RssSampler:
    """Background thread tracking peak summed RSS of the driver and its descendants.

    ``ray.init`` starts gcs_server and the raylet as children of this process,
    and the raylet forks the workers, so the descendant tree covers the whole
    local cluster.  RSS counts shared pages (e.g. the /dev/shm object store)
    once per process that maps them, so the sum is an upper bound.
    """

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.peak = 0
        self.scope = "driver+descendants" if psutil else "driver (ru_maxrss)"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> None:
        """Take one sample and update the peak."""
        if psutil is None:
            import resource

            self.peak = max(self.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
            return
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        self.peak = max(self.peak, total)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> None:
        """Start sampling."""
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling (takes a final sample)."""
        self._stop.set()
        self._thread.join()
        self.sample()


def init_ray(cpus: int) -> None:
    """Start a private, quiet, loopback-only single-node Ray cluster."""
    ray.init(
        address="local",  # always start a new local cluster, ignore RAY_ADDRESS
        num_cpus=cpus,
        num_gpus=0,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    logging.getLogger("ray").setLevel(logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # Silence the one-off "Progress bars disabled" notice we asked for.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", required=True, choices=sorted(BUILDERS))
    p.add_argument("--items", required=True, type=int, help="number of rows N")
    p.add_argument("--batch-size", type=int, default=None,
                   help="map_batches batch size (default: noop3 1024, cpu2 16)")
    p.add_argument("--cpus", type=int, default=os.cpu_count(), help="num_cpus for ray.init")
    p.add_argument("--repeat", type=int, default=3, help="timed runs; best is reported")
    args = p.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = DEFAULT_BATCH[args.workload]
    if args.items < 1 or args.batch_size < 1 or args.cpus < 1 or args.repeat < 1:
        p.error("--items, --batch-size, --cpus and --repeat must be >= 1")
    return args


def run(args: argparse.Namespace) -> dict:
    """Initialise Ray, run the workload --repeat times and build the result."""
    build, consume = BUILDERS[args.workload], CONSUMERS[args.workload]
    sampler = RssSampler()
    sampler.start()

    t0 = time.perf_counter()
    init_ray(args.cpus)
    ds = build(args.items, args.batch_size)
    init_seconds = time.perf_counter() - t0

    runs: list[float] = []
    extra: dict = {}
    try:
        for r in range(args.repeat):
            if r:
                ds = build(args.items, args.batch_size)  # fresh lazy plan, untimed
            t = time.perf_counter()
            out = consume(ds)
            runs.append(time.perf_counter() - t)
            assert out["count"] == args.items, f"got {out['count']} rows, want {args.items}"
            extra = {k: v for k, v in out.items() if k != "count"}
            print(f"run {r + 1}/{args.repeat}: {runs[-1]:.3f}s {extra}", file=sys.stderr)
    finally:
        sampler.stop()
        ray.shutdown()

    best = min(runs)
    return {
        "engine": f"ray-data {ray.__version__}",
        "workload": args.workload,
        "items": args.items,
        "batch_size": args.batch_size,
        "cpus": args.cpus,
        "init_seconds": round(init_seconds, 4),
        "runs_seconds": [round(x, 4) for x in runs],
        "best_seconds": round(best, 4),
        "items_per_s": round(args.items / best, 1),
        "peak_rss_mib": round(sampler.peak / (1 << 20), 1),
        "rss_scope": sampler.scope,
        **extra,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; only the JSON result reaches the real stdout."""
    args = parse_args(argv)
    # Ray and its subprocesses may write to fd 1; point fd 1 at stderr for the
    # run and keep a private handle on the real stdout for the result.
    sys.stdout.flush()
    real_stdout = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    result = run(args)
    if "checksum" in result:
        print(f"checksum={result['checksum']} b0={result['b0']} b1={result['b1']}",
              file=sys.stderr)
    real_stdout.write(json.dumps(result) + "\n")
    real_stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
