#!/usr/bin/env bash
# vs-nginx.sh: nginx (shared accept queue, and SO_REUSEPORT) and Node `cluster`
# (SCHED_RR: the primary accepts and hands connections to workers, like handoff) against
# `handoff run` with its built-in worker, the same number of workers, measured by wrk, a
# client nobody here wrote, so that `handoff bench`'s own load generator is kept honest.
#
# For each server it also reports the server's CPU time per request: utime + stime of
# every server process (master/primary and workers, from /proc/<pid>/stat) over the
# connection-per-request run, divided by the requests served; and the master's share.
# That figure does not depend on the client being the bottleneck.
#
# Loopback only. Every server is started by this script, stopped by its pid, and the
# whole run is bounded (each wrk run lasts DURATION seconds, under `timeout`).
#
# Usage: bench/vs-nginx.sh            (after `cargo build --release`)
# Knobs (environment): WORKERS (default: nproc), DURATION (s, default 5), CONNS (50),
#   THREADS (wrk threads, 2), RUNS (3: the table shows medians, ratios are taken within
#   each run), NODE=0 to skip Node, CREF=0 to skip the C reference, HANDOFF (path to the
#   binary, target/release/handoff).
#
# The C reference, bench/c-fdpass.c, is the floor of handoff's design: a master that
# only accepts and passes descriptors round robin (blocking in accept4, and as an epoll
# loop, also on a TCP_DEFER_ACCEPT listener), to workers that answer and close.
# Connection per request only.
set -euo pipefail

WORKERS=${WORKERS:-$(nproc)}
DURATION=${DURATION:-5}
CONNS=${CONNS:-50}
THREADS=${THREADS:-2}
RUNS=${RUNS:-3}
NODE=${NODE:-1}
CREF=${CREF:-1}
HANDOFF=${HANDOFF:-target/release/handoff}

die() { echo "vs-nginx: $*" >&2; exit 1; }

[ -x "$HANDOFF" ] || die "$HANDOFF not found: run 'cargo build --release' first, or set HANDOFF=/path/to/handoff"

# Debian's nginx and wrk, installed only if missing.
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ] || ! command -v wrk >/dev/null 2>&1; then
  [ "$(id -u)" -eq 0 ] || die "nginx or wrk is missing; install them (apt-get install nginx wrk) or run as root"
  echo "installing nginx and wrk (apt-get)..." >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx wrk >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ "$NODE" = 1 ] && ! command -v node >/dev/null 2>&1; then
  echo "node not found: skipping Node cluster (apt-get install nodejs)" >&2
  NODE=0
fi

TMP=$(mktemp -d /tmp/vs-nginx.XXXXXX)
# The C reference (bench/c-fdpass.c: descriptor passing and nothing else), if a C
# compiler is at hand.
if [ "$CREF" = 1 ] && ! cc -O2 -o "$TMP/c-fdpass" "$(dirname "$0")/c-fdpass.c" 2>"$TMP/cc.err"; then
  echo "cannot build bench/c-fdpass.c ($(head -1 "$TMP/cc.err")): skipping the C reference" >&2
  CREF=0
fi
PIDS=()
cleanup() {
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $((20000 + RANDOM % 20000))
}

wait_port() { # port: wait until something accepts on 127.0.0.1:port (10 s at most)
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "nothing listening on 127.0.0.1:$1 after 10 s"
}

stop() { # pid: SIGTERM, wait, forget it
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local keep=()
  for p in "${PIDS[@]}"; do [ "$p" != "$1" ] && keep+=("$p"); done
  PIDS=("${keep[@]:-}")
}

start_nginx() { # port, listen options ("" or "reuseport"); sets SERVER_PID
  local dir="$TMP/nginx-$1"
  mkdir -p "$dir/logs"
  cat >"$dir/nginx.conf" <<EOF
worker_processes $WORKERS;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/body; proxy_temp_path $dir/proxy; fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
  server {
    listen 127.0.0.1:$1 $2;
    location / { return 200 "hello\n"; }
  }
}
EOF
  "$NGINX" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  wait_port "$1"
}

start_handoff() { # port, policy[, listen options as ",deferred"]; sets SERVER_PID
  "$HANDOFF" run --listen "127.0.0.1:$1${3:-}" --workers "$WORKERS" --policy "$2" -q &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  wait_port "$1"
  sleep 0.5 # the port opens before every worker is READY
}

RESULTS="$TMP/results.tsv"
: >"$RESULTS"

# CPU ticks (utime + stime) of a process and all its descendants, and of the process alone.
ticks() { # pid -> "total self"
  python3 - "$1" <<'PY'
import os, sys
root = int(sys.argv[1])
def stat(p):
    try:
        f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12]), int(f[1])
    except OSError:
        return 0, -1
kids = {}
for d in os.listdir("/proc"):
    if d.isdigit():
        t, ppid = stat(d)
        kids.setdefault(ppid, []).append(int(d))
total, todo = 0, [root]
while todo:
    p = todo.pop()
    total += stat(p)[0]
    todo += kids.get(p, [])
print(total, stat(root)[0])
PY
}

