"""Instances that die, stop and restart: a SIGKILL mid-upload leaves nothing anywhere, an
instance down while the others change things converges when it starts (and is not ready
before), and a rolling restart behind nginx drops no request."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections import Counter

import httpx
import pytest
from cluster_kit import (
    INTERNAL,
    Cluster,
    app_files,
    app_names,
    applied_at_once,
    eventually,
    message_of,
    multipart,
    page_of,
    paths_named,
    plugin_files,
    tgz,
    upload,
)

pytestmark = pytest.mark.slow


def test_an_instance_killed_mid_upload_leaves_nothing_anywhere(pair) -> None:
    a, b = pair
    before = b.details()["revision"]
    body = multipart("half.tgz", tgz(app_files("half", "1.0.0", "half", padding=4 * 1024**2)))
    head = (
        "POST /api/apps/upload HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{a.port}\r\n"
        "X-Courtyard-Internal: true\r\n"
        "Content-Type: multipart/form-data; boundary=cluster-boundary\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", a.port)) as sock:
        sock.sendall(head + body[: len(body) // 2])  # a slow client, halfway
        time.sleep(0.5)  # A has read what came
        a.kill()
    # B still serves, and has nothing of it.
    assert b.get("/api/health/ready").status_code == 200
    assert "half" not in app_names(b)
    assert b.get("/half@1.0.0/").status_code == 404
    assert b.details()["revision"] == before  # nothing reached the change log
    assert paths_named(b.data_dir, "half") == []

    # A starts clean: nothing of it in its folders, and the version can be uploaded.
    a.start()
    assert "half" not in app_names(a)
    assert paths_named(a.data_dir, "half") == []
    assert [p.name for p in (a.data_dir / "apps").glob(".*")] == []  # no staging left
    answer = upload(b.client(), "app", "half.tgz", tgz(app_files("half", "1.0.0", "whole")))
    assert answer.status_code == 200, answer.text
    applied_at_once(a, lambda: page_of(a, "/half@1.0.0/") == "whole", "the upload on B")


def test_an_instance_down_during_changes_catches_up_before_it_is_ready(pair) -> None:
    a, b = pair
    for name in ("kept", "dropped"):
        data = tgz(app_files(name, "1.0.0", name))
        assert upload(a.client(), "app", f"{name}.tgz", data).status_code == 200
    applied_at_once(b, lambda: page_of(b, "/dropped@1.0.0/") == "dropped", "the uploads")
    assert b.stop() == 0

    # While B is down, A installs, overwrites and removes things (without waiting for B:
    # an instance that stopped is not waited for).
    on_a = a.client()
    started = time.monotonic()
    assert upload(on_a, "app", "new.tgz", tgz(app_files("new", "1.0.0", "new"))).status_code == 200
    assert time.monotonic() - started < 5
    data = tgz(app_files("kept", "1.0.0", "kept, rewritten"))
    assert upload(on_a, "app", "kept.tgz", data, overwrite="true").status_code == 200
    assert on_a.delete("/api/apps/_/dropped").status_code == 200
    data = tgz(plugin_files("late", "late plugin"))
    assert upload(on_a, "plugin", "late.tgz", data).status_code == 200
    revision = a.details()["revision"]

    # B starts: not ready until it serves all of it; the first ready answer means it does.
    b.launch()
    while not b.ready():
        assert b.running, b.log[-5000:]
        time.sleep(0.01)
    assert page_of(b, "/new@1.0.0/") == "new"
    assert page_of(b, "/kept@1.0.0/") == "kept, rewritten"
    assert b.get("/dropped@1.0.0/").status_code == 404
    assert message_of(b, "/late/") == "late plugin"
    assert sorted(app_names(b)) == ["kept", "new"]
    assert not (b.data_dir / "apps" / "dropped").exists()
    assert b.details()["revision"] == revision


def test_an_instance_killed_after_recording_an_install_leaves_it_everywhere(pair) -> None:
    """A recorded the install in the store, then died before answering (it was waiting
    for B, frozen): the install is not lost half-way either. B serves it once it runs
    again, A serves it when it restarts, and the client's retry learns it is there."""
    a, b = pair
    before = a.details()["revision"]
    b.process.send_signal(signal.SIGSTOP)
    answers: list[object] = []

    def send() -> None:
        data = tgz(app_files("orphan", "1.0.0", "orphan"))
        try:
            answers.append(upload(a.client(), "app", "orphan.tgz", data).status_code)
        except httpx.HTTPError as exc:
            answers.append(exc)

    sender = threading.Thread(target=send)
    try:
        sender.start()
        # Recorded: the store's revision moved (A now waits for B to apply it).
        eventually(lambda: a.get("/api/cluster/").json()["revision"] > before, "recorded", 5)
        a.kill()
    finally:
        b.process.send_signal(signal.SIGCONT)
    sender.join(30)
    assert len(answers) == 1 and isinstance(answers[0], httpx.HTTPError), answers
    eventually(lambda: page_of(b, "/orphan@1.0.0/") == "orphan", "B serves it", timeout=2)
    a.start()
    assert page_of(a, "/orphan@1.0.0/") == "orphan"
    again = upload(b.client(), "app", "orphan.tgz", tgz(app_files("orphan", "1.0.0", "orphan")))
    assert again.status_code == 409 and again.json()["error"]["code"] == "VERSION_EXISTS"


