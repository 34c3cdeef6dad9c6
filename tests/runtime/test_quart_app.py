"""courtyard.quart_app: the generation's Quart app keeps Quart's behaviour with less work per
request (a cache of matched routes, a URL adapter bound only when asked for)."""

from __future__ import annotations

import asyncio
import gc
import json
import weakref
from typing import Any

import pytest
from courtyard.quart_app import GenerationApp
from quart import request, session, url_for


@pytest.fixture
def app() -> GenerationApp:
    app = GenerationApp("routes")

    @app.get("/items/<int:number>")
    async def item(number: int) -> dict[str, Any]:
        return {"number": number, "args": request.view_args}

    @app.get("/folder/")
    async def folder() -> dict[str, Any]:
        # url_for needs the adapter the context binds only on demand.
        return {"self": url_for("folder"), "item": url_for("item", number=7, _external=True)}

    @app.post("/only-post")
    async def only_post() -> dict[str, Any]:
        return {"ok": True}

    return app


async def test_a_cached_route_answers_with_its_own_arguments(app: GenerationApp) -> None:
    client = app.test_client()
    for number in (1, 2, 1, 2):
        answer = await client.get(f"/items/{number}")
        assert await answer.get_json() == {"number": number, "args": {"number": number}}
    assert set(app.matched) == {("GET", "/items/1"), ("GET", "/items/2")}


async def test_a_preprocessor_changing_the_arguments_does_not_change_the_cache(
    app: GenerationApp,
) -> None:
    @app.url_value_preprocessor
    def take(endpoint: str | None, values: dict[str, Any] | None) -> None:
        if values is not None:
            values["taken"] = values.pop("number")

    @app.get("/taken/<int:number>")
    async def taken(taken: int) -> dict[str, Any]:
        return {"taken": taken}

    client = app.test_client()
    for _ in range(3):  # matched, then twice from the cache
        answer = await client.get("/taken/5")
        assert await answer.get_json() == {"taken": 5}


async def test_refusals_are_not_cached_and_stay_refusals(app: GenerationApp) -> None:
    client = app.test_client()
    for _ in range(2):
        assert (await client.get("/missing")).status_code == 404
        assert (await client.get("/only-post")).status_code == 405
        redirect = await client.get("/folder")  # strict slashes: werkzeug redirects
        assert redirect.status_code == 308
        assert redirect.headers["Location"].endswith("/folder/")
    assert app.matched == {}


async def test_url_for_binds_the_adapter_when_a_handler_asks(app: GenerationApp) -> None:
    client = app.test_client()
    for _ in range(2):  # the second answer comes from the cache: url_for still works
        answer = await client.get("/folder/", headers={"Host": "example.test"})
        assert await answer.get_json() == {
            "self": "/folder/",
            "item": "http://example.test/items/7",
        }


async def test_the_cache_is_bounded(app: GenerationApp) -> None:
    app.MATCHED_MAX = 4
    client = app.test_client()
    for number in range(10):
        assert (await client.get(f"/items/{number}")).status_code == 200
        assert len(app.matched) <= 4
    assert ("GET", "/items/9") in app.matched


def http_scope(method: str, path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"example.test")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
        "extensions": {},
    }


async def serve_once(
    app: GenerationApp, method: str, path: str, messages: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], int]:
    """Serve one request whose client sends `messages`, then waits; return what was sent
    back and how many times the app asked to receive."""
    asked = 0
    pending = list(messages)
    forever = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal asked
        asked += 1
        if pending:
            return pending.pop(0)
        await forever.wait()
        raise AssertionError("unreachable")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(http_scope(method, path), receive, send)
    return sent, asked


async def test_a_handler_that_waits_for_the_body_is_fed_by_the_receiver() -> None:
    app = GenerationApp("echo")

    @app.post("/echo")
    async def echo() -> dict[str, Any]:
        return {"got": (await request.get_data()).decode()}

    body = [
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"cd", "more_body": False},
    ]
    sent, asked = await serve_once(app, "POST", "/echo", body)
    assert json.loads(sent[-1]["body"]) == {"got": "abcd"}
    assert asked >= 2


