"""Every hook is typed, documented in its docstring and in docs/plugins.md, and called by a test.

"Called by a test": each hook ``runink_X`` has a test function ``test_hook_runink_X`` in tests/
that calls it, directly (``pm.hook.runink_X(...)``, ``manager.hooks.X(...)``) or through the
core functions that do. Read from the source, by name: a call of a function of core/ or
runink.testing whose body reaches the hook. Names are not resolved to their class, so a test may
be credited through a same-named function; a test that calls nothing reaching the hook (one
that only defines an implementation of it) is not. Every driver group is documented.
"""

from __future__ import annotations

import ast
import functools
import inspect
from pathlib import Path

import pytest

from runink.core import hookspecs
from runink.core.drivers import DRIVER_GROUPS
from runink.core.plugins import hook_names

REPO = Path(__file__).resolve().parent.parent
GUIDE = (REPO / "docs" / "plugins.md").read_text()
TEST_FUNCTIONS = {
    node.name: node
    for path in (REPO / "tests").glob("test_*.py")
    for node in ast.walk(ast.parse(path.read_text()))
    if isinstance(node, ast.FunctionDef)
}
#: test fixtures that run the core in a child process -> the core functions they run
CHILD_ENTRY_POINTS = {"run_cli": {"main"}}  # `python -m runink ARGS`: runink.core.cli.app.main


def _called_names(function: ast.FunctionDef) -> set[str]:
    """Names of what ``function``'s own body calls (``f(...)``, ``x.f(...)``), a hook call as
    ``runink_X`` (``x.hook.runink_X(...)``, ``...call_historic(...)``, ``x.hooks.X(...)``).
    Calls inside nested classes (hook implementations) and ``@hookimpl`` functions are theirs."""
    names: set[str] = set()
    pending: list[ast.AST] = list(function.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.ClassDef) or (
            isinstance(node, ast.FunctionDef) and any("hookimpl" in ast.unparse(d) for d in node.decorator_list)
        ):
            continue
        pending.extend(ast.iter_child_nodes(node))
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "call_historic":
            func = func.value
        if isinstance(func, ast.Name):
            names.add(func.id)
        elif isinstance(func, ast.Attribute):
            owner = func.value.attr if isinstance(func.value, ast.Attribute) else getattr(func.value, "id", "")
            if owner == "hooks":  # the typed facade: manager.hooks.lineage_event(...)
                names.add(f"runink_{func.attr}")
            names.add(func.attr)  # x.hook.runink_X(...) is already runink_X
    return names


@functools.cache
def _hooks_reached() -> dict[str, set[str]]:
    """Function name (core/, runink.testing) -> the hooks it calls, directly or not."""
    calls: dict[str, set[str]] = {}
    for folder in ("core", "package_root"):
        assert (REPO / folder).is_dir(), f"no folder {folder} in the checkout"  # (a rename must not empty this)
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef) and not node.name.startswith("__"):
                    calls.setdefault(node.name, set()).update(_called_names(node))
    for fixture, entry in CHILD_ENTRY_POINTS.items():
        calls.setdefault(fixture, set()).update(entry)
    hooks = set(hook_names())
    reached = {name: callees & hooks for name, callees in calls.items()}
    changed = True
    while changed:  # to a fixed point: what a callee reaches, its callers reach
        changed = False
        for name, callees in calls.items():
            more = set().union(*(reached.get(callee, set()) for callee in callees)) - reached[name]
            if more:
                reached[name] |= more
                changed = True
    return reached


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
    test = f"test_{name.replace('runink_', 'hook_runink_')}"
    assert test in TEST_FUNCTIONS, f"no {test} in tests/"
    reached = _hooks_reached()
    called = _called_names(TEST_FUNCTIONS[test])
    assert name in called or any(name in reached.get(callee, ()) for callee in called), (
        f"{test} does not call {name} (directly, through manager.hooks or a core function that does)"
    )


def test_a_test_that_only_names_its_hook_is_caught() -> None:
    """The check above reads calls, not names: a test that defines an implementation and
    asserts on nothing the core called does not count; one that goes through the core does."""
    only_names = ast.parse(
        "def test_hook_runink_export_log():\n"
        "    class Sink:\n"
        "        @hookimpl\n"
        "        def runink_export_log(self, entry):\n"
        "            export_metrics(manager, [])\n"
        "    assert Sink().runink_export_log\n"
    ).body[0]
    through_core = ast.parse("def t():\n    with plugin_manager() as m:\n        export_log(m, entry)\n").body[0]
    direct = ast.parse("def t():\n    m.pm.hook.runink_export_log(entry=e)\n    m.hooks.export_metrics([])\n").body[0]
    assert isinstance(only_names, ast.FunctionDef) and isinstance(through_core, ast.FunctionDef)
    assert isinstance(direct, ast.FunctionDef)
    reached = _hooks_reached()

    def reaches(function: ast.FunctionDef) -> set[str]:
        called = _called_names(function)
        return (called & set(hook_names())).union(*(reached.get(name, set()) for name in called))

    assert "runink_export_log" not in reaches(only_names)
    assert "runink_export_log" in reaches(through_core)
    assert {"runink_export_log", "runink_export_metrics"} <= reaches(direct)


@pytest.mark.parametrize("group", sorted(DRIVER_GROUPS))
def test_driver_group_is_in_the_plugin_guide(group: str) -> None:
    assert f"`{group}`" in GUIDE


def test_guide_lists_no_hook_that_does_not_exist() -> None:
    documented = {line.split("`")[1] for line in GUIDE.splitlines() if line.startswith("### `runink_")}
    assert documented == set(hook_names())
