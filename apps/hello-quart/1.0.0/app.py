"""Example ASGI app (Quart) served by Courtyard: a JSON route and a WebSocket echo."""

import os

from quart import Quart, request, websocket

app = Quart(__name__)


@app.get("/")
async def index() -> dict:
    """Greet, and show the base path the runtime mounted the app at."""
    return {
        "message": f"{os.environ.get('GREETING', 'Hi')} from hello-quart",
        "root_path": request.root_path,
        "path": request.path,
    }


@app.websocket("/ws")
async def echo() -> None:
    """Echo every message back."""
    while True:
        message = await websocket.receive()
        await websocket.send(f"echo: {message}")
