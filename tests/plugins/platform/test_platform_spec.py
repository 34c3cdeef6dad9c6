"""The ProjectSpec rules: each violation, reported with its field path, all at once."""

from __future__ import annotations

from typing import Any

import pytest
from courtyard_platform.spec import normalized, parse_secret, violations
from platform_kit import SPEC, spec


def fields(raw: Any, prefix: str = "") -> dict[str, str]:
    return {v.field: v.message for v in violations(raw, prefix)}


def test_the_example_spec_is_valid() -> None:
    assert violations(SPEC) == []
    assert normalized(SPEC) == SPEC


def test_optional_parts_are_filled_in() -> None:
    raw = spec(capabilities=None, environments={"dev": {}})
    assert violations(raw) == []
    out = normalized(raw)
    assert out["capabilities"] == [] and out["environments"] == {"dev": {"vars": {}}}


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"apiVersion": "platform.example.com/v1"}, "apiVersion", "must be"),
        ({"apiVersion": None}, "apiVersion", "is required"),
        ({"kind": "Job"}, "kind", "must be 'App'"),
        ({"kind": None}, "kind", "is required"),
        ({"name": ""}, "name", "1 to 63"),
        ({"name": "a" * 64}, "name", "1 to 63"),
        ({"name": "Demo"}, "name", "must match"),
        ({"name": "-demo"}, "name", "must match"),
        ({"name": "demo-"}, "name", "must match"),
        ({"name": "de_mo"}, "name", "must match"),
        ({"name": 7}, "name", "must be a string"),
        ({"name": None}, "name", "is required"),
        ({"runtime": "Go"}, "runtime", "must match"),
        ({"runtime": "go__1"}, "runtime", "must match"),
        ({"runtime": "go_1."}, "runtime", "must match"),
        ({"runtime": "a" * 129}, "runtime", "1 to 128"),
        ({"runtime": None}, "runtime", "is required"),
        ({"capabilities": "http"}, "capabilities", "array"),
        ({"capabilities": ["http", "http"]}, "capabilities[1]", "twice"),
        ({"capabilities": ["Http"]}, "capabilities[0]", "must match"),
        ({"capabilities": ["h"]}, "capabilities[0]", "must match"),
        ({"capabilities": ["a" * 65]}, "capabilities[0]", "1 to 64"),
        ({"capabilities": [3]}, "capabilities[0]", "must be a string"),
        ({"environments": {}}, "environments", "at least one"),
        ({"environments": []}, "environments", "object"),
        ({"environments": None}, "environments", "is required"),
        ({"environments": {"Dev": {}}}, "environments.Dev", "environment name"),
        ({"environments": {"d": {}}}, "environments.d", "environment name"),
        ({"environments": {"a" * 33: {}}}, "environments." + "a" * 33, "at most 32"),
        ({"environments": {"dev": []}}, "environments.dev", "must be an object"),
        ({"environments": {"dev": {"vars": {}, "x": 1}}}, "environments.dev.x", "unknown field"),
        ({"environments": {"dev": {"vars": []}}}, "environments.dev.vars", "object"),
        ({"environments": {"dev": {"vars": {"log": "x"}}}}, "environments.dev.vars.log", "name"),
        ({"environments": {"dev": {"vars": {"1X": "x"}}}}, "environments.dev.vars.1X", "name"),
        ({"environments": {"dev": {"vars": {"X": 1}}}}, "environments.dev.vars.X", "string"),
        ({"environments": {"dev": {"vars": {"X": "v" * 4097}}}}, "environments.dev.vars.X", "4096"),
        (
            {"environments": {"dev": {"vars": {"X": "secret://delinea/0"}}}},
            "environments.dev.vars.X",
            "secret reference",
        ),
        (
            {"environments": {"dev": {"vars": {"X": "secret://vaults/only-vault"}}}},
            "environments.dev.vars.X",
            "secret reference",
        ),
        (
            {"networkPolicies": {"ingress": "all", "egress": "none"}},
            "networkPolicies.ingress",
            "'internal' or 'none'",
        ),
        ({"networkPolicies": {"ingress": "none"}}, "networkPolicies.egress", "is required"),
        (
            {"networkPolicies": {"ingress": "none", "egress": "none", "x": 1}},
            "networkPolicies.x",
            "unknown",
        ),
        ({"networkPolicies": "internal"}, "networkPolicies", "object"),
        ({"networkPolicies": None}, "networkPolicies", "is required"),
        ({"labels": {}}, "labels", "unknown field"),
    ],
)
def test_each_violation_names_its_field(changes: dict[str, Any], field: str, message: str) -> None:
    found = fields(spec(**changes))
    assert field in found, found
    assert message in found[field]
    assert len(found) == 1, found


def test_every_violation_is_listed_at_once_with_a_prefix() -> None:
    raw = spec(kind="Job", name="Bad", capabilities=["x"], extra=1)
    found = fields(raw, "spec")
    assert set(found) == {"spec.kind", "spec.name", "spec.capabilities[0]", "spec.extra"}


def test_a_spec_that_is_not_an_object() -> None:
    assert fields([1, 2], "spec") == {"spec": "must be a JSON object"}


def test_values_up_to_4096_characters_and_secret_references_are_accepted() -> None:
    env = {
        "A": "v" * 4096,
        "B": "secret://delinea/42",
        "C": "secret://vaults/api-keys/OPENAI_API_KEY",
        "D": "not-a-secret://x",
    }
    assert violations(spec(environments={"dev": {"vars": env}})) == []


def test_a_bad_secret_reference_is_not_repeated() -> None:
    raw = spec(environments={"dev": {"vars": {"X": "secret://hunter2-password"}}})
    (violation,) = violations(raw)
    assert "hunter2" not in violation.message


def test_secret_references_are_parsed() -> None:
    vault = parse_secret("secret://vaults/api-keys/TOKEN")
    assert vault is not None and (vault.provider, vault.vault, vault.key) == (
        "vaults",
        "api-keys",
        "TOKEN",
    )
    delinea = parse_secret("secret://delinea/7")
    assert delinea is not None and delinea.secret_id == 7
    assert parse_secret("plain") is None
