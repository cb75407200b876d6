#!/usr/bin/env bash
# ab.sh: two builds of handoff side by side, alternating, under wrk sending one request
# per new connection; for each run the requests per second and the server's CPU per
# request (utime + stime from /proc/<pid>/stat: the master's and each worker's), then
# the medians. This is how the changes to the hot path were kept or dropped: a machine
# drifts by more than most changes move, so only runs taken in turn are compared.
#
# Pinned by default, like bench/vs-nginx.sh (see there why): each server is started as
# `taskset -c SERVER_CPUS setsid handoff run ...` (its own session, every process on
# SERVER_CPUS), wrk as `taskset -c CLIENT_CPUS wrk -t1`. PIN=0 runs unpinned (wrk -t2),
# and says so: its CPU per request depends on how the scheduler splits the CPUs.
#
# Usage: bench/ab.sh OLD_BINARY NEW_BINARY      (e.g. a copy of target/release/handoff
#        taken before the change, and target/release/handoff)
# Knobs (environment): RUNS (5 each), DURATION (5 s), LISTEN_OPTS (",deferred"),
#   WORKERS (2), CONNS (50), POLICY (least-conn), KEEPALIVE (1: keep-alive requests
#   instead of one per connection), PIN (1), SERVER_CPUS (1), CLIENT_CPUS (0),
#   HANDOFF_ARGS (more options for `handoff run`, split on spaces: "--hand-back always"),
#   URL_PATH (/: the path wrk asks for, e.g. "/?sleep_ms=10" with HANDOFF_ARGS=--test-knobs).
# Loopback only; each server is started here and stopped by its pid.
set -euo pipefail
URL_PATH=${URL_PATH:-/}

[ $# -eq 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY" >&2; exit 2; }
RUNS=${RUNS:-5}
DURATION=${DURATION:-5}
LISTEN_OPTS=${LISTEN_OPTS:-}
WORKERS=${WORKERS:-2}
CONNS=${CONNS:-50}
POLICY=${POLICY:-least-conn}
KEEPALIVE=${KEEPALIVE:-}
PIN=${PIN:-1}
SERVER_CPUS=${SERVER_CPUS:-1}
CLIENT_CPUS=${CLIENT_CPUS:-0}
read -r -a HANDOFF_ARGS <<<"${HANDOFF_ARGS:-}"
CLOSE=(-H 'Connection: close')
MODE="Connection: close"
if [ -n "$KEEPALIVE" ]; then CLOSE=(); MODE="keep-alive"; fi
for b in "$1" "$2"; do [ -x "$b" ] || { echo "ab: $b is not an executable" >&2; exit 2; }; done
command -v wrk >/dev/null || { echo "ab: wrk is missing (apt-get install wrk)" >&2; exit 2; }
SERVER=(setsid)
WRK=(wrk -t2)
HOW="UNPINNED (PIN=0): CPU per request depends on the scheduler, do not quote it"
if [ "$PIN" = 1 ]; then
  command -v taskset >/dev/null || { echo "ab: taskset is missing (util-linux), or run with PIN=0" >&2; exit 2; }
  SERVER=(taskset -c "$SERVER_CPUS" setsid)
  WRK=(taskset -c "$CLIENT_CPUS" wrk -t1)
  HOW="pinned: server on CPU $SERVER_CPUS, wrk -t1 on CPU $CLIENT_CPUS"
fi

PID=
cleanup() { [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; true; }
trap cleanup EXIT INT TERM

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# utime+stime ticks of the master (a session leader), then of each of its children, on
# one line; then of anything else in its session, so that no server process is missed.
ticks() {
  local p kids others=0 d f
  kids=" $(cat "/proc/$1/task/$1/children" 2>/dev/null) "
  for d in /proc/[0-9]*; do
    f=$(awk '{ sub(/^.*\) /, ""); print $4, $12 + $13 }' "$d/stat" 2>/dev/null) || continue
    p=${d#/proc/}
    if [ "${f% *}" = "$1" ] && [ "$p" != "$1" ] && [[ $kids != *" $p "* ]]; then others=$((others + ${f#* })); fi
  done
  for p in "$1" $kids; do
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat"
  done | paste -sd' '
  [ "$others" = 0 ] || echo "ab: $others ticks in other processes of the session" >&2
}

one() { # binary -> "req/s total master workers..."
  local p out before after reqs
  p=$(port)
  "${SERVER[@]}" "$1" run --listen "127.0.0.1:$p$LISTEN_OPTS" --workers "$WORKERS" --policy "$POLICY" ${HANDOFF_ARGS[@]+"${HANDOFF_ARGS[@]}"} -q &
  PID=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.1; done
  sleep 0.5 # the port opens before every worker is READY
  before=$(ticks "$PID")
  out=$(timeout $((DURATION + 20)) "${WRK[@]}" -c"$CONNS" -d"${DURATION}s" "${CLOSE[@]}" "http://127.0.0.1:$p$URL_PATH")
  after=$(ticks "$PID")
  kill -TERM "$PID"; wait "$PID" || true; PID=
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  python3 - "$before" "$after" "$reqs" "$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")" "$(getconf CLK_TCK)" <<'PY'
import sys
b, a = (list(map(int, x.split())) for x in sys.argv[1:3])
reqs, rps, hz = int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
us = [(y - x) / hz / reqs * 1e6 for x, y in zip(b, a)]
print(f"{rps:.0f} {sum(us):.2f} {us[0]:.2f} " + " ".join(f"{u:.2f}" for u in us[1:]))
PY
}

echo "$HOW" >&2
echo "listen 127.0.0.1:PORT$LISTEN_OPTS, $WORKERS workers, $POLICY ${HANDOFF_ARGS[*]+${HANDOFF_ARGS[*]}}; ${WRK[*]} -c$CONNS -d${DURATION}s, $MODE; $RUNS runs each, in turn" >&2
declare -A rows
for run in $(seq "$RUNS"); do
  for side in old new; do
    bin=$1; [ "$side" = new ] && bin=$2
    r=$(one "$bin")
    rows[$side]+="$r"$'\n'
    read -r rps total master rest <<<"$r"
    printf 'run %d %-3s %8s req/s  CPU %6s us/req  master %5s  workers %s\n' "$run" "$side" "$rps" "$total" "$master" "$rest" >&2
  done
done
python3 - "${rows[old]}" "${rows[new]}" <<'PY'
import statistics, sys
for name, text in zip(("old", "new"), sys.argv[1:]):
    rs = [list(map(float, l.split())) for l in text.strip().splitlines()]
    med = lambda i: statistics.median(r[i] for r in rs)
    print(f"{name}: median {med(0):.0f} req/s, CPU {med(1):.2f} us/req (master {med(2):.2f})")
PY
