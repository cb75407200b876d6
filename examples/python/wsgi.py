"""Serve any WSGI app under handoff with the stdlib's wsgiref (no Flask, no gunicorn).

Run: handoff run --workers 4 -- python3 examples/python/wsgi.py app:app
(MODULE:APP is imported from the current directory or this script's directory.)
Protocol: READY with ACK|DONE, so least-conn sees each worker's load; one thread per
connection, one request per connection (wsgiref speaks HTTP/1.0-style close).
"""
import importlib, os, socket, struct, sys, threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

READY, ACK, DONE, CONN, DRAIN = 0x01, 0x02, 0x03, 0x81, 0x82
ME = os.environ.get("HANDOFF_WORKER_ID", "0")
chan = socket.socket(fileno=int(os.environ["HANDOFF_FD"]))


def send(kind, ids=()):
    chan.send(struct.pack("<BBH", kind, 1, len(ids)) + b"".join(struct.pack("<Q", i) for i in ids))


def tagged(app):
    """WSGI middleware: every response names the worker that served it."""
    def wrapper(environ, start_response):
        def start(status, headers, exc_info=None):
            return start_response(status, headers + [("X-Handoff-Worker", ME)], exc_info)
        return app(environ, start)
    return wrapper


class Quiet(WSGIRequestHandler):
    def log_message(self, *args):  # one line per request on stderr is too much
        pass


def load(spec):
    module, _, name = spec.partition(":")
    sys.path[:0] = [os.getcwd()]
    return getattr(importlib.import_module(module), name or "app")


# A server object that never binds: wsgiref only needs it for the app and base environ.
server = WSGIServer(("127.0.0.1", 0), Quiet, bind_and_activate=False)
server.socket.close()
server.server_name, server.server_port = "localhost", 0
server.setup_environ()
server.set_app(tagged(load(sys.argv[1] if len(sys.argv) > 1 else "app:app")))


def serve(cid, sock):
    try:
        server.finish_request(sock, sock.getpeername() or ("", 0))
    except Exception as e:  # a client that vanished mid-request must not kill the worker
        print(f"worker {ME}: connection {cid}: {e}", file=sys.stderr)
    finally:
        try:
            send(DONE, [cid])  # before the close, so the master's count is right first
        except OSError:  # the master is gone; nobody to tell
            pass
        server.shutdown_request(sock)


chan.send(struct.pack("<BBHII", READY, 1, 1, 0b011, os.getpid()))  # ACK | DONE
threads = []
while True:
    msg, fds, _, _ = socket.recv_fds(chan, 4096, 1)
    if not msg and not fds:  # end of file: the master is gone
        os._exit(0)
    kind, _, n = struct.unpack_from("<BBH", msg)
    if kind == DRAIN:
        break
    if kind != CONN or len(fds) != 1:
        raise SystemExit(f"worker {ME}: unexpected frame {msg[:4].hex()}")
    (cid,) = struct.unpack_from("<Q", msg, 4)
    send(ACK, [cid])
    t = threading.Thread(target=serve, args=(cid, socket.socket(fileno=fds[0])), daemon=True)
    t.start()
    threads = [x for x in threads if x.is_alive()] + [t]
for t in threads:  # DRAIN: finish what we have, then exit 0
    t.join()
