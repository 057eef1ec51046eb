#!/usr/bin/env bash
# Instructions the master executes per job, counted by valgrind's callgrind:
# a repeatable figure beside the noisy wall-clock ones.
#
#   bash bench/callgrind.sh
#
# For each load (default "4x100 32x1": CLIENTSxPIPELINE), runs the release
# master under `valgrind --tool=callgrind` twice, with SHORT and LONG jobs
# of a 64-byte echo sent by `taskmaster bench` (4 children, default flags
# but --job-max 100000), and prints
#
#   (Ir of the LONG run - Ir of the SHORT run) / (LONG - SHORT)
#
# so start-up and shutdown cancel out. Only the master is counted (the
# children and the load generator run natively). Under callgrind the master
# runs some 50 times slower, so its batches (jobs per wake-up) are larger
# than in a real run: read the figure as the cost of the master's own code
# per job, comparable between commits, not as a prediction of jobs/s.
#
# The master runs with --spin-us 0: polling between events executes
# instructions in proportion to time, not to jobs (and under valgrind
# time stretches fifty-fold), so it would swamp the figure.
#
# Environment: LOADS ("4x100 32x1"), SHORT (20000), LONG (120000),
# BUILD_DIR (bench/.build), CARGO_TARGET_DIR.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/bench/.build}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TM=$TARGET_DIR/release/taskmaster
LOADS=${LOADS:-4x100 32x1}
SHORT=${SHORT:-20000}
LONG=${LONG:-120000}

command -v valgrind >/dev/null || { echo "valgrind not found (apt-get install valgrind)" >&2; exit 1; }
mkdir -p "$BUILD_DIR"
(cd "$ROOT" && cargo build --release -q -p taskmaster -p taskmaster-modules)
WORK=$(mktemp -d "$BUILD_DIR/callgrind.XXXXXX")
MASTER=""
cleanup() {
    if [ -n "$MASTER" ]; then kill -TERM "$MASTER" 2>/dev/null || true; wait "$MASTER" 2>/dev/null || true; fi
}
trap cleanup EXIT

# One master under callgrind, N jobs of load C x W; prints its total Ir.
count() {
    local clients=$1 pipeline=$2 jobs=$3 out=$WORK/cg.$1x$2.$3
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
    valgrind --tool=callgrind --callgrind-out-file="$out" -q \
        "$TM" --listen "127.0.0.1:$port" --pool-start 4 --pool-max 4 --job-max 100000 --spin-us 0 \
        </dev/null >"$WORK/master.log" 2>&1 &
    MASTER=$!
    for _ in $(seq 600); do
        "$TM" stats --connect "127.0.0.1:$port" >/dev/null 2>&1 && break
        sleep 0.1
    done
    "$TM" bench --connect "127.0.0.1:$port" --module echo --size 64 --jobs "$jobs" \
        --clients "$clients" --pipeline "$pipeline" --json >"$WORK/bench.json"
    kill -TERM "$MASTER"
    wait "$MASTER" || true
    MASTER=""
    # "summary: N" or "totals: N" in the callgrind output.
    awk '/^(summary|totals):/ {print $2; exit}' "$out"
}

printf '%-8s %14s %14s %16s\n' load "Ir ${SHORT}" "Ir ${LONG}" "Ir per job"
for load in $LOADS; do
    c=${load%x*}
    w=${load#*x}
    a=$(count "$c" "$w" "$SHORT")
    b=$(count "$c" "$w" "$LONG")
    per=$(python3 -c "print(round(($b - $a) / ($LONG - $SHORT)))")
    printf '%-8s %14s %14s %16s\n' "$load" "$a" "$b" "$per"
done
