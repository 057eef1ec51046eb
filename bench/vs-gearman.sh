#!/usr/bin/env bash
# Head-to-head: taskmaster vs Gearman (gearmand 1.1 from Debian) on an echo job.
#
#   bash bench/vs-gearman.sh
#
# Both systems get 4 workers doing "echo" on 64-byte payloads over loopback
# TCP and the same three loads:
#   a: 1 client,   pipeline 1 (closed loop: submit, wait, submit)
#   b: 32 clients, pipeline 1
#   c: 4 clients,  pipeline 100 (up to 100 jobs in flight per connection)
# Each run is repeated REPEATS times; the table shows medians.
#
# Gearman side: gearmand -t 1 (one I/O thread, in-memory queue), 4 C echo
# workers (bench/gearman/echo_worker.c) and a C load client
# (bench/gearman/load_client.c), both against libgearman.
# taskmaster side: the master with --pool-start 4 --pool-max 4 and
# `taskmaster bench`.
# Floor (configuration a only): bench/relay/relay_floor.c, a raw relay chain
# client -> relay -> worker -> relay -> client with nothing but 4-byte
# length-prefixed frames over blocking TCP_NODELAY sockets, run REPEATS
# times with the same job count and size; the table adds its row and the
# ratio of taskmaster's p50 to the floor's.
#
# The systems take turns: both servers stay up, and each repeat of a
# configuration runs gearman, then taskmaster (for a: then taskmaster on the
# blocking client, then the floor), then the next repeat. On a shared VM a
# system's speed moves by a factor of two between spells (gearmand's and
# taskmaster's in opposite directions, seen), so only runs made side by
# side compare.
# taskmaster-blocking is configuration a once more on `taskmaster bench
# --blocking` (the blocking client: one write and one read per job, like
# the floor's client); the table shows both, each with its ratio.
#
# Environment (all optional):
#   JOBS_A JOBS_B JOBS_C  jobs per run of a, b, c (20000, 100000, 400000)
#   REPEATS               runs per configuration (3)
#   SIZE                  payload bytes (64)
#   WORKERS               gearman workers = taskmaster pool size (4)
#   SYSTEMS               "gearman taskmaster floor" (default) or a subset
#   OUT                   JSON result file (bench/.build/vs-gearman.json)
#   BUILD_DIR             build output and logs (bench/.build)
#   RUN_TIMEOUT           seconds one load run may take (600)
#   SKIP_INSTALL=1        do not apt-get install gearmand/libgearman-dev
#   TM_ARGS               extra taskmaster master flags, e.g. "--prefetch 64"
#   TM_BLOCKING           1 (default): configuration a also runs on the
#                         blocking client (`taskmaster bench --blocking`),
#                         after each run on the async one; 0: not
#
# Needs: bash, gcc, python3, cargo; apt-get (root or sudo) unless the
# gearman packages are already installed. Every process it starts is killed
# on exit, also on failure or Ctrl-C.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/bench/.build}
OUT=${OUT:-$BUILD_DIR/vs-gearman.json}
JOBS_A=${JOBS_A:-20000}
JOBS_B=${JOBS_B:-100000}
JOBS_C=${JOBS_C:-400000}
REPEATS=${REPEATS:-3}
SIZE=${SIZE:-64}
WORKERS=${WORKERS:-4}
SYSTEMS=${SYSTEMS:-gearman taskmaster floor}
RUN_TIMEOUT=${RUN_TIMEOUT:-600}
TM_BLOCKING=${TM_BLOCKING:-1}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TM=$TARGET_DIR/release/taskmaster

# name clients pipeline jobs
CONFIGS=(
    "a 1 1 $JOBS_A"
    "b 32 1 $JOBS_B"
    "c 4 100 $JOBS_C"
)

mkdir -p "$BUILD_DIR"
LOGS=$(mktemp -d "$BUILD_DIR/run.XXXXXX")
RESULTS=$LOGS/results.jsonl
: >"$RESULTS"

