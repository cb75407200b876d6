#!/usr/bin/env bash
# watch-cost.sh: what the built-in worker's stall watch (worker/stall.rs) costs under
# uniform keep-alive: the CPU of every thread of each worker, by thread name, from
# /proc/PID/task/TID/schedstat over one wrk run, pinned like bench/vs-nginx.sh (server on
# SERVER_CPUS, `wrk -t1` on CLIENT_CPUS). The `handoff-stall` line is the watch threads'
# CPU per second of the run, summed over the workers.
#
# Usage: bench/watch-cost.sh [HANDOFF_BINARY]     (default target/release/handoff)
# Knobs (environment): WORKERS (2), CONNS (50), DURATION (5), SERVER_CPUS (1), CLIENT_CPUS (0).
# Loopback only; the server is started here and stopped by its pid.
set -euo pipefail
HANDOFF=${1:-target/release/handoff}
WORKERS=${WORKERS:-2}; CONNS=${CONNS:-50}; DURATION=${DURATION:-5}
SERVER_CPUS=${SERVER_CPUS:-1}; CLIENT_CPUS=${CLIENT_CPUS:-0}
[ -x "$HANDOFF" ] || { echo "watch-cost: $HANDOFF not found (cargo build --release)" >&2; exit 2; }
command -v wrk >/dev/null || { echo "watch-cost: wrk is missing (apt-get install wrk)" >&2; exit 2; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
taskset -c "$SERVER_CPUS" setsid "$HANDOFF" run -q -w "$WORKERS" --listen "127.0.0.1:$port" --control "/tmp/watch-cost-$port.sock" >/dev/null 2>&1 &
master=$!
trap 'kill "$master" 2>/dev/null || true; sleep 0.5; kill -KILL -- "-$master" 2>/dev/null || true' EXIT
sleep 1.5
taskset -c "$CLIENT_CPUS" timeout 30 wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$port/" >/dev/null
workers=$(cat "/proc/$master/task/$master/children")
snap() { for w in $workers; do for t in /proc/$w/task/*; do echo "$(cat "$t/comm") $(cut -d' ' -f1 "$t/schedstat")"; done; done; }
before=$(snap)
rate=$(taskset -c "$CLIENT_CPUS" timeout $((DURATION + 20)) wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$port/" | awk '/Requests\/sec/ {print $2}')
after=$(snap)
paste <(echo "$before") <(echo "$after") |
  awk -v d="$DURATION" -v r="$rate" '{cpu[$1] += ($4 - $2)} END {for (k in cpu) printf "%-16s %7.1f ms of CPU per second\n", k, cpu[k] / d / 1e6; printf "requests/s       %s\n", r}'
