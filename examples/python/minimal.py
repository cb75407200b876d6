"""The textbook handoff worker: only socket.recv_fds, never writes to its channel.

Run: handoff run --workers 4 -- python3 examples/python/minimal.py
The master sees no READY and treats it as minimal (one socket per message, round robin).
"""
import os, socket

me = os.environ.get("HANDOFF_WORKER_ID", "0").encode()
chan = socket.socket(fileno=int(os.environ["HANDOFF_FD"]))
while True:
    msg, fds, _, _ = socket.recv_fds(chan, 4096, 1)
    if not fds:  # DRAIN, or the master is gone: exit
        break
    conn = socket.socket(fileno=fds[0])
    conn.recv(65536)
    body = b"hello from minimal worker " + me + b"\n"
    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Handoff-Worker: " + me + b"\r\nContent-Length: %d\r\n"
                 b"Connection: close\r\n\r\n" % len(body) + body)
    conn.close()
