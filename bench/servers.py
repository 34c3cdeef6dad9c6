"""The three servers the benchmarks compare, each on Hypercorn with the same settings.

    python bench/servers.py raw|quart|courtyard --port P [--plugin-dir D] [--data-dir D]

Each serves the same three routes: GET /noop, POST /echo (JSON echoed back), GET /slow
(a 50 ms async sleep). Courtyard serves them from a plugin at base /bench.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path

from hypercorn.asyncio import serve
from hypercorn.config import Config

ROUTES_PLUGIN = """
import asyncio
from courtyard_sdk import Blueprint, allow_without_origin, hookimpl, request

@hookimpl
def courtyard_routes(ctx):
    bp = Blueprint("bench", __name__)

    @bp.get("/noop")
    async def noop():
        return {"ok": True}

    @bp.post("/echo")
    @allow_without_origin  # the load generator is a program: it sends no Origin
    async def echo():
        return await request.get_json()

    @bp.get("/slow")
    async def slow():
        await asyncio.sleep(0.05)
        return {"ok": True}

    return bp
"""


def write_bench_plugins(plugin_dir: Path, trivial: int = 0) -> None:
    """The routes plugin at /bench, plus `trivial` plugins that only have a manifest and a
    startup hook."""
    root = plugin_dir / "bench"
    root.mkdir(parents=True, exist_ok=True)
    (root / "plugin.toml").write_text('name = "bench"\nmodule = "plugin"\nbase = "/bench"\n')
    (root / "plugin.py").write_text(ROUTES_PLUGIN)
    for i in range(trivial):
        folder = plugin_dir / f"trivial-{i:03d}"
        folder.mkdir(exist_ok=True)
        (folder / "plugin.toml").write_text(
            f'name = "trivial-{i:03d}"\nmodule = "plugin"\n'
            f'[[menus]]\ntitle = "T{i}"\npath = "/trivial-{i:03d}"\n'
        )
        (folder / "plugin.py").write_text(
            "from courtyard_sdk import hookimpl\n"
            "@hookimpl\nasync def courtyard_startup(ctx):\n    ctx.logger.debug('up')\n"
        )


def raw_app():
    """A bare ASGI callable: the ceiling."""
    body_ok = b'{"ok":true}'
    headers = [(b"content-type", b"application/json")]

    async def app(scope, receive, send):
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                while (await receive())["type"] != "lifespan.shutdown":
                    await send({"type": "lifespan.startup.complete"})
                await send({"type": "lifespan.shutdown.complete"})
            return
        path = scope["path"]
        body = body_ok
        if path.endswith("/echo"):
            chunks = []
            while True:
                message = await receive()
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
            body = json.dumps(json.loads(b"".join(chunks))).encode()
        elif path.endswith("/slow"):
            await asyncio.sleep(0.05)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def quart_app():
    """A bare Quart app with the same routes."""
    from quart import Quart, request

    app = Quart("bench")

    @app.get("/bench/noop")
    async def noop():
        return {"ok": True}

    @app.post("/bench/echo")
    async def echo():
        return await request.get_json()

    @app.get("/bench/slow")
    async def slow():
        await asyncio.sleep(0.05)
        return {"ok": True}

    return app


def courtyard_app(plugin_dir: Path, data_dir: Path):
    """Courtyard serving the routes plugin, with every installed plugin loaded too."""
    from courtyard.dispatcher import Dispatcher
    from courtyard.settings import Settings

    return Dispatcher(Settings(plugin_dirs=(plugin_dir,), data_dir=data_dir, log_level="warning"))


def hypercorn_config(port: int) -> Config:
    """The one Hypercorn configuration every server uses."""
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None
    return config


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["raw", "quart", "courtyard"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--plugin-dir", type=Path)
    parser.add_argument("--data-dir", type=Path)
    args = parser.parse_args()
    if args.kind == "raw":
        app = raw_app()
    elif args.kind == "quart":
        app = quart_app()
    else:
        app = courtyard_app(args.plugin_dir, args.data_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await serve(app, hypercorn_config(args.port), shutdown_trigger=stop.wait)


if __name__ == "__main__":
    asyncio.run(main())
