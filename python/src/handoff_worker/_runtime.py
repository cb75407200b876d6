"""What the WSGI and ASGI servers share: the command line, loading the app, logging,
the hang watch that gates HEARTBEAT, and the rule for handing connections back.

The hang rule (HEARTBEAT): a thread sends HEARTBEAT twice per ``HANDOFF_HEARTBEAT_MS``,
but only while no request is *hung*. A request is hung when the app has held it for
``--timeout`` seconds (default 30, gunicorn's default) without making progress: progress
is the app reading the request body or writing a piece of the response, and time the
app spends waiting for the client (reading a body that has not arrived) is never
counted. For the ASGI server the event loop itself counts too: a loop that has not run
for ``--timeout`` seconds (a blocking call in async code) is hung. Once a request is
hung the worker falls silent, and the master, which asks for HEARTBEAT from every worker
holding connections, kills and replaces it after its ``--worker-timeout``. A streaming
response that sends a chunk now and then is never hung.
"""

from __future__ import annotations

import argparse
import importlib
import os
import queue
import socket
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

from . import protocol

WORKER_ID = os.environ.get("HANDOFF_WORKER_ID", "?")

# RETURN in `auto` mode: a request whose app call took at least this long makes the
# worker "slow" for SLOW_FOR seconds, during which it hands idle connections back.
SLOW_REQUEST = 0.002
SLOW_FOR = 1.0


def log(msg: str) -> None:
    """One line on stderr (the master forwards it), naming this worker."""
    sys.stderr.write(f"handoff-worker {WORKER_ID} (pid {os.getpid()}): {msg}\n")
    sys.stderr.flush()


def parse_args(prog: str, description: str, threads: bool, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("app", help="the application: MODULE:NAME (NAME may be dotted), e.g. myproject.wsgi:application")
    p.add_argument("--app-dir", default=".", help="directory to import the app from (default: the current one)")
    if threads:
        p.add_argument("--threads", type=int, default=8, help="threads running the app (default 8)")
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds a request may run without progress before the worker stops sending "
        "HEARTBEAT, so that the master replaces it (default 30)",
    )
    p.add_argument(
        "--keep-alive", type=float, default=5.0, help="seconds an idle keep-alive connection is kept (default 5)"
    )
    p.add_argument(
        "--worker-header", action="store_true", help="add X-Handoff-Worker: <worker id> to every response"
    )
    if threads:
        p.add_argument(
            "--stream-chunked",
            action="store_true",
            help="pass chunked request bodies to the app as they come, without CONTENT_LENGTH "
            "(default: read them whole first and set CONTENT_LENGTH, which every WSGI app understands)",
        )
    args = p.parse_args(argv)
    if threads and args.threads < 1:
        p.error("--threads must be at least 1")
    if args.timeout <= 0 or args.keep_alive <= 0:
        p.error("--timeout and --keep-alive must be positive")
    return args


def load_app(spec: str, app_dir: str) -> Any:
    """Imports ``MODULE:NAME``; exits with a message saying what to fix if it cannot."""
    module, sep, name = spec.partition(":")
    if not module or not sep or not name:
        raise SystemExit(f"the app must be given as MODULE:NAME (e.g. app:app), not {spec!r}")
    sys.path.insert(0, os.path.abspath(app_dir))
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as e:
        traceback.print_exc()
        raise SystemExit(f"cannot import {module!r} from {os.path.abspath(app_dir)} ({e}): check --app-dir")
    for part in name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SystemExit(f"module {module!r} has no attribute {name!r}")
    return obj


def return_mode() -> str:
    """``HANDOFF_RETURN``: ``auto`` (absent), ``always`` or ``off``."""
    value = os.environ.get("HANDOFF_RETURN", "auto").strip().lower() or "auto"
    if value not in ("auto", "always", "off"):
        raise SystemExit(f"HANDOFF_RETURN must be auto, always or off, not {value!r}")
    return value


class ReturnPolicy:
    """When to hand an idle keep-alive connection back to the master (RETURN)."""

    def __init__(self, mode: str):
        self.mode = mode
        self.enabled = mode != "off"
        self._slow_until = 0.0

    def request_took(self, seconds: float) -> None:
        if seconds >= SLOW_REQUEST:
            self._slow_until = time.monotonic() + SLOW_FOR

    def now(self) -> bool:
        """Whether a connection that just finished a response should go back."""
        if self.mode == "always":
            return True
        return self.mode == "auto" and time.monotonic() < self._slow_until


