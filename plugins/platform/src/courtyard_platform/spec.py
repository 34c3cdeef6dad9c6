"""The `ProjectSpec` of the go-web-nats platform API (`platform.example.com/v2`) and its
rules, as the original's JSON schema states them.

`violations(raw)` checks a whole spec and returns every problem with its field path
(`environments.dev.vars.LOG_LEVEL`), never stopping at the first: a client fixes them all
at once. A spec without violations is stored exactly as given, with `capabilities`
defaulting to `[]` and each environment's `vars` to `{}`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

API_VERSION = "platform.example.com/v2"
KIND = "App"
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
RUNTIME_RE = re.compile(r"^[a-z0-9]+([_-][a-z0-9]+)*(\.[0-9]+(\.[0-9]+)*)?\Z")
CAPABILITY_RE = re.compile(r"^[a-z][a-z0-9_\-]*[a-z0-9]\Z")
ENV_NAME_RE = re.compile(r"^[a-z][a-z0-9_\-]*[a-z0-9]\Z")
VAR_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]*\Z")
DELINEA_RE = re.compile(r"^secret://delinea/([1-9][0-9]{0,18})\Z")
VAULTS_RE = re.compile(
    r"^secret://vaults/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})/([A-Za-z_][A-Za-z0-9_]{0,127})\Z"
)
SECRET_PREFIX = "secret://"
NETWORK_VALUES = ("internal", "none")
TOP_KEYS = ("apiVersion", "kind", "name", "runtime", "capabilities", "environments",
            "networkPolicies")  # fmt: skip
MAX_NAME = 63
MAX_RUNTIME = 128
MAX_CAPABILITY = 64
MAX_ENV_NAME = 32
MAX_VAR_NAME = 128
MAX_VALUE = 4096
MAX_ENVIRONMENTS = 64
MAX_VARS = 512
MAX_CAPABILITIES = 64


@dataclass(frozen=True)
class Violation:
    """One broken rule: where (`field`, a dotted path) and what."""

    field: str
    message: str

    def to_json(self) -> dict[str, str]:
        """`{"field", "message"}`."""
        return {"field": self.field, "message": self.message}


@dataclass(frozen=True)
class SecretRef:
    """A parsed secret reference: `delinea` (an id) or `vaults` (a vault and a key)."""

    provider: str
    vault: str = ""
    key: str = ""
    secret_id: int = 0


def parse_secret(value: str) -> SecretRef | None:
    """The reference `value` holds, or None for a literal (or a malformed reference)."""
    if match := VAULTS_RE.match(value):
        return SecretRef("vaults", vault=match.group(1), key=match.group(2))
    if match := DELINEA_RE.match(value):
        return SecretRef("delinea", secret_id=int(match.group(1)))
    return None


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _rule(pattern: re.Pattern[str]) -> str:
    """The pattern as the original's schema writes it (`$`, not Python's `\\Z`)."""
    return pattern.pattern.removesuffix("\\Z") + "$"


def _string(
    out: list[Violation], path: str, value: Any, pattern: re.Pattern[str], max_len: int
) -> None:
    if not isinstance(value, str):
        out.append(Violation(path, "must be a string"))
    elif not 1 <= len(value) <= max_len:
        out.append(Violation(path, f"must be 1 to {max_len} characters"))
    elif not pattern.match(value):
        out.append(Violation(path, f"{_shown(value)} must match {_rule(pattern)}"))


def violations(raw: Any, prefix: str = "") -> list[Violation]:
    """Every rule `raw` breaks, each with its field path under `prefix`."""
    if not isinstance(raw, dict):
        return [Violation(prefix or "spec", "must be a JSON object")]
    out: list[Violation] = []
    for key in raw:
        if key not in TOP_KEYS:
            out.append(Violation(_join(prefix, str(key)), "unknown field"))
    for key in ("apiVersion", "kind", "name", "runtime", "environments", "networkPolicies"):
        if key not in raw:
            out.append(Violation(_join(prefix, key), "is required"))
    if "apiVersion" in raw and raw["apiVersion"] != API_VERSION:
        out.append(Violation(_join(prefix, "apiVersion"), f"must be {API_VERSION!r}"))
    if "kind" in raw and raw["kind"] != KIND:
        out.append(Violation(_join(prefix, "kind"), f"must be {KIND!r}"))
    if "name" in raw:
        _string(out, _join(prefix, "name"), raw["name"], NAME_RE, MAX_NAME)
    if "runtime" in raw:
        _string(out, _join(prefix, "runtime"), raw["runtime"], RUNTIME_RE, MAX_RUNTIME)
    if "capabilities" in raw:
        _capabilities(out, _join(prefix, "capabilities"), raw["capabilities"])
    if "environments" in raw:
        _environments(out, _join(prefix, "environments"), raw["environments"])
    if "networkPolicies" in raw:
        _network(out, _join(prefix, "networkPolicies"), raw["networkPolicies"])
    return out


def _capabilities(out: list[Violation], path: str, value: Any) -> None:
    if not isinstance(value, list):
        out.append(Violation(path, "must be an array of strings"))
        return
    if len(value) > MAX_CAPABILITIES:
        out.append(Violation(path, f"must hold at most {MAX_CAPABILITIES} capabilities"))
    seen: set[str] = set()
    for index, item in enumerate(value):
        item_path = f"{path}[{index}]"
        _string(out, item_path, item, CAPABILITY_RE, MAX_CAPABILITY)
        if isinstance(item, str):
            if item in seen:
                out.append(Violation(item_path, f"{_shown(item)} is listed twice"))
            seen.add(item)


def _environments(out: list[Violation], path: str, value: Any) -> None:
    if not isinstance(value, dict):
        out.append(Violation(path, "must be an object of environments"))
        return
    if not value:
        out.append(Violation(path, "must define at least one environment"))
    if len(value) > MAX_ENVIRONMENTS:
        out.append(Violation(path, f"must define at most {MAX_ENVIRONMENTS} environments"))
    for name, env in value.items():
        env_path = f"{path}.{name}"
        if len(name) > MAX_ENV_NAME or not ENV_NAME_RE.match(name):
            out.append(
                Violation(
                    env_path,
                    f"environment name {_shown(name)} must be at most {MAX_ENV_NAME} "
                    f"characters matching {_rule(ENV_NAME_RE)}",
                )
            )
        if not isinstance(env, dict):
            out.append(Violation(env_path, 'must be an object ({"vars": {...}})'))
            continue
        for key in env:
            if key != "vars":
                out.append(Violation(f"{env_path}.{key}", "unknown field"))
        if "vars" in env:
            _vars(out, f"{env_path}.vars", env["vars"])


def _vars(out: list[Violation], path: str, value: Any) -> None:
    if not isinstance(value, dict):
        out.append(Violation(path, "must be an object of variables"))
        return
    if len(value) > MAX_VARS:
        out.append(Violation(path, f"must hold at most {MAX_VARS} variables"))
    for name, text in value.items():
        var_path = f"{path}.{name}"
        if len(name) > MAX_VAR_NAME or not VAR_NAME_RE.match(name):
            out.append(
                Violation(
                    var_path,
                    f"variable name must be at most {MAX_VAR_NAME} characters matching "
                    f"{_rule(VAR_NAME_RE)}",
                )
            )
        if not isinstance(text, str):
            out.append(Violation(var_path, "must be a string"))
        elif len(text) > MAX_VALUE:
            out.append(Violation(var_path, f"must be at most {MAX_VALUE} characters"))
        elif "\x00" in text:
            out.append(Violation(var_path, "must not contain NUL characters"))
        elif text.startswith(SECRET_PREFIX) and parse_secret(text) is None:
            # The value is never repeated: it may be a secret pasted in the wrong place.
            out.append(
                Violation(
                    var_path,
                    "a secret reference must be secret://delinea/<positive integer> or "
                    "secret://vaults/<vault>/<key>",
                )
            )


def _network(out: list[Violation], path: str, value: Any) -> None:
    if not isinstance(value, dict):
        out.append(Violation(path, "must be an object with ingress and egress"))
        return
    for key in value:
        if key not in ("ingress", "egress"):
            out.append(Violation(f"{path}.{key}", "unknown field"))
    for key in ("ingress", "egress"):
        if key not in value:
            out.append(Violation(f"{path}.{key}", "is required"))
        elif value[key] not in NETWORK_VALUES:
            out.append(Violation(f"{path}.{key}", "must be 'internal' or 'none'"))


def normalized(raw: dict[str, Any]) -> dict[str, Any]:
    """A valid spec with its optional parts filled in (`capabilities`, `vars`)."""
    return {
        "apiVersion": raw["apiVersion"],
        "kind": raw["kind"],
        "name": raw["name"],
        "runtime": raw["runtime"],
        "capabilities": list(raw.get("capabilities", [])),
        "environments": {
            name: {"vars": dict(env.get("vars", {}))} for name, env in raw["environments"].items()
        },
        "networkPolicies": {
            "ingress": raw["networkPolicies"]["ingress"],
            "egress": raw["networkPolicies"]["egress"],
        },
    }


def secret_refs(spec: dict[str, Any]) -> list[tuple[str, str, SecretRef]]:
    """Every secret reference of a valid spec: (environment, variable, reference)."""
    found: list[tuple[str, str, SecretRef]] = []
    for env, config in spec["environments"].items():
        for name, value in config["vars"].items():
            ref = parse_secret(value)
            if ref is not None:
                found.append((env, name, ref))
    return found
