#!/usr/bin/env bash
# vs-nginx.sh: `handoff run` (built-in worker) against nginx, measured by wrk, a client
# nobody here wrote, so that `handoff bench`'s own load generator is kept honest.
#
# Pinned by default, because on a small machine an unpinned figure measures the
# scheduler: a server that gets less CPU wakes less often, handles bigger batches, and its
# CPU per request falls (issue 16: the same binary measured 22-24 or 40-47 µs per request
# depending only on which scheduler autogroup it was started in). So:
# - every server is started the same way, `taskset -c SERVER_CPUS setsid CMD`: its own
#   session (so its own autogroup), all its processes (master and workers) on SERVER_CPUS;
# - wrk runs with one thread on CLIENT_CPUS (`taskset -c CLIENT_CPUS wrk -t1`);
# - every server gets the same offered load: the same wrk connections and duration;
# - the server's CPU is utime + stime of every process in its session (from
#   /proc/PID/stat, master and workers alike), divided by the requests served. When the
#   request rates differ, CPU per request is the figure that compares; with keep-alive the
#   server's core is the bottleneck, so the pinned request rate compares too;
# - servers alternate within a round (the starting server rotates each round), RUNS
#   rounds, and every ratio is taken within a round, then the median over rounds.
#
# Servers: nginx `reuseport`, nginx `reuseport deferred`, `handoff run` with default
# settings, `handoff run --listen ADDR,deferred`. EXTRA=1 adds nginx's default shared
# queue, Node `cluster` (round robin), and the C floor of handoff's design
# (bench/c-fdpass.c: a master that only accepts and passes descriptors).
#
# Loopback only. Every server is started here, stopped by its pid (and any process left
# in its session, by pid), and each wrk run is bounded (`timeout`).
#
# Usage: bench/vs-nginx.sh            (after `cargo build --release`)
# Knobs (environment):
#   WORKERS (2)  DURATION (s, 5)  CONNS (wrk connections, 50)  RUNS (rounds, 3)
#   WARMUP (s, 1: one unmeasured wrk run per server before its measured ones)
#   MODES ("close keepalive": a new connection per request, and keep-alive)
#   PIN (1; PIN=0 is the UNPINNED mode: nothing pinned, wrk -t2, output labelled so,
#        its CPU per request is not a figure to quote)
#   SERVER_CPUS (1)  CLIENT_CPUS (0)  THREADS (wrk threads: 1 pinned, 2 unpinned)
#   EXTRA (0)  HANDOFF (target/release/handoff)  NGINX (nginx from PATH or /usr/sbin)
set -euo pipefail

WORKERS=${WORKERS:-2}
DURATION=${DURATION:-5}
CONNS=${CONNS:-50}
RUNS=${RUNS:-3}
WARMUP=${WARMUP:-1}
MODES=${MODES:-close keepalive}
PIN=${PIN:-1}
SERVER_CPUS=${SERVER_CPUS:-1}
CLIENT_CPUS=${CLIENT_CPUS:-0}
EXTRA=${EXTRA:-0}
HANDOFF=${HANDOFF:-target/release/handoff}
if [ "$PIN" = 1 ]; then THREADS=${THREADS:-1}; else THREADS=${THREADS:-2}; fi

die() { echo "vs-nginx: $*" >&2; exit 1; }

