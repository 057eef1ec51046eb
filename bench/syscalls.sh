#!/usr/bin/env bash
# Where a job's cost goes, per process: CPU time per job (user and system,
# from /proc/PID/stat) of the master, its children and the load generator,
# and system calls per job of the master and the children (perf stat on
# syscall tracepoints, when perf can read them: root, or
# kernel.perf_event_paranoid <= 1).
#
#   bash bench/syscalls.sh
#
# For each load (default "1x1 32x1 4x100": CLIENTSxPIPELINE) a fresh release
# master (4 children, default flags but --job-max 100000) gets a warm-up of
# 5,000 jobs, then JOBS (100000; 20000 for 1x1) 64-byte echoes from
# `taskmaster bench`. CPU times come from clock ticks (10 ms): read them as
# approximate. perf stat slows the run a little; the jobs/s shown are from
# the run without it.
#
# Environment: LOADS, JOBS, TM_ARGS (extra master flags), CARGO_TARGET_DIR.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TM=$TARGET_DIR/release/taskmaster
LOADS=${LOADS:-1x1 32x1 4x100}
(cd "$ROOT" && cargo build --release -q -p taskmaster -p taskmaster-modules)
WORK=$(mktemp -d)
MASTER=""
cleanup() {
    if [ -n "$MASTER" ]; then kill -TERM "$MASTER" 2>/dev/null || true; wait "$MASTER" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

EVENTS=syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_read,syscalls:sys_enter_write
PERF=0
if command -v perf >/dev/null && perf stat -e syscalls:sys_enter_sendto true >/dev/null 2>&1; then
    PERF=1
fi

start_master() {
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
    ADDR=127.0.0.1:$port
    # shellcheck disable=SC2086
    "$TM" --listen "$ADDR" --pool-start 4 --pool-max 4 --job-max 100000 ${TM_ARGS:-} \
        </dev/null >"$WORK/master.log" 2>&1 &
    MASTER=$!
    for _ in $(seq 100); do
        "$TM" stats --connect "$ADDR" >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "master did not start" >&2
    exit 1
}

stop_master() {
    kill -TERM "$MASTER"
    wait "$MASTER" || true
    MASTER=""
}

ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }

printf '%-6s %9s | %-19s %-19s %-19s | %s\n' load jobs/s "master us/job u+s" "children u+s" "bench u+s" "syscalls per job (master; children)"
for load in $LOADS; do
    c=${load%x*}
    w=${load#*x}
    n=${JOBS:-100000}
    [ "$load" = 1x1 ] && n=${JOBS:-20000}
    start_master
    "$TM" bench --connect "$ADDR" --jobs 5000 --clients "$c" --pipeline "$w" >/dev/null
    kids=$(pgrep -P "$MASTER" | tr '\n' ' ')
    read -r mu0 ms0 < <(ticks "$MASTER")
    ku0=0; ks0=0
    for k in $kids; do read -r u s < <(ticks "$k"); ku0=$((ku0 + u)); ks0=$((ks0 + s)); done
    /usr/bin/time -f "%U %S" -o "$WORK/time" "$TM" bench --connect "$ADDR" --jobs "$n" \
        --clients "$c" --pipeline "$w" --json >"$WORK/bench.json"
    read -r mu1 ms1 < <(ticks "$MASTER")
    ku1=0; ks1=0
    for k in $kids; do read -r u s < <(ticks "$k"); ku1=$((ku1 + u)); ks1=$((ks1 + s)); done
    sys="perf cannot read syscall tracepoints here"
    if [ "$PERF" = 1 ]; then
        perf stat -x, -e "$EVENTS" -p "$MASTER" -o "$WORK/ps.master" &
        p1=$!
        perf stat -x, -e "$EVENTS" -p "$(echo $kids | tr ' ' ',')" -o "$WORK/ps.kids" &
        p2=$!
        sleep 0.3
        "$TM" bench --connect "$ADDR" --jobs "$n" --clients "$c" --pipeline "$w" --json >/dev/null
        kill -INT "$p1" "$p2"
        wait "$p1" "$p2" || true
        sys=$(python3 - "$WORK" "$n" <<'PY'
import sys
work, n = sys.argv[1], int(sys.argv[2])
def per(name):
    out = []
    for line in open(f"{work}/ps.{name}"):
        p = line.strip().split(",")
        if len(p) > 2 and p[2].startswith("syscalls:"):
            v = int(p[0]) / n
            if v >= 0.005:
                out.append(f"{p[2].rsplit('_', 1)[-1]} {v:.2f}")
    return ", ".join(out) or "none"
print(f"{per('master')}; {per('kids')}")
PY
)
    fi
    stop_master
    python3 - "$WORK" "$n" "$load" "$mu0" "$ms0" "$mu1" "$ms1" "$ku0" "$ks0" "$ku1" "$ks1" "$sys" <<'PY'
import json, sys
work, n, load = sys.argv[1], int(sys.argv[2]), sys.argv[3]
mu0, ms0, mu1, ms1, ku0, ks0, ku1, ks1 = map(int, sys.argv[4:12])
b = json.load(open(f"{work}/bench.json"))
u, s = map(float, open(f"{work}/time").read().split()[:2])
f = lambda t: t * 10000 / n  # clock ticks of 10 ms -> us per job
print(f"{load:<6} {b['jobs_per_sec']:9.0f} | {f(mu1-mu0):6.1f} + {f(ms1-ms0):6.1f}     "
      f"{f(ku1-ku0):6.1f} + {f(ks1-ks0):6.1f}     {u*1e6/n:6.1f} + {s*1e6/n:6.1f}     | {sys.argv[12]}")
PY
done
