"""A Flask-shaped WSGI app that needs no Flask (it uses real Flask when installed).

Run: handoff run --workers 4 -- python3 examples/python/wsgi.py app:app
"""
try:
    from flask import Flask
except ImportError:  # the stdlib-only stand-in, same shape
    from microflask import Flask

app = Flask(__name__)


@app.route("/")
def index():
    return "hello from a WSGI app\n"


@app.route("/health")
def health():
    return "ok\n"
