"""bench/cluster/exec_latency: `runink exec -- /bin/true` end to end, against Slurm's srun.

    python bench/cluster/exec_latency.py            # 500 jobs per client row, 100 CLI runs
    python bench/cluster/exec_latency.py --quick    # 50 / 20
    python bench/cluster/exec_latency.py --secure-vs-plain [--quick]   # TLS + auth on against off
    python bench/cluster/exec_latency.py --metrics-vs-none [--quick]   # /metrics scraped and logs shipped, against none

A local cluster of real processes (`runink up --servers 3 --agents 2`: three servers, each with
its raft Barn member, two agents with the linux executor) runs `/bin/true` as a job, from
submission (POST /v1/jobs) until SUCCEEDED is visible through the API:

* **runink, Python client**: one process, httpx, a job at a time, each read of the job waiting
  on the server for its next change (`?wait=5&after=REVISION`, as `runink exec` reads it);
* **runink, CLI**: `runink exec -- /bin/true`, the CLI's own start included (one run every
  N/CLI-runs client jobs, taking turns with them and srun);
* **srun /bin/true** (anchor, same machine, taking turns with the client row): Debian's
  slurm-wlm, one slurmctld and one slurmd with munge, task/none, proctrack/linuxproc, started
  by this bench in a temp dir on loopback ports (`apt-get install slurm-wlm munge` first);
* throughput (jobs/s): N short jobs, by 8 threads each running one job at a time (submit,
  wait until it ended, next); and, measured as Slurm is, the N jobs all submitted (8 threads)
  then waited for until all ended; against `sbatch --wrap=/bin/true` of N jobs (one after
  another) until Slurm's queue is empty.

Needs root. Traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import platform
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from runink.core.ports import free_ports

FINAL = {"SUCCEEDED", "FAILED", "OOMKILLED", "DEADLINE_EXCEEDED", "CANCELLED"}


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[max(0, int(len(ordered) * 0.99) - 1)]


class Runink:
    def __init__(
        self,
        root: Path,
        *,
        insecure: bool = False,
        metrics: bool = True,
        up_env: dict[str, str] | None = None,
        python: str = sys.executable,
    ) -> None:
        # ``python``: the interpreter whose Runink runs the cluster (another version's venv)
        self.runink = [python, "-m", "runink"]
        # the CLI row runs what users run: the venv's `runink` script (no runpy)
        script = Path(python).parent / "runink"
        self.cli = [str(script)] if script.exists() else self.runink
        self.env = {**os.environ, "XDG_CONFIG_HOME": str(root / "xdg")}
        flags = (["--insecure-dev"] if insecure else []) + ([] if metrics else ["--no-metrics"])
        up = subprocess.run(
            [*self.runink, "up", "--servers", "3", "--agents", "2", "--json", "--dir", str(root / "c"), *flags],
            capture_output=True, text=True, env={**self.env, **(up_env or {})}, timeout=120, check=True,
        )  # fmt: skip
        self.apis = json.loads(up.stdout)["api"]
        # asked first: the server the answers name as scheduling (X-Runink-Scheduler), as the
        # CLI's client does (a submission there is placed in the commit that stores it)
        self.api = self.apis[0]
        self.metrics = list(json.loads(up.stdout).get("metrics", {}).values())  # each process's /metrics
        # the admin token `runink up` gave the CLI, and its CA (its context file): TLS unless --insecure-dev
        context = json.loads((root / "xdg" / "runink" / "cluster.json").read_text())
        self.headers = {"Authorization": f"Bearer {context['token']}"}
        self.verify: ssl.SSLContext | bool = True
        if "ca" in context:
            self.verify = ssl.create_default_context(cafile=context["ca"])
        self.http = self.client(10)

    def client(self, timeout: float) -> httpx.Client:
        return httpx.Client(timeout=timeout, headers=self.headers, verify=self.verify)

    def run_one(self, client: httpx.Client | None = None) -> float:
        http = client or self.http
        started = time.perf_counter()
        self.wait_ended(http, *self.submit(http))
        return (time.perf_counter() - started) * 1000

    def submit(self, http: httpx.Client) -> tuple[str, int]:
        """The job's id and the revision it was stored at (its first wait's ``after``)."""
        answer = http.post(self.api + "/v1/jobs", json={"herd": "default", "command": ["/bin/true"]})
        answer.raise_for_status()
        self._follow(answer)
        # (a version from before the submission's revision: its first wait reads the job at once)
        return str(answer.json()["job"]["id"]), int(answer.json().get("revision") or 0)

    def wait_ended(self, http: httpx.Client, job_id: str, revision: int) -> None:
        while True:  # each read waits on the server for the job's next change (as `runink exec`)
            answer = http.get(f"{self.api}/v1/jobs/{job_id}", params={"wait": 5, "after": revision})
            if answer.status_code == 503:  # the Barn busy a moment ("try again")
                continue
            if answer.status_code != 200:
                raise RuntimeError(f"GET /v1/jobs/{job_id}: {answer.status_code} {answer.text[:300]}")
            job = answer.json()
            state, revision = job["job"]["state"], job["revision"]
            if state in FINAL:
                assert state == "SUCCEEDED", state
                return

    def _follow(self, answer: httpx.Response) -> None:
        named = answer.headers.get("x-runink-scheduler")
        if named in self.apis:
            self.api = named

    def run_cli(self) -> float:
        started = time.perf_counter()
        subprocess.run([*self.cli, "exec", "--", "/bin/true"], env=self.env, check=True, capture_output=True)
        return (time.perf_counter() - started) * 1000

    def close(self) -> None:
        self.http.close()
        subprocess.run([*self.runink, "down"], env=self.env, capture_output=True, timeout=120, check=False)


SLURM_CONF = """ClusterName=bench
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmUser=root
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 State=UNKNOWN
PartitionName=bench Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:16
"""


class Slurm:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True)
        (root / "state").mkdir()
        (root / "spool").mkdir()
        host = platform.node().split(".")[0]
        conf = root / "slurm.conf"
        ports = free_ports(2)
        conf.write_text(
            SLURM_CONF.format(host=host, root=root, ctld_port=ports[0], d_port=ports[1], cpus=os.cpu_count() or 1)
        )
        self.env = {**os.environ, "SLURM_CONF": str(conf)}
        if subprocess.run(["munge", "-n"], capture_output=True, check=False).returncode != 0:
            Path("/run/munge").mkdir(exist_ok=True)
            shutil.chown("/run/munge", "munge", "munge")
            subprocess.run(["munged", "--force"], check=True, capture_output=True)
        self.ctld = subprocess.Popen(
            ["slurmctld", "-D", "-f", str(conf)], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(1.0)
        self.d = subprocess.Popen(
            ["slurmd", "-D", "-f", str(conf)], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while (
            "idle"
            not in subprocess.run(
                ["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True, check=False
            ).stdout
        ):
            if time.monotonic() > deadline:
                raise SystemExit(f"slurm did not come up (logs in {root})")
            time.sleep(0.2)

    def srun(self) -> float:
        started = time.perf_counter()
        subprocess.run(["srun", "/bin/true"], env=self.env, check=True, capture_output=True)
        return (time.perf_counter() - started) * 1000

    def sbatch_rate(self, count: int) -> float:
        started = time.perf_counter()
        for _ in range(count):
            subprocess.run(
                ["sbatch", "--wrap=/bin/true", "-o", "/dev/null"], env=self.env, check=True, capture_output=True
            )
        while subprocess.run(
            ["squeue", "-h"], env=self.env, capture_output=True, text=True, check=False
        ).stdout.strip():
            time.sleep(0.05)
        return count / (time.perf_counter() - started)

    def close(self) -> None:
        for process in (self.d, self.ctld):
            process.terminate()
            process.wait(30)


def runink_rate(cluster: Runink, count: int, threads: int = 8) -> float:
    started = time.perf_counter()
    clients = [cluster.client(30) for _ in range(threads)]
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: cluster.run_one(clients[i % threads]), range(count)))
    for client in clients:
        client.close()
    return count / (time.perf_counter() - started)


def runink_batch_rate(cluster: Runink, count: int, threads: int = 8) -> float:
    """As ``sbatch_rate`` measures Slurm: every job submitted (by ``threads`` at once, each
    POST answered once the job is stored), then each waited for until it ended."""
    started = time.perf_counter()
    clients = [cluster.client(30) for _ in range(threads)]
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        jobs = list(pool.map(lambda i: cluster.submit(clients[i % threads]), range(count)))
        list(pool.map(lambda i: cluster.wait_ended(clients[i % threads], *jobs[i]), range(count)))
    for client in clients:
        client.close()
    return count / (time.perf_counter() - started)


def secure_vs_plain(jobs: int) -> None:
    """Two `runink up` clusters at once, the default (TLS everywhere, tokens, RBAC, audit) and
    `--insecure-dev` (plaintext, nobody authenticated): jobs taking turns, A B A B, so the
    machine's drift falls on both alike; p50/p99 of each and the ratio."""
    with tempfile.TemporaryDirectory(prefix="runink-bench-tls-") as tmp:
        secure = Runink(Path(tmp) / "secure")
        plain = Runink(Path(tmp) / "plain", insecure=True)
        try:
            for _ in range(3):
                secure.run_one()
                plain.run_one()
            samples: dict[str, list[float]] = {"secure": [], "plain": []}
            for _ in range(jobs):
                samples["secure"].append(secure.run_one())
                samples["plain"].append(plain.run_one())
        finally:
            secure.close()
            plain.close()
    machine = f"{os.cpu_count()} cores · Linux {platform.release()} · Python {platform.python_version()}"
    print(f"# {dt.date.today()} · {machine}")
    print()
    print("| runink exec -- /bin/true, Python client | jobs | p50 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: |")
    names = {
        "secure": "TLS everywhere + tokens, RBAC, audit (`runink up`)",
        "plain": "plaintext, no auth (`--insecure-dev`)",
    }
    for key, name in names.items():
        p50, p99 = percentiles(samples[key])
        print(f"| {name} | {jobs} | {p50:.1f} | {p99:.1f} |")
    ratio = percentiles(samples["secure"])[0] / percentiles(samples["plain"])[0]
    print(f"\nsecure ÷ plaintext, p50: {ratio:.2f}x (target: at most 1.20x)")


