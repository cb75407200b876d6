#!/usr/bin/env python3
"""handoff-node-bridge: a handoff worker that serves its connections with a Node program.

    handoff run -w 4 -- python3 examples/node/handoff-node-bridge.py node examples/node/server.js

Node cannot receive a descriptor on a SOCK_SEQPACKET socket from its standard library,
but it can on its own IPC channel: a child started with NODE_CHANNEL_FD=<fd> naming an
inherited AF_UNIX stream socket reads JSON lines from it, and a line
{"cmd":"NODE_HANDLE","type":"net.Socket","msg":M} sent with a descriptor (SCM_RIGHTS)
becomes process.on('message') with M and a ready net.Socket, after Node answers
{"cmd":"NODE_HANDLE_ACK"}. This bridge is the worker process the master starts
(protocol v1, docs/PROTOCOL.md) and runs the Node program as its child on such a
channel; examples/node/handoff.js is the Node side. See examples/node/README.md.

Stdlib only, one thread, one selector over three descriptors: the handoff channel, the
Node channel and a pidfd of the Node process.
- READY with ACK|DONE|HEARTBEAT|BATCH|ADDRS at start.
- CONN (BATCH too): queued, then passed to Node one at a time, each after Node's
  NODE_HANDLE_ACK of the one before, as Node's own senders do. HANDOFF_NODE_WINDOW=N lets
  N await their ACK at once: the kernel never merges two descriptor-carrying writes into
  one read, so Node still matches each descriptor with its own message and answers in
  order (ACKs are matched first in, first out); measured here it gained nothing, Node's
  own work per connection dominates, so 1 is the default. ACK goes to the master only
  once Node has the socket, so if Node dies before that, the master hands the connection
  to another worker; the bridge then closes its copy.
- DONE when handoff.js reports the socket ending; HEARTBEAT when handoff.js beats, so a
  Node event loop stuck in a busy loop stops the beats and the master replaces it.
- DRAIN: pass on what is queued, then tell Node to drain; exit with Node's status.
- End of file on the channel (the master is gone): kill Node, exit. Node also gets
  SIGKILL if the bridge dies (PR_SET_PDEATHSIG), and handoff.js exits when its channel
  closes.
"""
import collections
import ctypes
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys

READY, ACK, DONE, HEARTBEAT, CONN, DRAIN, CONN_ADDR = 0x01, 0x02, 0x03, 0x04, 0x81, 0x82, 0x83
CAPS = 0b11111  # ACK | DONE | HEARTBEAT | BATCH | ADDRS
MAX_BATCH = 253  # connections in one CONN frame (docs/PROTOCOL.md)
ITEM = {CONN: 16, CONN_ADDR: 56}  # bytes per connection
WINDOW = max(1, int(os.environ.get("HANDOFF_NODE_WINDOW", "1")))
ME = os.environ.get("HANDOFF_WORKER_ID", "0")
NACK_RETRIES = 3  # as Node's own sender (MAX_HANDLE_RETRANSMISSIONS)


def log(msg):
    sys.stderr.write(f"node bridge {ME} (pid {os.getpid()}): {msg}\n")
    sys.stderr.flush()


def client_address(msg, at):
    """The client's address from a CONN_ADDR address block (a PROXY header the master
    read), as net.Socket names it; empty for "use the socket's own"."""
    family, port = msg[at], struct.unpack_from("<H", msg, at + 2)[0]
    if family == 4:
        return {"remoteAddress": socket.inet_ntop(socket.AF_INET, msg[at + 8 : at + 12]),
                "remotePort": port, "remoteFamily": "IPv4"}
    if family == 6:
        return {"remoteAddress": socket.inet_ntop(socket.AF_INET6, msg[at + 8 : at + 24]),
                "remotePort": port, "remoteFamily": "IPv6"}
    return {}


