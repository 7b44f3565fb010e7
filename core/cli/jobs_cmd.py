"""Commands that talk to a cluster's REST API: exec, jobs, status, logs, cancel, herd, nodes."""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from runink.core.cli.cluster_client import ClusterClient, ClusterError, cluster_ca, part, server_addresses
from runink.core.cli.exec_fast import MAX_GPU, MAX_RETRIES
from runink.core.cli.job_watch import FINAL, OUTPUT_POLL, Output, binary, run_exec, say, wait_for_job
from runink.core.cli.local_runs import LocalRuns
from runink.core.cli.output import console, print_json, print_table
from runink.core.cli.state import CliState
from runink.core.history import RUN_ID
from runink.core.units import check_name, parse_duration, parse_memory

SERVER = typer.Option(
    None, "--server", help="API address(es) HOST:PORT,... (default: $RUNINK_SERVER, config, `runink up`)."
)
JSON = typer.Option(False, "--json", help="Print JSON for scripts.")
MAX_PAGE = 1000  # jobs one GET /v1/jobs asks for

herd_app = typer.Typer(help="Herds: tenants with quotas.", no_args_is_help=True)
nodes_app = typer.Typer(help="Worker nodes: list, cordon, drain.", no_args_is_help=True)
jobs_app = typer.Typer(help="Jobs: list them; prune the runs kept on this machine.", no_args_is_help=True)


@contextmanager
def _client(ctx: typer.Context, server: str | None) -> Iterator[ClusterClient]:
    state: CliState = ctx.obj
    settings = state.cluster_settings()
    configured = settings.server if settings is not None else None
    client = ClusterClient(server_addresses(server, configured), ca=cluster_ca(settings.ca if settings else None))
    try:
        yield client
    finally:
        client.close()


def _data_dir(ctx: typer.Context) -> Path:
    settings = ctx.obj.cluster_settings()
    if settings is not None:
        return Path(settings.data_dir)
    from runink.core.config import default_data_dir

    return default_data_dir()


def _has_cluster(ctx: typer.Context, server: str | None) -> bool:
    """Whether a cluster is named (--server, $RUNINK_SERVER, the config, `runink up`)."""
    settings = ctx.obj.cluster_settings()
    try:
        server_addresses(server, settings.server if settings is not None else None)
    except ClusterError:
        return False
    return True


@contextmanager
def _job_client(ctx: typer.Context, server: str | None, job_id: str) -> Iterator[ClusterClient | LocalRuns]:
    """Who knows the job: a run ``runink run`` kept on this machine (named by its job id or its
    run id), else the cluster. With a cluster named, it is asked first; a job it does not know
    (or could not be asked about) is looked for among the kept runs."""
    local = LocalRuns(_data_dir(ctx))
    if RUN_ID.fullmatch(job_id) or not _has_cluster(ctx, server):
        yield local
        return
    with _client(ctx, server) as client:
        try:
            client.call("GET", f"/v1/jobs/{part(job_id)}")
        except ClusterError as exc:
            if exc.status not in (None, 404) or local.history.find(job_id) is None:
                raise
            yield local
            return
        yield client


def _default_herd(state: CliState) -> str:
    settings = state.cluster_settings()
    return settings.herd if settings is not None else state.config().herd  # (the latter raises its error)


def _seconds(value: str) -> float:
    """A duration, or 0 (no bound)."""
    return 0.0 if value.strip() == "0" else parse_duration(value)


def _amount(value: str | None, what: str, parse: Any) -> Any:
    if value is None:
        return None
    try:
        return parse(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=what) from None


# --- exec, status, cancel, jobs list ----------------------------------------------------


