#!/usr/bin/env bash
# nginx-accept-ceiling.sh: connections per second per core of nginx's accept path, the
# figure master-ceiling.sh's is compared with (issue 16 item 3).
#
# One nginx worker process runs alone on SERVER_CPU with the smallest accept path nginx
# has: a `stream` server that accepts, writes one byte (`return`) and closes. CLIENTS
# client processes (bench/ceiling.c's `client`: connect, a few bytes, wait until the
# server ends it, again; INFLIGHT at a time) run on OTHER_CPUS, as in master-ceiling.sh.
# Over the clients' run it counts the connections they completed and the nginx
# worker's CPU time (/proc/PID/stat), and prints connections/s, the worker's share of
# its core and its CPU per connection. As there: below ~90% of the core, the clients
# were the limit and connections/s is a lower bound; the CPU per connection carries over.
#
# What differs from handoff's master: nginx's worker accepts and also serves (here one
# write and a close); handoff's master accepts and hands the socket on (a sendmsg, and
# later an ACK and a DONE to read). Both end with a close of their own descriptor.
#
# Loopback only; nginx is started here (its own prefix in a temporary directory) and
# stopped by pid; bounded in time.
#
# Usage: bench/nginx-accept-ceiling.sh      (needs nginx with the stream module:
#   apt-get install nginx libnginx-mod-stream; and cc)
# Knobs: DURATION (5), CLIENTS (2), INFLIGHT (64), SERVER_CPU (1), OTHER_CPUS (0).
# (nginx's stream `listen` has no `deferred`: compare with master-ceiling.sh's default
# listener, not its ,deferred one.)
set -euo pipefail

DURATION=${DURATION:-5}
CLIENTS=${CLIENTS:-2}
INFLIGHT=${INFLIGHT:-64}
SERVER_CPU=${SERVER_CPU:-1}
OTHER_CPUS=${OTHER_CPUS:-0}

die() { echo "nginx-accept-ceiling: $*" >&2; exit 1; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || die "nginx is missing (apt-get install nginx libnginx-mod-stream)"
MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
[ -f "$MODULE" ] || die "$MODULE is missing (apt-get install libnginx-mod-stream)"
for t in cc taskset setsid python3; do command -v "$t" >/dev/null || die "$t is missing"; done

TMP=$(mktemp -d /tmp/nginx-ceiling.XXXXXX)
MASTER=
CLIENT_PIDS=()
cleanup() {
  local p
  for p in "${CLIENT_PIDS[@]:-}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done
  if [ -n "$MASTER" ]; then
    kill -TERM "$MASTER" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$MASTER" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cc -O2 -o "$TMP/ceiling" "$(dirname "$0")/ceiling.c" || die "cannot build bench/ceiling.c"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$TMP/logs"
cat >"$TMP/nginx.conf" <<CONF
load_module $MODULE;
daemon off;
master_process on;
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/logs/error.log warn;
events { worker_connections 4096; multi_accept on; }
stream {
    server { listen 127.0.0.1:$PORT reuseport backlog=4096; return "x"; }
}
CONF
taskset -c "$SERVER_CPU" setsid "$NGINX" -p "$TMP" -c "$TMP/nginx.conf" -e "$TMP/logs/error.log" &
MASTER=$!
WORKER=
for _ in $(seq 100); do
  WORKER=$(cat "/proc/$MASTER/task/$MASTER/children" 2>/dev/null | awk '{print $1}')
  [ -n "$WORKER" ] && python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1).close()" 2>/dev/null && break
  sleep 0.1
done
[ -n "$WORKER" ] || die "nginx did not start its worker within 10 s (see $TMP/logs/error.log)"

ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$WORKER/stat"; }
t0=$(ticks)
s0=$(cut -d' ' -f1 /proc/uptime)
for _ in $(seq "$CLIENTS"); do
  taskset -c "$OTHER_CPUS" "$TMP/ceiling" client 127.0.0.1 "$PORT" "$INFLIGHT" "$DURATION" >"$TMP/client.$_" &
  CLIENT_PIDS+=($!)
done
for p in "${CLIENT_PIDS[@]}"; do wait "$p" || true; done
CLIENT_PIDS=()
t1=$(ticks)
s1=$(cut -d' ' -f1 /proc/uptime)
done_=$(awk '{ s += $1 } END { print s + 0 }' "$TMP"/client.*)
failed=$(awk '{ s += $2 } END { print s + 0 }' "$TMP"/client.*)
python3 - "$t0" "$t1" "$s0" "$s1" "$done_" "$failed" "$(getconf CLK_TCK)" <<PY
import sys
t0, t1, s0, s1, done, failed, hz = map(float, sys.argv[1:])
secs = s1 - s0
busy = (t1 - t0) / hz / secs
print(f"nginx worker on CPU $SERVER_CPU (stream: accept, write 1 byte, close); "
      f"$CLIENTS clients x $INFLIGHT in flight on CPU $OTHER_CPUS; {secs:.1f} s")
print(f"connections/s: {done / secs:.0f}")
print(f"nginx worker CPU: {100 * busy:.0f}% of its core, {1e6 * busy * secs / max(done, 1):.2f} µs per connection"
      f" (extrapolated, if that cost held at full load: {done / secs / max(busy, 1e-9):.0f}/s per core)")
if busy < 0.9:
    print("NOT SATURATED: the worker used under 90% of its core, so the clients were the limit;"
          " connections/s above is a lower bound of the ceiling.")
if failed:
    print(f"client connects that failed: {int(failed)}")
PY
