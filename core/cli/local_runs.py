"""The CLI's client of the runs ``runink run`` kept on this machine (core/history.py): it
answers the cluster API's calls that ``runink jobs list``, ``status``, ``logs`` and ``cancel``
make, in the same shapes, so those commands read an embedded run exactly as a cluster job."""

from __future__ import annotations

import base64
import os
import re
import signal
from pathlib import Path
from typing import Any

from runink.core.cli.cluster_client import ClusterError
from runink.core.history import FINAL, HistoryError, KeptRun, RunHistory

_JOB = re.compile(r"^/v1/jobs/([^/]+)$")
_LOGS = re.compile(r"^/v1/jobs/([^/]+)/logs$")
_CANCEL = re.compile(r"^/v1/jobs/([^/]+)/cancel$")
_DATASETS = re.compile(r"^/v1/catalog/jobs/([^/]+)$")


class LocalRuns:
    """``call(method, path, **params)`` as ClusterClient's, over the kept runs of ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.history = RunHistory(self.data_dir)
        # (herd, state) -> every kept run's job, read once: a listing's pages come from one read
        self._listed: dict[tuple[str | None, str | None], list[dict[str, Any]]] = {}

    def close(self) -> None:
        pass

    def _run(self, ident: str) -> KeptRun:
        kept = self.history.find(ident)
        if kept is None:
            raise ClusterError(f"job {ident!r}: not a run kept in {self.history.runs}", 404)
        return kept

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
        try:
            return self._answer(method, path, params)
        except HistoryError as exc:
            raise ClusterError(f"{method} {path}: {exc}", 404) from None

    def _answer(self, method: str, path: str, params: dict[str, Any]) -> Any:
        if method == "GET" and path == "/v1/jobs":
            jobs = self._jobs(params.get("herd"), params.get("state"), params.get("after"))
            limit = params.get("limit")
            if limit is None or len(jobs) <= int(limit):
                return {"jobs": jobs, "next": None}
            return {"jobs": jobs[: int(limit)], "next": jobs[int(limit) - 1]["id"]}
        if method == "GET" and (found := _JOB.match(path)):
            return self._run(found[1]).answer(explain=params.get("explain") == "true")
        if method == "GET" and (found := _LOGS.match(path)):
            attempt = params.get("attempt")
            read = self._run(found[1]).read_log(
                params.get("task"),
                params.get("stream", "stdout"),
                int(params.get("offset") or 0),
                None if attempt is None else int(attempt),
            )
            return {**read, "data": base64.b64encode(read["data"]).decode()}
        if method == "GET" and (found := _DATASETS.match(path)):
            kept = self._run(found[1])
            return {"job": kept.job_id, "scenarios": (kept.record or {}).get("datasets", [])}
        if method == "POST" and (found := _CANCEL.match(path)):
            return self._cancel(self._run(found[1]))
        raise ClusterError(f"{method} {path}: not for a run of `runink run` (it has no cluster)", 404)

    def _jobs(self, herd: str | None, state: str | None, after: str | None) -> list[dict[str, Any]]:
        """The kept runs' jobs past ``after``, in id order as a cluster's (ids sort by submission
        time). Every kept run is read once for all the pages of a listing."""
        key = (herd, state)
        if key not in self._listed:
            jobs = []
            for kept in self.history.all():
                if kept.record is None:
                    continue
                job = kept.answer()["job"]
                if (herd is None or job["herd"] == herd) and (state is None or job["state"] == state):
                    jobs.append(job)
            self._listed[key] = sorted(jobs, key=lambda job: str(job["id"]))
        listed = self._listed[key]
        return listed if after is None else [job for job in listed if str(job["id"]) > after]

    def _cancel(self, kept: KeptRun) -> dict[str, Any]:
        """A running one: its ``runink run`` process is sent SIGTERM (it stops its slices and
        exits 143, as on Ctrl-C); an ended one is left as it is, as the API does."""
        job = kept.answer()["job"]
        if job["state"] in FINAL or not kept.alive:
            return {"job": job}
        pid = int((kept.record or {})["pid"])
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass  # it ended meanwhile
        except PermissionError:
            raise ClusterError(f"job {job['id']}: its runink run (pid {pid}) is another user's", 403) from None
        return {"job": {**job, "state": "CANCELLED"}}
