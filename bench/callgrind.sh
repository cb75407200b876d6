#!/usr/bin/env bash
# Instruction count of the channel hot path (encode + sendmsg + recvmsg + decode of a
# CONN, and the ACK and DONE back), per connection. Deterministic: counts instructions,
# not time, so it can be compared across runs on a busy machine.
#
#   bench/callgrind.sh            # 10 000 iterations
#   ITERATIONS=50000 bench/callgrind.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
n=${ITERATIONS:-10000}
bin=$(cargo bench --bench channel --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]=="channel" and m.get("executable"): print(m["executable"])' | tail -1)
out=$(mktemp)
count() { ITERATIONS=$1 valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" 2>&1 | sed -n 's/.*Collected : *//p'; }
# Subtract a 1-iteration run: what is left is the loop alone.
base=$(count 1)
total=$(count "$n")
rm -f "$out"
python3 -c "b=$base; t=$total; n=$n; print(f'channel hot path: {(t-b)/(n-1):.0f} instructions per connection (CONN + ACK + DONE), {n} iterations, total {t}, base {b}')"
