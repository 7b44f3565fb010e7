"""``python -m runink.core.pipeline.probe SPEC``: import a pipeline's step and contract modules
and check that each reference names what it should (a callable, a Contract subclass).

``runink run --dry-run`` starts it through the executor, as a slice: a module's import-time
code is the pipeline author's, so it never runs in the CLI process, and runs with the limits
and isolation a real run would give it. SPEC is a JSON file ``{"base_dir": ..., "refs":
[{"ref": "steps:normalize", "kind": "step"}, ...]}``; the answer is the last line on stdout
that starts with ``MARK``: a JSON list with one ``{"ref", "kind", "error"}`` per reference
(``error`` null when it is fine).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Any

MARK = "runink-probe-result: "
#: the line that lists the files of the modules the check imported (see imported_files)
FILES_MARK = "runink-probe-files: "
MAX_FILES = 20_000  # files listed, at most (a larger import graph: the check is not kept)


def check(ref: str, kind: str) -> str | None:
    """What is wrong with one reference, or None."""
    module_name, _, attribute = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:  # SystemExit, KeyboardInterrupt...: the module's answer too
        return f"importing module {module_name!r} raised {type(exc).__name__}: {exc}".splitlines()[0][:500]
    missing = object()
    target = getattr(module, attribute, missing)
    if target is missing:
        return f"module {module_name!r} has no {attribute!r}"
    if kind == "contract":
        from runink.core.contracts import Contract

        if not (isinstance(target, type) and issubclass(target, Contract)):
            return f"{attribute!r} is a {type(target).__name__}, not a runink.core.contracts.Contract subclass"
    elif not callable(target):
        return f"{attribute!r} is a {type(target).__name__}, not a function"
    return None


def main(argv: list[str] | None = None) -> int:
    """``argv``: the arguments after the module name (how the linux launcher calls ``main``)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m runink.core.pipeline.probe SPEC.json", file=sys.stderr)
        return 2
    with open(args[0], encoding="utf-8") as fh:
        spec: dict[str, Any] = json.load(fh)
    base_dir = str(spec["base_dir"])
    if base_dir not in sys.path:
        sys.path.insert(0, base_dir)  # as the slice does: the pipeline's modules come first
    results = [{"ref": r["ref"], "kind": r["kind"], "error": check(r["ref"], r["kind"])} for r in spec["refs"]]
    sys.stdout.write("\n" + FILES_MARK + json.dumps(imported_files()) + "\n")
    sys.stdout.write("\n" + MARK + json.dumps(results) + "\n")
    sys.stdout.flush()
    return 0


def imported_files() -> list[str]:
    """The source files of the imported modules, but the standard library's and site-packages'
    (a package installed or removed changes its site folder, which the dry run's record of a
    good check depends on anyway): what, edited, could change the check's answer."""
    import site
    import sysconfig

    paths = sysconfig.get_paths()
    installed = {*site.getsitepackages(), site.getusersitepackages(), paths["stdlib"], paths["platstdlib"]}
    installed |= {paths["purelib"], paths["platlib"]}
    skip = tuple(os.path.join(p, "") for p in installed if p)
    files = {
        file
        for module in list(sys.modules.values())
        if isinstance(file := getattr(module, "__file__", None), str)
        and os.path.isabs(file)
        and not file.startswith(skip)
    }
    return sorted(files)


if __name__ == "__main__":
    sys.exit(main())
