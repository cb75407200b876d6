"""handoff reference worker, full protocol v1, stdlib only (see docs/PROTOCOL.md).

Run: handoff run --workers 4 -- python3 examples/python/worker.py
READY (ACK|DONE|HEARTBEAT|RETURN), ACK each connection, DONE before each close,
HEARTBEAT on a timer, DRAIN: finish and exit, end of file: exit at once.
RETURN (request-level balancing): between requests, an idle keep-alive connection goes
back to the master when HANDOFF_RETURN says so (docs/PROTOCOL.md, section 5).
"""
import os, socket, struct, threading, time

READY, ACK, DONE, HEARTBEAT, RETURN, CONN, DRAIN = 0x01, 0x02, 0x03, 0x04, 0x05, 0x81, 0x82
MODE = os.environ.get("HANDOFF_RETURN", "auto")  # auto | always | off
# ACK | DONE | HEARTBEAT (+ RETURN); no BATCH, so every CONN carries one socket
CAPS = 0b111 | (0b100000 if MODE != "off" else 0)
SLOW_S, HOLD_S = 0.002, 1.0  # auto: a request that took 2 ms makes us slow for 1 s
slow_until = 0.0
draining = False
ME = os.environ.get("HANDOFF_WORKER_ID", "0")
chan = socket.socket(fileno=int(os.environ["HANDOFF_FD"]))  # AF_UNIX, SOCK_SEQPACKET


def send(kind, ids=()):
    # One send on a SOCK_SEQPACKET socket is one whole frame, even from many threads.
    chan.send(struct.pack("<BBH", kind, 1, len(ids)) + b"".join(struct.pack("<Q", i) for i in ids))


def heartbeat(every):
    while True:
        time.sleep(every)
        try:
            send(HEARTBEAT)
        except OSError:  # the master is gone
            os._exit(0)


def hand_back(cid, sock):
    """RETURN: give an idle connection back to the master (nothing of the next request
    read, every response written, blocking mode). True if the master has it now."""
    if MODE == "off":
        return False
    try:
        socket.send_fds(chan, [struct.pack("<BBHQ", RETURN, 1, 1, cid)], [sock.fileno()])
        return True
    except OSError:  # channel full: keep serving it
        return False


def serve(cid, sock):
    """HTTP/1.1 with keep-alive: one request per header block (no bodies)."""
    global slow_until
    buf = b""
    returned = False
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            t0 = time.monotonic()
            head, _, buf = buf.partition(b"\r\n\r\n")
            close = b"connection: close" in head.lower()
            body = b"hello from python worker %s (pid %d)\n" % (ME.encode(), os.getpid())
            sock.sendall(b"HTTP/1.1 200 OK\r\nX-Handoff-Worker: %s\r\nContent-Length: %d\r\n"
                         b"Connection: %s\r\n\r\n%s" % (ME.encode(), len(body), b"close" if close else b"keep-alive", body))
            if close:
                return
            now = time.monotonic()
            if now - t0 >= SLOW_S:
                slow_until = now + HOLD_S
            # Between requests, with nothing of the next one read: may go back.
            if not buf and (draining or MODE == "always" or now < slow_until) and hand_back(cid, sock):
                returned = True
                return
    except OSError:
        pass
    finally:
        if not returned:  # RETURN stands for DONE
            try:
                send(DONE, [cid])  # before the close, so the master's count is right first
            except OSError:  # the master is gone; nobody to tell
                pass
        sock.close()


chan.send(struct.pack("<BBHII", READY, 1, 1, CAPS, os.getpid()))  # first frame: READY
every = int(os.environ.get("HANDOFF_HEARTBEAT_MS", "1000")) / 2000  # twice per period: never late
threading.Thread(target=heartbeat, args=(every,), daemon=True).start()
threads = []
while True:
    msg, fds, flags, _ = socket.recv_fds(chan, 4096, 1)
    if not msg and not fds:  # end of file: the master is gone
        os._exit(0)
    kind, _, n = struct.unpack_from("<BBH", msg)
    if kind == DRAIN:
        draining = True  # idle keep-alive connections go back at their next boundary
        break
    if kind != CONN or n != 1 or len(fds) != 1 or flags & socket.MSG_CTRUNC:
        raise SystemExit(f"worker {ME}: unexpected frame {msg[:4].hex()} with {len(fds)} fds")
    (cid,) = struct.unpack_from("<Q", msg, 4)
    send(ACK, [cid])
    t = threading.Thread(target=serve, args=(cid, socket.socket(fileno=fds[0])), daemon=True)
    t.start()
    threads = [x for x in threads if x.is_alive()] + [t]
for t in threads:  # DRAIN: finish what we have, then exit 0
    t.join()
