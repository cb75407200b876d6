"""Flask fixture for tests/python_package.rs: every behaviour the WSGI server must get right."""
import os
import sys
import time
import zlib

from flask import Flask, Response, request

app = Flask(__name__)


@app.route("/")
def index():
    return f"hello from flask, worker {os.environ.get('HANDOFF_WORKER_ID')}\n"


@app.route("/echo", methods=["POST"])
def echo():
    # The whole body, however it came (chunked or with a Content-Length).
    data = request.get_data()
    return f"{len(data)} {zlib.crc32(data):08x}\n"


@app.route("/stream")
def stream():
    def gen():
        for i in range(5):
            yield f"part {i}\n"
    return Response(gen(), mimetype="text/plain")


@app.route("/raise")
def boom():
    raise RuntimeError("the fixture app raised on purpose")


@app.route("/sleep")
def sleep():
    print(f"fixture: sleeping in worker {os.environ.get('HANDOFF_WORKER_ID')}", file=sys.stderr, flush=True)
    time.sleep(float(request.args.get("s", "1")))
    return "slept\n"


@app.route("/client")
def client():
    return f"{request.remote_addr}\n"


@app.route("/continued")
def continued():
    # Set by handoff_worker.wsgi: this connection was handed back to the master before.
    return f"{request.environ.get('handoff.continued')}\n"
