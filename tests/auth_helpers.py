"""Tests' helper for the REST API with authentication on: the app over a memory-Barn store
holding herds "team" and "other", node n1 and one job of team, the cluster's own tokens and
the rbac plugin (plus ``plugins``), as tests/test_api_auth.py and tests/test_api_fuzz.py use it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from runink.core.config import AdmissionConfig
from runink.core.control.admission import Admission
from runink.core.control.lifecycle import Lifecycle
from runink.core.control.records import Amount, Herd, NodeRecord
from runink.core.control.store import ClusterStore
from runink.core.server.api import create_app
from runink.core.server.auth import LEEWAY, MAX_TTL, ApiAuth, ClusterTokens, new_key_file
from runink.core.server.revocations import Revocations
from runink.plugins.auth.rbac import HerdRbac
from runink.plugins.barn.memory import MemoryBarn
from runink.plugins.secrets.barn import BarnSecrets
from runink.testing import plugin_manager

#: the value of herd "team"'s secret db_password (no answer, log or record may hold it)
SECRET_VALUE = b"hunter2-s3cr3t-value"

GiB = 1024**3


@dataclass
class SecuredApp:
    app: FastAPI
    store: ClusterStore
    lifecycle: Lifecycle
    tokens: ClusterTokens
    job: str  # the one job of herd "team" (its command echoes "secret-output")


@contextmanager
def secured_app(folder: Path, *plugins: tuple[str, Any]) -> Iterator[SecuredApp]:
    new_key_file(folder / "key.pem")
    tokens = ClusterTokens([folder / "key.pem"])
    store = ClusterStore(MemoryBarn())
    tokens.revocations = Revocations(store.barn, max_ttl=MAX_TTL, leeway=LEEWAY)  # (as a server has them)
    for herd in ("team", "other"):
        store.create_herd(Herd(name=herd))
    lifecycle = Lifecycle(store, secrets=BarnSecrets(store.barn, master_key=bytes(range(32)), herds=True))
    lifecycle.secrets.put("team", "db_password", SECRET_VALUE)  # type: ignore[union-attr]
    lifecycle.register_node(NodeRecord(id="n1", capacity=Amount(cpu=4, memory=16 * GiB)))
    job = lifecycle.submit_command("team", ["/bin/echo", "secret-output"]).id
    with plugin_manager(("cluster-tokens", tokens), ("rbac", HerdRbac()), *plugins, entrypoints=False) as manager:
        admission = Admission(store, manager, AdmissionConfig())  # (records who submits each job)
        auth = ApiAuth(manager, store, tokens=tokens)  # (as a server has it: checked tokens known at once)
        app = create_app(lifecycle, store, auth=auth, tokens=tokens, admission=admission)
        yield SecuredApp(app, store, lifecycle, tokens, job)