log() { printf '[vs-gearman] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
has() { [[ " $SYSTEMS " == *" $1 "* ]]; }

# ---- process bookkeeping: everything we start is killed on exit ----------
PIDS=()
LOAD_PID=""
stop_all() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # give each a moment, then insist
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$LOAD_PID" ]; then
        kill -TERM "$LOAD_PID" 2>/dev/null || true
        wait "$LOAD_PID" 2>/dev/null || true
    fi
    stop_all
    if [ "$rc" -ne 0 ]; then
        log "failed (exit $rc); logs in $LOGS"
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# ---- 1. gearman packages ---------------------------------------------------
GEARMAND=""
if has gearman; then
    if [ "${SKIP_INSTALL:-0}" != 1 ] &&
        { ! command -v gearmand >/dev/null && [ ! -x /usr/sbin/gearmand ] ||
            [ ! -f /usr/include/libgearman-1.0/gearman.h ]; }; then
        SUDO=""
        [ "$(id -u)" -eq 0 ] || SUDO=sudo
        log "installing gearman-job-server libgearman-dev"
        if ! apt-cache show gearman-job-server libgearman-dev >/dev/null 2>&1; then
            $SUDO apt-get update -qq
        fi
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
            gearman-job-server libgearman-dev >"$LOGS/apt.log" 2>&1 ||
            { cat "$LOGS/apt.log" >&2; die "apt-get install failed"; }
    fi
    GEARMAND=$(command -v gearmand || echo /usr/sbin/gearmand)
    [ -x "$GEARMAND" ] || die "gearmand not found (install gearman-job-server)"
fi

# ---- 2. taskmaster ----------------------------------------------------------
if has taskmaster; then
    log "cargo build --release -p taskmaster -p taskmaster-modules"
    (cd "$ROOT" && cargo build --release -q -p taskmaster -p taskmaster-modules)
    [ -x "$TM" ] && [ -x "$TARGET_DIR/release/taskmaster-handler" ] ||
        die "no $TM or taskmaster-handler after cargo build"
    "$TM" bench --help >/dev/null 2>&1 || die "$TM has no 'bench' command"
fi

# ---- 3. the C gearman worker and load client --------------------------------
if has gearman; then
    log "building bench/gearman/*.c"
    gcc -O2 -Wall -Wextra -o "$BUILD_DIR/gm-echo-worker" \
        "$ROOT/bench/gearman/echo_worker.c" -lgearman
    gcc -O2 -Wall -Wextra -pthread -o "$BUILD_DIR/gm-load" \
        "$ROOT/bench/gearman/load_client.c" -lgearman
fi
if has floor; then
    log "building bench/relay/relay_floor.c"
    gcc -O2 -Wall -Wextra -o "$BUILD_DIR/relay-floor" "$ROOT/bench/relay/relay_floor.c"
fi

# run_load SYSTEM CONFIG REP COMMAND...: run one load, append its JSON line
FAILED_RUNS=0
run_load() {
    local system=$1 config=$2 rep=$3
    shift 3
    local out=$LOGS/$system-$config-$rep
    local rc=0
    # In the background and waited for, so that a signal to this script is
    # handled at once (the EXIT trap kills LOAD_PID) rather than after the run.
    timeout --foreground "$RUN_TIMEOUT" "$@" >"$out.json" 2>"$out.err" </dev/null &
    LOAD_PID=$!
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=""
    if ! python3 - "$out.json" "$system" "$config" "$rep" "$rc" >>"$RESULTS" <<'EOF'; then
import json, sys
path, system, config, rep, rc = sys.argv[1:]
text = open(path).read().strip()
try:
    r = json.loads(text)  # one object, maybe pretty-printed
except ValueError:
    r = json.loads(text.splitlines()[-1])  # or the last line of several
for k in ("jobs", "seconds", "jobs_per_sec", "p50_us", "p99_us", "failed"):
    if k not in r:
        raise SystemExit(f"missing key {k!r} in {text!r}")
r.update(system=system, config=config, rep=int(rep), exit=int(rc))
print(json.dumps(r))
print(f"[vs-gearman] {system} {config} #{rep}: {r['jobs_per_sec']:.0f} jobs/s "
      f"p50={r['p50_us']}us p99={r['p99_us']}us failed={r['failed']}", file=sys.stderr)
EOF
        cat "$out.err" >&2
        die "$system $config run $rep (exit $rc): no usable JSON on stdout"
    fi
    if [ "$rc" -ne 0 ]; then
        FAILED_RUNS=$((FAILED_RUNS + 1))
        log "  exit $rc; stderr: $(head -c 500 "$out.err")"
    fi
}

# run_floor REP: one run of the raw 4-hop relay floor, configuration a's
# job count and size (relay-floor forks its relay and worker and reaps them)
run_floor() {
    local name clients pipeline jobs
    read -r name clients pipeline jobs <<<"${CONFIGS[0]}"
    run_load floor "$name" "$1" "$BUILD_DIR/relay-floor" -n "$jobs" -s "$SIZE"
}

# ---- 4. gearman -------------------------------------------------------------
if has gearman; then
    GPORT=""
    for attempt in 1 2 3; do
        GPORT=$(free_port)
        # -t 1: one I/O thread; builtin queue (memory, no persistence);
        # -P: gearmand unlinks and rewrites its pid file, keep it in our dir.
        "$GEARMAND" -t 1 -L 127.0.0.1 -p "$GPORT" -q builtin -l stderr --verbose ERROR \
            -P "$LOGS/gearmand.pid" </dev/null >"$LOGS/gearmand.log" 2>&1 &
        GEARMAND_PID=$!
        PIDS+=("$GEARMAND_PID")
        up=0
        for _ in $(seq 100); do
            kill -0 "$GEARMAND_PID" 2>/dev/null || break
            if (exec 3<>"/dev/tcp/127.0.0.1/$GPORT") 2>/dev/null; then
                up=1
                break
            fi
            sleep 0.05
        done
        [ "$up" = 1 ] && break
        log "gearmand did not come up on port $GPORT (try $attempt): $(tail -n 3 "$LOGS/gearmand.log")"
        stop_all
    done
    [ "$up" = 1 ] || die "gearmand would not start"
    log "gearmand $("$GEARMAND" -V 2>&1 | grep -m 1 . | cut -d" " -f1-2) on 127.0.0.1:$GPORT, $WORKERS echo workers"
    for i in $(seq "$WORKERS"); do
        "$BUILD_DIR/gm-echo-worker" 127.0.0.1 "$GPORT" </dev/null >"$LOGS/worker-$i.log" 2>&1 &
        PIDS+=("$!")
    done
    # wait until the admin "status" command shows every worker on "echo"
    python3 - "$GPORT" "$WORKERS" <<'EOF' || die "gearman workers did not register"
import socket, sys, time
port, want = int(sys.argv[1]), int(sys.argv[2])
deadline = time.time() + 10
while time.time() < deadline:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"status\n")
        buf = b""
        while not buf.endswith(b".\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    for line in buf.decode().splitlines():
        f = line.split("\t")
        if len(f) == 4 and f[0] == "echo" and int(f[3]) >= want:
            sys.exit(0)
    time.sleep(0.05)
sys.exit(1)
EOF
fi

# ---- 5. taskmaster ----------------------------------------------------------
if has taskmaster; then
    NO_COLOR=1 "$TM" --listen 127.0.0.1:0 --pool-start "$WORKERS" --pool-max "$WORKERS" \
        --job-max 100000 ${TM_ARGS:-} </dev/null >"$LOGS/taskmaster.log" 2>&1 &
    TM_PID=$!
    PIDS+=("$TM_PID")
    TM_ADDR=""
    ready=0
    for _ in $(seq 300); do
        kill -0 "$TM_PID" 2>/dev/null || { cat "$LOGS/taskmaster.log" >&2; die "taskmaster exited"; }
        if [ -z "$TM_ADDR" ]; then
            TM_ADDR=$(sed -e 's/\x1b\[[0-9;]*m//g' "$LOGS/taskmaster.log" |
                sed -n 's/.*listening addr=\([0-9.]*:[0-9]*\).*/\1/p' | head -n 1)
        fi
        if [ -n "$TM_ADDR" ] && grep -q 'pool ready' "$LOGS/taskmaster.log"; then
            ready=1
            break
        fi
        sleep 0.1
    done
    [ "$ready" = 1 ] || { cat "$LOGS/taskmaster.log" >&2; die "taskmaster not ready after 30 s"; }
    log "taskmaster on $TM_ADDR, pool of $WORKERS"
fi

# ---- 6. the loads, side by side -----------------------------------------------
# Every repeat of a configuration runs on each system in turn (gearman,
# taskmaster, then for configuration a taskmaster on the blocking client
# and the floor), so that a slow or fast spell of this shared machine falls
# on all of them rather than on one system's block of runs.
for cfg in "${CONFIGS[@]}"; do
    read -r name clients pipeline jobs <<<"$cfg"
    first=0
    [ "$name" = "${CONFIGS[0]%% *}" ] && first=1
    for rep in $(seq "$REPEATS"); do
        if has gearman; then
            run_load gearman "$name" "$rep" "$BUILD_DIR/gm-load" -h 127.0.0.1 -p "$GPORT" \
                -f echo -s "$SIZE" -n "$jobs" -c "$clients" -w "$pipeline"
        fi
        if has taskmaster; then
            run_load taskmaster "$name" "$rep" "$TM" bench --connect "$TM_ADDR" --module echo \
                --size "$SIZE" --jobs "$jobs" --clients "$clients" --pipeline "$pipeline" --json
            # The same closed loop on the blocking client, whose one write
            # and one read per job match the floor's client.
            if [ "$first" = 1 ] && [ "$TM_BLOCKING" = 1 ]; then
                run_load taskmaster-blocking "$name" "$rep" "$TM" bench --connect "$TM_ADDR" \
                    --module echo --size "$SIZE" --jobs "$jobs" --clients "$clients" \
                    --pipeline "$pipeline" --blocking --json
            fi
        fi
        if [ "$first" = 1 ] && has floor; then
            run_floor "$rep"
        fi
    done
done
stop_all

# ---- 7. table and JSON --------------------------------------------------------
GEARMAN_VERSION=""
[ -z "$GEARMAND" ] || GEARMAN_VERSION=$("$GEARMAND" -V 2>&1 | grep -m 1 . | cut -d" " -f1-2)
TM_REV=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
mkdir -p "$(dirname "$OUT")"
python3 - "$RESULTS" "$OUT" "$SIZE" "$WORKERS" "$REPEATS" "$GEARMAN_VERSION" "$TM_REV" \
    "$(nproc)" "${CONFIGS[@]}" <<'EOF'
import json, statistics, sys
results_path, out_path, size, workers, repeats, gm_version, tm_rev, ncpu = sys.argv[1:9]
configs = [c.split() for c in sys.argv[9:]]
runs = [json.loads(l) for l in open(results_path) if l.strip()]

def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None

rows = []
for name, clients, pipeline, jobs in configs:
    row = {"config": name, "clients": int(clients), "pipeline": int(pipeline),
           "jobs": int(jobs), "size": int(size)}
    for system in ("gearman", "taskmaster", "taskmaster-blocking", "floor"):
        rs = [r for r in runs if r["system"] == system and r["config"] == name]
        if not rs:
            row[system] = None
            continue
        row[system] = {
            "jobs_per_sec": med([r["jobs_per_sec"] for r in rs]),
            "p50_us": med([r["p50_us"] for r in rs]),
            "p99_us": med([r["p99_us"] for r in rs]),
            "failed": sum(r["failed"] for r in rs),
            "runs": rs,
        }
    g, t = row["gearman"], row["taskmaster"]
    row["ratio_taskmaster_gearman"] = (
        t["jobs_per_sec"] / g["jobs_per_sec"] if g and t and g["jobs_per_sec"] else None)
    fl = row["floor"]
    for system, s in (("taskmaster", t), ("taskmaster_blocking", row["taskmaster-blocking"]),
                      ("gearman", g)):
        row[f"ratio_p50_{system}_floor"] = (
            s["p50_us"] / fl["p50_us"] if s and fl and s["p50_us"] and fl["p50_us"] else None)
    rows.append(row)

doc = {"benchmark": "vs-gearman", "size": int(size), "workers": int(workers),
       "repeats": int(repeats), "cpus": int(ncpu), "gearmand": gm_version,
       "taskmaster_rev": tm_rev, "configs": rows}
with open(out_path, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")

def fmt(v, spec="{:.0f}"):
    return "-" if v is None else spec.format(v)

hdr = ("config", "gearman j/s", "taskmaster j/s", "tm/gm",
       "gearman p50/p99 us", "taskmaster p50/p99 us", "failed gm/tm")
print(f"\n{size}-byte echo, {workers} workers, median of {repeats}; "
      f"{gm_version or 'gearmand'} -t 1 vs taskmaster {tm_rev}; {ncpu} CPUs")
print(f"{hdr[0]:<22} {hdr[1]:>12} {hdr[2]:>15} {hdr[3]:>6} {hdr[4]:>19} {hdr[5]:>22} {hdr[6]:>13}")
for r in rows:
    g, t = r["gearman"] or {}, r["taskmaster"] or {}
    label = f"{r['config']}: C={r['clients']} W={r['pipeline']}"
    lat = lambda s: f"{fmt(s.get('p50_us'))}/{fmt(s.get('p99_us'))}" if s else "-"
    print(f"{label:<22} {fmt(g.get('jobs_per_sec')):>12} {fmt(t.get('jobs_per_sec')):>15} "
          f"{fmt(r['ratio_taskmaster_gearman'], '{:.2f}'):>6} {lat(g):>19} {lat(t):>22} "
          f"{fmt(g.get('failed'), '{}')+'/'+fmt(t.get('failed'), '{}'):>13}")
    fl = r["floor"]
    if fl:
        print(f"  {'floor: raw 4-hop relay':<20} {fmt(fl['jobs_per_sec'])} j/s, "
              f"p50/p99 {fmt(fl['p50_us'])}/{fmt(fl['p99_us'])} us, failed {fl['failed']}; "
              f"p50 / floor p50: taskmaster "
              f"{fmt(r['ratio_p50_taskmaster_floor'], '{:.2f}x')}, "
              f"gearman {fmt(r['ratio_p50_gearman_floor'], '{:.2f}x')}")
    tb = r["taskmaster-blocking"]
    if tb:
        print(f"  {'taskmaster, blocking client':<20} {fmt(tb['jobs_per_sec'])} j/s, "
              f"p50/p99 {fmt(tb['p50_us'])}/{fmt(tb['p99_us'])} us, failed {tb['failed']}"
              + (f"; p50 / floor p50 {fmt(r['ratio_p50_taskmaster_blocking_floor'], '{:.2f}x')}"
                 if fl else ""))
print(f"\nJSON: {out_path}")
EOF

if [ "$FAILED_RUNS" -ne 0 ]; then
    die "$FAILED_RUNS run(s) reported failed jobs or a non-zero exit; logs in $LOGS"
fi
rm -rf "$LOGS"
