"""What the pipeline writes: the starter app of a runtime, its Dockerfile, and the
Kubernetes objects of an environment (Deployment, Service, NetworkPolicies).

Secret references never reach these files in clear: a variable holding one is rendered as
a `secretKeyRef` to the environment's Secret (`<name>-<env>-secrets`, key = the variable),
and the Deployment's pod template carries a keyed digest of the resolved values, so that
a changed secret rolls the pods without the value being written anywhere.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Any

import yaml

from .spec import parse_secret

PORT = 8080
LABEL = "platform.example.com/project"


@dataclass(frozen=True)
class Runtime:
    """A runtime family (`go`, `python`, `node`, or another) and its version."""

    family: str
    version: str


def runtime_of(name: str) -> Runtime:
    """`go_1.26` -> go 1.26; `python-3.12` -> python 3.12; `nodejs` -> nodejs ''."""
    match = re.match(r"^([a-z0-9]+)(?:[_-]([a-z0-9_.-]+))?$", name)
    family, version = (match.group(1), match.group(2) or "") if match else (name, "")
    aliases = {"golang": "go", "py": "python", "nodejs": "node"}
    return Runtime(aliases.get(family, family), version)


def starter_files(name: str, runtime: str) -> dict[str, bytes]:
    """A small HTTP app for the runtime, answering on port 8080."""
    family = runtime_of(runtime).family
    readme = (
        f"# {name}\n\nStarter app created by the platform for runtime `{runtime}`.\n"
        "Commit on `main` to run CI: the post-commit hook tells the platform.\n"
    )
    if family == "go":
        version = runtime_of(runtime).version or "1.22"
        files = {
            "go.mod": f"module example.com/{name}\n\ngo {version}\n",
            "main.go": (
                'package main\n\nimport (\n\t"fmt"\n\t"net/http"\n)\n\n'
                'func main() {\n\thttp.HandleFunc("/", func(w http.ResponseWriter, '
                "r *http.Request) {\n"
                f'\t\tfmt.Fprintln(w, "hello from {name}")\n\t}})\n'
                '\t_ = http.ListenAndServe(":8080", nil)\n}\n'
            ),
        }
    elif family == "python":
        files = {
            "app.py": (
                "from http.server import BaseHTTPRequestHandler, HTTPServer\n\n\n"
                "class Hello(BaseHTTPRequestHandler):\n"
                "    def do_GET(self):\n"
                "        self.send_response(200)\n        self.end_headers()\n"
                f'        self.wfile.write(b"hello from {name}\\n")\n\n\n'
                'HTTPServer(("", 8080), Hello).serve_forever()\n'
            )
        }
    elif family == "node":
        files = {
            "index.js": (
                "require('http').createServer((req, res) => "
                f"res.end('hello from {name}\\n')).listen(8080);\n"
            ),
            "package.json": f'{{"name": "{name}", "private": true, "main": "index.js"}}\n',
        }
    else:
        files = {"public/index.html": f"<!doctype html><title>{name}</title><p>{name}</p>\n"}
    files["README.md"] = readme
    return {path: text.encode() for path, text in files.items()}


def dockerfile(runtime: str) -> str:
    """The Dockerfile that builds the starter app of `runtime`."""
    spec = runtime_of(runtime)
    version = spec.version
    if spec.family == "go":
        return (
            f"FROM golang:{version or '1.22'} AS build\nWORKDIR /src\nCOPY . .\n"
            "RUN CGO_ENABLED=0 go build -o /app .\n\n"
            "FROM gcr.io/distroless/static-debian12\nCOPY --from=build /app /app\n"
            f'EXPOSE {PORT}\nUSER 65532:65532\nENTRYPOINT ["/app"]\n'
        )
    if spec.family == "python":
        return (
            f"FROM python:{version or '3.12'}-slim\nWORKDIR /app\nCOPY . .\n"
            f'EXPOSE {PORT}\nUSER 65532:65532\nCMD ["python", "app.py"]\n'
        )
    if spec.family == "node":
        return (
            f"FROM node:{version or '22'}-slim\nWORKDIR /app\nCOPY . .\n"
            f'EXPOSE {PORT}\nUSER node\nCMD ["node", "index.js"]\n'
        )
    return (
        "FROM busybox:1.36\nCOPY public /www\n"
        f'EXPOSE {PORT}\nCMD ["httpd", "-f", "-p", "{PORT}", "-h", "/www"]\n'
    )


def image_ref(registry: str, name: str, dockerfile_text: str, source_commit: str) -> str:
    """A content-addressed image reference: the tag is a digest of what the build takes
    (the Dockerfile and the source commit), so the same inputs give the same image."""
    digest = hashlib.sha256(dockerfile_text.encode() + b"\0" + source_commit.encode()).hexdigest()
    return f"{registry.rstrip('/')}/{name}:sha-{digest[:20]}"


def secret_name(name: str, env: str) -> str:
    """The Secret an environment's secret references point to (at most 253 characters)."""
    return f"{name}-{env.replace('_', '-')}-secrets"


