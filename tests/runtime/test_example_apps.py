"""The example apps in apps/, served by a real `courtyard serve`."""

from pathlib import Path

import httpx
import wsproto.events as ws_events
from ws_client import WebSocketClient

APPS = Path(__file__).parents[2] / "apps"


async def test_example_apps_serve_through_the_runtime(courtyard_server):
    server = courtyard_server(entry_points=False, app_dirs=[APPS])
    async with httpx.AsyncClient(base_url=server.url) as client:
        listed = (await client.get("/api/apps/")).json()
        assert {a["name"]: a["versions"] for a in listed} == {
            "hello-quart": ["1.0.0"],
            "hello-static": ["1.0.0"],
        }
        page = await client.get("/hello-static/")
        assert page.status_code == 200 and "Hello from a static app" in page.text
        assert (await client.get("/hello-static@1/some/route")).text == page.text  # SPA

        answer = await client.get("/hello-quart@1.0.0/")
        assert answer.status_code == 200
        assert answer.json() == {
            "message": "Hello from hello-quart",
            "root_path": "/hello-quart@1.0.0",
            "path": "/",
        }
        assert answer.headers["x-request-id"]

    port = int(server.url.rsplit(":", 1)[1])
    ws, accepted = await WebSocketClient.connect(port, "/hello-quart/ws")
    assert isinstance(accepted, ws_events.AcceptConnection)
    await ws.send(ws_events.TextMessage(data="ping"))
    assert (await ws.next()).data == "echo: ping"
    ws.close()


async def test_an_app_crash_does_not_disturb_the_runtime(courtyard_server, tmp_path):
    import shutil

    apps = tmp_path / "apps"
    shutil.copytree(Path(__file__).parents[1] / "fixtures" / "apps", apps)
    server = courtyard_server(entry_points=False, app_dirs=[apps])
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
        names = [a["name"] for a in (await client.get("/api/apps/")).json()]
        assert "faulty" in names
        first = (await client.get("/faulty/pid")).json()["pid"]
        crashed = await client.get("/faulty/crash")
        assert crashed.status_code == 502
        assert crashed.json()["error"]["code"] == "APP_CRASHED"
        assert (await client.get("/api/health/ready")).status_code == 200
        assert (await client.get("/echo/")).status_code == 200
        again = (await client.get("/faulty/pid")).json()["pid"]
        assert again != first
