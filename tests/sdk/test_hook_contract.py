"""Like Datasette's: every hook is documented, and every hook has a test."""

import inspect
import re
from pathlib import Path

import pytest
from courtyard_sdk import hookspecs

ROOT = Path(__file__).parents[2]
HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("courtyard_"))


def test_there_are_hooks():
    assert len(HOOKS) >= 8


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_full_docstring(hook):
    func = getattr(hookspecs, hook)
    doc = inspect.getdoc(func)
    assert doc, f"{hook} has no docstring"
    for param in inspect.signature(func).parameters:
        assert f":param {param}:" in doc, f"{hook} does not document {param}"
    if inspect.signature(func).return_annotation not in ("None", None):
        assert ":return:" in doc, f"{hook} does not document its return value"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_in_the_plugin_docs(hook):
    docs = "\n".join(p.read_text() for p in (ROOT / "docs").rglob("*.md"))
    assert re.search(rf"\b{hook}\b", docs), f"docs/ never mention {hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    tests = "\n".join(
        p.read_text() for p in (ROOT / "tests").rglob("test_*.py") if p.name != Path(__file__).name
    )
    assert re.search(rf"def test_\w*{hook}\w*", tests), f"no test function is named for {hook}"


def test_hookspecs_list_every_hook_in_the_module_docstring():
    for hook in HOOKS:
        assert hook in hookspecs.__doc__
