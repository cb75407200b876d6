"""A WSGI server that runs as a handoff worker: ``python -m handoff_worker.wsgi app:app``.

HTTP/1.1 on h11 (the sans-I/O parser under uvicorn and httpcore): keep-alive, pipelining,
chunked request bodies (read whole and given a CONTENT_LENGTH, or streamed with
``wsgi.input_terminated`` under ``--stream-chunked``), ``Expect: 100-continue`` (the
``100 Continue`` goes out when the app first reads the body), streamed responses (chunked
when the app gives no Content-Length), HEAD, and a 500 with the traceback on stderr when
the app raises.

Threads: READY goes out before the app is imported, and from then on a thread reads the
channel and ACKs each connection at once (``_runtime.Start``); the main thread takes
them from it and hands each to the pool, or to the idle set until it has data. A pool of
``--threads`` threads runs requests; an idle keep-alive connection holds no thread: it
waits in one selector thread (:class:`IdleSet`), which hands it to the pool when the
next request arrives and closes it after ``--keep-alive`` seconds. Every connection ends
exactly once: DONE then close, or RETURN (handed back to the master between requests).

DRAIN: idle connections are handed back (RETURN) or closed, requests in flight finish
(their connections then go back or close too), and the worker exits 0.
"""

from __future__ import annotations

import selectors
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional
from urllib.parse import unquote_to_bytes

import h11

from . import _runtime as rt
from . import protocol

READ_CHUNK = 65536
# A request (headers or a piece of body) that stalls this long mid-way is dropped.
READ_TIMEOUT = 60.0
# After a response, a request body the app did not read is read and dropped, up to this
# much, to keep the connection; a bigger rest closes it instead.
DISCARD_LIMIT = 1 << 20


class ClientGone(Exception):
    """The client closed the connection in the middle of a request."""