class Activity:
    """One request in the app's hands, for the hang watch."""

    __slots__ = ("start", "since", "waiting", "waited", "what", "thread", "limit")

    def __init__(self, what: str, thread: Optional[int], limit: Optional[float] = None):
        self.limit = limit  # seconds without progress that make it hung (None: --timeout)
        self.start = self.since = time.monotonic()
        self.waiting = False  # waiting for the client: never hung
        self.waited = 0.0  # seconds spent waiting for the client
        self.what = what
        self.thread = thread

    def progress(self) -> None:
        self.since = time.monotonic()

    def wait_client(self, waiting: bool) -> None:
        now = time.monotonic()
        if self.waiting and not waiting:
            self.waited += now - self.since
        self.waiting = waiting
        self.since = now

    def busy(self) -> float:
        """Seconds the request has held the worker, not counting waits for the client:
        what makes a worker slow for RETURN's ``auto``."""
        return time.monotonic() - self.start - self.waited


class HangWatch:
    """Sends HEARTBEAT from its own thread while nothing is hung (see the module docs)."""

    def __init__(self, channel: protocol.Channel, timeout: float):
        self.channel = channel
        self.timeout = timeout
        self.lock = threading.Lock()
        self.active: Dict[int, Activity] = {}
        self.loop_tick: Optional[float] = None  # the ASGI event loop's last sign of life
        self.loop_thread: Optional[int] = None
        self._reported = False

    def start(self, what: str, thread: Optional[int] = None, limit: Optional[float] = None) -> Activity:
        a = Activity(what, thread, limit)
        with self.lock:
            self.active[id(a)] = a
        return a

    def end(self, a: Activity) -> None:
        with self.lock:
            self.active.pop(id(a), None)

    def hung(self) -> Optional[str]:
        now = time.monotonic()
        if self.loop_tick is not None and now - self.loop_tick > self.timeout:
            return (
                f"the event loop has not run for {now - self.loop_tick:.1f} s (a blocking call in async code?)"
                + _stack(self.loop_thread)
            )
        with self.lock:
            for a in self.active.values():
                if not a.waiting and now - a.since > (a.limit or self.timeout):
                    return f"{a.what} has made no progress for {now - a.since:.1f} s" + _stack(a.thread)
        return None

    def run_thread(self, every: float) -> None:
        threading.Thread(target=self._beat, args=(every,), name="handoff-heartbeat", daemon=True).start()

    def _beat(self, every: float) -> None:
        while True:
            time.sleep(every)
            why = self.hung()
            if why is not None:
                if not self._reported:
                    self._reported = True
                    log(f"hung: {why}\nnot sending HEARTBEAT: the master will replace this worker")
                continue
            if self._reported:
                self._reported = False
                log("no longer hung: sending HEARTBEAT again")
            try:
                self.channel.heartbeat()
            except OSError:  # the master is gone
                os._exit(0)


def _stack(thread: Optional[int]) -> str:
    frame = sys._current_frames().get(thread) if thread is not None else None
    return "; where it is:\n" + "".join(traceback.format_stack(frame)).rstrip() if frame is not None else ""


# The master takes a worker that has not said READY this long after its start for a
# minimal one and sends it connections it does not track (MINIMAL_READY_AFTER, 300 ms).
READY_IN_TIME = 0.25
# ... and such connections may still be arriving this long after READY.
UNTRACKED_GRACE = 1.0
# Loading the app is hung after max(--timeout, this): imports are slow on a busy machine.
LOAD_TIMEOUT = 60.0


