"""handoff workers for Python: WSGI and ASGI servers that serve the connections a
handoff master passes them (``python -m handoff_worker.wsgi app:app``,
``python -m handoff_worker.asgi app:app``), and the protocol itself
(:mod:`handoff_worker.protocol`) for writing other workers."""

__version__ = "0.1.0"