[ -x "$HANDOFF" ] || die "$HANDOFF not found: run 'cargo build --release' first, or set HANDOFF=/path/to/handoff"
command -v python3 >/dev/null || die "python3 is missing (apt-get install python3)"
command -v setsid >/dev/null || die "setsid is missing (apt-get install util-linux)"
if [ "$PIN" = 1 ]; then
  command -v taskset >/dev/null || die "taskset is missing (apt-get install util-linux), or run unpinned with PIN=0"
  for c in ${SERVER_CPUS//,/ } ${CLIENT_CPUS//,/ }; do
    [ -d "/sys/devices/system/cpu/cpu${c%%-*}" ] || die "CPU $c does not exist here: set SERVER_CPUS and CLIENT_CPUS"
  done
fi

# Debian's nginx and wrk, installed only if missing.
if ! { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; } || ! command -v wrk >/dev/null 2>&1; then
  [ "$(id -u)" -eq 0 ] || die "nginx or wrk is missing; install them (apt-get install nginx wrk) or run as root"
  echo "installing nginx and wrk (apt-get)..." >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx wrk >/dev/null
fi
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
NODE=0
CREF=0
if [ "$EXTRA" = 1 ]; then
  if command -v node >/dev/null 2>&1; then NODE=1; else echo "node not found: skipping Node cluster" >&2; fi
  CREF=1
fi

TMP=$(mktemp -d /tmp/vs-nginx.XXXXXX)
if [ "$CREF" = 1 ] && ! cc -O2 -o "$TMP/c-fdpass" "$(dirname "$0")/c-fdpass.c" 2>"$TMP/cc.err"; then
  echo "cannot build bench/c-fdpass.c ($(head -1 "$TMP/cc.err")): skipping the C reference" >&2
  CREF=0
fi

# Every server process is a session leader (setsid): its session id is its pid.
SERVER_PID=
session_pids() { # sid -> pids of every live process in that session
  local d s
  for d in /proc/[0-9]*; do
    s=$(awk '{ sub(/^.*\) /, ""); print $4 }' "$d/stat" 2>/dev/null) || continue
    if [ "$s" = "$1" ]; then echo "${d#/proc/}"; fi
  done
  return 0
}
stop() { # pid: SIGTERM, wait; then anything left in its session, by pid
  local pid=$1 left p
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for _ in $(seq 30); do
    left=$(session_pids "$pid")
    [ -z "$left" ] && break
    sleep 0.1
  done
  for p in $left; do kill -KILL "$p" 2>/dev/null || true; done
  SERVER_PID=
}
cleanup() {
  if [ -n "$SERVER_PID" ]; then stop "$SERVER_PID"; fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() { # port: wait until something accepts on 127.0.0.1:port (10 s at most)
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "nothing listening on 127.0.0.1:$1 after 10 s"
}

# Starts a server the same way for every kind: in a new session, pinned if PIN=1.
launch() { # command... ; sets SERVER_PID
  if [ "$PIN" = 1 ]; then
    taskset -c "$SERVER_CPUS" setsid "$@" &
  else
    setsid "$@" &
  fi
  SERVER_PID=$!
}

start_nginx() { # port, listen options ("reuseport", "reuseport deferred", ...)
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
  launch "$NGINX" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;'
  wait_port "$1"
}

start_handoff() { # port[, listen options as ",deferred"]: default settings otherwise
  launch "$HANDOFF" run --listen "127.0.0.1:$1${2:-}" --workers "$WORKERS" -q
  wait_port "$1"
  sleep 0.5 # the port opens before every worker is READY
}

start_server() { # name, port
  case $1 in
    nginx-reuseport) start_nginx "$2" "reuseport" ;;
    nginx-reuseport-deferred) start_nginx "$2" "reuseport deferred" ;;
    nginx-shared) start_nginx "$2" "" ;;
    handoff-default) start_handoff "$2" ;;
    handoff-deferred) start_handoff "$2" ",deferred" ;;
    node-cluster-rr) launch node "$(dirname "$0")/node-cluster.js" "$2" "$WORKERS"; wait_port "$2"; sleep 0.5 ;;
    c-fdpass-blocking) launch "$TMP/c-fdpass" blocking "$2" "$WORKERS"; wait_port "$2" ;;
    c-fdpass-epoll-deferred) launch "$TMP/c-fdpass" epoll "$2" "$WORKERS" deferred; wait_port "$2" ;;
    *) die "unknown server $1" ;;
  esac
  local sid
  sid=$(awk '{ sub(/^.*\) /, ""); print $4 }' "/proc/$SERVER_PID/stat" 2>/dev/null) || die "$1 exited at start"
  [ "$sid" = "$SERVER_PID" ] || die "$1 (pid $SERVER_PID) is not the leader of its session ($sid): setsid forked?"
}

