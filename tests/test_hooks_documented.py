"""Every hook is typed, documented in its docstring and in docs/plugins.md, and called by a test.

"Called by a test" is enforced by name: each hook ``runink_X`` must have a test function
``test_hook_runink_X`` in tests/ (those tests call the hook through the core and assert
on the result). The same holds for every driver group: documented and with a conformance
suite or tests.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from runink.core import hookspecs
from runink.core.drivers import DRIVER_GROUPS
from runink.core.plugins import hook_names

REPO = Path(__file__).resolve().parent.parent
GUIDE = (REPO / "docs" / "plugins.md").read_text()
TEST_FUNCTIONS = {
    node.name
    for path in (REPO / "tests").glob("test_*.py")
    for node in ast.walk(ast.parse(path.read_text()))
    if isinstance(node, ast.FunctionDef)
}


def test_there_are_hooks() -> None:
    assert len(hook_names()) >= 10


@pytest.mark.parametrize("name", hook_names())
def test_hook_is_specified_with_types_and_docstring(name: str) -> None:
    function = getattr(hookspecs, name)
    doc = inspect.getdoc(function) or ""
    assert len(doc.split()) >= 15, f"{name} needs a docstring saying when it is called and what it returns"
    assert "Called" in doc, f"{name}'s docstring must say when it is called"
    signature = inspect.signature(function)
    assert signature.return_annotation is not inspect.Signature.empty, f"{name} has no return annotation"
    for parameter in signature.parameters.values():
        assert parameter.annotation is not inspect.Parameter.empty, f"{name}({parameter.name}) is untyped"


@pytest.mark.parametrize("name", hook_names())
def test_hook_is_in_the_plugin_guide(name: str) -> None:
    assert f"### `{name}`" in GUIDE, f"docs/plugins.md has no section for {name}"


@pytest.mark.parametrize("name", hook_names())
def test_hook_has_a_test(name: str) -> None:
    assert f"test_{name.replace('runink_', 'hook_runink_')}" in TEST_FUNCTIONS, f"no test_hook_{name} in tests/"


@pytest.mark.parametrize("group", sorted(DRIVER_GROUPS))
def test_driver_group_is_in_the_plugin_guide(group: str) -> None:
    assert f"`{group}`" in GUIDE


def test_guide_lists_no_hook_that_does_not_exist() -> None:
    documented = {line.split("`")[1] for line in GUIDE.splitlines() if line.startswith("### `runink_")}
    assert documented == set(hook_names())