def exec_command(
    ctx: typer.Context,
    command: list[str] | None = typer.Argument(
        None, metavar="COMMAND", help="The program and its arguments (after --), run without a shell."
    ),
    commands: list[str] = typer.Option(
        [],
        "--command",
        help="Instead of COMMAND: one command line, split as a shell splits words (no shell runs it); "
        "repeat it to run several in turn in one slice, sharing its work dir, stopping at the first that fails.",
    ),
    herd: str | None = typer.Option(None, "--herd", help="The herd to run in (default: the config's herd)."),
    cpu: float = typer.Option(1.0, "--cpu", min=0, help="Cores."),
    memory: str | None = typer.Option(None, "--memory", help='Memory, e.g. "256Mi" (default: none asked).'),
    gpu: int = typer.Option(
        0, "--gpu", min=0, max=MAX_GPU, help="GPUs: placed where that many are free; the slice sees only its own."
    ),
    timeout: str | None = typer.Option(None, "--timeout", help='Stop it after this long, e.g. "30s".'),
    retries: int = typer.Option(
        0, "--retries", min=0, max=MAX_RETRIES, help="Run it again this many times if it fails."
    ),
    secret: list[str] = typer.Option(
        [], "--secret", help="A herd secret it gets as a file in $RUNINK_FILES (repeatable; `runink secret set`)."
    ),
    secrets_env: bool = typer.Option(
        False, "--secrets-env", help="Give the secrets as environment variables too (db.password: DB_PASSWORD)."
    ),
    detach: bool = typer.Option(False, "--detach", "-d", help="Print the job id and return at once."),
    server: str | None = SERVER,
    json_output: bool = typer.Option(False, "--json", help="Print the ended job as JSON (not the command's output)."),
) -> None:
    """Run a command (or several in turn, with --command) in an isolated slice on the cluster; print
    its output as it comes, and exit with its status."""
    state: CliState = ctx.obj
    if bool(command) == bool(commands):
        why = "not both" if command else "one of them"
        raise typer.BadParameter(f"give COMMAND (after --) or --command, {why}", param_hint="COMMAND")
    body: dict[str, Any] = {
        "herd": herd or _default_herd(state),
        **({"command": command} if command else {"commands": [_split(line, i) for i, line in enumerate(commands, 1)]}),
        "resources": {"cpu": cpu, "memory": _amount(memory, "--memory", parse_memory) or 0, "gpu": gpu},
        "timeout": _amount(timeout, "--timeout", parse_duration),
        "retries": retries,
        **({"secrets": secret, "secrets_env": secrets_env} if secret else {}),
    }
    with _client(ctx, server) as client:
        status = run_exec(client, body, detach=detach, json_output=json_output)
    raise typer.Exit(status)


def submit_command(
    ctx: typer.Context,
    pipeline: Path = typer.Argument(..., metavar="PIPELINE.dsl", help="The pipeline to run on the cluster."),
    herd: str | None = typer.Option(None, "--herd", help="The herd to run in (default: the pipeline's @herd)."),
    wait: bool = typer.Option(False, "--wait", help="Wait until the job ended; exit 0 only if it succeeded."),
    server: str | None = SERVER,
    json_output: bool = JSON,
) -> None:
    """Run a pipeline on the cluster: one task per scenario, placed in dependency order across
    the nodes. It is compiled here first (errors name file:line), then again on each node that
    runs one of its scenarios: the file and its folder must be at the same absolute path there
    (a shared filesystem). A scenario reading a dataset another wrote runs on that one's node
    unless the dataset is under [cluster] shared_paths or in s3://. Prints the job id at once
    unless --wait."""
    from runink.core.cli.run_cmd import load_pipeline
    from runink.core.control.lifecycle import pipeline_tasks

    state: CliState = ctx.obj
    path = pipeline.resolve()
    config = state.config()
    compiled = load_pipeline(path, config)
    # a dataset one scenario writes and another reads, outside every shared path, exists only
    # on the writer's node: the reader's task says so, and is placed there
    tasks = pipeline_tasks(compiled, shared_paths=config.cluster.shared_paths)
    body = {
        "herd": herd or compiled.pipeline.herd,
        "pipeline": str(path),
        "tasks": [t.model_dump() for t in tasks],
    }
    with _client(ctx, server) as client:
        answer = client.call("POST", "/v1/pipelines", body)
        submitted = answer["job"]
        job_id = submitted["id"]
        if not wait:
            if json_output:
                print_json({"job": job_id, "estimate": submitted.get("estimate")})
                return
            print(job_id)
            if submitted.get("estimate") is not None:
                print(f"# worst-case cost {submitted['estimate']:.4g}", file=sys.stderr)
            return
        try:
            final = wait_for_job(client, job_id, after=int(answer.get("revision") or 0))
        except KeyboardInterrupt:  # (submitted: the job is the cluster's now; say which it is)
            say(f"{job_id}: goes on without this wait (runink status {job_id}, runink cancel {job_id})")
            raise typer.Exit(130) from None
    if json_output:
        print_json(final)
    else:
        print_table(
            f"job {job_id} ({compiled.pipeline.name}, herd {final['job']['herd']}): {final['job']['state']}",
            ["SCENARIO", "STATE", "ATTEMPT", "NODE", "MESSAGE"],
            [
                (_task_name(t), t["state"], t["attempt"], t.get("node") or "-", t.get("message") or "")
                for t in final.get("tasks", [])
            ],
        )
    raise typer.Exit(0 if final["job"]["state"] == "SUCCEEDED" else 1)


def _split(line: str, number: int) -> list[str]:
    try:
        words = shlex.split(line)
    except ValueError as exc:  # an unclosed quote
        raise typer.BadParameter(f"the {_ordinal(number)} one, {line!r}: {exc}", param_hint="--command") from None
    if not words:
        raise typer.BadParameter(f"the {_ordinal(number)} one is empty", param_hint="--command")
    return words