def process_age() -> Optional[float]:
    """Seconds since this process started (Linux), or None if unknown."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        start = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class Start:
    """A worker's first moments, and its channel reader: READY before the app is
    imported, HEARTBEAT and ACK from then on, and which connections must never be
    handed back.

    READY goes out first, and a thread ACKs every connection as it arrives, also while
    the app is still loading (the connections wait for it in a queue): the master tracks
    (and would hand on, were the worker to die) only the connections it sends after
    reading READY; it takes a worker silent for 300 ms for a minimal one and sends it
    untracked connections; and it kills a worker that leaves a connection un-ACKed for
    its ``--worker-timeout``, which a slow import would otherwise do. Loading the app
    (its import, the ASGI lifespan startup) counts as a request for the hang watch: one
    that takes ``--timeout`` seconds, and at least a minute, stops HEARTBEAT.

    A RETURN of a connection the master does not track is a protocol error (the worker
    is killed), so a connection that may have been sent before the master read READY is
    never handed back: those already queued when READY was sent and, if READY itself
    came late, those received in the second after it. Connections with the CONTINUED
    flag are tracked for sure.
    """

    def __init__(self, timeout: float):
        self.channel = protocol.Channel.from_env()
        self.returns = ReturnPolicy(return_mode())
        caps = protocol.CAP_ACK | protocol.CAP_DONE | protocol.CAP_HEARTBEAT | protocol.CAP_BATCH | protocol.CAP_ADDRS
        if self.returns.enabled:
            caps |= protocol.CAP_RETURN
        age = process_age()
        self.channel.ready(caps)
        late = age is None or age >= READY_IN_TIME
        self.suspect_until = time.monotonic() + UNTRACKED_GRACE if late else 0.0
        self.events: "queue.Queue[protocol.Event]" = queue.Queue()
        self.lock = threading.Lock()
        self.abandoned = False
        self.lost_logged = 0.0
        self.watch = HangWatch(self.channel, timeout)
        self.loading = self.watch.start("loading the app", threading.get_ident(), max(timeout, LOAD_TIMEOUT))
        self.watch.run_thread(heartbeat_every())
        try:
            backlog = self.channel.queued()
        except protocol.ProtocolError as e:
            log(f"protocol error, exiting: {e}")
            os._exit(1)
        for ev in backlog:
            self._take(ev, untracked=True)
        if not backlog or isinstance(backlog[-1], (list, protocol.Lost)):
            threading.Thread(target=self._read, name="handoff-channel", daemon=True).start()

    def _take(self, ev: protocol.Event, untracked: bool) -> None:
        if isinstance(ev, protocol.Eof):
            os._exit(0)  # the master is gone: nobody to finish for
        if isinstance(ev, protocol.Lost):
            # Out of descriptors: only this frame's connections are lost; DONE without
            # ACK tells the master so, and the others are served on.
            now = time.monotonic()
            if now - self.lost_logged >= 1.0:
                self.lost_logged = now
                log(
                    f"out of descriptors: {len(ev.ids)} connection(s) lost in transit (MSG_CTRUNC); "
                    "raise the worker's limit (ulimit -n) or lower --max-conns-per-worker"
                )
            call_quietly(lambda: self.channel.done(ev.ids))
            return
        with self.lock:
            if self.abandoned:
                # Not ACKed: the master hands them to another worker when this one exits.
                for c in ev if isinstance(ev, list) else ():
                    c.sock.close()
                return
            if isinstance(ev, list):
                suspect = untracked or time.monotonic() < self.suspect_until
                for c in ev:
                    c.untracked = suspect and not c.continued
                try:
                    self.channel.ack([c.id for c in ev])
                except OSError:
                    os._exit(0)
            self.events.put(ev)

    def abandon(self) -> None:
        """The app could not be loaded or started: before the worker exits, hand back
        the connections it took meanwhile (nothing was read from them: RETURN allows
        it), so that their clients are served by another worker; close the others."""
        with self.lock:
            self.abandoned = True
            conns: List[protocol.Connection] = []
            while not self.events.empty():
                ev = self.events.get_nowait()
                if isinstance(ev, list):
                    conns.extend(ev)
        back = [c for c in conns if self.returns.enabled and not c.untracked]
        returned = 0
        try:
            for i in range(0, len(back), protocol.MAX_RETURN):
                batch = back[i : i + protocol.MAX_RETURN]
                for c in batch:
                    c.sock.setblocking(True)
                if not self.channel.give_back([(c.id, c.sock) for c in batch]):
                    break
                for c in batch:
                    c.sock.close()
                returned += len(batch)
        except OSError:
            pass
        for c in conns:
            if c.sock.fileno() != -1:
                call_quietly(lambda: self.channel.done([c.id]))
                c.sock.close()
        if conns:
            log(f"handed {returned} of the {len(conns)} connections waiting for the app back to the master")

    def _read(self) -> None:
        while True:
            try:
                ev = self.channel.receive()
            except protocol.ProtocolError as e:
                log(f"protocol error, exiting: {e}")
                os._exit(1)  # what it has not ACKed goes to another worker
            self._take(ev, untracked=False)
            if not isinstance(ev, (list, protocol.Lost)):
                return

    def serving(self) -> None:
        """The app is loaded (and started): the hang watch stops timing the load."""
        self.watch.end(self.loading)

    def receive(self) -> protocol.Event:
        """The next batch of connections (ACKed already), or Drain."""
        return self.events.get()


def heartbeat_every() -> float:
    """Twice per ``HANDOFF_HEARTBEAT_MS``, so a beat is never late."""
    try:
        ms = int(os.environ.get("HANDOFF_HEARTBEAT_MS", "1000"))
    except ValueError:
        ms = 1000
    return max(ms, 10) / 2000


def no_delay(sock) -> None:
    """TCP_NODELAY on TCP sockets: a response's last small write must not wait for the
    client's delayed ACK of the one before (40 ms a request with keep-alive)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def call_quietly(f: Callable[[], Any]) -> None:
    try:
        f()
    except OSError:
        pass
