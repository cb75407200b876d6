#!/usr/bin/env bash
# vs-nginx.sh: nginx (shared accept queue, and SO_REUSEPORT) against `handoff run` with
# its built-in worker, the same number of workers, measured by wrk, a client nobody here
# wrote, so that `handoff bench`'s own load generator is kept honest.
#
# Loopback only. Every server is started by this script, stopped by its pid, and the
# whole run is bounded (each wrk run lasts DURATION seconds, under `timeout`).
#
# Usage: bench/vs-nginx.sh            (after `cargo build --release`)
# Knobs (environment): WORKERS (default: nproc), DURATION (s, default 5), CONNS (16),
#   THREADS (wrk threads, 1), HANDOFF (path to the binary, target/release/handoff).
set -euo pipefail

WORKERS=${WORKERS:-$(nproc)}
DURATION=${DURATION:-5}
CONNS=${CONNS:-16}
THREADS=${THREADS:-1}
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

TMP=$(mktemp -d /tmp/vs-nginx.XXXXXX)
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

start_handoff() { # port, policy; sets SERVER_PID
  "$HANDOFF" run --listen "127.0.0.1:$1" --workers "$WORKERS" --policy "$2" -q &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  wait_port "$1"
  sleep 0.5 # the port opens before every worker is READY
}

ROWS=()
measure() { # name, port
  local name=$1 port=$2 mode hdr out rps p50 p99 errs
  for mode in close keepalive; do
    hdr=()
    [ "$mode" = close ] && hdr=(-H 'Connection: close')
    out=$(timeout $((DURATION + 20)) wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "${hdr[@]}" "http://127.0.0.1:$port/" 2>&1) \
      || die "wrk failed against $name: $out"
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    errs=$(awk '/Socket errors|Non-2xx/ {sub(/^ +/, ""); printf "%s; ", $0}' <<<"$out")
    ROWS+=("$(printf '%-20s %-10s %10s %10s %10s  %s' "$name" "$mode" "$rps" "$p50" "$p99" "${errs:-none}")")
    echo "${ROWS[-1]}" >&2
  done
}

echo "workers=$WORKERS wrk: -t$THREADS -c$CONNS -d${DURATION}s; $(nproc) cores, $(uname -r)" >&2

p=$(free_port); start_nginx "$p" ""; measure "nginx-shared" "$p"; stop "$SERVER_PID"
p=$(free_port); start_nginx "$p" "reuseport"; measure "nginx-reuseport" "$p"; stop "$SERVER_PID"
for policy in round-robin least-conn; do
  p=$(free_port); start_handoff "$p" "$policy"; measure "handoff-$policy" "$p"; stop "$SERVER_PID"
done

echo
printf '%-20s %-10s %10s %10s %10s  %s\n' server mode req/s p50 p99 errors
for r in "${ROWS[@]}"; do echo "$r"; done
