"""The envelope, list parameters and hostile filters."""

from __future__ import annotations

import json

from releases_kit import data, environment, error


async def test_success_envelope_and_pagination(releases):
    alice = releases.user()
    for index in range(5):
        await environment(alice, f"env-{index}", order=10 - index)

    answer = await alice.get("/api/v1/environments", params={"pageSize": 2, "page": 2})
    page = data(answer)
    meta = answer.json()["meta"]

    assert [e["name"] for e in page] == ["env-2", "env-1"]
    assert meta["pagination"] == {
        "page": 2,
        "pageSize": 2,
        "totalItems": 5,
        "totalPages": 3,
        "hasNext": True,
        "hasPrevious": True,
    }
    last = (await alice.get("/api/v1/environments", params={"pageSize": 2, "page": 3})).json()
    assert last["meta"]["pagination"]["hasNext"] is False
    beyond = await alice.get("/api/v1/environments", params={"page": 9})
    assert data(beyond) == []


async def test_sort_ascending_descending_and_unknown(releases):
    alice = releases.user()
    for name in ("b", "a", "c"):
        await environment(alice, name)

    names = [e["name"] for e in data(await alice.get("/api/v1/environments?sort=name"))]
    assert names == ["a", "b", "c"]
    names = [e["name"] for e in data(await alice.get("/api/v1/environments?sort=-name"))]
    assert names == ["c", "b", "a"]
    problem = error(await alice.get("/api/v1/environments?sort=tenant_id"), 400, "VALIDATION_ERROR")
    assert problem["validationErrors"][0]["field"] == "sort"


async def test_bad_page_parameters(releases):
    for params, field in [
        ({"page": "0"}, "page"),
        ({"page": "-1"}, "page"),
        ({"page": "x"}, "page"),
        ({"pageSize": "101"}, "pageSize"),
        ({"pageSize": "0"}, "pageSize"),
        ({"pageSize": "1e3"}, "pageSize"),
    ]:
        answer = await releases.user().get("/api/v1/environments", params=params)
        problem = error(answer, 400, "VALIDATION_ERROR")
        assert problem["validationErrors"][0]["field"] == field


async def test_filters(releases_db):
    releases = releases_db
    alice = releases.user()
    await environment(alice, "dev", order=1, requiredApprovals=0)
    await environment(alice, "stage", order=2, requiredApprovals=1)
    await environment(alice, "prod", order=3, requiredApprovals=2, separationOfDuties=True)

    async def names(expression: object) -> list[str]:
        answer = await alice.get("/api/v1/environments", params={"filter": json.dumps(expression)})
        return [e["name"] for e in data(answer)]

    assert await names({"name": "stage"}) == ["stage"]
    assert await names({"name": {"in": ["dev", "prod"]}}) == ["dev", "prod"]
    assert await names({"requiredApprovals": {"gte": 1, "lt": 2}}) == ["stage"]
    assert await names({"or": [{"name": "dev"}, {"separationOfDuties": True}]}) == ["dev", "prod"]
    assert await names({"and": [{"order": {"gt": 1}}, {"name": {"ne": "prod"}}]}) == ["stage"]
    assert await names({"createdAt": {"gte": "2000-01-01T00:00:00Z"}}) == ["dev", "stage", "prod"]
    assert await names({"name": {"in": []}}) == []


HOSTILE = [
    ('{"tenant_id": "other"}', "filter.tenant_id"),
    ('{"name": 1}', "filter.name"),
    ('{"order": "1; DROP TABLE releases_environment"}', "filter.order"),
    ('{"order": true}', "filter.order"),
    ('{"separationOfDuties": {"gt": true}}', "filter.separationOfDuties.gt"),
    ('{"name": {"like": "%"}}', "filter.name.like"),
    ('{"name": {"in": "dev"}}', "filter.name.in"),
    ('{"createdAt": {"gte": "yesterday"}}', "filter.createdAt.gte"),
    ('{"or": []}', "filter.or"),
    ('{"or": {"name": "x"}}', "filter.or"),
    ("[1, 2]", "filter"),
    ('"name"', "filter"),
    ("{}", "filter"),
    ("{'name': 'dev'}", "filter"),
    ('{"order": NaN}', "filter"),
    ('{"name": {}}', "filter.name"),
    ("name = 'dev' OR 1=1 --", "filter"),
    ("{\"name\": \"dev' OR '1'='1\"}", None),
    ('{"name": {"in": [' + ",".join(['"x"'] * 101) + "]}}", "filter.name.in"),
    ("[" * 3000 + "]" * 3000, "filter"),
    ('{"and": [' * 8 + '{"name": "x"}' + "]}" * 8, None),
    ('{"x": "' + "a" * 5000 + '"}', "filter"),
]


async def test_hostile_filters_are_400_never_500(releases_db):
    releases = releases_db
    alice = releases.user()
    await environment(alice, "dev")
    for expression, field in HOSTILE:
        answer = await alice.get("/api/v1/environments", params={"filter": expression})
        if field is None and answer.status_code == 200:
            assert data(answer) == []  # a value compared as a value, never as SQL
            continue
        problem = error(answer, 400, "VALIDATION_ERROR")
        if field is not None:
            assert problem["validationErrors"][0]["field"] == field, expression
    assert len(data(await alice.get("/api/v1/environments"))) == 1


async def test_errors_in_the_envelope(releases):
    alice = releases.user()
    # The runtime's own refusals under /api/v1 come in the envelope too.
    error(await releases.client.get("/api/v1/environments"), 401, "AUTHENTICATION_REQUIRED")
    bad = await releases.client.get(
        "/api/v1/environments", headers={"Authorization": "Bearer a.b.c"}
    )
    error(bad, 401, "INVALID_TOKEN")
    reader = releases.user(permissions=["releases:read"])
    error(
        await reader.post("/api/v1/environments", json={"name": "x"}), 403, "AUTHORIZATION_FAILED"
    )
    error(await alice.get("/api/v1/environments/nope"), 404, "ENVIRONMENT_NOT_FOUND")
    error(await alice.get("/api/v1/no-such-thing"), 404, "NOT_FOUND")
    wrong = await releases.client.request("PATCH", "/api/v1/environments", headers=alice.headers())
    error(wrong, 405, "METHOD_NOT_ALLOWED")
    problem = error(
        await alice.post("/api/v1/environments", json={"name": "", "bogus": 1}),
        400,
        "VALIDATION_ERROR",
    )
    fields = {p["field"] for p in problem["validationErrors"]}
    assert fields == {"name", "bogus"}
    error(await alice.post("/api/v1/environments", content=b"{not json"), 400, "INVALID_JSON")
    no_tenant = releases.user(tenant=None)
    error(await no_tenant.get("/api/v1/environments"), 403, "TENANT_REQUIRED")
    # Outside /api/v1 the runtime's envelope is unchanged.
    plain = await releases.client.get("/api/nothing-here")
    assert "success" not in plain.json()


async def test_created_conflict_and_no_content(releases):
    alice = releases.user()
    env = await environment(alice, "dev")
    error(await alice.post("/api/v1/environments", json={"name": "dev"}), 409, "ENVIRONMENT_EXISTS")
    changed = data(await alice.put(f"/api/v1/environments/{env['id']}", json={"order": 4}))
    assert changed["order"] == 4
    data(await alice.delete(f"/api/v1/environments/{env['id']}"), 204)
    error(await alice.get(f"/api/v1/environments/{env['id']}"), 404, "ENVIRONMENT_NOT_FOUND")
