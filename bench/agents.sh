#!/usr/bin/env bash
# Jobs through one agent link against the master's own children, side by
# side in one run (SPEC section 14, issue 15):
#
#   bash bench/agents.sh
#
# "local": a master with 4 children of its own (--pool-start 4 --pool-max 4).
# "agent": a pure dispatcher (--pool-start 0 --pool-max 0 --agent-listen)
#          and one `taskmaster agent --slots 4` on loopback, plain TCP
#          ("agent-tls": the same over TLS with a self-signed certificate).
# Both run 64-byte echo with `taskmaster bench` (--job-max 1000: 400 jobs
# are in flight); the setups take turns, REPEATS times each, and the table
# shows medians and the ratios to local.
#   pipe: 4 clients x 100 in flight     closed: 32 clients x 1 in flight
#
# Environment: REPEATS (3), JOBS (100000), CARGO_TARGET_DIR, PORT (7681:
# PORT is the client socket, PORT+1 the agent socket). Builds release first.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPEATS=${REPEATS:-3}
JOBS=${JOBS:-100000}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TM=$TARGET_DIR/release/taskmaster
HANDLER=$TARGET_DIR/release/taskmaster-handler
PORT=${PORT:-7681}
APORT=$((PORT + 1))
WORK=$(mktemp -d)

(cd "$ROOT" && cargo build --release -q -p taskmaster -p taskmaster-modules)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=taskmaster bench" -addext "subjectAltName=IP:127.0.0.1" \
    -addext "basicConstraints=critical,CA:FALSE" \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

wait_for() { # wait_for PYTHON-CONDITION-ON-STATS
    for _ in $(seq 200); do
        if "$TM" stats --connect "127.0.0.1:$PORT" 2>/dev/null | python3 -c "import json,sys; s=json.load(sys.stdin); sys.exit(0 if ($1) else 1)"; then
            return 0
        fi
        sleep 0.05
    done
    echo "timed out waiting for: $1" >&2; exit 1
}

# run_one SETUP LOAD -> prints jobs/s
run_one() {
    local setup=$1 load=$2 flags
    case $setup in
        local)
            "$TM" --listen "127.0.0.1:$PORT" --handler "$HANDLER" --pool-start 4 --pool-max 4 --job-max 1000 \
                >"$WORK/master.log" 2>&1 &
            PIDS=($!)
            wait_for 's["pool"]["idle"] == 4' ;;
        agent|agent-tls)
            local tls_m=() tls_a=()
            if [ "$setup" = agent-tls ]; then
                tls_m=(--tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem")
                tls_a=(--tls-ca "$WORK/cert.pem")
            fi
            "$TM" --listen "127.0.0.1:$PORT" --pool-start 0 --pool-max 0 --job-max 1000 \
                --agent-listen "127.0.0.1:$APORT" "${tls_m[@]}" >"$WORK/master.log" 2>&1 &
            PIDS=($!)
            wait_for 'True'
            "$TM" agent --connect "127.0.0.1:$APORT" --slots 4 --handler "$HANDLER" \
                "${tls_a[@]}" >"$WORK/agent.log" 2>&1 &
            PIDS+=($!)
            wait_for 's["pool"]["idle"] == 4' ;;
    esac
    case $load in
        pipe) flags=(--clients 4 --pipeline 100) ;;
        closed) flags=(--clients 32 --pipeline 1) ;;
    esac
    "$TM" bench --connect "127.0.0.1:$PORT" --jobs "$JOBS" --json "${flags[@]}" \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["failed"]==0, d; print(round(d["jobs_per_sec"]))'
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    PIDS=()
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf '%-8s %10s %10s %10s %8s %8s\n' load local agent agent-tls agent/l tls/l
for load in pipe closed; do
    declare -A got=([local]="" [agent]="" [agent-tls]="")
    for _ in $(seq "$REPEATS"); do
        for setup in local agent agent-tls; do
            got[$setup]+="$(run_one "$setup" "$load")"$'\n'
        done
    done
    l=$(printf '%s' "${got[local]}" | median)
    a=$(printf '%s' "${got[agent]}" | median)
    t=$(printf '%s' "${got[agent-tls]}" | median)
    printf '%-8s %10s %10s %10s %8.2f %8.2f\n' "$load" "$l" "$a" "$t" \
        "$(echo "$a / $l" | bc -l)" "$(echo "$t / $l" | bc -l)"
done
