#!/usr/bin/env bash
# Masters sharing one queue on NATS JetStream (--nats, SPEC section 15),
# side by side in one run, with the project's own nats-server (Debian
# package nats-server) on PORT+10 and a temporary store:
#
#   bash bench/nats.sh
#
# "capacity": `sleep 20` jobs (20 ms each), 16 clients x 1 in flight, all
#   connected to master A: one master on NATS (4 children) against two
#   masters on NATS (4 children each), the second adding capacity.
# "round trip": 64-byte echo, 1 client x 1 in flight and 4 x 100: a master
#   with its own queue against one master on NATS (each job crosses the
#   stream: publish, fetch, answer, outcome, ack).
# Each setup runs REPEATS times in turn; the table shows medians.
#
# Environment: REPEATS (3), JOBS (2000 for capacity, 10x for echo),
# CARGO_TARGET_DIR, PORT (7691: masters on PORT and PORT+1).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPEATS=${REPEATS:-3}
JOBS=${JOBS:-2000}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TM=$TARGET_DIR/release/taskmaster
HANDLER=$TARGET_DIR/release/taskmaster-handler
PORT=${PORT:-7691}
NPORT=$((PORT + 10))
WORK=$(mktemp -d)
command -v nats-server >/dev/null || { echo "needs nats-server: apt-get install nats-server" >&2; exit 1; }

(cd "$ROOT" && cargo build --release -q -p taskmaster -p taskmaster-modules)

PIDS=()
NATS=
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -n "$NATS" ] && kill "$NATS" 2>/dev/null
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

ready() { # ready PORT CHILDREN
    for _ in $(seq 200); do
        if "$TM" stats --connect "127.0.0.1:$1" 2>/dev/null | python3 -c "import json,sys; s=json.load(sys.stdin); sys.exit(0 if s['pool']['idle'] >= $2 else 1)"; then
            return 0
        fi
        sleep 0.05
    done
    echo "master on $1 not ready:" >&2; tail -n 5 "$WORK"/*.log >&2; exit 1
}

# run_one SETUP LOAD -> prints "jobs/s p50_us"
run_one() {
    local setup=$1 load=$2 nats=() flags jobs
    rm -rf "$WORK/js"
    nats-server -js -a 127.0.0.1 -p "$NPORT" -sd "$WORK/js" >/dev/null 2>&1 &
    NATS=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$NPORT") 2>/dev/null && break; sleep 0.05; done
    [ "$setup" != local ] && nats=(--nats "nats://127.0.0.1:$NPORT")
    "$TM" --listen "127.0.0.1:$PORT" --handler "$HANDLER" --pool-start 4 --pool-max 4 \
        --job-max 1000 "${nats[@]}" >"$WORK/a.log" 2>&1 &
    PIDS=($!)
    ready "$PORT" 4
    if [ "$setup" = two ]; then
        "$TM" --listen "127.0.0.1:$((PORT + 1))" --handler "$HANDLER" --pool-start 4 --pool-max 4 \
            --job-max 1000 "${nats[@]}" >"$WORK/b.log" 2>&1 &
        PIDS+=($!)
        ready "$((PORT + 1))" 4
    fi
    case $load in
        capacity) flags=(--module sleep --input 20 --clients 16 --pipeline 1); jobs=$JOBS ;;
        rt1) flags=(--clients 1 --pipeline 1); jobs=$((JOBS * 10)) ;;
        rt400) flags=(--clients 4 --pipeline 100); jobs=$((JOBS * 10)) ;;
    esac
    "$TM" bench --connect "127.0.0.1:$PORT" --jobs "$jobs" --json "${flags[@]}" \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["failed"]==0, d; print(round(d["jobs_per_sec"]), d["p50_us"])'
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    PIDS=()
    kill "$NATS"; wait "$NATS" 2>/dev/null || true; NATS=
    # JetStream shuts down in its own time: the next run needs the port.
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$NPORT") 2>/dev/null || break; sleep 0.05; done
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

table() { # table LOAD SETUP...
    local load=$1; shift
    declare -A rate=() lat=()
    for _ in $(seq "$REPEATS"); do
        for setup in "$@"; do
            out=$(run_one "$setup" "$load")
            read -r r l <<<"$out"
            rate[$setup]+="$r"$'\n'; lat[$setup]+="$l"$'\n'
        done
    done
    for setup in "$@"; do
        printf '%-10s %-6s %10s jobs/s  p50 %8s us\n' "$load" "$setup" \
            "$(printf '%s' "${rate[$setup]}" | median)" "$(printf '%s' "${lat[$setup]}" | median)"
    done
}

table capacity one two
table rt1 local one
table rt400 local one