class Input:
    """``wsgi.input``: the request body, read on demand (chunked or not)."""

    def __init__(self, client: "Client", activity: rt.Activity):
        self.client = client
        self.activity = activity
        self.buf = bytearray()
        self.eof = False

    def _fill(self) -> bool:
        if self.eof:
            return False
        self.client.continue_if_expected()
        self.activity.wait_client(True)
        try:
            ev = self.client.next_event()
        finally:
            self.activity.wait_client(False)
        if isinstance(ev, h11.Data):
            self.buf += ev.data
            return True
        if isinstance(ev, h11.EndOfMessage):
            self.eof = True
            return False
        raise ClientGone(f"the client closed the connection in the middle of the request body ({ev!r})")

    def _take(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read(self, size: Optional[int] = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            return self._take(len(self.buf))
        while len(self.buf) < size and self._fill():
            pass
        return self._take(min(size, len(self.buf)))

    def readline(self, size: Optional[int] = -1) -> bytes:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                n = i + 1
                break
            if size is not None and 0 <= size <= len(self.buf):
                n = size
                break
            if not self._fill():
                n = len(self.buf)
                break
        if size is not None and size >= 0:
            n = min(n, size)
        return self._take(n)

    def readlines(self, hint: int = -1) -> List[bytes]:
        lines, total = [], 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                return lines

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class Client:
    """One connection: HTTP/1.1 with h11 on a blocking socket (with a timeout)."""

    def __init__(self, worker: "Worker", conn: protocol.Connection):
        self.worker = worker
        self.conn = conn
        self.sock = conn.sock
        self.h = h11.Connection(h11.SERVER)
        self.ended = False
        self.may_return = not conn.untracked
        self.sock.settimeout(READ_TIMEOUT)
        rt.no_delay(self.sock)
        self.remote, self.local = self._addresses()

    def _addresses(self):
        def addr(a: Any):
            return (str(a[0]), str(a[1])) if isinstance(a, tuple) else ("", "")

        remote = self.conn.client
        local = self.conn.server
        try:
            if remote is None:
                remote = self.sock.getpeername()
            if local is None:
                local = self.sock.getsockname()
        except OSError:
            pass
        return addr(remote), addr(local)

    # ---- the end of a connection: exactly once, DONE then close, or RETURN ----

    def finish(self) -> None:
        if self.ended:
            return
        self.ended = True
        rt.call_quietly(lambda: self.worker.channel.done([self.conn.id]))
        rt.call_quietly(lambda: self.sock.shutdown(socket.SHUT_WR))
        self.sock.close()
        self.worker.connection_ended()

    def give_back(self) -> bool:
        """RETURN; False if the master could not take it now (keep serving it)."""
        if self.ended or not self.worker.returns.enabled or not self.may_return:
            return False
        self.sock.setblocking(True)  # the master passes (and takes back) blocking sockets
        try:
            ok = self.worker.channel.give_back([(self.conn.id, self.sock)])
        except OSError:
            ok = False
        if not ok:
            self.sock.settimeout(READ_TIMEOUT)
            return False
        self.ended = True
        self.sock.close()
        self.worker.connection_ended()
        return True

    # ---- reading and writing ----

    def next_event(self):
        while True:
            ev = self.h.next_event()
            if ev is not h11.NEED_DATA:
                return ev
            try:
                data = self.sock.recv(READ_CHUNK)
            except socket.timeout:
                raise ClientGone("the client sent nothing for %d s mid-request" % READ_TIMEOUT)
            self.h.receive_data(data)

    def send(self, event) -> None:
        data = self.h.send(event)
        if data:
            self.sock.sendall(data)

    def continue_if_expected(self) -> None:
        if self.h.they_are_waiting_for_100_continue:
            self.send(h11.InformationalResponse(status_code=100, headers=[]))

    # ---- serving ----

    def serve(self) -> None:
        """Runs in a pool thread: requests until the connection is idle, ends or goes back."""
        try:
            while True:
                ev = self.next_event()
                if not isinstance(ev, h11.Request):
                    self.finish()  # ConnectionClosed (or PAUSED after a close)
                    return
                if not self.handle(ev):
                    self.finish()
                    return
                self.h.start_next_cycle()
                if self.h.trailing_data[0]:
                    continue  # the next request is here already (pipelined)
                w = self.worker
                if w.draining or w.returns.now():
                    if self.give_back():
                        return
                    if w.draining:
                        self.finish()
                        return
                w.idle.park(self)
                return
        except h11.RemoteProtocolError as e:
            self.bad_request(e)
        except (ClientGone, OSError):
            pass
        except Exception:  # a bug here must cost one connection, never the worker
            rt.log("internal error serving connection %d:\n%s" % (self.conn.id, traceback.format_exc()))
        self.finish()

    def bad_request(self, e: h11.RemoteProtocolError) -> None:
        if self.h.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = f"bad request: {e}\n".encode()
        try:
            self.send(
                h11.Response(
                    status_code=e.error_status_hint,
                    headers=[("Content-Type", "text/plain"), ("Content-Length", str(len(body))), ("Connection", "close")],
                )
            )
            self.send(h11.Data(data=body))
            self.send(h11.EndOfMessage())
        except (h11.LocalProtocolError, OSError):
            pass

    def environ(self, req: h11.Request, body: Input) -> Dict[str, Any]:
        path, _, query = req.target.partition(b"?")
        env: Dict[str, Any] = {
            "REQUEST_METHOD": req.method.decode("ascii"),
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query.decode("latin-1"),
            "RAW_URI": req.target.decode("latin-1"),
            "REQUEST_URI": req.target.decode("latin-1"),
            "SERVER_NAME": self.local[0] or "localhost",
            "SERVER_PORT": self.local[1] or "0",
            "SERVER_PROTOCOL": "HTTP/" + req.http_version.decode("ascii"),
            "REMOTE_ADDR": self.remote[0],
            "REMOTE_PORT": self.remote[1],
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": body,
            # The body ends where the request ends (chunked or not): apps may read to EOF.
            "wsgi.input_terminated": True,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "handoff.worker_id": rt.WORKER_ID,
            "handoff.connection_id": self.conn.id,
            "handoff.listener": self.conn.listener,
            "handoff.continued": self.conn.continued,
        }
        for name, value in req.headers:
            key = name.decode("latin-1").upper().replace("-", "_")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                env[key] = value.decode("latin-1")
                continue
            key = "HTTP_" + key
            v = value.decode("latin-1")
            env[key] = env[key] + "," + v if key in env else v
        return env

    def handle(self, req: h11.Request) -> bool:
        """One request; True if the connection may serve another."""
        w = self.worker
        what = f"{req.method.decode('ascii', 'replace')} {req.target.decode('latin-1')[:200]}"
        activity = w.watch.start(what, threading.get_ident())
        body = Input(self, activity)
        resp = Response(self, req, activity)
        result = None
        try:
            environ = self.environ(req, body)
            if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower() and not w.stream_chunked:
                self.spool_body(body, environ)
            result = w.app(environ, resp.start_response)
            if isinstance(result, (list, tuple)) and len(result) <= 1:
                resp.length_hint = sum(len(x) for x in result)
            for chunk in result:
                resp.write(chunk)
            resp.end()
        except (ClientGone, OSError):
            return False
        except Exception:
            rt.log(f"exception in the app serving {what}:\n{traceback.format_exc().rstrip()}")
            if not resp.sent:
                resp.error_500()
            return False
        finally:
            if result is not None and hasattr(result, "close"):
                try:
                    result.close()
                except Exception:
                    rt.log(f"exception closing the response of {what}:\n{traceback.format_exc().rstrip()}")
            w.watch.end(activity)
            w.returns.request_took(activity.busy())
        if resp.close:
            return False
        return self.discard_body()

    def spool_body(self, body: Input, environ: Dict[str, Any]) -> None:
        """Reads a chunked body whole before the app runs, and gives it a CONTENT_LENGTH.

        Many WSGI apps read exactly CONTENT_LENGTH bytes and take a request without it for
        an empty one (Django does), so a chunked body would silently vanish; nginx in front
        of gunicorn de-chunks for the same reason. Memory up to 1 MiB, then a temporary
        file. ``--stream-chunked`` passes the body through instead, for apps that read
        ``wsgi.input`` to its end.
        """
        spool = tempfile.SpooledTemporaryFile(max_size=1 << 20)
        while body._fill():
            spool.write(body.buf)
            body.buf.clear()
        environ["CONTENT_LENGTH"] = str(spool.tell())
        spool.seek(0)
        environ["wsgi.input"] = spool

    def discard_body(self) -> bool:
        """Reads what is left of a request body the app did not read, to keep the connection."""
        if self.h.their_state is h11.DONE:
            return self.h.our_state is h11.DONE
        if self.h.they_are_waiting_for_100_continue:
            return False  # the client has not sent it and will not: close
        left = DISCARD_LIMIT
        while self.h.their_state is h11.SEND_BODY:
            ev = self.next_event()
            if isinstance(ev, h11.Data):
                left -= len(ev.data)
                if left < 0:
                    return False
            elif not isinstance(ev, h11.EndOfMessage):
                return False
        return self.h.our_state is h11.DONE and self.h.their_state is h11.DONE


class Response:
    """start_response, write() and the response body of one request."""

    def __init__(self, client: Client, req: h11.Request, activity: rt.Activity):
        self.client = client
        self.activity = activity
        self.head_only = req.method == b"HEAD"
        self.status: Optional[str] = None
        self.headers: List[Any] = []
        self.sent = False
        self.close = False
        self.no_body = False
        self.length_hint: Optional[int] = None

    def start_response(self, status: str, headers: List[Any], exc_info=None):
        if exc_info is not None:
            try:
                if self.sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response was already called (pass exc_info to replace the response)")
        self.status, self.headers = status, list(headers)
        return self.write

    def _send_head(self) -> bytes:
        if self.status is None:
            raise AssertionError("the app returned a body before calling start_response")
        code_text, _, reason = self.status.partition(" ")
        code = int(code_text)
        headers = [(k.encode("latin-1"), str(v).encode("latin-1")) for k, v in self.headers]
        names = {k.lower() for k, _ in headers}
        c = self.client
        w = c.worker
        if self.length_hint is not None and b"content-length" not in names and b"transfer-encoding" not in names:
            headers.append((b"Content-Length", str(self.length_hint).encode()))
        if w.worker_header:
            headers.append((b"X-Handoff-Worker", rt.WORKER_ID.encode()))
        if (w.draining and not w.returns.enabled) or c.h.they_are_waiting_for_100_continue:
            # Draining with nowhere to hand the connection, or a body that the client
            # holds back for a 100 Continue it will now never get: end with this response.
            headers.append((b"Connection", b"close"))
            self.close = True
        for k, v in headers:
            if k.lower() == b"connection" and b"close" in v.lower():
                self.close = True
        self.no_body = self.head_only or code in (204, 304) or code < 200
        self.sent = True
        return c.h.send(h11.Response(status_code=code, headers=headers, reason=reason.encode("latin-1")))

    def write(self, data: bytes) -> None:
        out = b""
        if not self.sent:
            if not data:
                return  # headers go out with the first non-empty piece (PEP 3333)
            out = self._send_head()
        if data and not self.no_body:
            out += self.client.h.send(h11.Data(data=data))
        if out:
            self._sendall(out)  # the head with the first piece: one segment
            self.activity.progress()

    def _sendall(self, data: bytes) -> None:
        # A client slow to read blocks this; that is the client's time, not a hang.
        self.activity.wait_client(True)
        try:
            self.client.sock.sendall(data)
        finally:
            self.activity.wait_client(False)

    def end(self) -> None:
        out = b""
        if not self.sent:
            if self.length_hint is None:
                self.length_hint = 0
            out = self._send_head()
        out += self.client.h.send(h11.EndOfMessage()) or b""
        if out:
            self._sendall(out)

    def error_500(self) -> None:
        body = b"Internal Server Error\n"
        self.status = "500 Internal Server Error"
        self.headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), ("Connection", "close")]
        self.length_hint = None
        try:
            out = self._send_head()
            if not self.no_body:
                out += self.client.h.send(h11.Data(data=body))
            out += self.client.h.send(h11.EndOfMessage()) or b""
            self.client.sock.sendall(out)
        except (h11.LocalProtocolError, OSError):
            pass


