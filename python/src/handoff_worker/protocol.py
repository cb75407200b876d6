"""The handoff worker protocol, version 1 (docs/PROTOCOL.md in the handoff repository).

A worker is given one descriptor, ``HANDOFF_FD``: its end of an ``AF_UNIX``,
``SOCK_SEQPACKET`` socket pair, the *channel*. One ``sendmsg`` is one frame. The master
sends CONN / CONN_ADDR frames (each carries accepted client sockets as ``SCM_RIGHTS``)
and DRAIN; the worker sends READY once, then ACK, DONE, HEARTBEAT and RETURN.

This module only speaks the protocol: :class:`Channel` encodes and decodes frames and
moves descriptors. It owns no policy: the servers (:mod:`handoff_worker.wsgi`,
:mod:`handoff_worker.asgi`) decide when to ACK, DONE or RETURN.

Sending is thread-safe without a lock: each frame is a single ``sendmsg`` on a
``SOCK_SEQPACKET`` socket, which the kernel delivers whole and never interleaves.
"""

from __future__ import annotations

import array
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

VERSION = 1

# Frame types, worker -> master.
READY = 0x01
ACK = 0x02
DONE = 0x03
HEARTBEAT = 0x04
RETURN = 0x05
# Frame types, master -> worker.
CONN = 0x81
DRAIN = 0x82
CONN_ADDR = 0x83

# Capability bits announced in READY.
CAP_ACK = 1 << 0
CAP_DONE = 1 << 1
CAP_HEARTBEAT = 1 << 2
CAP_BATCH = 1 << 3
CAP_ADDRS = 1 << 4
CAP_RETURN = 1 << 5

# Bit 0 of byte 11 of a CONN item: this connection was handed back (RETURN) before.
FLAG_CONTINUED = 1 << 0

# Socket kinds in a CONN item (a hint; 0 means "ask the socket").
KIND_UNKNOWN = 0
KIND_TCP = 1
KIND_UNIX = 2

MAX_IDS = 511  # ACK and DONE
MAX_RETURN = 253  # RETURN: as many descriptors as one CONN frame carries
MAX_FDS = 253  # room for the largest CONN batch
# Large enough for any frame (the biggest, 73 CONN_ADDR items, is 4092 bytes); the
# protocol asks for at least 4096.
RECV_BUFFER = 8192

_HEADER = struct.Struct("<BBH")
_ITEM = struct.Struct("<QHBB4x")  # id, listener, kind, flags, 4 bytes zero
_ADDR = struct.Struct("<BxHH2x16s16s")  # family, source port, destination port, addresses
_READY = struct.Struct("<II")
_ID = struct.Struct("<Q")

# Close-on-exec as received, where the platform has it (Linux); else set afterwards.
_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)

Address = Tuple[str, int]


class ProtocolError(Exception):
    """The master sent something this worker cannot read (a bug on one side or the other)."""


@dataclass
class Connection:
    """One client connection handed to this worker.

    ``client`` and ``server`` are the addresses from a PROXY protocol header (CONN_ADDR),
    or ``None`` when the master gave none: then the socket's own peer and local
    addresses are the client's and the server's.
    """

    id: int
    listener: int
    kind: int
    flags: int
    sock: socket.socket
    client: Optional[Address] = None
    server: Optional[Address] = None
    # Set by the worker: the master may not track this connection (it may have been
    # sent before the master read READY), so it must never be handed back.
    untracked: bool = False

    @property
    def continued(self) -> bool:
        """True if this connection was handed back to the master (RETURN) before."""
        return bool(self.flags & FLAG_CONTINUED)


class Drain:
    """DRAIN: take no more connections, finish the ones you have, exit 0."""


class Eof:
    """End of file on the channel: the master is gone; exit within a second."""


@dataclass
class Lost:
    """A CONN frame whose descriptors the kernel could not deliver (``MSG_CTRUNC``: this
    process is at its descriptor limit). The descriptors that did arrive are closed;
    report these ids DONE (without ACK) and go on serving the others."""

    ids: List[int]


Event = Union[List[Connection], Drain, Eof, Lost]


def _addr(family: int, raw: bytes, port: int) -> Optional[Address]:
    if family == 4:
        return (str(ipaddress.IPv4Address(raw[:4])), port)
    if family == 6:
        return (str(ipaddress.IPv6Address(raw)), port)
    return None


def _ids_frame(kind: int, ids: Sequence[int]) -> bytes:
    return _HEADER.pack(kind, VERSION, len(ids)) + b"".join(_ID.pack(i) for i in ids)


