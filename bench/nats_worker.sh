#!/usr/bin/env bash
# Throughput of the NATS path: `sluice run` publishing N records into a work-queue stream (each
# publish acknowledged by JetStream), then `sluice worker --exit-when-drained` draining it into
# JSON-lines parts (pull, write, fsync + rename, ack), with one worker and with two.
# The pipeline has no stage beyond reading, so this is the queue's own cost per item.
#   bash bench/nats_worker.sh [N] [SLUICE_BINARY]
# Needs nats-server (scripts/install-deps.sh puts it in .venv-tools/).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
n="${1:-20000}"
sluice="${2:-$root/target/release/sluice}"
nats_server="${SLUICE_NATS_SERVER:-$root/.venv-tools/bin/nats-server}"
work="$(mktemp -d)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$nats_server" -js -a 127.0.0.1 -p "$port" -sd "$work/store" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
sleep 1
python3 - "$work" "$n" <<'PY'
import json, sys
work, n = sys.argv[1], int(sys.argv[2])
with open(f"{work}/in.jsonl", "w") as f:
    for i in range(n):
        f.write(json.dumps({"id": f"item-{i:07d}", "text": "Life is like a box of chocolates."}) + "\n")
PY
run_round() {  # $1: round name, $2: workers
  local stream="s$1"
  cat > "$work/publish-$1.toml" <<TOML
[source]
kind = "jsonl"
path = "$work/in.jsonl"
key = "id"
[sink]
kind = "nats"
url = "nats://127.0.0.1:$port"
stream = "$stream"
subject = "$stream.items"
retention = "workqueue"
TOML
  cat > "$work/worker-$1.toml" <<TOML
[source]
kind = "nats"
url = "nats://127.0.0.1:$port"
stream = "$stream"
subject = "$stream.items"
consumer = "bench"
key = "id"
fetch = 256
[sink]
kind = "jsonl"
path = "$work/out-$1"
part_items = 5000
TOML
  local t0 t1 t2
  t0=$(date +%s.%N)
  "$sluice" run "$work/publish-$1.toml" --progress off 2>/dev/null
  t1=$(date +%s.%N)
  for _ in $(seq "$2"); do
    "$sluice" worker "$work/worker-$1.toml" --progress off --exit-when-drained 2>/dev/null &
  done
  wait $(jobs -p | grep -v "^$server$") 2>/dev/null || true
  t2=$(date +%s.%N)
  local written
  written=$(cat "$work/out-$1"/part-*.jsonl | wc -l)
  python3 - "$1" "$2" "$n" "$t0" "$t1" "$t2" "$written" <<'PY'
import sys
name, workers, n, t0, t1, t2, written = sys.argv[1:]
n, workers, written = int(n), int(workers), int(written)
pub, drain = float(t1) - float(t0), float(t2) - float(t1)
print(f"{name}: publish {n} in {pub:.2f} s ({n/pub:,.0f}/s); {workers} worker(s) drained "
      f"{written} in {drain:.2f} s ({written/drain:,.0f}/s, incl. ~1 s drain detection)")
PY
}
run_round one 1
run_round two 2
