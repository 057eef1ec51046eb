#!/usr/bin/env bash
# Scaling curves for docs/performance.md: jobs/s and latency of 64-byte echo
# jobs versus clients, pipeline depth, payload size and pool size; master RSS
# over a long run; pool start-up time. Writes CSV files to docs/perf/ and,
# when gnuplot is installed (apt-get install gnuplot-nox), PNG plots beside
# them. Every point is the median of $REPEAT runs.
#
#   bench/scaling.sh            # everything (several minutes)
#   ONLY=clients bench/scaling.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT=${REPEAT:-3}
OUT=docs/perf
ONLY=${ONLY:-all}
cargo build --release -q -p taskmaster -p taskmaster-modules
TM=target/release/taskmaster
MASTER_PID=

start_master() {
  local log; log=$(mktemp)
  "$TM" --listen 127.0.0.1:0 --job-max 1000000 "$@" 2>"$log" &
  MASTER_PID=$!
  until grep -q "pool ready" "$log"; do sleep 0.02; done
  ADDR=$(grep -o 'addr=[0-9.:]*' "$log" | head -1 | cut -d= -f2)
  rm -f "$log"
}
stop_master() {
  [ -n "$MASTER_PID" ] || return 0
  kill "$MASTER_PID" 2>/dev/null || true
  wait "$MASTER_PID" 2>/dev/null || true
  MASTER_PID=
}
trap stop_master EXIT

# median of REPEAT bench runs -> "jobs_per_sec p50_us p99_us mb_per_sec"
point() {
  for _ in $(seq "$REPEAT"); do
    "$TM" bench --connect "$ADDR" --json "$@"
  done | python3 -c '
import json, statistics, sys
rows = [json.loads(l) for l in sys.stdin]
assert all(r["failed"] == 0 and r["wrong_answers"] == 0 for r in rows), rows
med = lambda k: statistics.median(r[k] for r in rows)
print("%.0f %.0f %.0f %.2f" % (med("jobs_per_sec"), med("p50_us"), med("p99_us"), med("mb_per_sec")))'
}

want() { [ "$ONLY" = all ] || [ "$ONLY" = "$1" ]; }

if want clients; then
  echo "clients prefetch jobs_per_sec p50_us p99_us" > $OUT/clients.csv
  for pf in 1 8; do
    start_master --pool-start 4 --pool-max 4 --prefetch $pf
    for c in 1 8 32 128; do
      echo "$c $pf $(point --clients $c --pipeline 1 --jobs $((c < 8 ? 20000 : 100000)) | cut -d' ' -f1-3)" >> $OUT/clients.csv
    done
    stop_master
  done
fi

if want pipeline; then
  echo "pipeline prefetch jobs_per_sec p50_us p99_us" > $OUT/pipeline.csv
  for pf in 1 64; do
    start_master --pool-start 4 --pool-max 4 --prefetch $pf
    for w in 1 10 100 1000; do
      echo "$w $pf $(point --clients 4 --pipeline $w --jobs $((w == 1 ? 40000 : 400000)) | cut -d' ' -f1-3)" >> $OUT/pipeline.csv
    done
    stop_master
  done
fi

if want size; then
  echo "bytes jobs_per_sec p50_us p99_us mb_per_sec" > $OUT/size.csv
  start_master --pool-start 4 --pool-max 4
  for s in 64 1024 16384 262144 1048576 4194304; do
    n=$(( s >= 1048576 ? 400 : (s >= 262144 ? 2000 : 20000) ))
    echo "$s $(point --clients 4 --pipeline 4 --size $s --jobs $n)" >> $OUT/size.csv
  done
  stop_master
fi

if want pool; then
  echo "children jobs_per_sec p50_us p99_us" > $OUT/pool.csv
  for p in 1 2 4 8 16; do
    start_master --pool-start $p --pool-max $p
    echo "$p $(point --clients 32 --pipeline 1 --jobs 60000 | cut -d' ' -f1-3)" >> $OUT/pool.csv
    stop_master
  done
fi

if want spawn; then
  echo "pool_start ready_ms" > $OUT/spawn.csv
  for n in 1 16 64; do
    for _ in $(seq "$REPEAT"); do
      log=$(mktemp)
      "$TM" --listen 127.0.0.1:0 --pool-start $n --pool-max $n 2>"$log" & pid=$!
      until grep -q "pool ready" "$log"; do sleep 0.01; done
      echo "$n $(grep -o 'elapsed_ms=[0-9]*' "$log" | cut -d= -f2)"
      kill $pid; wait $pid 2>/dev/null || true; rm -f "$log"
    done | sort -n -k2 | awk -v r="$REPEAT" 'NR == int((r + 1) / 2)' >> $OUT/spawn.csv
  done
  start_master --pool-start 1 --pool-max 9
  "$TM" bench --connect "$ADDR" --spawn --json > $OUT/spawn-growth.json
  stop_master
fi

if want rss; then
  # Master RSS after every 100k jobs, 1M jobs in all.
  echo "jobs master_rss_kb" > $OUT/rss.csv
  start_master --pool-start 4 --pool-max 4 --prefetch 8
  for i in $(seq 10); do
    "$TM" bench --connect "$ADDR" --json --clients 4 --pipeline 100 --jobs 100000 >/dev/null
    echo "$((i * 100000)) $(awk '/VmRSS/ {print $2}' /proc/$MASTER_PID/status)" >> $OUT/rss.csv
  done
  stop_master
fi

if command -v gnuplot >/dev/null; then
  bench/plot.gp
else
  echo "gnuplot not installed: CSV only (apt-get install gnuplot-nox for the PNG plots)" >&2
fi