def _ordinal(number: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(number, f"{number}th")


def logs_command(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., metavar="JOB", help="The job id."),
    stream: str = typer.Option("stdout", "--stream", help="stdout or stderr."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new output until the job ends."),
    server: str | None = SERVER,
    json_output: bool = typer.Option(False, "--json", help="Print the API's answer (data in base64; no --follow)."),
) -> None:
    """A job's output (the last bytes the server keeps of it; all of it for a run of `runink run`
    on this machine), written as the command wrote it."""
    if stream not in ("stdout", "stderr"):
        raise typer.BadParameter(f"{stream!r}: expected stdout or stderr", param_hint="--stream")
    with _job_client(ctx, server, job_id) as client:
        if json_output:
            print_json(client.call("GET", f"/v1/jobs/{part(job_id)}/logs", stream=stream))
            return
        output = Output(client, job_id, {stream: binary(sys.stdout)})
        while True:
            state = output.poll()
            if not follow or state in FINAL:
                return
            time.sleep(OUTPUT_POLL)


def _datasets(client: ClusterClient | LocalRuns, job_id: str) -> list[dict[str, Any]] | None:
    """What the job's scenarios read and wrote, from the servers' lineage catalog (None: the
    servers keep none, their `catalog` plugin being off)."""
    try:
        found: list[dict[str, Any]] = client.call("GET", f"/v1/catalog/jobs/{part(job_id)}")["scenarios"]
    except ClusterError as exc:
        if exc.status == 404:
            return None
        raise
    return found


def _uris(datasets: list[dict[str, Any]]) -> str:
    return "\n".join(d["uri"] + ("" if d["rows"] is None else f" ({d['rows']} rows)") for d in datasets)


def status_command(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., metavar="JOB", help="The job id."),
    explain: bool = typer.Option(False, "--explain", help="Why each task is where it is (the scheduler's decision)."),
    server: str | None = SERVER,
    json_output: bool = JSON,
) -> None:
    """A job, its tasks and their transitions: a cluster's, or a run of `runink run` on this
    machine (its job id or run id)."""
    with _job_client(ctx, server, job_id) as client:
        answer = client.call("GET", f"/v1/jobs/{part(job_id)}", explain="true" if explain else None)
        if answer["job"].get("kind") == "pipeline":
            answer["datasets"] = _datasets(client, job_id)
    if json_output:
        print_json(answer)
        return
    job = answer["job"]
    cost = "" if job.get("estimate") is None else f", worst-case cost {job['estimate']:.4g}"
    print_table(
        f"job {job['id']} (herd {job['herd']}{cost}): {job['state']}",
        ["TASK", "STATE", "ATTEMPT", "NODE", "EXIT", "MESSAGE"],
        [
            (
                _task_name(t),
                t["state"],
                t["attempt"],
                t.get("node") or "-",
                t.get("exit_code"),
                t.get("message") or _why(t),
            )
            for t in answer.get("tasks", [])
        ],
    )
    if answer.get("datasets"):
        print_table(
            "datasets (the lineage catalog)",
            ["SCENARIO", "READ", "WROTE"],
            [(d["scenario"], _uris(d["read"]), _uris(d["wrote"])) for d in answer["datasets"]],
        )
    using = [t for t in answer.get("tasks", []) if t.get("usage") and t["state"] == "RUNNING"]
    if using:
        print_table(
            "running tasks: use (their nodes' last sample)",
            ["TASK", "ATTEMPT", "CPU", "CPU TIME", "MEMORY", "PROCESSES", "AT"],
            [
                (
                    _task_name(t),
                    t["usage"]["attempt"],
                    f"{t['usage']['cpu']:.2f}",
                    f"{t['usage']['cpu_seconds']:.1f}s",
                    _size(t["usage"]["memory"]),
                    t["usage"]["processes"],
                    _when(t["usage"]["at"]),
                )
                for t in using
            ],
        )
    for task in answer.get("tasks", []):
        rows = [
            (_when(t["at"]), t["state"], t.get("attempt"), t.get("node") or "-", t.get("reason"))
            for t in task.get("transitions", [])
        ]
        print_table(f"task {task['id']}: transitions", ["AT", "STATE", "ATTEMPT", "NODE", "REASON"], rows)
        if explain:
            lines = task.get("explain") or [_why(task) or "(no decision yet)"]
            print_table(f"task {task['id']}: the scheduler's last decision", ["DECISION"], [(line,) for line in lines])


def _task_name(task: dict[str, Any]) -> str:
    """A task's id, with its scenario's name when it runs one."""
    scenario = (task.get("scenario") or {}).get("scenario")
    return f"{task['id']} ({scenario})" if scenario else str(task["id"])