def die_with_parent(parent):
    """Runs in the child between fork and exec: SIGKILL when the bridge dies."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the bridge died before the prctl: nobody to serve
        os._exit(1)


class Bridge:
    def __init__(self, chan, argv):
        self.chan = chan
        self.queue = collections.deque()  # (id, fd, message): from the master, not yet in Node
        self.inflight = collections.deque()  # [id, fd, message, tries]: sent to Node, in order
        self.acks, self.dones = [], []  # gathered while reading Node's lines: one frame each
        self.live = set()  # ids Node holds: DONE is sent only for these
        self.node_ready = False
        self.draining = False
        self.drain_sent = False
        self.rbuf = b""
        self.ipc, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ, NODE_CHANNEL_FD=str(child.fileno()), NODE_CHANNEL_SERIALIZATION_MODE="json")
        env.pop("HANDOFF_FD", None)  # the channel is the bridge's alone (and close-on-exec)
        parent = os.getpid()
        try:
            self.node = subprocess.Popen(argv, env=env, pass_fds=[child.fileno()],
                                         preexec_fn=lambda: die_with_parent(parent))
        except OSError as e:
            sys.exit(f"node bridge {ME}: cannot start {argv[0]!r}: {e} (is Node.js installed and on PATH?)")
        child.close()
        self.pidfd = os.pidfd_open(self.node.pid)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.chan, selectors.EVENT_READ, self.on_channel)
        self.sel.register(self.ipc, selectors.EVENT_READ, self.on_node_message)
        self.sel.register(self.pidfd, selectors.EVENT_READ, self.on_node_exit)

    # ---- the handoff channel ----

    def frame(self, kind, ids=()):
        try:
            if not ids:
                self.chan.send(struct.pack("<BBH", kind, 1, 0))
            for at in range(0, len(ids), 511):  # at most 511 ids in an ACK or DONE
                part = ids[at : at + 511]
                self.chan.send(struct.pack(f"<BBH{len(part)}Q", kind, 1, len(part), *part))
        except OSError:  # the master is gone
            self.stop_node_and_exit(0)

    def on_channel(self):
        msg, anc, flags, _ = self.chan.recvmsg(4 + 16 * MAX_BATCH, socket.CMSG_SPACE(4 * MAX_BATCH),
                                               socket.MSG_CMSG_CLOEXEC)
        fds = []
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(struct.unpack(f"{len(data) // 4}i", data[: len(data) - len(data) % 4]))
        if not msg and not fds:  # end of file: the master is gone
            self.stop_node_and_exit(0)
        kind, _, n = struct.unpack_from("<BBH", msg) if len(msg) >= 4 else (0, 0, 0)
        if kind == DRAIN and not fds:
            self.draining = True
            self.pump()
            return
        size = ITEM.get(kind, 0)
        if not size or not 1 <= n == len(fds) or len(msg) != 4 + size * n or flags & socket.MSG_CTRUNC:
            for fd in fds:
                os.close(fd)
            log(f"unexpected frame {msg[:4].hex()} with {len(fds)} descriptors (flags {flags:#x}); exiting")
            self.stop_node_and_exit(1)
        for i, fd in enumerate(fds):
            at = 4 + size * i
            cid, listener = struct.unpack_from("<QH", msg, at)
            conn = {"handoff": "conn", "id": cid, "listener": listener}
            if kind == CONN_ADDR:
                conn.update(client_address(msg, at + 16))
            self.queue.append((cid, fd, conn))
        self.pump()

    # ---- the Node channel ----

    def send_node(self, obj, fd=None):
        data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        try:
            if fd is None:
                self.ipc.sendall(data)
                return
            sent = self.ipc.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
            self.ipc.sendall(data[sent:])  # a stream socket: the rest without the descriptor
        except OSError as e:  # Node closed its channel: its exit is on the way
            log(f"cannot write to Node: {e}")

    def pump(self):
        """Passes queued connections to Node, or the drain once all are in Node."""
        if not self.node_ready:
            return
        while self.queue and len(self.inflight) < WINDOW:
            cid, fd, conn = self.queue.popleft()
            item = [cid, fd, conn, 0]
            self.inflight.append(item)
            self.send_handle(item)
        if self.draining and not self.drain_sent and not self.queue and not self.inflight:
            self.drain_sent = True
            self.send_node({"handoff": "drain"})

    def send_handle(self, item):
        _, fd, conn, _ = item
        self.send_node({"cmd": "NODE_HANDLE", "type": "net.Socket", "msg": conn}, fd)

    def on_node_message(self):
        data = self.ipc.recv(65536)
        if not data:  # Node closed its channel (exiting): wait for the pidfd
            self.sel.unregister(self.ipc)
            return
        *lines, self.rbuf = (self.rbuf + data).split(b"\n")
        for line in lines:
            try:
                m = json.loads(line)
            except ValueError:
                log(f"Node sent a line that is not JSON: {line[:80]!r}")
                continue
            if isinstance(m, dict):
                self.on_message(m)
        if self.acks:
            self.frame(ACK, self.acks)
            self.acks = []
        if self.dones:
            self.frame(DONE, self.dones)
            self.dones = []
        self.pump()

    def on_message(self, m):
        cmd, what = m.get("cmd"), m.get("handoff")
        if cmd == "NODE_HANDLE_ACK" and self.inflight:
            cid, fd, _, _ = self.inflight.popleft()
            os.close(fd)  # Node has its own copy now
            self.live.add(cid)
            self.acks.append(cid)
        elif cmd == "NODE_HANDLE_NACK" and self.inflight:
            # Node lost the descriptor (MSG_CTRUNC on its side): send it again.
            item = self.inflight.popleft()
            item[3] += 1
            if item[3] <= NACK_RETRIES:
                self.inflight.append(item)  # its answer comes after those sent before
                self.send_handle(item)
                return
            cid, fd, _, _ = item
            log(f"Node refused connection {cid} {NACK_RETRIES} times: closing it")
            self.acks.append(cid)
            self.dones.append(cid)
            os.close(fd)
        elif what == "ready":
            self.node_ready = True
        elif what == "beat":
            self.frame(HEARTBEAT)
        elif what == "done":
            cid = m.get("id")
            if cid in self.live:  # never an id the master did not give us: it would kill us
                self.live.discard(cid)
                self.dones.append(cid)

    # ---- the Node process ----

    def on_node_exit(self):
        status = self.node.wait()
        if status != 0 or not self.draining:
            log(f"Node exited ({'status ' + str(status) if status >= 0 else 'signal ' + str(-status)})"
                f"{'' if self.draining else ' before a DRAIN'}")
        # Connections not yet ACKed go to another worker when the master sees us exit.
        os._exit(0 if status == 0 and self.draining else 1)

    def stop_node_and_exit(self, code):
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except OSError:
            pass
        os._exit(code)

    def run(self):
        self.chan.send(struct.pack("<BBHII", READY, 1, 1, CAPS, os.getpid()))
        while True:
            for key, _ in self.sel.select():
                key.data()


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: handoff run -- python3 handoff-node-bridge.py node app.js [ARGS...]")
    if "HANDOFF_FD" not in os.environ:
        sys.exit("handoff-node-bridge: HANDOFF_FD is not set: run it under `handoff run -- python3 "
                 "handoff-node-bridge.py node app.js`")
    chan = socket.socket(fileno=int(os.environ["HANDOFF_FD"]))  # AF_UNIX, SOCK_SEQPACKET
    os.set_inheritable(chan.fileno(), False)  # Node gets its own channel, not this one
    Bridge(chan, sys.argv[1:]).run()


if __name__ == "__main__":
    main()
