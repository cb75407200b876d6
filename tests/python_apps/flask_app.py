"""Flask fixture for tests/python_package.rs: every behaviour the WSGI server must get right."""
import hashlib
import os
import time

from flask import Flask, Response, request

app = Flask(__name__)


@app.route("/")
def index():
    return f"hello from flask, worker {os.environ.get('HANDOFF_WORKER_ID')}\n"


@app.route("/echo", methods=["POST"])
def echo():
    # The whole body, however it came (chunked or with a Content-Length).
    data = request.get_data()
    return f"{len(data)} {hashlib.sha256(data).hexdigest()}\n"


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
    time.sleep(float(request.args.get("s", "1")))
    return "slept\n"


@app.route("/client")
def client():
    return f"{request.remote_addr}\n"