measure() { # run, name, port, pid[, modes (default "close keepalive")]
  local run=$1 name=$2 port=$3 pid=$4 modes=${5:-close keepalive} mode hdr out rps p50 p99 errs reqs before after
  for mode in $modes; do
    hdr=()
    [ "$mode" = close ] && hdr=(-H 'Connection: close')
    before=$(ticks "$pid")
    out=$(timeout $((DURATION + 20)) wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "${hdr[@]}" "http://127.0.0.1:$port/" 2>&1) \
      || die "wrk failed against $name: $out"
    after=$(ticks "$pid")
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    errs=$(awk '/Socket errors|Non-2xx/ {sub(/^ +/, ""); printf "%s; ", $0}' <<<"$out")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$name" "$mode" "$rps" "$reqs" "$p50" "$p99" \
      "${before% *}:${after% *}" "${before#* }:${after#* }" "${errs:-none}" >>"$RESULTS"
    printf 'run %s  %-28s %-10s %10s req/s  p50 %8s  p99 %8s  %s\n' "$run" "$name" "$mode" "$rps" "$p50" "$p99" "${errs:-}" >&2
  done
}

echo "workers=$WORKERS wrk: -t$THREADS -c$CONNS -d${DURATION}s, $RUNS runs; $(nproc) cores, $(uname -r)" >&2

for run in $(seq "$RUNS"); do
  p=$(free_port); start_nginx "$p" ""; measure "$run" "nginx-shared" "$p" "$SERVER_PID"; stop "$SERVER_PID"
  p=$(free_port); start_nginx "$p" "reuseport"; measure "$run" "nginx-reuseport" "$p" "$SERVER_PID"; stop "$SERVER_PID"
  # TCP_DEFER_ACCEPT on both sides (nginx `deferred`, handoff `,deferred`).
  p=$(free_port); start_nginx "$p" "deferred"; measure "$run" "nginx-shared-deferred" "$p" "$SERVER_PID"; stop "$SERVER_PID"
  p=$(free_port); start_nginx "$p" "reuseport deferred"
  measure "$run" "nginx-reuseport-deferred" "$p" "$SERVER_PID"; stop "$SERVER_PID"
  if [ "$NODE" = 1 ]; then
    p=$(free_port)
    node "$(dirname "$0")/node-cluster.js" "$p" "$WORKERS" &
    SERVER_PID=$!; PIDS+=("$SERVER_PID"); wait_port "$p"; sleep 0.5
    measure "$run" "node-cluster-rr" "$p" "$SERVER_PID"; stop "$SERVER_PID"
  fi
  if [ "$CREF" = 1 ]; then
    for how in blocking epoll "epoll deferred"; do
      p=$(free_port)
      # shellcheck disable=SC2086 # "epoll deferred" is two arguments on purpose
      "$TMP/c-fdpass" ${how% *} "$p" "$WORKERS" $([ "$how" = "epoll deferred" ] && echo deferred) &
      SERVER_PID=$!; PIDS+=("$SERVER_PID"); wait_port "$p"
      measure "$run" "c-fdpass-${how// /-}" "$p" "$SERVER_PID" close; stop "$SERVER_PID"
    done
  fi
  for policy in round-robin least-conn; do
    p=$(free_port); start_handoff "$p" "$policy"; measure "$run" "handoff-$policy" "$p" "$SERVER_PID"; stop "$SERVER_PID"
  done
  p=$(free_port); start_handoff "$p" least-conn ",deferred"
  measure "$run" "handoff-least-conn-deferred" "$p" "$SERVER_PID"; stop "$SERVER_PID"
done

echo
python3 - "$RESULTS" "$(getconf CLK_TCK)" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
hz = int(sys.argv[2])
cell = {}
for run, name, mode, rps, reqs, p50, p99, tot, own, errs in rows:
    a, b = map(int, tot.split(":")); c, d = map(int, own.split(":"))
    reqs = int(reqs)
    cell.setdefault((name, mode), []).append(dict(run=run, rps=float(rps), p50=p50, p99=p99,
        cpu=(b - a) / hz / reqs * 1e6, master=(d - c) / hz / reqs * 1e6, errs=errs))
names = list(dict.fromkeys(n for n, _ in cell))
med = lambda xs: statistics.median(xs)
print(f"{'server':<28} {'mode':<10} {'req/s':>9} {'p50':>9} {'p99':>9} {'CPU µs/req':>11} {'master µs':>10}  errors (run 1)")
for mode in ("close", "keepalive"):
    for n in names:
        c = cell.get((n, mode))
        if not c:
            continue
        print(f"{n:<28} {mode:<10} {med([x['rps'] for x in c]):>9.0f} {c[0]['p50']:>9} {c[0]['p99']:>9} "
              f"{med([x['cpu'] for x in c]):>11.1f} {med([x['master'] for x in c]):>10.1f}  {c[0]['errs']}")
print()
print("ratios (median over runs of the ratio within each run):")
def ratio(a, b, mode, key="rps"):
    rs = []
    for x in cell.get((a, mode), []):
        for y in cell.get((b, mode), []):
            if x["run"] == y["run"] and y[key]:
                rs.append(x[key] / y[key])
    return med(rs) if rs else float("nan")
for h in [n for n in names if n.startswith("handoff")]:
    for peer in [n for n in names if not n.startswith("handoff")]:
        x = lambda r: "-" if r != r else f"{r:.2f}x"  # nan: not measured (or no master)
        print(f"  {h} / {peer}: close req/s {x(ratio(h, peer, 'close'))}, keepalive req/s "
              f"{x(ratio(h, peer, 'keepalive'))}, close CPU/req {x(ratio(h, peer, 'close', 'cpu'))}, "
              f"master {x(ratio(h, peer, 'close', 'master'))}")
PY