# CPU ticks (utime + stime) of every process in a session, and of its leader alone;
# then the CPUs the session's processes may run on.
ticks() { # sid -> "total leader"
  python3 - "$1" <<'PY'
import os, sys
sid = int(sys.argv[1])
total = leader = 0
for d in os.listdir("/proc"):
    if not d.isdigit():
        continue
    try:
        f = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    if int(f[3]) == sid:
        t = int(f[11]) + int(f[12])
        total += t
        if int(d) == sid:
            leader = t
print(total, leader)
PY
}
cpus_of() { # sid -> the union of the session's processes' affinity, and their count
  python3 - "$1" <<'PY'
import os, sys
sid, cpus, n = int(sys.argv[1]), set(), 0
for d in os.listdir("/proc"):
    try:
        if d.isdigit() and int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[3]) == sid:
            cpus |= os.sched_getaffinity(int(d)); n += 1
    except OSError:
        pass
print(f"{n} processes on CPUs {','.join(map(str, sorted(cpus)))}")
PY
}

RESULTS="$TMP/results.tsv"
: >"$RESULTS"
WRK=(wrk)
[ "$PIN" = 1 ] && WRK=(taskset -c "$CLIENT_CPUS" wrk)

measure() { # run, name, port, sid, modes
  local run=$1 name=$2 port=$3 sid=$4 modes=$5 mode hdr out rps p50 p99 errs reqs before after
  for mode in $modes; do
    hdr=()
    [ "$mode" = close ] && hdr=(-H 'Connection: close')
    before=$(ticks "$sid")
    out=$(timeout $((DURATION + 20)) "${WRK[@]}" -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "${hdr[@]}" \
      "http://127.0.0.1:$port/" 2>&1) || die "wrk failed against $name: $out"
    after=$(ticks "$sid")
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    errs=$(awk '/Socket errors|Non-2xx/ {sub(/^ +/, ""); printf "%s; ", $0}' <<<"$out")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$name" "$mode" "$rps" "$reqs" "$p50" "$p99" \
      "${before% *}:${after% *}" "${before#* }:${after#* }" "${errs:-none}" >>"$RESULTS"
    printf 'round %s  %-26s %-10s %10s req/s  p50 %8s  p99 %8s  %s\n' "$run" "$name" "$mode" "$rps" "$p50" "$p99" "${errs:-}" >&2
  done
}

SERVERS=(nginx-reuseport nginx-reuseport-deferred handoff-default handoff-deferred)
[ "$EXTRA" = 1 ] && SERVERS+=(nginx-shared)
[ "$NODE" = 1 ] && SERVERS+=(node-cluster-rr)
[ "$CREF" = 1 ] && SERVERS+=(c-fdpass-blocking c-fdpass-epoll-deferred)

if [ "$PIN" = 1 ]; then
  HOW="PINNED: servers (every process) on CPU $SERVER_CPUS, wrk -t$THREADS on CPU $CLIENT_CPUS"
else
  HOW="UNPINNED (PIN=0): the scheduler splits the CPUs between wrk and the server; CPU per request depends on it, do not quote it"
fi
echo "$HOW" >&2
echo "workers=$WORKERS, wrk -t$THREADS -c$CONNS -d${DURATION}s, $RUNS rounds; $(nproc) CPUs, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2

n=${#SERVERS[@]}
for run in $(seq "$RUNS"); do
  for i in $(seq 0 $((n - 1))); do
    name=${SERVERS[$(((i + run - 1) % n))]}
    p=$(free_port)
    start_server "$name" "$p"
    if [ "$run" = 1 ]; then echo "  $name: $(cpus_of "$SERVER_PID")" >&2; fi
    if [ "$WARMUP" != 0 ]; then # start-up work and first-touch page faults stay out of the figures
      timeout $((WARMUP + 20)) "${WRK[@]}" -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" "http://127.0.0.1:$p/" >/dev/null 2>&1 || true
    fi
    modes=$MODES
    case $name in c-fdpass-*) modes=close ;; esac # it answers and closes
    measure "$run" "$name" "$p" "$SERVER_PID" "$modes"
    stop "$SERVER_PID"
  done
done

echo
echo "$HOW"
echo "workers=$WORKERS, wrk -t$THREADS -c$CONNS -d${DURATION}s (the same offered load for every server), $RUNS rounds"
python3 - "$RESULTS" "$(getconf CLK_TCK)" "$PIN" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
hz, pinned = int(sys.argv[2]), sys.argv[3] == "1"
cell = {}
for run, name, mode, rps, reqs, p50, p99, tot, own, errs in rows:
    a, b = map(int, tot.split(":")); c, d = map(int, own.split(":"))
    reqs = max(int(reqs), 1)
    cell.setdefault((name, mode), []).append(dict(run=run, rps=float(rps), p50=p50, p99=p99,
        cpu=(b - a) / hz / reqs * 1e6, master=(d - c) / hz / reqs * 1e6, errs=errs))
names = list(dict.fromkeys(n for n, _ in cell))
med = statistics.median
print(f"{'server':<26} {'mode':<10} {'req/s':>9} {'p50':>9} {'p99':>9} {'CPU µs/req':>11} {'leader µs':>10}  errors (round 1)")
for mode in ("close", "keepalive"):
    for n in names:
        c = cell.get((n, mode))
        if c:
            print(f"{n:<26} {mode:<10} {med([x['rps'] for x in c]):>9.0f} {c[0]['p50']:>9} {c[0]['p99']:>9} "
                  f"{med([x['cpu'] for x in c]):>11.1f} {med([x['master'] for x in c]):>10.1f}  {c[0]['errs']}")
print("(CPU µs/req: every process of the server; leader: the master / nginx master alone)")
for mode in ("close", "keepalive"):
    rates = [med([x["rps"] for x in cell[(n, mode)]]) for n in names if (n, mode) in cell]
    if len(rates) > 1 and max(rates) > 1.05 * min(rates):
        why = ("CPU per request compares, and so does the rate: pinned, the server's one core is the limit"
               if mode == "keepalive" and pinned else "CPU per request is the figure that compares")
        print(f"{mode}: request rates differ by {max(rates) / min(rates):.2f}x at the same offered load: {why}")
print()
def ratio(a, b, mode, key):
    rs = [x[key] / y[key] for x in cell.get((a, mode), []) for y in cell.get((b, mode), [])
          if x["run"] == y["run"] and y[key]]
    return (med(rs), rs) if rs else (None, [])
print("ratios: the median over rounds of the ratio within each round (per-round values in brackets)")
targets = {  # issue 16's checks
    ("handoff-default", "nginx-reuseport", "close", "cpu"): ("<=", 1.0),
    ("handoff-deferred", "nginx-reuseport-deferred", "close", "cpu"): ("<=", 0.9),
    ("handoff-default", "nginx-reuseport", "keepalive", "rps"): (">=", 1.0),
}
for h in [n for n in names if n.startswith("handoff")]:
    for peer in [n for n in names if not n.startswith("handoff")]:
        for mode, key, what in (("close", "cpu", "close CPU/req"), ("close", "rps", "close req/s"),
                                ("keepalive", "rps", "keep-alive req/s"), ("keepalive", "cpu", "keep-alive CPU/req")):
            m, rs = ratio(h, peer, mode, key)
            if m is None:
                continue
            t = targets.get((h, peer, mode, key))
            verdict = ""
            if t and pinned:
                ok = m <= t[1] if t[0] == "<=" else m >= t[1]
                verdict = f"  target {t[0]} {t[1]:.1f}: {'met' if ok else 'MISSED'}"
            print(f"  {h} / {peer}: {what} {m:.2f}x [{', '.join(f'{r:.2f}' for r in rs)}]{verdict}")
if not pinned:
    print("UNPINNED run: the CPU ratios above depend on how the scheduler split the CPUs; not for quoting.")
PY