def metrics_vs_none(jobs: int, every: float = 1.0, rounds: int = 4) -> None:
    """Two `runink up` clusters at once, one serving /metrics in every process and scraped every
    ``every`` seconds (as Prometheus would, at a short interval) and shipping its logs (the
    control plane's task transitions, every line slices print) to a forward receiver (a process
    of its own, as a real collector), one serving none (`--no-metrics`) and shipping nothing:
    jobs taking turns, A B B A. Two clusters on one machine differ by themselves (where their
    leaders' threads land), by up to 20% here: so ``rounds`` pairs of fresh clusters, made in
    turns (metered first, then bare first), ``jobs`` per round each; the median of the rounds'
    p50 ratios, and p50/p99 over all rounds."""
    import threading

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from forward_receiver import ForwardReceiver

    collector = ForwardReceiver()
    shipping = {
        "RUNINK_PLUGIN__FLUENTD__HOST": "127.0.0.1",
        "RUNINK_PLUGIN__FLUENTD__PORT": str(collector.port),
        "RUNINK_LOG__SLICE_OUTPUT": "true",
    }
    samples: dict[str, list[float]] = {"metered": [], "bare": []}
    ratios: list[float] = []
    scrapes = [0]
    endpoints = 0
    for number in range(rounds):
        with tempfile.TemporaryDirectory(prefix="runink-bench-metrics-") as tmp:
            made: dict[str, Runink] = {}
            for key in ("metered", "bare") if number % 2 == 0 else ("bare", "metered"):
                made[key] = (
                    Runink(Path(tmp) / key, up_env=shipping)
                    if key == "metered"
                    else Runink(Path(tmp) / key, metrics=False)
                )
            metered, bare = made["metered"], made["bare"]
            endpoints = len(metered.metrics)
            stop = threading.Event()

            def scrape(metered: Runink = metered, stop: threading.Event = stop) -> None:
                with httpx.Client(timeout=5) as http:
                    while not stop.wait(every):
                        for address in metered.metrics:
                            http.get(f"http://{address}/metrics").raise_for_status()
                            scrapes[0] += 1

            scraper = threading.Thread(target=scrape, daemon=True)
            scraper.start()
            try:
                for _ in range(3):
                    metered.run_one()
                    bare.run_one()
                this_round: dict[str, list[float]] = {"metered": [], "bare": []}
                for job in range(jobs):  # A B B A: which goes first alternates
                    pair = [("metered", metered), ("bare", bare)]
                    for key, cluster in pair if job % 2 == 0 else pair[::-1]:
                        this_round[key].append(cluster.run_one())
            finally:
                stop.set()
                scraper.join(10)
                metered.close()
                bare.close()
        ratios.append(percentiles(this_round["metered"])[0] / percentiles(this_round["bare"])[0])
        for key, found in this_round.items():
            samples[key].extend(found)
    machine = f"{os.cpu_count()} cores · Linux {platform.release()} · Python {platform.python_version()}"
    print(
        f"# {dt.date.today()} · {machine} · {rounds} rounds · {scrapes[0]} scrapes of {endpoints} endpoints"
        f" · {collector.records} log records shipped"
    )
    collector.close()
    print()
    print("| runink exec -- /bin/true, Python client | jobs | p50 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: |")
    names = {
        "metered": f"/metrics in every process, scraped every {every:g} s; logs shipped to Fluentd",
        "bare": "no metrics (`--no-metrics`), no log shipping",
    }
    for key, name in names.items():
        p50, p99 = percentiles(samples[key])
        print(f"| {name} | {len(samples[key])} | {p50:.1f} | {p99:.1f} |")
    shown = ", ".join(f"{r:.2f}" for r in ratios)
    print(
        f"\nmetrics and logs ÷ none, p50: median of rounds {statistics.median(ratios):.2f}x "
        f"(rounds: {shown}; target: under 1.05x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--secure-vs-plain", action="store_true", help="only: TLS and authentication on against plaintext, interleaved"
    )
    parser.add_argument(
        "--metrics-vs-none",
        action="store_true",
        help="only: /metrics scraped and logs shipped against neither, interleaved, over rounds of fresh clusters",
    )
    parser.add_argument(
        "--scrape-every", type=float, default=1.0, help="with --metrics-vs-none: seconds between scrapes"
    )
    args = parser.parse_args()
    jobs, cli_runs = (50, 20) if args.quick else (500, 100)
    if os.geteuid() != 0:
        raise SystemExit("bench/cluster/exec_latency needs root")
    if args.secure_vs_plain:
        secure_vs_plain(jobs)
        return
    if args.metrics_vs_none:
        metrics_vs_none(jobs // 2, args.scrape_every, rounds=2 if args.quick else 4)
        return
    with tempfile.TemporaryDirectory(prefix="runink-bench-exec-") as tmp:
        root = Path(tmp)
        cluster = Runink(root / "runink")
        slurm = Slurm(root / "slurm") if shutil.which("slurmctld") else None
        rows: list[tuple[str, list[float]]] = []
        rates: list[tuple[str, float]] = []
        try:
            for _ in range(3):  # warm-up: warm sandboxes, connections
                cluster.run_one()
            client, srun, cli = [], [], []
            every = max(1, jobs // cli_runs)
            for index in range(jobs):  # taking turns: the machine's drift falls on all alike
                client.append(cluster.run_one())
                if slurm is not None:
                    srun.append(slurm.srun())
                if index % every == 0 and len(cli) < cli_runs:
                    cli.append(cluster.run_cli())
            rows.append(("runink exec -- /bin/true, Python client (one process)", client))
            if srun:
                rows.append(("srun /bin/true (slurm-wlm, task/none)", srun))
            rows.append(("runink exec -- /bin/true, CLI (its start included)", cli))
            rates.append(("runink, 8 threads each running a job at a time", runink_rate(cluster, jobs)))
            rates.append(("runink, all submitted (8 threads), then waited for", runink_batch_rate(cluster, jobs)))
            if slurm is not None:
                rates.append(("sbatch --wrap=/bin/true (OverSubscribe=FORCE:16)", slurm.sbatch_rate(jobs)))
        finally:
            cluster.close()
            if slurm is not None:
                slurm.close()
    machine = f"{os.cpu_count()} cores · Linux {platform.release()} · Python {platform.python_version()}"
    print(f"# {dt.date.today()} · {machine}")
    print()
    print("| variant | runs | p50 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: |")
    for name, samples in rows:
        p50, p99 = percentiles(samples)
        print(f"| {name} | {len(samples)} | {p50:.1f} | {p99:.1f} |")
    print()
    print("| short jobs, submitted until all ended | jobs | jobs/s |")
    print("| --- | ---: | ---: |")
    for name, rate in rates:
        print(f"| {name} | {jobs} | {rate:.1f} |")


if __name__ == "__main__":
    main()