def _why(task: dict[str, Any]) -> str:
    return str(task.get("pending_reason") or "")


def _when(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


def cancel_command(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., metavar="JOB", help="The job id."),
    server: str | None = SERVER,
    json_output: bool = JSON,
) -> None:
    """Cancel a job: its running slices are stopped, its waiting tasks never start. A run of
    `runink run` on this machine is stopped as Ctrl-C stops it."""
    with _job_client(ctx, server, job_id) as client:
        answer = client.call("POST", f"/v1/jobs/{part(job_id)}/cancel")
    if json_output:
        print_json(answer)
        return
    state = answer.get("job", {}).get("state") if isinstance(answer.get("job"), dict) else None
    if state in FINAL and state != "CANCELLED":  # (it had ended: nothing was stopped)
        print(f"{job_id}: already {state}, nothing to cancel")
    else:
        print(f"{job_id}: cancelled")


@jobs_app.command("list")
def jobs_list(
    ctx: typer.Context,
    herd: str | None = typer.Option(None, "--herd", help="Only this herd's jobs."),
    state: str | None = typer.Option(None, "--state", help="Only jobs in this state (e.g. RUNNING)."),
    local: bool = typer.Option(
        False, "--local", help="The runs of `runink run` kept on this machine (the default when no cluster is named)."
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="At most this many jobs (default: all)."),
    after: str | None = typer.Option(
        None, "--after", metavar="JOB", help="Only jobs submitted after this one (the last of a --limit list)."
    ),
    server: str | None = SERVER,
    json_output: bool = JSON,
) -> None:
    """Jobs, newest last: a cluster's, or the runs of `runink run` kept on this machine."""
    wanted = state.upper() if state else None
    if local or not _has_cluster(ctx, server):
        runs = LocalRuns(_data_dir(ctx))
        jobs = _all_pages(runs, herd, wanted, limit, after)
        title = f"jobs: runs of `runink run` kept in {runs.history.runs}"
    else:
        with _client(ctx, server) as client:
            jobs = _all_pages(client, herd, wanted, limit, after)
        title = "jobs"
    if json_output:
        print_json(jobs)
        return
    rows = [(j["id"], j["herd"], j["kind"], j["state"], _when(j["submitted"]), len(j["tasks"])) for j in jobs]
    print_table(title, ["JOB", "HERD", "KIND", "STATE", "SUBMITTED", "TASKS"], rows)


def _all_pages(
    client: ClusterClient | LocalRuns, herd: str | None, state: str | None, limit: int | None, after: str | None
) -> list[dict[str, Any]]:
    """The jobs GET /v1/jobs answers page after page, at most ``limit`` of them, past the job
    id ``after``. (A server of an earlier version answers every job at once, with no ``next``:
    cut here to what was asked.)"""
    if after is not None:
        try:
            check_name(after, "job")
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--after") from None
    jobs: list[dict[str, Any]] = []
    position = after
    while limit is None or len(jobs) < limit:
        wanted = MAX_PAGE if limit is None else min(MAX_PAGE, limit - len(jobs))
        answer = client.call("GET", "/v1/jobs", herd=herd, state=state, limit=wanted, after=position)
        page = answer.get("jobs", []) if isinstance(answer, dict) else answer
        jobs += [job for job in page if after is None or str(job.get("id", "")) > after]
        following = answer.get("next") if isinstance(answer, dict) else None
        if not isinstance(following, str) or (position is not None and following <= position):
            break  # (the last page, or a server whose next does not go on)
        position = following
    return jobs if limit is None else jobs[:limit]