def test_a_frozen_instance_holds_an_answer_back_5_s_at_most(pair) -> None:
    """B stops answering (SIGSTOP) but has not left: A waits for it, but not forever; B
    serves the change once it runs again."""
    a, b = pair
    b.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        data = tgz(app_files("patient", "1.0.0", "patient"))
        answer = upload(a.client(), "app", "patient.tgz", data)
        took = time.monotonic() - started
        assert answer.status_code == 200, answer.text
        assert took < 7.5, f"A answered after {took:.1f} s (it waits 5 s at most)"
        assert page_of(a, "/patient@1.0.0/") == "patient"
    finally:
        b.process.send_signal(signal.SIGCONT)
    eventually(lambda: page_of(b, "/patient@1.0.0/") == "patient", "B serves it", timeout=2)


def test_a_rolling_restart_behind_nginx_drops_no_request(
    cluster: Cluster, pair, load_balancer
) -> None:
    a, b = pair
    data = tgz(app_files("rolling", "1.0.0", "rolling"))
    assert upload(a.client(), "app", "rolling.tgz", data).status_code == 200
    applied_at_once(b, lambda: page_of(b, "/rolling@1.0.0/") == "rolling", "the upload")
    lb = load_balancer(a, b, tuning="max_fails=0")
    paths = ["/hello/", "/rolling@1.0.0/", "/api/apps/"]
    assert all(httpx.get(lb.url + p, headers=INTERNAL).status_code == 200 for p in paths)

    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    done = threading.Event()

    def load(offset: int) -> None:
        with httpx.Client(base_url=lb.url, headers=INTERNAL, timeout=30) as client:
            n = offset
            while not done.is_set():
                path = paths[n % len(paths)]
                n += 1
                try:
                    answer = client.get(path)
                except httpx.HTTPError as exc:
                    failures.append(f"{path}: {exc!r}")
                    continue
                outcomes[str(answer.status_code)] += 1
                if answer.status_code != 200:
                    failures.append(f"{path}: {answer.status_code} {answer.text[:200]}")

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        for instance in (a, b):  # one at a time: drain, stop, start, ready, next
            assert instance.stop() == 0, instance.log[-5000:]
            instance.start()
            time.sleep(0.5)  # serving under load before the next one goes
    finally:
        done.set()
        for thread in threads:
            thread.join(30)
    assert failures == [], f"{len(failures)} failed of {sum(outcomes.values())}: {failures[:10]}"
    assert outcomes["200"] > 100, outcomes
    # Both instances served (nginx logs every upstream it tried, the last one answered).
    served = [tried.split(", ")[-1] for status, tried, *_ in lb.access_log if status == "200"]
    for instance in (a, b):
        assert served.count(f"127.0.0.1:{instance.port}") > 10, Counter(served)
