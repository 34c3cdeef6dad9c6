"""`courtyard dev`: a plugin being written, served and reloaded on every save."""

from __future__ import annotations

import threading
import time

import httpx
from courtyard.testing import write_plugin


def route(word: str) -> str:
    return (
        "from courtyard_sdk import Blueprint, hookimpl\n"
        "@hookimpl\ndef courtyard_routes(ctx):\n"
        "    bp = Blueprint('hello', __name__)\n"
        "    @bp.get('/')\n"
        "    async def index():\n"
        f"        return {{'word': {word!r}}}\n"
        "    return bp\n"
    )


def wait_for(check, timeout: float = 10.0) -> float:
    """Poll `check` until it is true; the seconds it took."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "not reloaded in time"
        time.sleep(0.05)
    return time.monotonic() - started


def test_dev_reloads_on_save_shows_a_broken_save_and_drops_nothing(courtyard_server, tmp_path):
    project = write_plugin(tmp_path / "work", "hello", "", route("one"))
    server = courtyard_server(command=("dev", str(project)), entry_points=False)
    wait_for(lambda: "courtyard.watch" in server.log)  # watching starts once it serves
    time.sleep(0.5)  # the watcher's thread registers its watches just after that line
    http = httpx.Client(base_url=server.url, timeout=10)
    assert http.get("/hello/").json() == {"word": "one"}

    answers: list[int] = []
    running = True

    def hammer() -> None:  # requests all through the reloads
        with httpx.Client(base_url=server.url, timeout=10) as client:
            while running:
                answers.append(client.get("/hello/").status_code)

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        (project / "plugin.py").write_text(route("two"))
        took = wait_for(lambda: http.get("/hello/").json() == {"word": "two"})
    finally:
        running = False
        thread.join()
    assert took < 3
    assert answers and set(answers) == {200}  # none dropped or failed while reloading

    (project / "plugin.py").write_text("raise RuntimeError('half-written save')\n")
    wait_for(lambda: http.get("/hello/").status_code == 503)
    error = http.get("/hello/anything").json()["error"]
    assert error["code"] == "PLUGIN_FAILED" and "half-written save" in error["message"]
    assert "half-written save" in server.log

    (project / "plugin.py").write_text(route("three"))
    wait_for(lambda: http.get("/hello/").status_code == 200)
    assert http.get("/hello/").json() == {"word": "three"}
    http.close()


async def test_editable_installed_plugins_are_watched_and_imported_anew(
    courtyard, installed_plugin
):
    """An installed plugin whose code is outside site-packages (an editable install) is
    watched, and a change to it makes the reload import its modules again."""
    import sys

    from courtyard.watch import forget_modules, watched_roots

    rt = await courtyard()
    package = installed_plugin / "courtyard_fixture_ep"
    assert package.resolve() in watched_roots(rt.dispatcher)
    assert "courtyard_fixture_ep" in sys.modules
    forget_modules(rt.dispatcher, [(package / "__init__.py").resolve()])
    assert "courtyard_fixture_ep" not in sys.modules
    assert (await rt.reload()).status_code == 200
    assert "courtyard_fixture_ep" in sys.modules  # imported again by the reload