@jobs_app.command("prune")
def jobs_prune(
    ctx: typer.Context,
    older_than: str | None = typer.Option(
        None,
        "--older-than",
        help='Remove ended runs started longer ago than this, e.g. "7d" (default: [run] keep_for).',
    ),
    max_size: str | None = typer.Option(
        None,
        "--max-size",
        help='Then the oldest, while runs take more than this, e.g. "1GiB" (default: [run] keep_size).',
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be removed; remove nothing."),
    json_output: bool = JSON,
) -> None:
    """Remove the runs of `runink run` kept on this machine (their records, logs and work dirs;
    never their outputs) by age and size. A run still running stays."""
    from runink.core.config import InvalidField, RunConfig
    from runink.core.history import RunHistory

    config = ctx.obj.config()
    try:  # (the options as the config's keys read them: "0" is no bound)
        bounds = RunConfig(
            keep_for=older_than if older_than is not None else config.run.keep_for,
            keep_size=max_size if max_size is not None else config.run.keep_size,
        )
    except InvalidField as exc:
        hint = "--older-than" if exc.field == "keep_for" else "--max-size"
        raise typer.BadParameter(exc.problem, param_hint=hint) from None
    history = RunHistory(config.data_dir)
    removed = history.prune(older_than=bounds.keep_for_seconds, max_bytes=bounds.keep_size_bytes, dry_run=dry_run)
    if json_output:
        print_json(
            {
                "dry_run": dry_run,
                "removed": [
                    {"run": kept.run_id, "job": kept.job_id, "bytes": size, "why": why} for kept, size, why in removed
                ],
                "bytes": sum(size for _, size, _ in removed),
            }
        )
        return
    verb = "would remove" if dry_run else "removed"
    print_table(
        f"runs kept in {history.runs}: {verb} {len(removed)} ({_size(sum(size for _, size, _ in removed))})",
        ["RUN", "JOB", "STARTED", "SIZE", "WHY"],
        [
            (
                kept.run_id,
                kept.job_id or "-",
                time.strftime("%Y-%m-%d %H:%M", time.localtime(kept.started)),
                _size(size),
                why,
            )
            for kept, size, why in removed
        ],
    )


def cost_command(
    ctx: typer.Context,
    herd: str | None = typer.Option(None, "--herd", help="Only this herd (default: every herd you may read)."),
    since: str = typer.Option("7d", "--since", help='Jobs submitted in the last ..., e.g. "24h", "30d".'),
    by: str = typer.Option("herd", "--by", help="Group by herd, pipeline, scenario or user."),
    server: str | None = SERVER,
    json_output: bool = JSON,
) -> None:
    """What jobs cost: their worst-case estimates against what their tasks used ([cost] rates)."""
    if by not in ("herd", "pipeline", "scenario", "user"):
        raise typer.BadParameter(f"{by!r}: expected herd, pipeline, scenario or user", param_hint="--by")
    seconds = _amount(since, "--since", parse_duration)
    with _client(ctx, server) as client:
        answer = client.call("GET", "/v1/cost", herd=herd, since=seconds, by=by)
    if json_output:
        print_json(answer)
        return
    currency = answer["currency"]
    rows = [
        (
            r["group"],
            r["jobs"],
            r["tasks"],
            f"{r['estimate']:.4g}" + (f" (+{r['unbounded']} unbounded)" if r["unbounded"] else ""),
            f"{r['actual']:.4g}",
        )
        for r in answer["rows"]
    ]
    print_table(
        f"cost of the jobs since {time.strftime('%Y-%m-%d %H:%M', time.localtime(answer['since']))} ({currency})",
        [by.upper(), "JOBS", "TASKS", "ESTIMATE (worst case)", "ACTUAL"],
        rows,
    )


# --- herds ------------------------------------------------------------------------------


@herd_app.command("create")
def herd_create(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="NAME", help="The herd's name (lower-case letters, digits, '-', '._')."),
    cpu: float = typer.Option(0, "--cpu", min=0, help="Cores its slices may use together (0: no limit)."),
    memory: str | None = typer.Option(None, "--memory", help='Memory they may use together, e.g. "64Gi".'),
    gpu: int = typer.Option(0, "--gpu", min=0, help="GPUs (0: no limit)."),
    max_slices: int = typer.Option(0, "--max-slices", min=0, help="Slices at once (0: no limit)."),
    max_job_cpu: float | None = typer.Option(
        None, "--max-job-cpu", min=0, help="Cores any one task of a job may ask for (default: [admission]; 0: none)."
    ),
    max_job_memory: str | None = typer.Option(None, "--max-job-memory", help='Memory any one task may ask, "32Gi".'),
    max_job_gpu: int | None = typer.Option(None, "--max-job-gpu", min=0, help="GPUs any one task may ask for."),
    max_job_timeout: str | None = typer.Option(None, "--max-job-timeout", help='The longest task timeout, "1h".'),
    rate: float | None = typer.Option(
        None, "--rate", min=0, help="Jobs per second the herd may submit (default: [admission] rate; 0: no limit)."
    ),
    burst: int | None = typer.Option(None, "--burst", min=1, help="Jobs it may submit at once past its rate."),
    max_queued: int | None = typer.Option(
        None,
        "--max-queued",
        min=0,
        help="Tasks it may have not ended at once, waiting or running (default: [admission] max_queued; 0: none).",
    ),
    budget: float | None = typer.Option(
        None, "--budget", min=0, help="Refuse new jobs once its tasks cost this much over --budget-period ([cost])."
    ),
    budget_period: str = typer.Option("30d", "--budget-period", help='The budget\'s window, e.g. "30d".'),
    root: list[str] = typer.Option(
        [],
        "--root",
        help="A folder its pipelines' .dsl files may be in (repeat; each scenario's slice gets its .dsl's folder).",
    ),
    node_label: list[str] = typer.Option(
        [],
        "--node-label",
        metavar="KEY=VALUE",
        help="Keep its tasks to nodes with this restricted label, restricted.runink.io/... (repeat).",
    ),
    server: str | None = SERVER,
    json_output: bool = JSON,
) -> None:
    """Create a herd with its quota and, if given, its own admission limits, pipeline roots and nodes."""
    quota = {"cpu": cpu, "memory": _amount(memory, "--memory", parse_memory) or 0, "gpu": gpu, "max_slices": max_slices}
    period = _amount(budget_period, "--budget-period", parse_duration)  # (a bad one went unsaid without --budget)
    own = {
        "max_cpu": max_job_cpu,
        "max_memory": _amount(max_job_memory, "--max-job-memory", parse_memory),
        "max_gpu": max_job_gpu,
        "max_timeout": _amount(max_job_timeout, "--max-job-timeout", _seconds),
        "rate": rate,
        "burst": burst,
        "max_queued": max_queued,
        "budget": budget,
        "budget_period": period if budget is not None else None,
    }
    body = {
        "name": name,
        "quota": quota,
        "admission": {k: v for k, v in own.items() if v is not None},
        "roots": [_absolute(r, "--root") for r in root],
        "node_labels": _pairs(node_label, "--node-label"),
    }
    with _client(ctx, server) as client:
        answer = client.call("POST", "/v1/herds", body)
    print_json(answer) if json_output else print(f"herd {name} created")


