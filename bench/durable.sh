#!/usr/bin/env bash
# The cost of --state-dir, side by side in one run (SPEC section 13):
#
#   bash bench/durable.sh
#
# For each load, a master without --state-dir and one with it (a fresh
# directory each run) take turns, REPEATS times; the table shows medians.
#   detached: taskmaster bench --detached, 8 clients x 16 in flight
#             (jobs/s = durable submits per second; then every outcome)
#   sync-32:  32 clients x 1 in flight, waiting submits (not stored)
#   sync-pipe: 4 clients x 100 in flight, waiting submits
# Also prints the store's size after the detached runs.
#
# Environment: REPEATS (3), JOBS (100000), STATE_BASE (a temporary dir),
# CARGO_TARGET_DIR. Builds the release binaries first.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPEATS=${REPEATS:-3}
JOBS=${JOBS:-100000}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TM=$TARGET_DIR/release/taskmaster
STATE_BASE=${STATE_BASE:-$(mktemp -d)}
PORT=${PORT:-7671}

(cd "$ROOT" && cargo build --release -q -p taskmaster -p taskmaster-modules)

MASTER=
cleanup() { [ -n "$MASTER" ] && kill "$MASTER" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

# run_one STORE(0|1) LOAD -> prints jobs/s
run_one() {
    local store=$1 load=$2 args=()
    if [ "$store" = 1 ]; then
        rm -rf "$STATE_BASE/state"
        args=(--state-dir "$STATE_BASE/state")
    fi
    "$TM" --listen "127.0.0.1:$PORT" --handler "$TARGET_DIR/release/taskmaster-handler" \
        --job-max 200000 --keep-results 200000 "${args[@]}" >"$STATE_BASE/master.log" 2>&1 &
    MASTER=$!
    for _ in $(seq 100); do
        "$TM" stats --connect "127.0.0.1:$PORT" >/dev/null 2>&1 && break
        sleep 0.05
    done
    local flags
    case $load in
        detached) flags=(--detached --clients 8 --pipeline 16) ;;
        sync-32) flags=(--clients 32 --pipeline 1) ;;
        sync-pipe) flags=(--clients 4 --pipeline 100) ;;
    esac
    "$TM" bench --connect "127.0.0.1:$PORT" --jobs "$JOBS" --json "${flags[@]}" \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["failed"]==0, d; print(round(d["jobs_per_sec"]), d.get("outcomes_seconds") or "")'
    if [ "$store" = 1 ] && [ "$load" = detached ]; then
        stat -c %s "$STATE_BASE/state/jobs.redb" >"$STATE_BASE/size"
    fi
    kill "$MASTER"; wait "$MASTER" 2>/dev/null || true; MASTER=
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf '%-10s %14s %14s %7s\n' load "memory j/s" "state-dir j/s" ratio
for load in detached sync-32 sync-pipe; do
    : >"$STATE_BASE/r0"; : >"$STATE_BASE/r1"
    for _ in $(seq "$REPEATS"); do
        run_one 0 "$load" | cut -d' ' -f1 >>"$STATE_BASE/r0"
        run_one 1 "$load" | cut -d' ' -f1 >>"$STATE_BASE/r1"
    done
    a=$(median <"$STATE_BASE/r0"); b=$(median <"$STATE_BASE/r1")
    printf '%-10s %14s %14s %7s\n' "$load" "$a" "$b" "$(python3 -c "print(f'{$b/$a:.2f}')")"
done
echo "store after $JOBS detached jobs (--keep-results 200000): $(cat "$STATE_BASE/size") bytes"