class IdleSet:
    """Idle keep-alive connections, and new ones with nothing to read yet: one selector
    thread waits on all of them, so an idle connection holds no pool thread."""

    def __init__(self, worker: "Worker"):
        self.worker = worker
        self.sel = selectors.DefaultSelector()
        self.lock = threading.Lock()
        self.pending: List[Client] = []
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)
        self.deadline: Dict[Client, float] = {}

    def park(self, client: Client) -> None:
        with self.lock:
            self.pending.append(client)
        self.wake()

    def wake(self) -> None:
        try:
            self.wake_w.send(b"\0")
        except BlockingIOError:
            pass  # already woken

    def start(self) -> None:
        threading.Thread(target=self._run, name="handoff-idle", daemon=True).start()

    def _drop(self, c: Client) -> None:
        self.sel.unregister(c.sock)
        del self.deadline[c]

    def _run(self) -> None:
        w = self.worker
        while True:
            now = time.monotonic()
            timeout = min(self.deadline.values(), default=now + 1.0) - now
            for key, _ in self.sel.select(max(timeout, 0.0)):
                c = key.data
                if c is None:
                    try:
                        while self.wake_r.recv(4096):
                            pass
                    except BlockingIOError:
                        pass
                    with self.lock:
                        new, self.pending = self.pending, []
                    for c in new:
                        self.sel.register(c.sock, selectors.EVENT_READ, c)
                        self.deadline[c] = time.monotonic() + w.keep_alive
                elif c in self.deadline:
                    self._drop(c)
                    w.pool.submit(c.serve)
            now = time.monotonic()
            for c in [c for c, d in self.deadline.items() if d <= now or w.draining]:
                self._drop(c)
                if not (w.draining and c.give_back()):
                    c.finish()