@herd_app.command("roots")
def herd_roots(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="NAME", help="The herd."),
    roots: list[str] = typer.Argument(None, metavar="DIR...", help="Its folders (none: it may run no pipeline)."),
    server: str | None = SERVER,
    json_output: bool = JSON,
) -> None:
    """Set the folders a herd's pipelines may be in (replacing those it had; cluster admins)."""
    body = {"roots": [_absolute(r, "DIR") for r in roots or []]}
    with _client(ctx, server) as client:
        answer = client.call("PUT", f"/v1/herds/{part(name)}/roots", body)
    if json_output:
        print_json(answer)
    else:
        print(f"herd {name}: pipelines in " + (", ".join(answer.get("roots", [])) or "no folder (commands only)"))


@herd_app.command("node-labels")
def herd_node_labels(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="NAME", help="The herd."),
    labels: list[str] = typer.Argument(
        None, metavar="KEY=VALUE...", help="Restricted labels, restricted.runink.io/... (none: any node)."
    ),
    server: str | None = SERVER,
    json_output: bool = JSON,
) -> None:
    """Keep a herd's tasks to the nodes with these restricted labels (replacing those it had;
    cluster admins). Only an admin sets those on nodes (runink nodes label), so a node whose
    credentials were stolen cannot draw this herd's tasks."""
    body = {"node_labels": _pairs(labels or [], "KEY=VALUE")}
    with _client(ctx, server) as client:
        answer = client.call("PUT", f"/v1/herds/{part(name)}/node-labels", body)
    if json_output:
        print_json(answer)
    else:
        print(f"herd {name}: {_kept_to(answer)}")


def _pairs(given: list[str], hint: str) -> dict[str, str]:
    """KEY=VALUE arguments as a mapping (a bad one: one line naming it)."""
    pairs = {}
    for item in given:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint=hint)
        pairs[key] = value
    return pairs


def _kept_to(herd: dict[str, Any]) -> str:
    labels = herd.get("node_labels") or {}
    shown = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return f"runs on nodes with {shown}" if shown else "runs on any node"


def _absolute(path: str, flag: str) -> str:
    """A folder given on the command line, as the servers take it (its real path: ~, . and links resolved here)."""
    resolved = os.path.realpath(os.path.expanduser(path))
    if resolved == "/":
        why = "not / (each scenario's slice gets its pipeline's whole folder)"
        raise typer.BadParameter(f"{path!r}: {why}", param_hint=flag)
    return resolved


@herd_app.command("list")
def herd_list(ctx: typer.Context, server: str | None = SERVER, json_output: bool = JSON) -> None:
    """Herds and their quotas."""
    with _client(ctx, server) as client:
        answer = client.call("GET", "/v1/herds")
    herds = answer["herds"] if isinstance(answer, dict) else answer
    if json_output:
        print_json(herds)
        return
    rows = [
        (
            h["name"],
            *(_limit(h["quota"][k]) for k in ("cpu", "memory", "gpu", "max_slices")),
            ", ".join(h.get("roots") or []) or "-",
        )
        for h in herds
    ]
    print_table("herds", ["HERD", "CPU", "MEMORY", "GPU", "MAX SLICES", "PIPELINES IN"], rows)


