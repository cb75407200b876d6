#!/usr/bin/env bash
# master-ceiling.sh: how many connections per second one handoff master accepts and hands
# out on one pinned core (issue 16 item 3).
#
# The master (`handoff run`) runs alone on MASTER_CPU; its workers are bench/ceiling.c's
# `worker`, which only receive connections and close them (READY with ACK|DONE|BATCH, as
# the built-in worker; MODE=minimal: no READY), moved to OTHER_CPUS once started; CLIENTS
# client processes (bench/ceiling.c's `client`, each keeping INFLIGHT connections in
# flight: connect, a few bytes, wait until the server side ends it, again) run on
# OTHER_CPUS too. Over DURATION seconds (after a 1 s warm-up) it reads the master's own
# count of connections handed out (`handoff status --json`: totals.dispatched) and the
# master's CPU time (/proc/PID/stat), and prints connections/s, the master's share of its
# core, and its CPU per connection.
#
# Only a master at (nearly) 100% of its core is at its ceiling. Below that, the other
# side (clients and workers, all on OTHER_CPUS) was the limit and the figure is a lower
# bound: the script says so. On a 2-core machine that is likely; the master's CPU per
# connection is then the figure that carries over (ceiling ≈ 1 s / that).
#
# Loopback only. Everything is started here and stopped by pid; bounded in time.
#
# Usage: bench/master-ceiling.sh        (after `cargo build --release`; needs cc)
# Knobs (environment): DURATION (5), CLIENTS (2), INFLIGHT (64), WORKERS (2),
#   MASTER_CPU (1), OTHER_CPUS (0), LISTEN_OPTS ("" or ",deferred"), MODE (full|minimal),
#   POLICY (the default), HANDOFF (target/release/handoff)
set -euo pipefail

DURATION=${DURATION:-5}
CLIENTS=${CLIENTS:-2}
INFLIGHT=${INFLIGHT:-64}
WORKERS=${WORKERS:-2}
MASTER_CPU=${MASTER_CPU:-1}
OTHER_CPUS=${OTHER_CPUS:-0}
LISTEN_OPTS=${LISTEN_OPTS:-}
MODE=${MODE:-full}
POLICY=${POLICY:-}
HANDOFF=${HANDOFF:-target/release/handoff}

die() { echo "master-ceiling: $*" >&2; exit 1; }
[ -x "$HANDOFF" ] || die "$HANDOFF not found: run 'cargo build --release' first, or set HANDOFF=/path/to/handoff"
for t in cc taskset setsid python3; do command -v "$t" >/dev/null || die "$t is missing (apt-get install gcc util-linux python3)"; done
case $MODE in full | minimal) ;; *) die "MODE=$MODE: give full or minimal" ;; esac

TMP=$(mktemp -d /tmp/master-ceiling.XXXXXX)
MASTER=
CLIENT_PIDS=()
cleanup() {
  local p
  for p in "${CLIENT_PIDS[@]:-}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done
  if [ -n "$MASTER" ]; then
    kill -TERM "$MASTER" 2>/dev/null || true
    wait "$MASTER" 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cc -O2 -o "$TMP/ceiling" "$(dirname "$0")/ceiling.c" || die "cannot build bench/ceiling.c"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
CTL="$TMP/control.sock"
policy=()
[ -n "$POLICY" ] && policy=(--policy "$POLICY")

MODE=$MODE taskset -c "$MASTER_CPU" setsid "$HANDOFF" run --listen "127.0.0.1:$PORT$LISTEN_OPTS" --workers "$WORKERS" \
  "${policy[@]}" --control "$CTL" -q -- "$TMP/ceiling" worker &
MASTER=$!

status() { "$HANDOFF" status --json --control "$CTL" 2>/dev/null; }
for _ in $(seq 100); do
  running=$(status | python3 -c 'import json,sys; print(sum(1 for w in json.load(sys.stdin)["workers"] if w.get("pid")))' 2>/dev/null || echo 0)
  [ "$running" -ge "$WORKERS" ] && break
  sleep 0.1
done
[ "${running:-0}" -ge "$WORKERS" ] || die "the master did not start $WORKERS workers within 10 s"
for w in $(cat "/proc/$MASTER/task/$MASTER/children"); do taskset -pc "$OTHER_CPUS" "$w" >/dev/null; done

for _ in $(seq "$CLIENTS"); do
  taskset -c "$OTHER_CPUS" "$TMP/ceiling" client 127.0.0.1 "$PORT" "$INFLIGHT" $((DURATION + 2)) >"$TMP/client.$_" &
  CLIENT_PIDS+=($!)
done
sleep 1 # warm-up: every client has its connections in flight

restarts() {
  status | python3 -c 'import json,sys; print(sum(w.get("restarts", 0) for w in json.load(sys.stdin)["workers"]))'
}
r0=$(restarts) || die "handoff status failed"
sample() { # -> "dispatched master_ticks monotonic_seconds"
  local d
  d=$(status | python3 -c 'import json,sys; print(json.load(sys.stdin)["totals"]["dispatched"])') || die "handoff status failed"
  echo "$d $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$MASTER/stat") $(cut -d' ' -f1 /proc/uptime)"
}
a=$(sample)
sleep "$DURATION"
b=$(sample)
r1=$(restarts) || die "handoff status failed"
for p in "${CLIENT_PIDS[@]}"; do wait "$p" || true; done
CLIENT_PIDS=()
failed=$(awk '{ s += $2 } END { print s + 0 }' "$TMP"/client.*)

if [ "$r1" != "$r0" ]; then
  # A worker the master killed (a protocol error) or lost: the figure would be wrong.
  die "workers were restarted during the run ($r0 -> $r1): see the master's log; no figure"
fi
python3 - "$a" "$b" "$(getconf CLK_TCK)" "$failed" <<PY
import sys
d0, t0, s0 = map(float, sys.argv[1].split()); d1, t1, s1 = map(float, sys.argv[2].split())
hz, failed = int(sys.argv[3]), int(sys.argv[4])
conns, secs = d1 - d0, s1 - s0
busy = (t1 - t0) / hz / secs
print(f"master on CPU $MASTER_CPU; $WORKERS '$MODE' workers and $CLIENTS clients x $INFLIGHT in flight on CPU $OTHER_CPUS; "
      f"listener 127.0.0.1:PORT$LISTEN_OPTS; {secs:.1f} s")
print(f"connections/s handed out: {conns / secs:.0f}")
print(f"master CPU: {100 * busy:.0f}% of its core, {1e6 * busy * secs / max(conns, 1):.2f} µs per connection"
      f" (extrapolated, if that cost held at full load: {conns / secs / max(busy, 1e-9):.0f}/s per core)")
if busy < 0.9:
    print("NOT SATURATED: the master used under 90% of its core, so the clients or the workers were the limit;"
          " connections/s above is a lower bound of the ceiling.")
if failed:
    print(f"client connects that failed: {failed}")
PY
