"""FastAPI fixture for tests/python_package.rs: every behaviour the ASGI server must get right."""
import asyncio
import contextlib
import os
import sys
import time
import zlib

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse, StreamingResponse


@contextlib.asynccontextmanager
async def lifespan(app):
    app.state.started = "lifespan startup ran"
    yield
    print(f"fastapi worker {os.environ.get('HANDOFF_WORKER_ID')}: lifespan shutdown ran", file=sys.stderr, flush=True)


app = FastAPI(lifespan=lifespan)


@app.get("/", response_class=PlainTextResponse)
async def index(request: Request):
    return f"hello from fastapi, worker {os.environ.get('HANDOFF_WORKER_ID')}, {request.app.state.started}\n"


@app.post("/echo", response_class=PlainTextResponse)
async def echo(request: Request):
    data = await request.body()
    return f"{len(data)} {zlib.crc32(data):08x}\n"


@app.get("/stream")
async def stream():
    async def gen():
        for i in range(5):
            yield f"part {i}\n"
            await asyncio.sleep(0.01)
    return StreamingResponse(gen(), media_type="text/plain")


@app.get("/raise")
async def boom():
    raise RuntimeError("the fixture app raised on purpose")


@app.get("/sleep", response_class=PlainTextResponse)
async def sleep(s: float = 1.0):
    print(f"fixture: sleeping in worker {os.environ.get('HANDOFF_WORKER_ID')}", file=sys.stderr, flush=True)
    await asyncio.sleep(s)
    return "slept\n"


@app.get("/block", response_class=PlainTextResponse)
async def block(s: float = 1.0):
    print(f"fixture: blocking in worker {os.environ.get('HANDOFF_WORKER_ID')}", file=sys.stderr, flush=True)
    time.sleep(s)  # blocks the event loop: the hang the heartbeat rule must catch
    return "blocked\n"


@app.get("/client", response_class=PlainTextResponse)
async def client(request: Request):
    return f"{request.client.host}\n"


@app.get("/continued", response_class=PlainTextResponse)
async def continued(request: Request):
    # Set by handoff_worker.asgi: this connection was handed back to the master before.
    return f"{request.scope['extensions']['handoff']['continued']}\n"


@app.websocket("/ws")
async def ws(websocket: WebSocket):
    await websocket.accept()
    try:
        while True:
            await websocket.send_text("echo " + await websocket.receive_text())
    except WebSocketDisconnect as e:
        print(f"fixture: websocket closed with {e.code}", file=sys.stderr, flush=True)
