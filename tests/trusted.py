"""A project's ./runink.toml trusted as its user would have (`runink config trust`): the
tests of a command are not about trust (test_config_trust.py is)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def trust_project_config(folder: Path, xdg_config: Path) -> None:
    """Trust ``folder``'s runink.toml as it is now, in the trust list under ``xdg_config``."""
    config = folder / "runink.toml"
    if config.is_file():
        store = xdg_config / "runink" / "trusted.json"
        files = json.loads(store.read_text())["files"] if store.is_file() else {}
        sha256 = hashlib.sha256(config.read_bytes()).hexdigest()
        if files.get(str(config.resolve())) == sha256:
            return  # (unchanged: the CLI's indexes, which follow the list's mtime, stay)
        files[str(config.resolve())] = sha256
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps({"version": 1, "files": files}))