@herd_app.command("describe")
def herd_describe(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="NAME", help="The herd."),
    server: str | None = SERVER,
    json_output: bool = JSON,
) -> None:
    """A herd's quota and what it uses of it now."""
    with _client(ctx, server) as client:
        answer = client.call("GET", f"/v1/herds/{part(name)}")
    if json_output:
        print_json(answer)
        return
    herd = answer.get("herd", answer)
    used = answer.get("used", {})
    in_use = {**used, "max_slices": used.get("slices", 0)}  # (slices in use count against max_slices)
    rows = [(k, in_use.get(k, 0), _limit(herd["quota"][k])) for k in ("cpu", "memory", "gpu", "max_slices")]
    if "not_ended" in used:  # (tasks waiting, placed or running, against admission's bound)
        rows.append(("tasks not ended", used["not_ended"], _limit(answer.get("max_queued", 0))))
    print_table(f"herd {herd['name']}", ["RESOURCE", "IN USE", "QUOTA"], rows)
    print("pipelines in: " + (", ".join(herd.get("roots") or []) or "no folder (commands only: runink herd roots)"))
    print(f"placement: {_kept_to(herd)}")


@herd_app.command("delete")
def herd_delete(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="NAME", help="The herd."),
    server: str | None = SERVER,
    json_output: bool = JSON,
) -> None:
    """Delete a herd (refused while it has jobs not ended)."""
    with _client(ctx, server) as client:
        answer = client.call("DELETE", f"/v1/herds/{part(name)}")
    # (its --json printed null: the DELETE answers nothing)
    print_json(answer or {"herd": name, "deleted": True}) if json_output else print(f"herd {name} deleted")


def _limit(value: float) -> str:
    return "-" if not value else f"{value:g}"


def _size(value: float) -> str:
    """Bytes as people read them: 120Mi, 7.5Gi."""
    for unit in ("", "Ki", "Mi", "Gi", "Ti", "Pi"):
        if abs(value) < 1024 or unit == "Pi":
            break
        value /= 1024
    text = f"{value:.0f}" if unit == "" or value >= 10 else f"{value:.1f}".removesuffix(".0")
    return text + unit


def _use(node: dict[str, Any]) -> str:
    """What a node's running tasks use (its agent's last sample) out of its capacity."""
    usage, cap = node.get("usage"), node["capacity"]
    if not usage:
        return "-"
    memory = _size(usage["memory"]) + (f"/{_size(cap['memory'])}" if cap["memory"] else "")
    return f"{usage['cpu']:.1f}/{cap['cpu']:g} cpu, {memory}"


# --- nodes ------------------------------------------------------------------------------


@nodes_app.command("list")
def nodes_list(ctx: typer.Context, server: str | None = SERVER, json_output: bool = JSON) -> None:
    """Nodes: capacity, what their tasks use, labels, health."""
    with _client(ctx, server) as client:
        answer = client.call("GET", "/v1/nodes")
    nodes = answer["nodes"] if isinstance(answer, dict) else answer
    if json_output:
        print_json(nodes)
        return
    rows = []
    for n in nodes:
        health = "ready" if n["ready"] else "down"
        flags = [f for f in ("cordoned", "draining", "unfit") if n.get(f)]
        cap = n["capacity"]
        labels = ",".join(f"{k}={v}" for k, v in sorted(n.get("labels", {}).items()))
        state = " ".join([health, *flags])
        rows.append((n["id"], state, f"{cap['cpu']:g}", _size(cap["memory"]), cap["gpu"], _use(n), labels or "-"))
    print_table("nodes", ["NODE", "STATE", "CPU", "MEMORY", "GPU", "USE", "LABELS"], rows)
    for n in nodes:
        if n.get("unfit"):  # (its agent's reason: printable, bounded by the servers)
            console().print(f"{n['id']} is unfit: {n['unfit']}", highlight=False, markup=False)


@nodes_app.command("scaling")
def nodes_scaling(ctx: typer.Context, server: str | None = SERVER, json_output: bool = JSON) -> None:
    """The autoscaler: its policy, its nodes, the size it wants, and its decisions with their reasons."""
    with _client(ctx, server) as client:
        answer = client.call("GET", "/v1/scaling")
    if json_output:
        print_json(answer)
        return
    out = console()
    if not answer["enabled"]:
        out.print("autoscaling is off (no [scaling] driver)", highlight=False)
    else:
        policy = answer["policy"]
        out.print(
            f"scaler {answer['scaler']}: {len(answer['nodes'])} node(s) ({', '.join(answer['nodes']) or 'none'}), "
            f"wants {answer['desired']}; min {policy['min_nodes']}, max {policy['max_nodes']}, "
            f"{policy['pending_per_node']} waiting task(s) per node added, idle {policy['idle_delay']:g}s, "
            f"cooldown {policy['cooldown']:g}s"
            + (f"; removing {', '.join(answer['removing'])}" if answer["removing"] else ""),
            highlight=False,
            markup=False,
        )
    rows = [
        (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d["at"])),
            d["action"],
            ",".join(d["nodes"]) or "-",
            f"{d['size']} -> {d['desired']}",
            d["reason"],
        )
        for d in reversed(answer["decisions"][-20:])
    ]
    print_table("decisions (newest first)", ["WHEN", "ACTION", "NODES", "SIZE", "REASON"], rows)


