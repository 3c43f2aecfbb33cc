#!/usr/bin/env bash
# Coverage-guided fuzzing of every target in fuzz/ with cargo-fuzz (libFuzzer, nightly), for
# FUZZ_SECONDS each (default 300), on the committed corpus; new inputs are merged into
# fuzz/corpus/TARGET and crashes saved under fuzz/artifacts/TARGET (commit them: CI replays both,
# and a crash stays a regression test once fixed). CI runs the short, stable version:
# `cargo test -p sluice-fuzz`. Memory: a run fails past 2 GiB resident, or on one allocation past
# 6 GiB (as the CI test's address-space limit; see crates/sluice-fuzz/tests/corpus.rs for why
# untouched reservations of up to 4 GiB from a 32-bit length are let through).
#   FUZZ_SECONDS=3600 bash bench/fuzz.sh [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-300}"
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  echo "== $t for ${seconds}s"
  cargo +nightly fuzz run --fuzz-dir fuzz "$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=6144 \
    -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 2>&1 \
    | { grep -E "INITED|DONE|SUMMARY|Test unit written|stat::number_of_executed_units|stat::peak_rss_mb" || true; }
done