class Channel:
    """The worker's end of the channel to the master."""

    def __init__(self, fd: int):
        # Not close-on-exec as inherited: mark it so, or a program the app starts would
        # hold the channel (and could write to it).
        os.set_inheritable(fd, False)
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(True)

    @classmethod
    def from_env(cls) -> "Channel":
        """The channel named by ``HANDOFF_FD``; a clear error when run outside handoff."""
        value = os.environ.get("HANDOFF_FD")
        if value is None:
            raise SystemExit(
                "HANDOFF_FD is not set: this is a handoff worker, started by the master, e.g.\n"
                "  handoff run -- python3 -m handoff_worker.wsgi app:app"
            )
        try:
            fd = int(value)
            os.fstat(fd)
        except (ValueError, OSError) as e:
            raise SystemExit(f"HANDOFF_FD={value!r} is not an open descriptor ({e}): start this under handoff")
        return cls(fd)

    def fileno(self) -> int:
        return self.sock.fileno()

    # ---- worker -> master ----

    def ready(self, capabilities: int) -> None:
        """READY: the first frame, once."""
        self.sock.send(_HEADER.pack(READY, VERSION, 1) + _READY.pack(capabilities, os.getpid()))

    def ack(self, ids: Sequence[int]) -> None:
        """ACK: these connections were received."""
        for i in range(0, len(ids), MAX_IDS):
            self.sock.send(_ids_frame(ACK, ids[i : i + MAX_IDS]))

    def done(self, ids: Sequence[int]) -> None:
        """DONE: these connections are finished. Send it before closing the sockets."""
        for i in range(0, len(ids), MAX_IDS):
            self.sock.send(_ids_frame(DONE, ids[i : i + MAX_IDS]))

    def heartbeat(self) -> None:
        self.sock.send(_HEADER.pack(HEARTBEAT, VERSION, 0))

    def give_back(self, conns: Sequence[Tuple[int, socket.socket]]) -> bool:
        """RETURN: hand idle keep-alive connections ``(id, socket)`` back to the master.

        True if the master now has them (the caller closes its own sockets and sends no
        DONE for them); False if the channel was full (nothing was transferred: keep
        serving them). Never blocks. Other errors (the master is gone) raise ``OSError``.
        """
        if not 1 <= len(conns) <= MAX_RETURN:
            raise ValueError(f"RETURN carries 1..={MAX_RETURN} connections, not {len(conns)}")
        data = _ids_frame(RETURN, [cid for cid, _ in conns])
        fds = array.array("i", [s.fileno() for _, s in conns])
        try:
            self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)], socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        return True

    # ---- master -> worker ----

    def queued(self) -> List[Event]:
        """Every frame already waiting in the channel, without blocking."""
        events: List[Event] = []
        self.sock.setblocking(False)
        try:
            while True:
                events.append(self.receive())
                if not isinstance(events[-1], (list, Lost)):
                    break
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)
        return events

    def receive(self) -> Event:
        """Blocks for the next frame: a list of connections, :class:`Drain` or :class:`Eof`.

        Raises :class:`ProtocolError` for a frame that does not decode (its descriptors
        are closed first). A CONN frame whose descriptors the kernel could not deliver
        (``MSG_CTRUNC``, out of descriptors) is :class:`Lost`: that frame's connections
        only, the worker goes on.
        """
        # Not socket.recv_fds: it drops its flags argument, and MSG_CMSG_CLOEXEC with it.
        fds_buf = array.array("i")
        try:
            msg, anc, flags, _ = self.sock.recvmsg(RECV_BUFFER, socket.CMSG_SPACE(MAX_FDS * fds_buf.itemsize), _CLOEXEC)
        except ConnectionResetError:
            return Eof()
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds_buf.frombytes(data[: len(data) - len(data) % fds_buf.itemsize])
        fds = list(fds_buf)
        if not _CLOEXEC:
            for fd in fds:
                os.set_inheritable(fd, False)
        try:
            return self._decode(msg, fds, flags)
        except ProtocolError:
            for fd in fds:
                os.close(fd)
            raise

    @staticmethod
    def _decode(msg: bytes, fds: List[int], flags: int) -> Event:
        if not msg and not fds:
            return Eof()
        if len(msg) < _HEADER.size:
            raise ProtocolError(f"short frame ({len(msg)} bytes)")
        kind, version, n = _HEADER.unpack_from(msg)
        if version != VERSION:
            raise ProtocolError(f"frame version {version}, this worker speaks {VERSION}")
        if kind == DRAIN:
            if n != 0 or len(msg) != _HEADER.size or fds:
                raise ProtocolError("malformed DRAIN")
            return Drain()
        if kind not in (CONN, CONN_ADDR):
            raise ProtocolError(f"unknown frame type 0x{kind:02x}")
        size = _ITEM.size + (_ADDR.size if kind == CONN_ADDR else 0)
        if flags & socket.MSG_CTRUNC and n > 0 and len(msg) == _HEADER.size + n * size and len(fds) < n:
            for fd in fds:
                os.close(fd)
            return Lost([_ITEM.unpack_from(msg, _HEADER.size + i * size)[0] for i in range(n)])
        if n == 0 or len(msg) != _HEADER.size + n * size or len(fds) != n:
            raise ProtocolError(f"frame 0x{kind:02x} with n={n}, {len(msg)} bytes and {len(fds)} descriptors")
        conns = []
        for i in range(n):
            off = _HEADER.size + i * size
            cid, listener, skind, cflags = _ITEM.unpack_from(msg, off)
            client = server = None
            if kind == CONN_ADDR:
                family, sport, dport, src, dst = _ADDR.unpack_from(msg, off + _ITEM.size)
                client, server = _addr(family, src, sport), _addr(family, dst, dport)
            conns.append(Connection(cid, listener, skind, cflags, socket.socket(fileno=fds[i]), client, server))
        return conns
