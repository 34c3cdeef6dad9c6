"""Artifacts: the listing, downloads as attachments, and no way out of the project's
folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from platform_kit import register, spec


async def test_list_and_download(platform: Any, tmp_path: Path) -> None:
    rt = await platform()
    project_id = (await register(rt.client))["project"]["id"]
    files = (await rt.client.get(f"/api/projects/{project_id}/artifacts")).json()["files"]
    assert files == sorted(files)
    for expected in [
        "registration/project.yaml",
        "registration/registration.json",
        "build/Dockerfile",
        "build/image.txt",
        "deploy/dev/deployment.yaml",
        "deploy/dev/service.yaml",
        "deploy/dev/rendered.yaml",
        "repos/source/main.go",
        "repos/manifests/dev/rendered.yaml",
    ]:
        assert expected in files
    assert not any("/.git/" in f or f.startswith(".git") for f in files)

    answer = await rt.client.get(f"/api/projects/{project_id}/artifacts/build/image.txt")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/octet-stream"
    assert answer.headers["content-disposition"] == 'attachment; filename="image.txt"'
    folder = tmp_path / "data" / "plugin-data" / "platform" / "artifacts" / project_id
    assert answer.content == (folder / "build" / "image.txt").read_bytes()

    big = os.urandom(3 * 1024 * 1024 + 17)  # streamed in chunks
    (folder / "build" / "image.tar").write_bytes(big)
    answer = await rt.client.get(f"/api/projects/{project_id}/artifacts/build/image.tar")
    assert answer.content == big and answer.headers["content-length"] == str(len(big))

    missing = await rt.client.get(f"/api/projects/{project_id}/artifacts/build/nope.txt")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "ARTIFACT_NOT_FOUND"
    folder_itself = await rt.client.get(f"/api/projects/{project_id}/artifacts/build")
    assert folder_itself.status_code == 404


async def test_no_path_leaves_the_project_folder(platform: Any, tmp_path: Path) -> None:
    rt = await platform()
    project_id = (await register(rt.client))["project"]["id"]
    other_id = (await register(rt.client, spec(name="other")))["project"]["id"]
    base = tmp_path / "data" / "plugin-data" / "platform" / "artifacts"
    (tmp_path / "data" / "secret.txt").write_text("top secret")
    os.symlink(tmp_path / "data" / "secret.txt", base / project_id / "build" / "link.txt")
    os.symlink(base / other_id, base / project_id / "elsewhere")
    prefix = f"/api/projects/{project_id}/artifacts/"
    attempts = [
        "../" + other_id + "/build/image.txt",
        "%2e%2e/" + other_id + "/build/image.txt",
        "%2E%2E%2F" + other_id + "%2Fbuild%2Fimage.txt",
        "build/../../" + other_id + "/build/image.txt",
        "..%2f..%2f..%2fsecret.txt",
        "%2fetc%2fpasswd",
        "build/%00image.txt",
        "build%5c..%5c..%5csecret.txt",
        "build//image.txt",
        "build/link.txt",
        "elsewhere/build/image.txt",
        "repos/source/.git/config",
        "repos/source/.git/hooks/post-commit",
        "%2e%2e",
    ]
    for attempt in attempts:
        answer = await rt.client.get(prefix + attempt)
        if answer.status_code == 308:  # the router merges a doubled slash: still inside
            assert answer.headers["location"].startswith("http://localhost" + prefix), attempt
            answer = await rt.client.get(answer.headers["location"])
        assert answer.status_code in (400, 404) or attempt == "build//image.txt", attempt
        assert b"top secret" not in answer.content
        assert b"/other:" not in answer.content, attempt
    nested = await rt.client.get(f"/api/projects/{other_id}/{project_id}/artifacts/build/image.txt")
    assert nested.status_code == 404 and nested.json()["error"]["code"] == "PROJECT_NOT_FOUND"
    listed = (await rt.client.get(prefix.rstrip("/"))).json()["files"]
    assert "build/link.txt" not in listed and not any(f.startswith("elsewhere") for f in listed)
