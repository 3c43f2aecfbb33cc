#!/usr/bin/env bash
# The PostgreSQL sink against what a Python user would write for the same job, on one machine in
# one run: ROWS JSON records (id, n, score, ok, text, tags) into an empty table keyed by id, in
# transactions of BATCH rows, by
#   - `sluice run` with `[sink] kind = "postgres"` (binary COPY into a staging table, then
#     INSERT ... ON CONFLICT, per part);
#   - psycopg 3 doing exactly that (binary COPY + INSERT ... ON CONFLICT per batch);
#   - psycopg 3 `executemany` of INSERT ... ON CONFLICT per batch (the common first version).
# A throwaway cluster (Debian's postgresql binaries) runs on a loopback port with fsync off, as in
# the tests. Appends one JSON line to bench/results-postgres.jsonl.
#   cargo build --release && bash bench/postgres.sh        # ROWS=200000 BATCH=10000 by default
set -euo pipefail
cd "$(dirname "$0")/.."
rows="${ROWS:-200000}"
batch="${BATCH:-10000}"
sluice="${SLUICE:-target/release/sluice}"
[ -x "$sluice" ] || { echo "build it first: cargo build --release" >&2; exit 1; }
work="$PWD/bench/.work/postgres"
rm -rf "$work"
mkdir -p "$work"
venv=bench/.work/venv-pg
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q "psycopg[binary]==3.2.13"
bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  chown postgres: "$work"
  as_pg=(runuser -u postgres --)
fi
echo pw > "$work/pw"
chmod 644 "$work/pw"
"${as_pg[@]}" "$bin/initdb" -D "$work/data" -U bench --pwfile="$work/pw" --auth=scram-sha-256 \
  --encoding=UTF8 --locale=C --no-sync >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${as_pg[@]}" "$bin/pg_ctl" -D "$work/data" -l "$work/log" -w start \
  -o "-p $port -c listen_addresses=127.0.0.1 -k $work -c fsync=off -c full_page_writes=off" >/dev/null
trap '"${as_pg[@]}" "$bin/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true' EXIT
url="postgres://bench:pw@127.0.0.1:$port/postgres"

python3 - "$work/in.jsonl" "$rows" <<'EOF'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        f.write(json.dumps({"id": f"k{i:08d}", "n": i, "score": i / 7, "ok": i % 2 == 0,
                            "text": f"record number {i} of the benchmark", "tags": ["a", str(i % 13)]}) + "\n")
EOF
cat > "$work/p.toml" <<EOF
[source]
kind = "jsonl"
path = "$work/in.jsonl"
key = "id"

[sink]
kind = "postgres"
url = "$url"
table = "sluice_rows"
create = true
key = "id"
batch_rows = $batch
EOF
start=$(date +%s.%N)
"$sluice" run "$work/p.toml" --progress off 2>"$work/sluice.log"
sluice_s=$(python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$start" "$(date +%s.%N)")

"$venv/bin/python" - "$url" "$work/in.jsonl" "$batch" "$sluice_s" "$rows" <<'EOF'
import json, platform, subprocess, sys, time
import psycopg
from psycopg.types.json import Jsonb

url, path, batch, sluice_s, rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
cols = "id, n, score, ok, text, tags"
def table(conn, name):
    conn.execute(f"CREATE TABLE {name} (id text PRIMARY KEY, n bigint, score double precision, "
                 "ok boolean, text text, tags jsonb)")
def batches():
    out = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            out.append((r["id"], r["n"], r["score"], r["ok"], r["text"], Jsonb(r["tags"])))
            if len(out) == batch:
                yield out
                out = []
    if out:
        yield out
upsert = "DO UPDATE SET n = EXCLUDED.n, score = EXCLUDED.score, ok = EXCLUDED.ok, text = EXCLUDED.text, tags = EXCLUDED.tags"

def copy_upsert(conn):
    table(conn, "copy_rows")
    conn.execute("CREATE TEMP TABLE staging (LIKE copy_rows) ON COMMIT DELETE ROWS")
    for part in batches():
        with conn.transaction():
            with conn.cursor().copy(f"COPY staging ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["text", "int8", "float8", "bool", "text", "jsonb"])
                for row in part:
                    copy.write_row(row)
            conn.execute(f"INSERT INTO copy_rows ({cols}) SELECT {cols} FROM staging ON CONFLICT (id) {upsert}")

def executemany(conn):
    table(conn, "many_rows")
    for part in batches():
        with conn.transaction():
            conn.cursor().executemany(
                f"INSERT INTO many_rows ({cols}) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) {upsert}", part)

result = {"date": time.strftime("%Y-%m-%d"), "rows": rows, "batch": batch,
          "cpu": subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                                capture_output=True, text=True).stdout.strip(),
          "nproc": subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip(),
          "postgres": None, "psycopg": psycopg.__version__, "python": platform.python_version()}
with psycopg.connect(url, autocommit=True) as conn:
    result["postgres"] = conn.execute("SHOW server_version").fetchone()[0]
    assert conn.execute("SELECT count(*) FROM sluice_rows").fetchone()[0] == rows
for name, run, written in [("psycopg_copy_upsert", copy_upsert, "copy_rows"),
                           ("psycopg_executemany_upsert", executemany, "many_rows")]:
    # Autocommit, so that each `transaction()` block is a real transaction (the staging table
    # empties at its commit), not a savepoint inside one long implicit transaction.
    with psycopg.connect(url, autocommit=True) as conn:
        start = time.perf_counter()
        run(conn)
        seconds = time.perf_counter() - start
        assert conn.execute(f"SELECT count(*) FROM {written}").fetchone()[0] == rows
    result[name + "_s"] = round(seconds, 2)
result["sluice_s"] = round(sluice_s, 2)
for key in ["sluice", "psycopg_copy_upsert", "psycopg_executemany_upsert"]:
    result[key + "_rows_per_s"] = round(rows / result[key + "_s"])
result["sluice_vs_psycopg_copy"] = round(result["psycopg_copy_upsert_s"] / result["sluice_s"], 2)
result["sluice_vs_psycopg_executemany"] = round(result["psycopg_executemany_upsert_s"] / result["sluice_s"], 2)
line = json.dumps(result)
print(line)
with open("bench/results-postgres.jsonl", "a") as f:
    f.write(line + "\n")
EOF
