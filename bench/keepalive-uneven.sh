#!/usr/bin/env bash
# keepalive-uneven.sh: request-level balancing under uneven load, over keep-alive.
#
# C keep-alive connections stay open for the whole run (wrk), 1 request in 500 burns
# 25 ms of CPU (`?cpu_ms=25`), the rest answer at once. Servers: `handoff run` with
# --hand-back auto (the default), always and off (balancing per connection, as before
# RETURN), and the kernel's models from `handoff bench --serve` (SO_REUSEPORT, one shared
# queue with EPOLLEXCLUSIVE, the same with nginx's rotation), each with W workers.
# Prints wrk's latency percentiles per server. Debian's wrk (wg/wrk 4) measures each
# request from its send to its response on a closed-loop connection and does not
# correct for coordinated omission: these are raw per-request latencies.
#
# Pinned, as every figure we quote: the servers' processes on CPU $SERVER_CPU (each
# started with setsid, the same way), wrk on CPU $CLIENT_CPU (`taskset`).
# Loopback only; every server is stopped by its pid; each wrk run lasts DURATION s.
#
# Usage: bench/keepalive-uneven.sh   (after `cargo build --release`)
# Knobs: CONNS (32), WORKERS (4), DURATION (10), ROUNDS (1), THREADS (wrk, 2),
#   SERVER_CPU (1), CLIENT_CPU (0), MODELS (list), HANDOFF (target/release/handoff).
set -euo pipefail
CONNS=${CONNS:-32}
WORKERS=${WORKERS:-4}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-1}
THREADS=${THREADS:-2}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
HANDOFF=${HANDOFF:-target/release/handoff}
MODELS=${MODELS:-"handoff-auto handoff-always handoff-off reuseport shared shared-nginx"}
[ -x "$HANDOFF" ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
TMP=$(mktemp -d /tmp/ka-uneven.XXXXXX)
PID=""
cleanup() { [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null; sleep 0.3; [ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
cat > "$TMP/uneven.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  if n % 500 == 0 then return wrk.format("GET", "/?cpu_ms=25") end
  return wrk.format("GET", "/")
end
LUA
# The load knobs (?cpu_ms=) exist only in test mode where the binary has one.
KNOBS=""
"$HANDOFF" run --help | grep -q -- --test-knobs && KNOBS=--test-knobs
port=18600
start() {
  local model=$1
  port=$((port + 1))
  case $model in
    handoff-*) setsid taskset -c "$SERVER_CPU" "$HANDOFF" run -q $KNOBS -l "127.0.0.1:$port" -w "$WORKERS" \
                 --hand-back "${model#handoff-}" --control "$TMP/c$port.sock" >"$TMP/log" 2>&1 & ;;
    *) setsid taskset -c "$SERVER_CPU" "$HANDOFF" bench --serve "$model" --listen "127.0.0.1:$port" --workers "$WORKERS" >"$TMP/log" 2>&1 & ;;
  esac
  PID=$!
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && return 0
    sleep 0.1
  done
  echo "$model did not start:"; cat "$TMP/log"; exit 1
}
stop() { kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; }
printf '%-16s %10s %10s %10s %10s %10s\n' server req/s p50 p90 p99 max
for r in $(seq "$ROUNDS"); do
  for m in $MODELS; do
    start "$m"
    out=$(taskset -c "$CLIENT_CPU" timeout $((DURATION + 20)) wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency \
            -s "$TMP/uneven.lua" "http://127.0.0.1:$port/")
    stop
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p() { awk -v k="$1" '$1 == k {print $2}' <<<"$out"; }
    max=$(awk '/Latency/ && !/Distribution/ {print $4; exit}' <<<"$out")
    printf '%-16s %10s %10s %10s %10s %10s\n' "$m" "$rps" "$(p 50%)" "$(p 90%)" "$(p 99%)" "$max"
  done
done
