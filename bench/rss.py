#!/usr/bin/env python3
"""Master and worker memory with many connections open through handoff.

Starts `handoff run` (release build) with 2 built-in workers, opens N keep-alive
connections (default 10 000) and makes one request on each, so every connection is
held by a worker, then reads VmRSS of the master and workers from /proc. Loopback
only; stops everything it started, by pid.

    python3 bench/rss.py [N]
"""
import os, re, resource, signal, socket, subprocess, sys, time

n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
if hard < n + 100:
    sys.exit(f"need RLIMIT_NOFILE > {n + 100} (hard limit is {hard})")
binary = os.path.join(os.path.dirname(__file__), "..", "target", "release", "handoff")
ctl = f"/tmp/handoff-rss-{os.getpid()}.sock"
p = subprocess.Popen([binary, "run", "--listen", "127.0.0.1:0", "--workers", "2", "--control", ctl],
                     stderr=subprocess.PIPE, text=True)
try:
    port = None
    while port is None:
        line = p.stderr.readline()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
        if not line and p.poll() is not None:
            sys.exit("handoff exited")
    time.sleep(0.5)
    import json
    st = json.loads(subprocess.check_output([binary, "status", "--json", "--control", ctl]))
    pids = [st["pid"]] + [w["pid"] for w in st["workers"]]

    def rss(pid):
        with open(f"/proc/{pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1))

    idle = [rss(x) for x in pids]
    conns = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: r\r\n\r\n")
        conns.append(s)
    for s in conns:
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(4096)
    st = json.loads(subprocess.check_output([binary, "status", "--json", "--control", ctl]))
    active = sum(w["active"] for w in st["workers"])
    busy = [rss(x) for x in pids]
    print(f"connections open: {n} (workers report {active} active)")
    print(f"master VmRSS: idle {idle[0]} KiB, with {n} connections {busy[0]} KiB")
    for k, pid in enumerate(pids[1:]):
        print(f"worker {k} VmRSS: idle {idle[k + 1]} KiB, with connections {busy[k + 1]} KiB")
    for s in conns:
        s.close()
finally:
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