class Worker:
    def __init__(self, app: Any, args, start: rt.Start):
        self.app = app
        self.start = start
        self.channel = start.channel
        self.keep_alive = args.keep_alive
        self.worker_header = args.worker_header
        self.stream_chunked = args.stream_chunked
        self.returns = start.returns
        self.watch = start.watch
        self.pool = ThreadPoolExecutor(args.threads, thread_name_prefix="handoff-wsgi")
        self.idle = IdleSet(self)
        self.draining = False
        self.open = 0
        self.cond = threading.Condition()

    def connection_ended(self) -> None:
        with self.cond:
            self.open -= 1
            self.cond.notify_all()

    def accept(self, conns: List[protocol.Connection]) -> None:
        with self.cond:
            self.open += len(conns)
        readable = selectors.DefaultSelector()
        clients = []
        for c in conns:
            try:
                client = Client(self, c)
            except Exception:
                rt.log(f"cannot serve connection {c.id}: {traceback.format_exc().rstrip()}")
                self.open_failed(c)
                continue
            clients.append(client)
            readable.register(client.sock, selectors.EVENT_READ, client)
        ready = {key.data for key, _ in readable.select(0)} if clients else set()
        readable.close()
        for client in clients:
            if client in ready:
                self.pool.submit(client.serve)
            else:
                self.idle.park(client)

    def open_failed(self, c: protocol.Connection) -> None:
        rt.call_quietly(lambda: self.channel.done([c.id]))
        c.sock.close()
        self.connection_ended()

    def run(self) -> int:
        self.idle.start()
        self.start.serving()
        while True:
            ev = self.start.receive()  # ACKed already; the master's end of file exits
            if isinstance(ev, protocol.Drain):
                break
            self.accept(ev)
        self.draining = True
        self.idle.wake()
        with self.cond:
            while self.open > 0:
                self.cond.wait()
        self.pool.shutdown(wait=True)
        return 0


def main(argv=None) -> None:
    args = rt.parse_args(
        "python -m handoff_worker.wsgi", "Serve a WSGI app as a handoff worker.", threads=True, argv=argv
    )
    # Ctrl-C in a terminal reaches the whole process group: the master turns it into a
    # DRAIN, which is the graceful way; a KeyboardInterrupt here would not be.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    start = rt.Start(args.timeout)  # READY, before the (slow) import of the app
    try:
        app = rt.load_app(args.app, args.app_dir)
    except BaseException:
        start.abandon()
        raise
    sys.exit(Worker(app, args, start).run())


if __name__ == "__main__":
    main()
