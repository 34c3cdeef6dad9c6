"""runqy's YAML configuration: what loads, and errors that name the file and the key."""

from __future__ import annotations

import pytest
from courtyard_queues.config import (
    ConfigError,
    format_duration,
    load_file,
    load_files,
    normalize,
    parse_duration,
    parse_queue,
)
from courtyard_queues.schemas import PayloadError, apply_input
from courtyard_queues.service import weighted_order
from queues_kit import CONFIG, write_config

DEPLOYMENT = {"git_url": "https://example.invalid/r.git", "startup_cmd": "python main.py"}


def test_the_kit_configuration_loads(tmp_path):
    queues = {q.name: q for q in load_file(write_config(tmp_path))}
    inference = queues["inference"]
    assert inference.full_names == ["inference.high", "inference.low"]
    assert inference.priority_of("inference.low") == 3 and inference.top_priority == 6
    assert inference.effective_mode == "long_running"
    assert queues["simple"].full_names == ["simple.default"]
    assert queues["simple"].effective_mode == "one_shot"
    assert queues["simple"].deployment.limits.max_retry == 2
    assert queues["strict"].strict_priority is True
    typed = queues["typed"]
    assert [f.name for f in typed.input] == ["prompt", "width"]
    assert typed.input[1].required is False and typed.input[1].default == 512
    assert queues["strict"].deployment.branch == "main"
    assert queues["strict"].deployment.requirements_file == "requirements.txt"
    assert CONFIG  # the kit's text is what was written


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"deployment": DEPLOYMENT}, "queues.q: either priority or sub_queues is required"),
        ({"priority": 1}, "queues.q.deployment: required"),
        ({"priority": 0, "deployment": DEPLOYMENT}, "queues.q.priority: Input should be greater"),
        (
            {"priority": 1, "deployment": {"git_url": "g"}},
            "queues.q.deployment.startup_cmd: required",
        ),
        (
            {"sub_queues": [{"name": "a", "priority": 1}, {"name": "b"}], "deployment": DEPLOYMENT},
            "queues.q.sub_queues[1].priority: required",
        ),
        (
            {"sub_queues": [{"name": "a.b", "priority": 1}], "deployment": DEPLOYMENT},
            "queues.q.sub_queues[0].name: 'a.b' cannot contain '.'",
        ),
        (
            {"sub_queues": [{"name": "a", "priority": 1}] * 2, "deployment": DEPLOYMENT},
            "two sub-queues share a name",
        ),
        (
            {"priority": 1, "deployment": {**DEPLOYMENT, "mode": "forever"}},
            "queues.q.deployment.mode",
        ),
        (
            {
                "priority": 1,
                "mode": "one_shot",
                "deployment": {**DEPLOYMENT, "mode": "long_running"},
            },
            "disagree",
        ),
        (
            {"priority": 1, "deployment": {**DEPLOYMENT, "limits": {"ttl_completed": "24hh"}}},
            "queues.q.deployment.limits.ttl_completed: invalid duration '24hh'",
        ),
        (
            {"priority": 1, "deployment": {**DEPLOYMENT, "limits": {"max_retry": -1}}},
            "queues.q.deployment.limits.max_retry",
        ),
        (
            {"priority": 1, "deployment": DEPLOYMENT, "input": [{"name": "x", "type": ["text"]}]},
            "queues.q.input[0].type[0]",
        ),
    ],
)
def test_bad_entries_name_their_key(entry, message):
    with pytest.raises(ConfigError) as raised:
        parse_queue("q", entry, "file.yaml")
    assert str(raised.value).startswith("file.yaml: ")
    assert message in str(raised.value)


def test_files_folders_duplicates_and_unknown_keys(tmp_path):
    folder = tmp_path / "conf"
    write_config(
        folder,
        "queues:\n  a:\n    priority: 1\n    deployment: {git_url: g, startup_cmd: c}\n"
        "    autoscale: {max: 2}\n",
        "a.yaml",
    )
    write_config(
        folder,
        "queues:\n  a:\n    priority: 2\n    deployment: {git_url: g, startup_cmd: c}\n",
        "b.yml",
    )
    write_config(folder, "queues: [1, 2]\n", "c.yaml")
    write_config(folder, "key: [unclosed\n", "d.yaml")
    write_config(folder, "", "e.yaml")  # empty: no queues, no error
    write_config(folder, "ignored", "notes.txt")
    found = load_files([folder])
    assert list(found.queues) == ["a"] and found.queues["a"][1].endswith("a.yaml")
    assert len(found.errors) == 3
    assert "b.yml: queues.a: already defined in" in found.errors[0]
    assert "c.yaml: queues: must be a mapping" in found.errors[1]
    assert "d.yaml: not valid YAML" in found.errors[2]
    assert found.warnings == [f"{folder / 'a.yaml'}: queues.a.autoscale: unknown key, ignored"]
    missing = load_files([tmp_path / "nowhere"])
    assert "no such file or folder" in missing.errors[0]


def test_durations_and_names():
    assert parse_duration("90s") == 90
    assert parse_duration("1h30m") == 5400
    assert parse_duration("1.5h") == 5400
    assert parse_duration("300ms") == pytest.approx(0.3)
    assert parse_duration("0") == 0 and parse_duration(12) == 12
    for bad in ("", "10", "5 m", "-1s", "1d", True):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert format_duration(300) == "5m0s"
    assert format_duration(5400) == "1h30m0s"
    assert format_duration(0.5) == "0.5s" and format_duration(0) == "0s"
    assert normalize("inference") == "inference.default"
    assert normalize("inference.high") == "inference.high"


def test_input_fields():
    config = parse_queue(
        "q",
        {
            "priority": 1,
            "deployment": DEPLOYMENT,
            "input": [
                {"name": "n", "type": "int"},
                {"name": "tags", "type": ["array", "string"], "required": False},
                {"name": "ratio", "type": ["float"], "required": False, "default": 0.5},
            ],
        },
    )
    assert apply_input({"n": 2.0, "extra": True}, config.input) == {
        "n": 2,
        "extra": True,
        "ratio": 0.5,
    }
    assert apply_input({"n": 1, "tags": "x", "ratio": 2}, config.input)["tags"] == "x"
    with pytest.raises(PayloadError, match="field 'tags' has type object"):
        apply_input({"n": 1, "tags": {}}, config.input)
    with pytest.raises(PayloadError, match="field 'n' has type bool"):
        apply_input({"n": True}, config.input)
    assert apply_input("anything", ()) == "anything"


def test_weighted_order_is_proportional_to_priority():
    import random

    rand = random.Random(7)
    firsts = [weighted_order([("a", 6), ("b", 3), ("c", 1)], rand)[0] for _ in range(10000)]
    assert abs(firsts.count("a") / 10000 - 0.6) < 0.02
    assert abs(firsts.count("c") / 10000 - 0.1) < 0.01
    assert sorted(weighted_order([("a", 1), ("b", 1)], rand)) == ["a", "b"]