def _env(name: str, env: str, variables: dict[str, str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for var, value in sorted(variables.items()):
        if parse_secret(value) is not None:
            ref = {"name": secret_name(name, env), "key": var}
            out.append({"name": var, "valueFrom": {"secretKeyRef": ref}})
        else:
            out.append({"name": var, "value": value})
    return out


def manifests(
    spec: dict[str, Any], env: str, image: str, secrets_digest: str | None
) -> dict[str, str]:
    """The environment's objects as YAML: `deployment.yaml`, `service.yaml` and
    `rendered.yaml` (every object, network policies included, as one stream)."""
    name = spec["name"]
    namespace = f"{name}-{env}".replace("_", "-")[:63].rstrip("-")
    labels = {"app.kubernetes.io/name": name, LABEL: name, "platform.example.com/env": env}
    selector = {"app.kubernetes.io/name": name, "platform.example.com/env": env}
    variables = spec["environments"].get(env, {"vars": {}})["vars"]
    annotations: dict[str, str] = {"platform.example.com/image": image}
    if "metrics" in spec["capabilities"]:
        annotations.update({"prometheus.io/scrape": "true", "prometheus.io/port": str(PORT)})
    if secrets_digest:
        annotations["platform.example.com/secrets-digest"] = secrets_digest
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
    }
    env_list = _env(name, env, variables)
    if env_list:
        container["env"] = env_list
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": {"containers": [container]},
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    objects = [deployment, service, *network_policies(spec, namespace, labels, selector)]
    validate(objects)
    return {
        "deployment.yaml": _dump(deployment),
        "service.yaml": _dump(service),
        "rendered.yaml": "---\n".join(_dump(obj) for obj in objects),
    }


class InvalidObject(ValueError):
    """A rendered object that its Kubernetes schema refuses."""


def validate(objects: list[dict[str, Any]]) -> None:
    """Check every object against the Kubernetes schema of its kind (strict: no unknown
    field), with the schemas of the newest Kubernetes version kubernetes-validate has.

    :raises InvalidObject: naming the object and the problem.
    """
    for obj in objects:
        errors = sorted(
            _validator(obj["kind"], obj["apiVersion"]).iter_errors(obj),
            key=lambda error: list(error.path),
        )
        if errors:
            first = errors[0]
            raise InvalidObject(
                f"{obj['kind']} {obj['metadata']['name']}: {first.message} "
                f"(at {'.'.join(str(p) for p in first.path) or 'the top'})"
            )


@functools.lru_cache(maxsize=16)
def _validator(kind: str, api_version: str) -> Any:
    """A validator of one kind, made once (kubernetes-validate's own `validate` reads its
    multi-megabyte definitions file on every call). jsonschema and kubernetes-validate
    (about 3 MiB resident) are imported here, when a first manifest is checked."""
    import jsonschema
    import kubernetes_validate
    from kubernetes_validate.utils import schema_contents
    from referencing import Registry, Resource

    version = kubernetes_validate.latest_version()
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = schema_contents(f"{folder}/{kind.lower()}-{group}.json", version)
    definitions = schema_contents(f"{folder}/_definitions.json", version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def network_policies(
    spec: dict[str, Any], namespace: str, labels: dict[str, str], selector: dict[str, str]
) -> list[dict[str, Any]]:
    """`internal`: traffic only with pods of the same namespace; `none`: no traffic."""
    policies = spec["networkPolicies"]
    out: list[dict[str, Any]] = []
    for direction in ("ingress", "egress"):
        policy_type = direction.capitalize()
        rules: list[dict[str, Any]] = []
        if policies[direction] == "internal":
            peer = [{"podSelector": {}}]
            rules = [{"from": peer}] if direction == "ingress" else [{"to": peer}]
            if direction == "egress":  # name resolution stays possible
                rules.append(
                    {
                        "to": [{"namespaceSelector": {}}],
                        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                    }
                )
        out.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {
                    "name": f"{spec['name']}-{direction}-{policies[direction]}",
                    "namespace": namespace,
                    "labels": labels,
                },
                "spec": {
                    "podSelector": {"matchLabels": selector},
                    "policyTypes": [policy_type],
                    direction: rules,
                },
            }
        )
    return out


def _dump(document: dict[str, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
