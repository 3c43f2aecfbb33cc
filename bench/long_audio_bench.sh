#!/usr/bin/env bash
# Long recordings (issue #16): one 1-hour 48 kHz stereo 16-bit WAV (691 MB) converted to 16 kHz
# mono FLAC by `sluice audio resample` and by sox, side by side in one run: wall time and peak
# RSS (/usr/bin/time's maximum resident set). With DAY=1, a 24-hour recording (16 kHz mono FLAC,
# generated here, ~0.5 GB) is converted to 8 kHz WAV by sluice as well, to show that memory does
# not grow with the length, and classified by the test classifier into a Parquet table (172,799
# window rows); DAY=only runs just the 24-hour part.
#
#   cargo build --release -p sluice-cli
#   bash bench/long_audio_bench.sh [REPEATS]        # DAY=1 for the 24-hour file too
#
# Needs sox and GNU time (Debian: sox, time). Inputs are generated under bench/.work/long-audio
# with sox's repeatable noise (-R) and read once before each timed run, so every run starts from
# a warm page cache. One JSON line per run goes to bench/results-long-audio.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
SLUICE=${SLUICE:-target/release/sluice}
REPEATS=${1:-2}
WORK=bench/.work/long-audio
OUT=bench/results-long-audio.jsonl
mkdir -p "$WORK/src1h"
HOUR=$WORK/src1h/hour.wav
if [ ! -f "$HOUR" ]; then
  # A sweep on the left, pink noise on the right: neither channel is silent or trivial to code.
  sox -R -n -r 48000 -c 2 -b 16 "$HOUR" synth 3600 sine 100-7000 pinknoise vol 0.3
fi
machine=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
flags=$(grep -o -w -E 'avx2|avx512bw|avx512_vnni|amx_int8' /proc/cpuinfo | sort -u | tr '\n' ' ')

# run NAME INPUT_BYTES COMMAND...: times COMMAND, appends a JSON line.
run() {
  local name=$1 seconds=$2
  shift 2
  cat "$WORK"/src1h/* "$WORK"/day/*.flac > /dev/null 2>&1 || true
  /usr/bin/time -o "$WORK/$name.time" -f '%e %M %U %S' "$@" > /dev/null 2> "$WORK/$name.log" \
    || { echo "$name failed:" >&2; tail -5 "$WORK/$name.log" >&2; exit 1; }
  read -r wall rss_kib user sys < "$WORK/$name.time"
  printf '{"engine": "%s", "audio_seconds": %s, "wall_seconds": %s, "peak_rss_mib": %.1f, "cpu_seconds": %.2f, "date": "%s", "machine": "%s", "flags": "%s", "command": "%s"}\n' \
    "$name" "$seconds" "$wall" "$(echo "$rss_kib / 1024" | bc -l)" "$(echo "$user + $sys" | bc -l)" \
    "$(date -u +%FT%TZ)" "$machine" "${flags% }" "$*" | tee -a "$OUT"
}

[ "${DAY:-0}" = only ] && REPEATS=0
for i in $(seq "$REPEATS"); do
  rm -rf "$WORK/out-sluice" "$WORK/out-sox" && mkdir -p "$WORK/out-sox"
  run sluice 3600 "$SLUICE" audio resample --source "$WORK/src1h" --target "$WORK/out-sluice" \
    --suffix .wav --sample-rate 16000 --channels mono --format flac --progress off
  run sox 3600 sox "$HOUR" -r 16000 -c 1 -b 16 "$WORK/out-sox/hour.flac"
done
# Both outputs are one hour at 16 kHz mono.
[ "$REPEATS" = 0 ] || for f in "$WORK/out-sluice/hour.flac" "$WORK/out-sox/hour.flac"; do
  [ "$(soxi -s "$f")" = 57600000 ] || { echo "$f: $(soxi -s "$f") samples, not 57600000" >&2; exit 1; }
  [ "$(soxi -c "$f")" = 1 ] && [ "$(soxi -r "$f")" = 16000 ] || { echo "$f: wrong layout" >&2; exit 1; }
done

if [ "${DAY:-0}" != 0 ]; then
  mkdir -p "$WORK/day"
  DAYFILE=$WORK/day/day.flac
  [ -f "$DAYFILE" ] || sox -R -n -r 16000 -c 1 -b 16 "$DAYFILE" synth 86400 sine 50-4000 vol 0.2
  rm -rf "$WORK/out-day"
  run sluice-day 86400 "$SLUICE" audio resample --source "$WORK/day" --target "$WORK/out-day" \
    --suffix .flac --sample-rate 8000 --channels mono --format wav --progress off
  [ "$(soxi -s "$WORK/out-day/day.wav")" = 691200000 ] || { echo "day: wrong length" >&2; exit 1; }
  rm -rf "$WORK/out-day-classify"
  run sluice-day-classify 86400 "$SLUICE" audio classify --source "$WORK/day" \
    --model tests/fixtures/onnx/tone-detector --output "$WORK/out-day-classify" \
    --summary "$WORK/day-classify-summary.json" --progress off
  grep -q '"items_out": 1,' "$WORK/day-classify-summary.json" \
    || { echo "day classification: no output" >&2; exit 1; }
fi
