"""A stand-in master that checks RETURN frame by frame (tests/python_package.rs).

Usage: python3 fake_master.py wsgi|asgi MODULE:APP
Starts the worker with HANDOFF_RETURN=always on a SOCK_SEQPACKET pair, passes it real
loopback connections as the master would, and checks what the protocol promises for a
connection handed back: a RETURN frame with its id and exactly its descriptor, the socket
in blocking mode, every byte of the response written and nothing of the next request
read; CONTINUED reaching the app; DONE (never RETURN) for a client that asked to close;
idle connections handed back at DRAIN; exit status 0. And a connection queued before the
worker said READY (which a master does not track) is never handed back.

Connections after READY carry the CONTINUED flag, which proves to the worker that the
master tracks them (without it, a worker whose READY came late waits a second before it
returns anything). Prints "ok" and exits 0, or fails with an AssertionError. The worker
is killed (by its pid, our child) if anything fails.
"""
import array
import fcntl
import os
import socket
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
server, app = sys.argv[1], sys.argv[2]

master, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
listener = socket.create_server(("127.0.0.1", 0))


def send_conn(cid, sock, flags=0):
    item = struct.pack("<BBH", 0x81, 1, 1) + struct.pack("<QHBB4x", cid, 0, 1, flags)
    master.sendmsg([item], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [sock.fileno()]))])
    sock.close()  # the worker has its own copy now


def connect():
    cli = socket.create_connection(listener.getsockname())
    cli.settimeout(20)
    return cli, listener.accept()[0]


# Queued before the worker even starts: sent before READY, so untracked.
early, srv = connect()
send_conn(5, srv)
env = dict(os.environ, HANDOFF_FD=str(worker_end.fileno()), HANDOFF_WORKER_ID="0", HANDOFF_WORKERS="1",
           HANDOFF_RETURN="always", HANDOFF_HEARTBEAT_MS="60000")
worker = subprocess.Popen([sys.executable, "-m", f"handoff_worker.{server}", "--app-dir", HERE, app],
                          env=env, pass_fds=[worker_end.fileno()])
worker_end.close()
master.settimeout(20)


def frame():
    """The next frame from the worker that is not a HEARTBEAT: (type, ids, fds)."""
    while True:
        msg, fds, flags, _ = socket.recv_fds(master, 4096, 253)
        assert msg, "the worker closed its channel"
        assert not flags & socket.MSG_CTRUNC
        kind, version, n = struct.unpack_from("<BBH", msg)
        assert version == 1, msg.hex()
        if kind == 0x04:
            assert not fds
            continue
        if kind == 0x01:
            return kind, struct.unpack_from("<II", msg, 4), fds
        assert len(msg) == 4 + 8 * n, msg.hex()
        return kind, [struct.unpack_from("<Q", msg, 4 + 8 * i)[0] for i in range(n)], fds


def conn(cid, sock, flags=1):
    send_conn(cid, sock, flags)
    assert frame()[:2] == (0x02, [cid]), "ACK"


def response(cli):
    """One response with a Content-Length body, read exactly."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = cli.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int([line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")][0])
    while len(body) < length:
        body += cli.recv(65536)
    assert len(body) == length, "more bytes than the response"
    return head, body


try:
    kind, (caps, pid), _ = frame()
    assert kind == 0x01 and caps & 0x3F == 0x3F and pid == worker.pid, (kind, hex(caps), pid)
    assert frame()[:2] == (0x02, [5]), "ACK of the connection queued before READY"
    early.sendall(b"GET /continued HTTP/1.1\r\nHost: test\r\n\r\n")
    head, body = response(early)
    assert head.startswith(b"HTTP/1.1 200") and body == b"False\n", (head, body)
    # (not handed back: it is still served here, and ends with DONE at the DRAIN below)
    early.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    assert response(early)[0].startswith(b"HTTP/1.1 200")

    cli, srv = connect()
    conn(7, srv)
    cli.sendall(b"GET /continued HTTP/1.1\r\nHost: test\r\n\r\n")
    head, body = response(cli)
    assert head.startswith(b"HTTP/1.1 200") and body == b"True\n", (head, body)

    kind, ids, fds = frame()
    assert (kind, ids, len(fds)) == (0x05, [7], 1), (kind, ids, fds)
    back = socket.socket(fileno=fds[0])
    assert not fcntl.fcntl(back.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK, "handed back non-blocking"
    assert back.getpeername() == cli.getsockname(), "not the same connection"
    # The next request: the first byte anyone reads now is its first byte.
    cli.sendall(b"GET /continued HTTP/1.1\r\nHost: test\r\n\r\n")
    back.settimeout(20)
    assert back.recv(4, socket.MSG_PEEK) == b"GET ", "bytes of the next request were read"
    back.settimeout(None)
    conn(8, back)
    head, body = response(cli)
    assert body == b"True\n", (head, body)
    kind, ids, fds = frame()
    assert (kind, ids, len(fds)) == (0x05, [8], 1), (kind, ids, fds)
    for fd in fds:
        os.close(fd)

    # A client that asks to close: DONE, never RETURN.
    cli2, srv2 = connect()
    conn(9, srv2)
    cli2.sendall(b"GET /continued HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
    kind, ids, fds = frame()
    assert (kind, ids, fds) == (0x03, [9], []), (kind, ids, fds)

    # DRAIN with an idle connection (no request yet): handed back; the untracked one
    # ends with DONE; then exit 0.
    cli3, srv3 = connect()
    conn(10, srv3)
    master.send(struct.pack("<BBH", 0x82, 1, 0))
    ends = sorted([frame(), frame()], key=lambda f: f[0])
    assert [(k, i, len(f)) for k, i, f in ends] == [(0x03, [5], 0), (0x05, [10], 1)], ends
    for fd in ends[1][2]:
        os.close(fd)
    assert worker.wait(20) == 0, "exit status after DRAIN"
    print("ok")
finally:
    if worker.poll() is None:
        worker.kill()
        worker.wait()