def _node_action(action: str, help_text: str) -> None:
    def command(
        ctx: typer.Context,
        node: str = typer.Argument(..., metavar="NODE", help="The node id."),
        server: str | None = SERVER,
        json_output: bool = JSON,
    ) -> None:
        with _client(ctx, server) as client:
            answer = client.call("POST", f"/v1/nodes/{part(node)}/{action}")
        print_json(answer) if json_output else print(f"node {node}: {action}")

    command.__doc__ = help_text
    nodes_app.command(action)(command)


@nodes_app.command("label")
def node_label(
    ctx: typer.Context,
    node: str = typer.Argument(..., metavar="NODE", help="The node id."),
    labels: list[str] = typer.Argument(
        None, metavar="KEY=VALUE...", help="Its restricted labels, restricted.runink.io/... (none: cleared)."
    ),
    server: str | None = SERVER,
    json_output: bool = JSON,
) -> None:
    """Set a node's restricted labels (cluster admins): its agent cannot claim them, so a task
    asking for one (a pipeline's @affinity(label=...), a job's node_labels) runs only where an admin said."""
    pairs = _pairs(labels or [], "KEY=VALUE")
    with _client(ctx, server) as client:
        answer = client.call("PUT", f"/v1/nodes/{part(node)}/labels", {"labels": pairs})
    if json_output:
        print_json(answer)
    else:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(answer.get("labels", {}).items())) or "none"
        print(f"node {node}: labels {shown}")


@nodes_app.command("capacity")
def node_capacity(
    ctx: typer.Context,
    node: str = typer.Argument(..., metavar="NODE", help="The node id."),
    cpus: float | None = typer.Option(None, "--cpus", min=0, help="At most this many cores (0: as it says)."),
    memory: str | None = typer.Option(None, "--memory", help='At most this much memory, e.g. "64Gi".'),
    gpus: int | None = typer.Option(None, "--gpus", min=0, help="At most this many GPUs."),
    clear: bool = typer.Option(False, "--clear", help="Lift the cap: what its agent says."),
    server: str | None = SERVER,
    json_output: bool = JSON,
) -> None:
    """Cap a node's capacity (cluster admins): what its agent claims, when it registers again
    too, cannot pass it, so a node with stolen credentials cannot draw more work than allowed."""
    if clear == any(v is not None for v in (cpus, memory, gpus)):
        raise typer.BadParameter("give --cpus, --memory or --gpus, or --clear", param_hint="--cpus/--memory/--gpus")
    pinned = None
    if not clear:
        pinned = {"cpu": cpus or 0, "memory": _amount(memory, "--memory", parse_memory) or 0, "gpu": gpus or 0}
    with _client(ctx, server) as client:
        answer = client.call("PUT", f"/v1/nodes/{part(node)}/capacity", {"pinned": pinned})
    if json_output:
        print_json(answer)
    else:
        have = answer.get("capacity", {})
        memory_text = _size(have.get("memory", 0))
        cap = "" if answer.get("pinned") is None else " (capped by an admin)"
        print(f"node {node}: {have.get('cpu', 0):g} cores, {memory_text}, {have.get('gpu', 0)} GPUs{cap}")


_node_action("cordon", "Take no new work on this node; what runs there goes on.")
_node_action("uncordon", "Take new work on this node again.")
_node_action("drain", "Take no new work; its agent lets running slices finish, then gives the rest back.")


def register(app: typer.Typer) -> None:
    app.command("exec", context_settings={"allow_interspersed_args": False})(exec_command)
    app.command("submit")(submit_command)
    app.command("status")(status_command)
    app.command("logs")(logs_command)
    app.command("cancel")(cancel_command)
    app.command("cost")(cost_command)
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(herd_app, name="herd")
    # `runink nodes` also holds commands defined beside their feature: `token` and `revoke`
    # (auth_cmd), `join-token` (join_cmd); their modules add them to nodes_app when imported.
    from runink.core.cli import auth_cmd, join_cmd  # noqa: F401

    app.add_typer(nodes_app, name="nodes")
