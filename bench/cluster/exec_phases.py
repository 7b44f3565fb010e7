"""bench/cluster/exec_phases: where one `/bin/true` job's time goes, phase by phase.

    python bench/cluster/exec_phases.py      # as root

On a `runink up --servers 3 --agents 2` cluster (XDG_CONFIG_HOME in a temp dir, `runink down`
after), 3 warm-up jobs then 15 jobs one at a time, each waited for as `runink exec` does
(`GET /v1/jobs/ID?wait=5&after=REVISION`, from the revision the submission answered);
prints the median of each phase, from the job's submission time and its task's transition
times (the servers' clocks: the same machine).
"""

from __future__ import annotations

import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

RUNINK = [sys.executable, "-m", "runink"]
FINAL = {"SUCCEEDED", "FAILED", "OOMKILLED", "DEADLINE_EXCEEDED", "CANCELLED"}
WARM_UP, JOBS = 3, 15


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="runink-bench-phases-") as tmp:
        env = {**os.environ, "XDG_CONFIG_HOME": str(Path(tmp) / "xdg")}
        up = subprocess.run(
            [*RUNINK, "up", "--servers", "3", "--agents", "2", "--json", "--dir", str(Path(tmp) / "c")],
            capture_output=True, text=True, env=env, timeout=120, check=True,
        )  # fmt: skip
        apis = json.loads(up.stdout)["api"]
        api = apis[0]
        context = json.loads((Path(tmp) / "xdg" / "runink" / "cluster.json").read_text())
        verify = ssl.create_default_context(cafile=context["ca"])
        rows: list[dict[str, float]] = []
        try:
            headers = {"Authorization": f"Bearer {context['token']}"}
            with httpx.Client(timeout=10, headers=headers, verify=verify) as http:
                for i in range(WARM_UP + JOBS):
                    began = time.time()
                    answer = http.post(api + "/v1/jobs", json={"herd": "default", "command": ["/bin/true"]})
                    answer.raise_for_status()
                    # the next ones go where the answer says the cluster schedules, as the CLI's client does
                    named = answer.headers.get("x-runink-scheduler")
                    api = named if named in apis else api
                    posted = time.time()
                    job_id, revision = answer.json()["job"]["id"], answer.json()["revision"]
                    while True:  # each read waits on the server for the job's next change
                        got = http.get(f"{api}/v1/jobs/{job_id}", params={"wait": 5, "after": revision}).json()
                        revision = got["revision"]
                        if got["job"]["state"] in FINAL:
                            break
                    seen = time.time()
                    assert got["job"]["state"] == "SUCCEEDED", got["job"]["state"]
                    at = {t["state"]: t["at"] for t in got["tasks"][0]["transitions"]}
                    if i >= WARM_UP:
                        rows.append({
                            "POST": posted - began,
                            "submitted -> SCHEDULED": at["SCHEDULED"] - got["job"]["submitted"],
                            "SCHEDULED -> RUNNING": at["RUNNING"] - at["SCHEDULED"],
                            "RUNNING -> SUCCEEDED": at["SUCCEEDED"] - at["RUNNING"],
                            "SUCCEEDED -> seen": seen - at["SUCCEEDED"],
                            "total": seen - began,
                        })  # fmt: skip
        finally:
            subprocess.run([*RUNINK, "down"], env=env, capture_output=True, timeout=120, check=False)
    print(f"{len(rows)} jobs one at a time, medians (ms):")
    for phase in rows[0]:
        print(f"  {phase:24s} {statistics.median(r[phase] for r in rows) * 1000:7.1f}")


if __name__ == "__main__":
    main()
