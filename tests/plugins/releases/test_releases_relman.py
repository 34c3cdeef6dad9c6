"""Components, their versions and releases: draft, finalized (immutable), deprecated."""

from __future__ import annotations

import hashlib

from releases_kit import (
    DIGEST_A,
    DIGEST_B,
    app_component,
    archive,
    data,
    error,
    finalized_release,
    image_component,
    upload,
)


async def test_app_versions_are_stored_by_digest(releases, tmp_path):
    alice = releases.user()
    shop = await app_component(alice)

    synced = await upload(alice, shop["id"], "1.0.0", "one")
    digest = "sha256:" + hashlib.sha256(archive("one")).hexdigest()
    [added] = synced["added"]
    assert added["digest"] == digest
    assert added["reference"] == f"shop@{digest}"
    assert added["pinned"] is True
    blob = tmp_path / "data" / "plugin-data" / "releases" / "blobs" / "sha256"
    assert (blob / digest.removeprefix("sha256:")).read_bytes() == archive("one")

    again = await upload(alice, shop["id"], "1.0.0", "one")
    assert again["added"] == [] and again["unchanged"][0]["id"] == added["id"]
    error(
        await alice.post(
            f"/api/v1/components/{shop['id']}/sync-versions",
            data={"version": "1.0.0"},
            files={"file": ("x.tgz", archive("other"), "application/gzip")},
        ),
        409,
        "VERSION_EXISTS",
    )
    error(
        await alice.post(
            f"/api/v1/components/{shop['id']}/sync-versions",
            data={"version": "2.0.0"},
            files={"file": ("x.tgz", b"not an archive", "application/gzip")},
        ),
        400,
        "INVALID_ARCHIVE",
    )
    await upload(alice, shop["id"], "1.1.0")
    versions = data(await alice.get(f"/api/v1/components/{shop['id']}/versions"))
    assert [v["version"] for v in versions] == ["1.1.0", "1.0.0"]


async def test_image_versions_and_from_latest(releases):
    alice = releases.user()
    api = await image_component(
        alice, "api", [{"version": "1.0", "digest": DIGEST_A}, {"version": "1.1"}]
    )
    versions = data(await alice.get(f"/api/v1/components/{api['id']}/versions"))
    by_version = {v["version"]: v for v in versions}
    assert by_version["1.0"]["reference"] == f"registry.test/api@{DIGEST_A}"
    assert by_version["1.1"]["reference"] == "registry.test/api:1.1"
    assert by_version["1.1"]["pinned"] is False

    draft = data(await alice.post("/api/v1/releases/from-latest", json={"name": "r1"}), 201)
    assert draft["status"] == "draft"
    assert [(c["name"], c["version"]) for c in draft["components"]] == [("api", "1.1")]
    error(
        await alice.post(
            f"/api/v1/components/{api['id']}/sync-versions",
            json={"versions": [{"version": "1.0", "digest": DIGEST_B}]},
        ),
        409,
        "VERSION_EXISTS",
    )
    error(
        await alice.post(
            f"/api/v1/components/{api['id']}/sync-versions",
            json={"versions": [{"version": "2", "digest": "sha256:short"}]},
        ),
        400,
        "VALIDATION_ERROR",
    )


async def test_finalized_releases_are_immutable(releases_db):
    releases = releases_db
    alice = releases.user()
    api = await image_component(alice, "api", [{"version": "1.0", "digest": DIGEST_A}])
    release = await finalized_release(alice, "r1", api["id"], "1.0")
    assert release["status"] == "finalized"
    assert release["finalizedBy"] == "alice"
    rid = release["id"]

    for change in (
        {"name": "r2"},
        {"description": "x"},
        {"components": []},
        {"status": "finalized"},
    ):
        error(await alice.put(f"/api/v1/releases/{rid}", json=change), 409, "RELEASE_IMMUTABLE")
    error(await alice.delete(f"/api/v1/releases/{rid}"), 409, "RELEASE_IMMUTABLE")
    state = data(await alice.get(f"/api/v1/releases/{rid}/state"))
    assert state["allowedTransitions"] == ["deprecated"]

    deprecated = data(await alice.post(f"/api/v1/releases/{rid}/deprecate"))
    assert deprecated["status"] == "deprecated"
    error(await alice.post(f"/api/v1/releases/{rid}/deprecate"), 409, "INVALID_STATE_TRANSITION")
    error(await alice.put(f"/api/v1/releases/{rid}", json={"name": "x"}), 409, "RELEASE_IMMUTABLE")
    assert data(await alice.get(f"/api/v1/releases/{rid}"))["components"] == release["components"]


async def test_drafts_change_and_cannot_be_deprecated(releases):
    alice = releases.user()
    api = await image_component(alice, "api", [{"version": "1.0", "digest": DIGEST_A}])
    draft = data(await alice.post("/api/v1/releases", json={"name": "r1"}), 201)
    error(
        await alice.put(f"/api/v1/releases/{draft['id']}", json={"status": "finalized"}),
        422,
        "RELEASE_EMPTY",
    )
    error(
        await alice.post(f"/api/v1/releases/{draft['id']}/deprecate"),
        409,
        "INVALID_STATE_TRANSITION",
    )
    changed = data(
        await alice.put(
            f"/api/v1/releases/{draft['id']}",
            json={"components": [{"componentId": api["id"], "version": "1.0"}]},
        )
    )
    assert changed["components"][0]["digest"] == DIGEST_A
    bad = error(
        await alice.put(
            f"/api/v1/releases/{draft['id']}",
            json={"components": [{"componentId": api["id"], "version": "9"}]},
        ),
        400,
        "VALIDATION_ERROR",
    )
    assert bad["validationErrors"][0]["field"] == "components.0"
    error(await alice.delete(f"/api/v1/components/{api['id']}"), 409, "COMPONENT_IN_USE")
    data(await alice.delete(f"/api/v1/releases/{draft['id']}"), 204)
    data(await alice.delete(f"/api/v1/components/{api['id']}"), 204)


async def test_compare(releases):
    alice = releases.user()
    api = await image_component(
        alice,
        "api",
        [{"version": "1.0", "digest": DIGEST_A}, {"version": "1.1", "digest": DIGEST_B}],
    )
    web = await image_component(alice, "web", [{"version": "1", "digest": DIGEST_A}])
    db = await image_component(alice, "db", [{"version": "1", "digest": DIGEST_B}])
    old = data(
        await alice.post(
            "/api/v1/releases",
            json={
                "name": "old",
                "components": [
                    {"componentId": api["id"], "version": "1.0"},
                    {"componentId": db["id"], "version": "1"},
                ],
            },
        ),
        201,
    )
    new = data(
        await alice.post(
            "/api/v1/releases",
            json={
                "name": "new",
                "components": [
                    {"componentId": api["id"], "version": "1.1"},
                    {"componentId": web["id"], "version": "1"},
                ],
            },
        ),
        201,
    )
    diff = data(await alice.get(f"/api/v1/releases/{new['id']}/compare/{old['id']}"))
    assert [c["name"] for c in diff["added"]] == ["web"]
    assert [c["name"] for c in diff["removed"]] == ["db"]
    [changed] = diff["changed"]
    assert (changed["from"]["digest"], changed["to"]["digest"]) == (DIGEST_A, DIGEST_B)
    assert diff["unchanged"] == []
    error(await alice.get(f"/api/v1/releases/{new['id']}/compare/nope"), 404, "RELEASE_NOT_FOUND")
