#!/usr/bin/env bash
# syscalls.sh: system calls per connection in handoff's master and built-in workers,
# under wrk sending one request per new connection. Counted with perf's syscall
# tracepoints, which (unlike strace) do not slow the process down and so do not change
# the batching being measured.
#
# Per connection means: per `close` in the master (it closes its copy of each
# connection exactly once) and per `shutdown` in the workers (the built-in worker shuts
# each connection down exactly once). Context switches and CPU time (task-clock) per
# connection come with the counts: how many connections share one wake-up decides
# what the frames cost.
#
# Pinned by default, as bench/vs-nginx.sh and bench/ab.sh measure (the server, master and
# workers, on SERVER_CPUS; wrk -t1 on CLIENT_CPUS): unpinned, the master reacts sooner and
# batches less, and the counts per connection are those of another workload. Both parts
# are counted over the same seconds.
#
# Usage: bench/syscalls.sh              (after `cargo build --release`)
# Knobs (environment): LISTEN_OPTS (",deferred" to measure that listener option),
#   POLICY (least-conn), WORKERS (2), SECONDS_COUNTED (3), HANDOFF (the binary),
#   HANDOFF_ARGS (more options for `handoff run`: "--hand-back always"), KEEPALIVE (1:
#   keep-alive requests; with --hand-back always the master then closes its copy of a
#   connection once per request, so "per connection" reads "per request"), PIN (1; 0:
#   unpinned, wrk -t2), SERVER_CPUS (1), CLIENT_CPUS (0).
# Loopback only; the server is started here and stopped by its pid.
set -euo pipefail

HANDOFF=${HANDOFF:-target/release/handoff}
LISTEN_OPTS=${LISTEN_OPTS:-}
POLICY=${POLICY:-least-conn}
WORKERS=${WORKERS:-2}
SECONDS_COUNTED=${SECONDS_COUNTED:-3}
PIN=${PIN:-1}
SERVER_CPUS=${SERVER_CPUS:-1}
CLIENT_CPUS=${CLIENT_CPUS:-0}
SERVER=()
WRK=(wrk -t2)
if [ "$PIN" = 1 ]; then
  command -v taskset >/dev/null || { echo "syscalls: taskset is missing (util-linux), or run with PIN=0" >&2; exit 1; }
  SERVER=(taskset -c "$SERVER_CPUS")
  WRK=(taskset -c "$CLIENT_CPUS" wrk -t1)
fi
read -r -a HANDOFF_ARGS <<<"${HANDOFF_ARGS:-}"
CLOSE=(-H 'Connection: close')
[ -n "${KEEPALIVE:-}" ] && CLOSE=()

die() { echo "syscalls: $*" >&2; exit 1; }
[ -x "$HANDOFF" ] || die "$HANDOFF not found: run 'cargo build --release' first"
command -v wrk >/dev/null || die "wrk is missing (apt-get install wrk)"
command -v perf >/dev/null || die "perf is missing (apt-get install linux-perf)"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
tmp=$(mktemp -d /tmp/syscalls.XXXXXX)
${SERVER[@]+"${SERVER[@]}"} "$HANDOFF" run --listen "127.0.0.1:$port$LISTEN_OPTS" --workers "$WORKERS" --policy "$POLICY" \
  ${HANDOFF_ARGS[@]+"${HANDOFF_ARGS[@]}"} -q &
master=$!
wrk_pid=
cleanup() {
  [ -n "$wrk_pid" ] && kill "$wrk_pid" 2>/dev/null || true
  kill -TERM "$master" 2>/dev/null || true
  wait "$master" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
sleep 0.5 # every worker READY
workers=$(pgrep -P "$master" | paste -sd, -)
[ -n "$workers" ] || die "no workers under master $master"

timeout $((SECONDS_COUNTED + 10)) "${WRK[@]}" -c50 -d$((SECONDS_COUNTED + 2))s ${CLOSE[@]+"${CLOSE[@]}"} \
  "http://127.0.0.1:$port/" >"$tmp/wrk" &
wrk_pid=$!
sleep 1
events() { local e=raw_syscalls:sys_enter; for s in "$@"; do e="$e,syscalls:sys_enter_$s"; done; echo "$e,context-switches,task-clock"; }
perf stat -x, -o "$tmp/master" -e "$(events accept4 close sendmsg recvmsg recvfrom epoll_wait epoll_ctl)" -p "$master" \
  -- sleep "$SECONDS_COUNTED" 2>/dev/null &
counting=$!
perf stat -x, -o "$tmp/workers" \
  -e "$(events shutdown close recvmsg sendmsg recvfrom sendto writev epoll_ctl ioctl epoll_wait)" \
  -p "$workers" -- sleep "$SECONDS_COUNTED" 2>/dev/null
wait "$counting" || true
wait "$wrk_pid" || true
wrk_pid=

per() { # file, the syscall counted once per connection
  awk -F, -v per="$2" '
    /^[0-9]/ { split($3, a, ":"); name = (3 in a || 2 in a) ? a[2] : $3; sub(/^sys_enter_?/, "", name); if (name == "") name = "all"
               if ($3 == "task-clock") { name = "CPU (us)"; $1 = $1 * 1000 } # ms -> us
               n[name] = $1; order[++k] = name }
    END { for (i = 1; i <= k; i++) if (n[per] > 0) printf "  %-16s %6.2f\n", order[i], n[order[i]] / n[per]; else printf "  %-16s %d (no %s)\n", order[i], n[order[i]], per }' "$1"
}
how="unpinned, wrk -t2"
[ "$PIN" = 1 ] && how="pinned: server on CPU $SERVER_CPUS, wrk -t1 on CPU $CLIENT_CPUS"
echo "listener 127.0.0.1:$port$LISTEN_OPTS, $WORKERS workers, $POLICY ${HANDOFF_ARGS[*]+${HANDOFF_ARGS[*]}}; $how; $(grep -m1 'Requests/sec' "$tmp/wrk") (counting slows it)"
echo "master, per connection (per close):"
per "$tmp/master" close
echo "workers, per connection (per shutdown):"
per "$tmp/workers" shutdown
