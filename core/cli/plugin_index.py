"""The index of ``runink plugins list``: every plugin's and driver's row, as the last full check
found them, answered again while nothing that check depended on has changed.

The full check loads the config, every hook plugin and every driver, and probes each executor
(~0.6-1 s). Its rows are kept in ``$XDG_CACHE_HOME/runink/plugins.json`` (index_store) under a
fingerprint of: runink's version and interpreter, the import path's folders (installing,
upgrading or removing a package changes them), the config files, every ``RUNINK_*`` variable and
``--set`` override, this user, the kernel's release and boot (an executor's capabilities are
probed on this host), and the mtimes of every module the check imported from outside
site-packages and the standard library (an editable install's sources, a plugin in
development on PYTHONPATH). Anything else changed, and the next listing checks in full
again; ``runink plugins list --refresh`` always does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from runink.core.cli import index_store

NAME = "plugins"  # the index's file: index_store.cache_file(NAME)

_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "kind": (str,),
    "group": (str,),
    "package": (str, type(None)),
    "version": (str, type(None)),
    "source": (str,),
    "hooks": (list,),
    "status": (str,),
    "error": (str, type(None)),
}


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as handle:
            return handle.read(64).decode("ascii", "replace").strip()
    except OSError:
        return ""


def fingerprint(config_path: Path | None, overrides: dict[str, str]) -> str:
    uname = os.uname()
    host = {"uid": os.geteuid(), "kernel": [uname.release, uname.version], "boot": _boot_id()}
    return index_store.fingerprint(config_path, overrides, "RUNINK_", host=host)


def load(key: str) -> dict[str, Any] | None:
    """``{"records": [...], "hooks": [...], "groups": [...], "checked": unix time}`` stored under
    ``key``, or None."""
    stored = index_store.load(NAME, key)
    try:
        if not isinstance(stored, dict):
            return None
        records, hooks, groups, checked = stored["records"], stored["hooks"], stored["groups"], stored["checked"]
        if not isinstance(checked, (int, float)):
            return None
        if not all(isinstance(v, list) and all(isinstance(n, str) for n in v) for v in (hooks, groups)):
            return None
        if not isinstance(records, list) or not all(_is_record(r) for r in records):
            return None
        return {"records": records, "hooks": hooks, "groups": groups, "checked": checked}
    except (KeyError, TypeError):  # edited by hand: check in full
        return None


def _is_record(raw: Any) -> bool:
    return (
        isinstance(raw, dict)
        and all(isinstance(raw.get(name), kinds) for name, kinds in _RECORD_TYPES.items())
        and all(isinstance(h, str) for h in raw["hooks"])
        and isinstance(raw.get("details", {}), dict)
        and _details_ok(raw.get("details", {}))
    )


def _details_ok(details: dict[str, Any]) -> bool:
    """The details a listing reads, of the types it reads them as (an index edited to hold
    ``"unenforced": 5`` crashed `runink plugins list`, "internal error", until --refresh)."""
    unenforced, hooks = details.get("unenforced", {}), details.get("hooks", [])
    if not isinstance(unenforced, dict) or not all(isinstance(k, str) for k in unenforced):
        return False  # (what cannot be enforced -> why)
    if not isinstance(hooks, list) or not all(isinstance(name, str) for name in hooks):
        return False
    return isinstance(details.get("isolation", ""), (str, type(None)))


def save(key: str, found: dict[str, Any]) -> None:
    """Store a full check (as load returns it); valid while the modules it imported from
    outside site-packages and the standard library keep their mtimes (_own_module_files)."""
    index_store.save(NAME, key, found, _own_module_files())


def _own_module_files() -> set[str]:
    """Files of the imported modules, except those pip installs (site-packages) and the standard
    library's: a package installed, upgraded or removed changes its site folder, in the
    fingerprint; a file edited in place (an editable install, a folder on PYTHONPATH) does not."""
    from runink.core.pipeline.probe import imported_files  # (the dry run's check lists the same)

    return set(imported_files())
