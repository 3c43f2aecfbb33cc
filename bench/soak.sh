#!/usr/bin/env bash
# The server soak for longer than CI's minute: `sluice serve` (tiny translation model and tone
# detector) under mixed translation and /v1 inference traffic at twice its measured capacity,
# checking that every request is answered (200, 503, 504), that resident memory grows at most 10%
# between the second and the last quarter, and that no descriptor is left open. The test is
# crates/sluice-cli/tests/it/soak.rs; this runs it for SOAK_SECONDS (default 600) and appends its
# figures, with the machine and date, to bench/results-soak.jsonl.
#   SOAK_SECONDS=3600 bash bench/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${SOAK_SECONDS:-600}"
log="$(mktemp)"
SLUICE_SOAK_SECONDS="$seconds" cargo test --workspace --test it -- soak::a_soak --nocapture 2>&1 | tee "$log"
line="$(grep -o 'soak: {.*}' "$log" | head -1 | sed 's/^soak: //')"
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
python3 - "$line" "$cpu" "$(nproc)" <<'PY' >> bench/results-soak.jsonl
import datetime, json, sys
result = json.loads(sys.argv[1])
result.update(cpu=sys.argv[2], cores=int(sys.argv[3]),
              date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
print(json.dumps(result))
PY
tail -1 bench/results-soak.jsonl
