"""Every `/api/v1` route is in the OpenAPI document, which stays valid."""

from __future__ import annotations

from openapi_spec_validator import validate


async def test_openapi_lists_every_route_with_bodies(releases):
    spec = (await releases.client.get("/api/openapi.json")).json()
    validate(spec)
    app = releases.runtime.dispatcher.current.app
    served = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/"):
            continue
        path = rule.rule
        for name in rule.arguments:
            path = path.replace(f"<{name}>", f"{{{name}}}").replace(f"<path:{name}>", f"{{{name}}}")
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            served.add((method.lower(), path))
    assert len(served) == 81  # the documented modules' routes, and the signing keys
    for method, path in served:
        operation = spec["paths"][path][method]
        assert operation["tags"] == ["releases"], (method, path)
        assert any(s.startswith("2") for s in operation["responses"]), (method, path)
    create = spec["paths"]["/api/v1/promotions"]["post"]
    assert "requestBody" in create
    assert "422" in create["responses"] and "409" in create["responses"]
    listing = spec["paths"]["/api/v1/releases"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {"page", "pageSize", "sort", "filter"}
