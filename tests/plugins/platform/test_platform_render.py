"""What the pipeline renders, without a runtime: manifests valid against the Kubernetes
schemas, starter apps and Dockerfiles per runtime, content-addressed images."""

from __future__ import annotations

import pytest
import yaml
from courtyard_platform import render
from platform_kit import spec


@pytest.mark.parametrize("ingress", ["internal", "none"])
@pytest.mark.parametrize("egress", ["internal", "none"])
def test_manifests_are_valid_kubernetes_objects(ingress: str, egress: str) -> None:
    body = spec(
        capabilities=["http", "metrics"],
        networkPolicies={"ingress": ingress, "egress": egress},
        environments={"qa_1": {"vars": {"A": "1", "T": "secret://vaults/keys/T"}}},
    )
    out = render.manifests(body, "qa_1", "registry.local/x/demo-app:sha-1", "f" * 64)
    objects = list(yaml.safe_load_all(out["rendered.yaml"]))
    render.validate(objects)  # strict: every field known to the schema
    assert objects[0] == yaml.safe_load(out["deployment.yaml"])
    assert objects[1] == yaml.safe_load(out["service.yaml"])
    assert objects[0]["metadata"]["namespace"] == "demo-app-qa-1"
    annotations = objects[0]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    ingress_rules = objects[2]["spec"]["ingress"]
    assert (ingress_rules == []) == (ingress == "none")
    assert (objects[3]["spec"]["egress"] == []) == (egress == "none")


def test_an_invalid_object_is_refused_with_its_name() -> None:
    broken = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": "eighty"}]},
    }
    with pytest.raises(render.InvalidObject, match="Service x"):
        render.validate([broken])
    unknown = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"colour": "blue"},
    }
    with pytest.raises(render.InvalidObject):
        render.validate([unknown])


@pytest.mark.parametrize(
    ("runtime", "entry", "base"),
    [
        ("go_1.26", "main.go", "FROM golang:1.26"),
        ("python_3.12", "app.py", "FROM python:3.12-slim"),
        ("node-22", "index.js", "FROM node:22-slim"),
        ("rust_1.80", "public/index.html", "FROM busybox"),
    ],
)
def test_starter_apps_and_dockerfiles(runtime: str, entry: str, base: str) -> None:
    files = render.starter_files("demo-app", runtime)
    assert entry in files and "README.md" in files
    assert render.dockerfile(runtime).startswith(base)


def test_images_are_content_addressed() -> None:
    one = render.image_ref("reg/p", "app", "FROM x\n", "c1")
    assert one == render.image_ref("reg/p/", "app", "FROM x\n", "c1")
    assert one != render.image_ref("reg/p", "app", "FROM x\n", "c2")
    assert one != render.image_ref("reg/p", "app", "FROM y\n", "c1")
    assert one.startswith("reg/p/app:sha-")
