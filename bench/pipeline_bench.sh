#!/usr/bin/env bash
# Pipeline engine vs Ray Data on the same machine: three no-op stages over tiny items, and a
# CPU-bound two-stage pipeline (see crates/sluice-pipeline/examples/pipeline_bench.rs and
# bench/ray_pipeline_bench.py, which mirror each other). Writes one JSON line per run to
# bench/results-pipeline.jsonl and refuses to record a cpu2 pair whose checksums differ.
#
# Usage (repository root): bash bench/pipeline_bench.sh
# Needs: python3 -m venv bench/.work/ray-venv && bench/.work/ray-venv/bin/pip install -r bench/requirements-ray.txt
set -euo pipefail
cd "$(dirname "$0")/.."
RAY=${RAY_PYTHON:-bench/.work/ray-venv/bin/python}
OUT=bench/results-pipeline.jsonl
NOOP_ITEMS=${NOOP_ITEMS:-1000000}
CPU_ITEMS=${CPU_ITEMS:-4000}
REPEAT=${REPEAT:-3}

cargo build --release -p sluice-pipeline --example pipeline_bench
SLUICE=target/release/examples/pipeline_bench
: >"$OUT"
for workload in noop3 cpu2; do
    items=$NOOP_ITEMS
    [ "$workload" = cpu2 ] && items=$CPU_ITEMS
    for mode in streaming batch; do
        "$SLUICE" --workload "$workload" --items "$items" --mode "$mode" --repeat "$REPEAT" | tee -a "$OUT"
    done
    "$RAY" bench/ray_pipeline_bench.py --workload "$workload" --items "$items" --repeat "$REPEAT" 2>/dev/null | tee -a "$OUT"
done
python3 - "$OUT" <<'PY'
import json, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
sums = {r["checksum"] for r in runs if r["workload"] == "cpu2"}
if len(sums) != 1:
    sys.exit(f"cpu2 checksums differ between engines: {sums}")
for r in runs:
    print(f'{r["workload"]:6} {r["engine"]:18} {r.get("mode", ""):10} {r["items"]:>8} items '
          f'{r["best_seconds"]:8.3f} s {r["items_per_s"]:>12,.0f} items/s peak RSS {r["peak_rss_mib"]} MiB')
PY
