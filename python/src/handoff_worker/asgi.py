"""An ASGI 3 server that runs as a handoff worker: ``python -m handoff_worker.asgi app:app``.

asyncio and h11 (the sans-I/O HTTP/1.1 parser under uvicorn and httpcore): HTTP/1.1
with keep-alive and pipelining, streaming request and response bodies (chunked when the
app sends no Content-Length), ``Expect: 100-continue`` (sent when the app first asks
for the body), ``http.disconnect``, the lifespan protocol (startup before the first connection is read,
shutdown after DRAIN; an app that does not speak it, such as Django's, is served
without it), and WebSockets on wsproto (h11's sibling).

The event loop owns every connection. READY goes out before the app is imported; a
thread reads the channel and ACKs each connection at once, and the loop takes them once
the app has started; another thread sends HEARTBEAT while nothing is hung (see
``_runtime``). Idle keep-alive connections wait for readability only, never reading,
so they can be handed back (RETURN) untouched. Every connection ends exactly once:
DONE then close, or RETURN.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import threading
import time
import traceback
from http import HTTPStatus
from typing import Any, Dict, List, Optional, Set
from urllib.parse import unquote

import h11
import wsproto
import wsproto.connection
import wsproto.utilities
from wsproto import events as wsevents

from . import _runtime as rt
from . import protocol

READ_CHUNK = 65536
READ_TIMEOUT = 60.0  # a request that stalls this long mid-way is dropped
DISCARD_LIMIT = 1 << 20  # an unread request body up to this size is skipped to keep the connection
ASGI = {"version": "3.0", "spec_version": "2.3"}


class ClientGone(Exception):
    """The client closed the connection (or stalled) in the middle of a request."""


def _addr(a: Any) -> Optional[tuple]:
    return (str(a[0]), int(a[1])) if isinstance(a, tuple) and len(a) >= 2 else None


def _resolve(fut: asyncio.Future, value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


class Client:
    """One connection, served by one task."""

    def __init__(self, server: "Server", conn: protocol.Connection):
        self.server = server
        self.loop = server.loop
        self.conn = conn
        self.sock = conn.sock
        self.sock.setblocking(False)
        rt.no_delay(self.sock)
        self.h = h11.Connection(h11.SERVER)
        self.ended = False
        self.may_return = not conn.untracked
        self.idle = False  # waiting for the next request, nothing of it read
        self.task: Optional[asyncio.Task] = None
        self.websocket: Optional["WebSocket"] = None
        client, local = conn.client, conn.server
        try:
            client = client or self.sock.getpeername()
            local = local or self.sock.getsockname()
        except OSError:
            pass
        self.client, self.local = _addr(client), _addr(local)

    # ---- the end: exactly once ----

    def finish(self) -> None:
        if self.ended:
            return
        self.ended = True
        rt.call_quietly(lambda: self.server.channel.done([self.conn.id]))
        rt.call_quietly(lambda: self.sock.shutdown(socket.SHUT_WR))
        self.sock.close()
        self.server.connection_ended(self)

    def give_back(self) -> bool:
        if self.ended or not self.server.returns.enabled or not self.may_return:
            return False
        self.sock.setblocking(True)  # as the master passes them
        try:
            ok = self.server.channel.give_back([(self.conn.id, self.sock)])
        except OSError:
            ok = False
        if not ok:
            self.sock.setblocking(False)
            return False
        self.ended = True
        self.sock.close()
        self.server.connection_ended(self)
        return True

    # ---- I/O ----

    async def wait_readable(self, timeout: float) -> bool:
        """Waits until the socket can be read (data or end of file), reading nothing;
        False after ``timeout`` seconds. (Futures and timer handles, not tasks: this runs
        once or twice a request.)"""
        fut = self.loop.create_future()
        fd = self.sock.fileno()
        self.loop.add_reader(fd, _resolve, fut, True)
        timer = self.loop.call_later(timeout, _resolve, fut, False)
        try:
            return await fut
        finally:
            timer.cancel()
            self.loop.remove_reader(fd)

    async def next_event(self):
        while True:
            ev = self.h.next_event()
            if ev is not h11.NEED_DATA:
                return ev
            while True:
                try:
                    data = self.sock.recv(READ_CHUNK)
                    break
                except (BlockingIOError, InterruptedError):
                    if not await self.wait_readable(READ_TIMEOUT):
                        raise ClientGone("the client sent nothing for %d s mid-request" % READ_TIMEOUT)
            self.h.receive_data(data)

    async def write(self, *events) -> None:
        await self.write_bytes(b"".join(self.h.send(e) or b"" for e in events))

    async def write_bytes(self, data: bytes) -> None:
        if not data:
            return
        try:
            sent = self.sock.send(data)  # most responses fit the socket buffer at once
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent < len(data):
            await self.loop.sock_sendall(self.sock, memoryview(data)[sent:])

    # ---- serving ----

    async def serve(self) -> None:
        s = self.server
        try:
            while True:
                if not self.h.trailing_data[0]:
                    if s.draining:  # (a new connection, taken just before DRAIN)
                        if self.give_back():
                            return
                        break
                    # Nothing of the next request is here: wait without reading, so a
                    # drain can still hand the connection back untouched.
                    self.idle = True
                    try:
                        if not await self.wait_readable(s.keep_alive):
                            break
                    finally:
                        self.idle = False
                ev = await self.next_event()
                if not isinstance(ev, h11.Request):
                    break
                if is_websocket(ev):
                    await WebSocket(self, ev).run()
                    break  # the end of a WebSocket is the end of its connection
                if not await Exchange(self, ev).run():
                    break
                self.h.start_next_cycle()
                if self.h.trailing_data[0]:
                    continue  # pipelined
                if (s.draining or s.returns.now()) and self.give_back():
                    return
                if s.draining:
                    break
        except asyncio.CancelledError:
            # DRAIN while idle: hand it back if the master takes it, else close.
            if not self.give_back():
                self.finish()
            return
        except h11.RemoteProtocolError as e:
            await self.bad_request(e)
        except (ClientGone, OSError):
            pass
        except Exception:
            rt.log("internal error serving connection %d:\n%s" % (self.conn.id, traceback.format_exc().rstrip()))
        self.finish()

    async def bad_request(self, e: h11.RemoteProtocolError) -> None:
        if self.h.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = f"bad request: {e}\n".encode()
        headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), ("Connection", "close")]
        try:
            await self.write(
                h11.Response(status_code=e.error_status_hint, headers=headers), h11.Data(data=body), h11.EndOfMessage()
            )
        except (h11.LocalProtocolError, OSError):
            pass


class Exchange:
    """One request and its response: the ASGI ``receive`` and ``send`` of one app call."""

    def __init__(self, client: Client, req: h11.Request):
        self.c = client
        self.req = req
        self.body_done = False
        self.head: Optional[tuple] = None  # (status, headers) until sent with the first body
        self.started = False
        self.complete = False
        self.close = False
        self.no_body = False
        self.over = asyncio.Event()  # response complete or client gone: http.disconnect
        self.watching = False
        self.what = f"{req.method.decode('ascii', 'replace')} {req.target.decode('latin-1')[:200]}"
        self.activity = client.server.watch.start(self.what)

    def scope(self) -> Dict[str, Any]:
        req, c = self.req, self.c
        path, _, query = req.target.partition(b"?")
        return {
            "type": "http",
            "asgi": ASGI,
            "http_version": req.http_version.decode("ascii"),
            "method": req.method.decode("ascii"),
            "scheme": "http",
            "path": unquote(path.decode("latin-1")),
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": [(k, v) for k, v in req.headers],  # h11 lowercases names
            "client": c.client,
            "server": c.local,
            "state": dict(c.server.lifespan.state),
            "extensions": {"handoff": {"worker_id": rt.WORKER_ID, "connection_id": c.conn.id,
                                       "listener": c.conn.listener, "continued": c.conn.continued}},
        }

    async def run(self) -> bool:
        """Calls the app; True if the connection may serve another request."""
        s = self.c.server
        try:
            await s.app(self.scope(), self.receive, self.send)
            if not self.complete:
                if self.started:
                    rt.log(f"the app returned without finishing the response to {self.what}: closing")
                    return False
                rt.log(f"the app returned without a response to {self.what}: 500")
                await self.error_500()
                return False
        except (ClientGone, OSError):
            return False
        except Exception:
            rt.log(f"exception in the app serving {self.what}:\n{traceback.format_exc().rstrip()}")
            if not self.started:
                await self.error_500()
            return False
        finally:
            self.stop_watching()
            self.over.set()
            s.watch.end(self.activity)
            s.returns.request_took(self.activity.busy())
        if self.close:
            return False
        return await self.discard_body()

    async def discard_body(self) -> bool:
        h = self.c.h
        if h.their_state is h11.DONE:
            return h.our_state is h11.DONE
        if h.they_are_waiting_for_100_continue:
            return False
        left = DISCARD_LIMIT
        while h.their_state is h11.SEND_BODY:
            ev = await self.c.next_event()
            if isinstance(ev, h11.Data):
                left -= len(ev.data)
                if left < 0:
                    return False
            elif not isinstance(ev, h11.EndOfMessage):
                return False
        return h.our_state is h11.DONE and h.their_state is h11.DONE

    # ---- receive ----

    async def receive(self) -> Dict[str, Any]:
        if self.body_done or self.complete:
            # After the body: block until the response is over or the client leaves.
            self.watch_disconnect()
            self.activity.wait_client(True)
            try:
                await self.over.wait()
            finally:
                self.activity.wait_client(False)
            return {"type": "http.disconnect"}
        h = self.c.h
        if h.they_are_waiting_for_100_continue:
            await self.c.write(h11.InformationalResponse(status_code=100, headers=[]))
        self.activity.wait_client(True)
        try:
            ev = await self.c.next_event()
            if isinstance(ev, h11.Data):
                # Take what is buffered already, and say when that was the end (a short
                # body then arrives as one message).
                body = bytearray(ev.data)
                while True:
                    nxt = h.next_event()
                    if isinstance(nxt, h11.Data):
                        body += nxt.data
                        continue
                    self.body_done = isinstance(nxt, h11.EndOfMessage)
                    return {"type": "http.request", "body": bytes(body), "more_body": not self.body_done}
            if isinstance(ev, h11.EndOfMessage):
                self.body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
        except (ClientGone, OSError):
            pass
        finally:
            self.activity.wait_client(False)
        self.over.set()
        self.close = True
        return {"type": "http.disconnect"}

    def watch_disconnect(self) -> None:
        """Notices the client closing while the app streams, by peeking (reading nothing)."""
        if self.watching or self.over.is_set():
            return
        sock, loop = self.c.sock, self.c.loop

        def peek() -> None:
            try:
                data = sock.recv(1, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            self.stop_watching()
            if not data:
                self.close = True
                self.over.set()
            # Data: the client's next request (pipelined); it is still connected.

        self.watching = True
        loop.add_reader(sock.fileno(), peek)

    def stop_watching(self) -> None:
        if self.watching:
            self.watching = False
            self.c.loop.remove_reader(self.c.sock.fileno())

    # ---- send ----

    async def send(self, message: Dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.started = True
            self.head = (int(message["status"]), list(message.get("headers", [])))
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r} for an HTTP request")
        if not self.started:
            raise RuntimeError("http.response.body before http.response.start")
        if self.complete:
            raise RuntimeError("http.response.body after the response was complete")
        if self.over.is_set():
            raise ClientGone("the client is gone")
        body = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        events: List[Any] = []
        if self.head is not None:
            events.append(self.response_head(None if more else len(body)))
        if body and not self.no_body:
            events.append(h11.Data(data=body))
        if not more:
            events.append(h11.EndOfMessage())
            self.complete = True
        self.activity.wait_client(True)  # a client slow to read: its time, not a hang
        try:
            await self.c.write(*events)
        except h11.LocalProtocolError as e:
            self.close = True
            raise RuntimeError(f"the app's response is not valid HTTP/1.1: {e}") from None
        finally:
            self.activity.wait_client(False)
        if self.complete:
            self.stop_watching()
            self.over.set()

    def response_head(self, length: Optional[int]) -> h11.Response:
        status, raw = self.head
        self.head = None
        c, s = self.c, self.c.server
        headers = [(bytes(k), bytes(v)) for k, v in raw]
        names = {k.lower() for k, _ in headers}
        if length is not None and b"content-length" not in names and b"transfer-encoding" not in names:
            headers.append((b"content-length", str(length).encode()))
        if s.worker_header:
            headers.append((b"x-handoff-worker", rt.WORKER_ID.encode()))
        if (s.draining and not s.returns.enabled) or c.h.they_are_waiting_for_100_continue:
            headers.append((b"connection", b"close"))
        for k, v in headers:
            if k.lower() == b"connection" and b"close" in v.lower():
                self.close = True
        self.no_body = self.req.method == b"HEAD" or status in (204, 304) or status < 200
        try:
            reason = HTTPStatus(status).phrase.encode()
        except ValueError:
            reason = b""
        return h11.Response(status_code=status, headers=headers, reason=reason)

    async def error_500(self) -> None:
        self.started = True
        self.head = (500, [(b"content-type", b"text/plain"), (b"connection", b"close")])
        body = b"Internal Server Error\n"
        try:
            head = self.response_head(len(body))
            await self.c.write(head, *([] if self.no_body else [h11.Data(data=body)]), h11.EndOfMessage())
        except (h11.LocalProtocolError, OSError):
            pass
        self.complete = True


def is_websocket(req: h11.Request) -> bool:
    upgrade = connection = b""
    for k, v in req.headers:
        if k == b"upgrade":
            upgrade = v.lower()
        elif k == b"connection":
            connection += b"," + v.lower()
    return req.method == b"GET" and upgrade == b"websocket" and b"upgrade" in connection


class WebSocket:
    """A WebSocket (ASGI ``websocket`` scope) on wsproto, the sans-I/O WebSocket library
    by h11's authors. The connection is never handed back (RETURN) and never counts as
    hung: its client may rightly stay silent for hours. DRAIN closes it with 1012
    (service restart), as uvicorn does, so clients reconnect to another worker."""

    def __init__(self, client: Client, req: h11.Request):
        self.c = client
        self.req = req
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        self.ws.initiate_upgrade_connection(req.headers, req.target)
        self.early = bytes(client.h.trailing_data[0])  # frames sent right after the handshake
        self.queue: "asyncio.Queue[Dict[str, Any]]" = asyncio.Queue()
        self.accepted = False
        self.closed = False
        self.reader: Optional[asyncio.Task] = None
        self.text: List[str] = []
        self.data: List[bytes] = []

    def scope(self) -> Dict[str, Any]:
        req, c = self.req, self.c
        path, _, query = req.target.partition(b"?")
        protocols = [p.strip() for k, v in req.headers if k == b"sec-websocket-protocol" for p in v.decode("latin-1").split(",")]
        return {
            "type": "websocket",
            "asgi": ASGI,
            "http_version": req.http_version.decode("ascii"),
            "scheme": "ws",
            "path": unquote(path.decode("latin-1")),
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": [(k, v) for k, v in req.headers],
            "client": c.client,
            "server": c.local,
            "subprotocols": [p for p in protocols if p],
            "state": dict(c.server.lifespan.state),
            "extensions": {"handoff": {"worker_id": rt.WORKER_ID, "connection_id": c.conn.id,
                                       "listener": c.conn.listener, "continued": c.conn.continued}},
        }

    async def run(self) -> None:
        self.c.websocket = self
        for ev in self.ws.events():  # the handshake request
            if isinstance(ev, wsevents.Request):
                self.queue.put_nowait({"type": "websocket.connect"})
        what = f"WebSocket {self.req.target.decode('latin-1')[:200]}"
        try:
            await self.c.server.app(self.scope(), self.queue.get, self.send)
        except (ClientGone, OSError):
            pass
        except Exception:
            rt.log(f"exception in the app serving {what}:\n{traceback.format_exc().rstrip()}")
            if not self.accepted:
                await self.reject(500)
        finally:
            if self.reader is not None:
                self.reader.cancel()
            self.c.websocket = None
        try:
            if not self.accepted and not self.closed:
                await self.reject(403)  # the app ended without accepting
            elif not self.closed:
                await self.close(1000, None)
        except OSError:
            pass

    async def reject(self, status: int) -> None:
        self.closed = True
        await self.c.write_bytes(self.ws.send(wsevents.RejectConnection(status_code=status)))

    async def close(self, code: int, reason: Optional[str]) -> None:
        self.closed = True
        if self.ws.state is wsproto.connection.ConnectionState.OPEN:
            await self.c.write_bytes(self.ws.send(wsevents.CloseConnection(code=code, reason=reason)))

    def going_away(self) -> None:
        if self.accepted and not self.closed:
            self.c.loop.create_task(self.close_quietly(1012))
            self.queue.put_nowait({"type": "websocket.disconnect", "code": 1012})

    async def close_quietly(self, code: int) -> None:
        try:
            await self.close(code, None)
        except OSError:
            pass

    async def send(self, message: Dict[str, Any]) -> None:
        kind = message["type"]
        if self.closed:
            raise ClientGone(f"{kind} after the WebSocket was closed")
        if kind == "websocket.accept":
            if self.accepted:
                raise RuntimeError("websocket.accept sent twice")
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
            out = self.ws.send(wsevents.AcceptConnection(subprotocol=message.get("subprotocol"), extra_headers=headers))
            self.accepted = True
            await self.c.write_bytes(out)
            self.reader = self.c.loop.create_task(self.read())
        elif kind == "websocket.send":
            if not self.accepted:
                raise RuntimeError("websocket.send before websocket.accept")
            if message.get("bytes") is not None:
                event: Any = wsevents.BytesMessage(data=bytes(message["bytes"]))
            else:
                event = wsevents.TextMessage(data=message.get("text") or "")
            await self.c.write_bytes(self.ws.send(event))
        elif kind == "websocket.close":
            if self.accepted:
                await self.close(int(message.get("code", 1000)), message.get("reason") or None)
            else:
                await self.reject(403)
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} for a WebSocket")

    async def read(self) -> None:
        """Client frames into ``websocket.receive`` messages; pings answered; a close
        (or end of file) into ``websocket.disconnect``."""
        data, code = self.early, 1006
        try:
            while True:
                if data:
                    self.ws.receive_data(data)
                    for ev in self.ws.events():
                        if isinstance(ev, wsevents.Ping):
                            await self.c.write_bytes(self.ws.send(ev.response()))
                        elif isinstance(ev, wsevents.TextMessage):
                            self.text.append(ev.data)
                            if ev.message_finished:
                                self.queue.put_nowait({"type": "websocket.receive", "text": "".join(self.text)})
                                self.text = []
                        elif isinstance(ev, wsevents.BytesMessage):
                            self.data.append(bytes(ev.data))
                            if ev.message_finished:
                                self.queue.put_nowait({"type": "websocket.receive", "bytes": b"".join(self.data)})
                                self.data = []
                        elif isinstance(ev, wsevents.CloseConnection):
                            code = ev.code
                            if self.ws.state is wsproto.connection.ConnectionState.REMOTE_CLOSING:
                                await self.c.write_bytes(self.ws.send(ev.response()))
                            self.closed = True
                            return
                try:
                    data = self.c.sock.recv(READ_CHUNK)
                except (BlockingIOError, InterruptedError):
                    await self.c.wait_readable(1e9)
                    data = b""
                    continue
                if not data:
                    self.ws.receive_data(None)
                    self.closed = True
                    return
        except (OSError, wsproto.utilities.LocalProtocolError, wsproto.utilities.RemoteProtocolError):
            self.closed = True
        finally:
            self.queue.put_nowait({"type": "websocket.disconnect", "code": code})


class Lifespan:
    """The ASGI lifespan protocol: startup before the first connection is read, shutdown
    after the drain."""

    def __init__(self, app: Any):
        self.app = app
        self.state: Dict[str, Any] = {}
        self.supported = True
        self.queue: "asyncio.Queue[Dict[str, Any]]" = asyncio.Queue()
        self.answer: Optional[asyncio.Future] = None
        self.task: Optional[asyncio.Task] = None
        self.started: Optional[bool] = None  # what the app answered to startup

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": ASGI, "state": self.state}
        try:
            await self.app(scope, self.queue.get, self._send)
        except BaseException as e:
            if self.answer is not None and not self.answer.done():
                if isinstance(e, Exception) and self.started is None:
                    # Raised before answering startup: the app does not speak lifespan.
                    self.supported = False
                    rt.log(f"the app does not support the lifespan protocol ({type(e).__name__}: {e}); going on without")
                    self.answer.set_result(None)
                else:
                    self.answer.set_exception(e)
            elif isinstance(e, Exception):
                rt.log(f"exception in the app's lifespan:\n{traceback.format_exc().rstrip()}")
        finally:
            if self.answer is not None and not self.answer.done():
                self.answer.set_result(None)

    async def _send(self, message: Dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self.started = True
        elif kind == "lifespan.startup.failed":
            self.started = False
            rt.log(f"the app's startup failed: {message.get('message', '')}")
        elif kind == "lifespan.shutdown.failed":
            rt.log(f"the app's shutdown failed: {message.get('message', '')}")
        elif kind != "lifespan.shutdown.complete":
            raise RuntimeError(f"unexpected lifespan message {kind!r}")
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(None)

    async def startup(self) -> bool:
        """False if the app says its startup failed."""
        self.answer = asyncio.get_running_loop().create_future()
        self.task = asyncio.get_running_loop().create_task(self._run())
        await self.queue.put({"type": "lifespan.startup"})
        await self.answer
        return self.started is not False

    async def shutdown(self) -> None:
        if not self.supported or self.task is None or self.task.done():
            return
        self.answer = asyncio.get_running_loop().create_future()
        await self.queue.put({"type": "lifespan.shutdown"})
        await self.answer


class Server:
    def __init__(self, app: Any, args, start: rt.Start, loop: asyncio.AbstractEventLoop):
        self.app = app
        self.start = start
        self.channel = start.channel
        self.loop = loop
        self.keep_alive = args.keep_alive
        self.worker_header = args.worker_header
        self.returns = start.returns
        self.watch = start.watch
        self.lifespan = Lifespan(app)
        self.clients: Set[Client] = set()
        self.draining = False
        self.drained = loop.create_future()

    def connection_ended(self, c: Client) -> None:
        self.clients.discard(c)
        if self.draining and not self.clients and not self.drained.done():
            self.drained.set_result(None)

    def accept(self, conns: List[protocol.Connection]) -> None:
        for conn in conns:
            try:
                c = Client(self, conn)
            except Exception:
                rt.log(f"cannot serve connection {conn.id}: {traceback.format_exc().rstrip()}")
                rt.call_quietly(lambda: self.channel.done([conn.id]))
                conn.sock.close()
                continue
            self.clients.add(c)
            c.task = self.loop.create_task(c.serve())

    def drain(self) -> None:
        self.draining = True
        for c in list(self.clients):
            if c.idle and c.task is not None:
                c.task.cancel()
            elif c.websocket is not None:
                c.websocket.going_away()
        if not self.clients and not self.drained.done():
            self.drained.set_result(None)

    def read_channel(self) -> None:
        """A thread: each batch of connections (ACKed already) and DRAIN to the loop."""
        while True:
            ev = self.start.receive()
            if isinstance(ev, protocol.Drain):
                self.loop.call_soon_threadsafe(self.drain)
                return
            self.loop.call_soon_threadsafe(self.accept, ev)

    def tick(self) -> None:
        self.watch.loop_tick = time.monotonic()
        self.loop.call_later(0.2, self.tick)

    async def run(self) -> int:
        if not await self.lifespan.startup():
            self.start.abandon()
            return 1
        self.watch.loop_thread = threading.get_ident()
        self.tick()
        self.start.serving()
        threading.Thread(target=self.read_channel, name="handoff-channel", daemon=True).start()
        await self.drained
        await self.lifespan.shutdown()
        return 0


async def serve(app: Any, args, start: rt.Start) -> int:
    return await Server(app, args, start, asyncio.get_running_loop()).run()


def main(argv=None) -> None:
    args = rt.parse_args("python -m handoff_worker.asgi", "Serve an ASGI app as a handoff worker.", threads=False, argv=argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the master turns Ctrl-C into DRAIN
    start = rt.Start(args.timeout)  # READY, before the (slow) import of the app
    try:
        app = rt.load_app(args.app, args.app_dir)
    except BaseException:
        start.abandon()
        raise
    sys.exit(asyncio.run(serve(app, args, start)))


if __name__ == "__main__":
    main()