async def test_a_request_answered_without_waiting_starts_no_receiver() -> None:
    app = GenerationApp("quick")

    @app.get("/quick")
    async def quick() -> dict[str, Any]:
        return {"ok": True}

    loop = asyncio.get_running_loop()
    made: list[Any] = []

    def counting_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        made.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(counting_factory)
    try:
        sent, asked = await serve_once(app, "GET", "/quick", [{"type": "http.request"}])
    finally:
        loop.set_task_factory(None)
    assert json.loads(sent[-1]["body"]) == {"ok": True}
    assert made == [] and asked == 0  # a task per request saved (docs/performance.md)


async def test_a_client_that_leaves_cancels_the_handler() -> None:
    app = GenerationApp("slow")
    cancelled = asyncio.Event()

    @app.get("/slow")
    async def slow() -> dict[str, Any]:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    messages = [{"type": "http.request"}, {"type": "http.disconnect"}]
    sent, _ = await asyncio.wait_for(serve_once(app, "GET", "/slow", messages), 5)
    assert cancelled.is_set()
    assert sent == []


def streaming_app(timeout: float | None) -> GenerationApp:
    """An app whose /stream sends a chunk, then stalls for 30 s, under `timeout`."""
    app = GenerationApp("stream")

    @app.get("/stream")
    async def stream() -> Any:
        async def chunks() -> Any:
            yield b"first"
            await asyncio.sleep(30)
            yield b"never"

        response = app.response_class(chunks())
        response.timeout = timeout
        return response

    return app


async def test_a_response_past_its_timeout_is_cut_off_and_the_task_goes_on() -> None:
    app = streaming_app(0.2)
    sent, _ = await asyncio.wait_for(
        serve_once(app, "GET", "/stream", [{"type": "http.request"}]), 5
    )
    assert [m.get("body") for m in sent[1:]] == [b"first"]
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # the timeout's cancel is undone
    await asyncio.sleep(0)  # and no cancellation is left to land here


async def test_a_cancellation_during_the_send_is_not_taken_for_the_timeout() -> None:
    app = streaming_app(60)
    serving = asyncio.ensure_future(serve_once(app, "GET", "/stream", [{"type": "http.request"}]))
    await asyncio.sleep(0.1)
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving


async def test_sessions_are_quarts_null_one_without_a_secret_key_and_signed_with_one() -> None:
    app = GenerationApp("sessions")

    @app.get("/count")
    async def count() -> dict[str, Any]:
        try:
            session["n"] = session.get("n", 0) + 1
        except RuntimeError as refused:  # Quart's null session refuses changes
            return {"refused": str(refused)}
        return {"n": session["n"]}

    client = app.test_client()
    answer = await (await client.get("/count")).get_json()
    assert "secret key" in answer["refused"]
    app.secret_key = "a secret for the test"
    assert await (await client.get("/count")).get_json() == {"n": 1}
    assert await (await client.get("/count")).get_json() == {"n": 2}  # the signed cookie


class Receive:
    """A server's `receive`: the request's one message, then a wait for the disconnect."""

    def __init__(self) -> None:
        self.given = False
        self.forever = asyncio.Event()

    async def __call__(self) -> dict[str, Any]:
        if not self.given:
            self.given = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await self.forever.wait()
        raise AssertionError("unreachable")


async def test_nothing_keeps_the_servers_receive_once_the_answer_is_sent() -> None:
    """A server may hold a connection until the app lets go of its `receive` (granian
    stalled a keep-alive connection when a reference cycle kept it until the collector
    ran): references counted, not collected, must free it."""
    app = GenerationApp("freed")

    @app.post("/wait")
    async def wait() -> dict[str, Any]:
        await asyncio.sleep(0)  # the receiver runs, and then waits for the disconnect
        return {"got": await request.get_json()}

    async def send(message: dict[str, Any]) -> None:
        pass

    receive = Receive()
    held = weakref.ref(receive)
    gc.disable()
    try:
        await app(http_scope("POST", "/wait"), receive, send)
        del receive
        for _ in range(3):  # the cancelled receiver ends at the loop's next turns
            await asyncio.sleep(0)
        assert held() is None
    finally:
        gc.enable()
