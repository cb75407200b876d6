"""Checks handoff_worker.protocol's decoder on a real SOCK_SEQPACKET pair (run by
tests/python_package.rs): every frame the master sends decodes, and every malformed one
is a ProtocolError that leaks none of the descriptors it carried. Prints "ok"."""
import array
import ipaddress
import os
import socket
import struct

from handoff_worker import protocol

master, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
chan = protocol.Channel(worker_end.detach())
assert not os.get_inheritable(chan.fileno()), "the channel must be close-on-exec"


def send(data, socks=()):
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [s.fileno() for s in socks]))] if socks else []
    master.sendmsg([data], anc)


def open_fds():
    return set(os.listdir("/proc/self/fd"))


def item(cid, listener=0, kind=1, flags=0):
    return struct.pack("<QHBB4x", cid, listener, kind, flags)


def addr_block(family, src, sport, dst, dport):
    pad = lambda a: a + bytes(16 - len(a))  # noqa: E731
    return struct.pack("<BxHH2x16s16s", family, sport, dport, pad(src), pad(dst))


# READY, ACK, DONE, HEARTBEAT: the exact bytes of docs/PROTOCOL.md.
chan.ready(0x0F)
msg = master.recv(4096)
assert msg[:8] == bytes.fromhex("010101000f000000") and struct.unpack_from("<I", msg, 8)[0] == os.getpid()
chan.ack([7, 8])
assert master.recv(4096) == bytes.fromhex("0201020007000000000000000800000000000000")
chan.done(list(range(600)))  # more than one frame holds
assert struct.unpack_from("<BBH", master.recv(8192)) == (3, 1, 511)
assert struct.unpack_from("<BBH", master.recv(8192)) == (3, 1, 89)
chan.heartbeat()
assert master.recv(4096) == bytes.fromhex("04010000")

# A batch of two CONN items, with flags (CONTINUED) and listener index.
a, b = socket.socketpair()
send(struct.pack("<BBH", 0x81, 1, 2) + item(7) + item(8, listener=2, kind=2, flags=1), [a, b])
conns = chan.receive()
assert [(c.id, c.listener, c.kind, c.continued) for c in conns] == [(7, 0, 1, False), (8, 2, 2, True)]
assert all(not os.get_inheritable(c.sock.fileno()) for c in conns), "received sockets must be close-on-exec"
conns[0].sock.sendall(b"x")
assert b.recv(1) == b"x", "descriptors in item order"
for c in conns:
    c.sock.close()

# CONN_ADDR: IPv4, IPv6, and "no address".
v4 = addr_block(4, ipaddress.IPv4Address("192.0.2.9").packed, 5555, ipaddress.IPv4Address("198.51.100.1").packed, 443)
v6 = addr_block(6, ipaddress.IPv6Address("2001:db8::1").packed, 6, ipaddress.IPv6Address("2001:db8::2").packed, 80)
none = addr_block(0, b"", 0, b"", 0)
send(struct.pack("<BBH", 0x83, 1, 3) + item(1) + v4 + item(2) + v6 + item(3) + none, [a, a, a])
conns = chan.receive()
got = [(c.client, c.server) for c in conns]
assert got == [(("192.0.2.9", 5555), ("198.51.100.1", 443)), (("2001:db8::1", 6), ("2001:db8::2", 80)), (None, None)], got
for c in conns:
    c.sock.close()

send(struct.pack("<BBH", 0x82, 1, 0))
assert isinstance(chan.receive(), protocol.Drain)

# Malformed frames: a ProtocolError, and no descriptor left open.
before = open_fds()
bad = [
    (b"\x81\x01", []),  # short
    (struct.pack("<BBH", 0x81, 2, 1) + item(1), [a]),  # version 2
    (struct.pack("<BBH", 0x99, 1, 0), []),  # unknown type
    (struct.pack("<BBH", 0x81, 1, 2) + item(1), [a]),  # n says 2, one item
    (struct.pack("<BBH", 0x81, 1, 1) + item(1), [a, a]),  # two descriptors for one item
    (struct.pack("<BBH", 0x81, 1, 1) + item(1), []),  # no descriptor
    (struct.pack("<BBH", 0x81, 1, 0), []),  # no items
    (struct.pack("<BBH", 0x82, 1, 0), [a]),  # DRAIN with a descriptor
    (struct.pack("<BBH", 0x01, 1, 1) + struct.pack("<II", 0, 0), []),  # a worker's frame
]
for data, socks in bad:
    send(data, socks)
    try:
        ev = chan.receive()
    except protocol.ProtocolError:
        continue
    raise AssertionError(f"{data.hex()} with {len(socks)} descriptors decoded as {ev!r}")
assert open_fds() == before, f"descriptors leaked: {open_fds() - before}"

# RETURN: ids in order, exactly their descriptors.
assert chan.give_back([(5, a), (6, b)])
msg, fds, _, _ = socket.recv_fds(master, 4096, 10)
assert msg == struct.pack("<BBHQQ", 5, 1, 2, 5, 6) and len(fds) == 2, (msg.hex(), fds)
for fd in fds:
    os.close(fd)

master.close()
assert isinstance(chan.receive(), protocol.Eof)
print("ok")
