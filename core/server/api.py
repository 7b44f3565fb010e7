"""The REST API of ``runink server`` (FastAPI, paths under /v1, OpenAPI at /docs).

Every call goes through the Lifecycle and the ClusterStore, so any server answers it: nothing is
kept here between requests. Errors answer with one line in ``detail`` and no traceback:
NotFound -> 404, Refused -> 409, a malformed request -> 422 naming the field, a body over
MAX_BODY -> 413, Conflict (others kept changing what was read) -> 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import pathlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runink.core import logs, metrics, structs
from runink.core.config import CostConfig
from runink.core.control.admission import Admission, AdmissionRefused
from runink.core.control.autoscale import ScalingPolicy
from runink.core.control.bindings import MAX_SUBJECT, Binding, SubjectKind, bindings, unbind
from runink.core.control.cost import report as cost_report
from runink.core.control.lifecycle import MAX_COMMANDS, Lifecycle, in_one_slice
from runink.core.control.logs import LogRead, TaskLogs
from runink.core.control.records import (
    LABEL_TEXT,
    MAX_COMMAND_ARGS,
    MAX_COMMAND_BYTES,
    MAX_LABELS,
    MAX_PIPELINE_TASKS,
    MAX_ROOTS,
    RESTRICTED_LABELS,
    Amount,
    Herd,
    HerdAdmission,
    JobRecord,
    NodeRecord,
    PipelineTask,
    Quota,
    RecordError,
    RunState,
    TaskRecord,
    check_restricted,
    check_root,
    keys,
    no_repeats,
    under_root,
)
from runink.core.control.roles import bind_role
from runink.core.control.store import ClusterStore, Conflict, NotFound, Refused, TooLarge, assigned_to
from runink.core.control.views import dump_record, job_answer
from runink.core.errors import AuthenticationError, BarnError, RuninkError
from runink.core.events import herd_deleted
from runink.core.interfaces.barn import KeyValue
from runink.core.interfaces.scaler import Scaler
from runink.core.interfaces.secrets import (
    MAX_SECRET_BYTES,
    MAX_TASK_SECRETS,
    SECRET_NAME,
    InvalidSecretError,
    SecretBackend,
)
from runink.core.model import AuthRequest, AuthzDecision, Grant, Identity
from runink.core.plugins import PluginManager
from runink.core.report import printable
from runink.core.security import CLUSTER, CLUSTER_ROLES, HERD_ROLES
from runink.core.server import join, pki
from runink.core.server.auth import (
    AUDIT,
    AUDIT_UNDONE,
    HERD_TOKENS,
    INSECURE_HEADER,
    INSECURE_VALUE,
    LEEWAY,
    MAX_TOKEN,
    MAX_TTL,
    NODE_SUBJECT,
    ApiAuth,
    ClusterTokens,
    Forbidden,
    Unauthenticated,
    audit_day,
)
from runink.core.server.feed import JobWaits
from runink.core.server.join import MAX_JOIN_TTL
from runink.core.server.revocations import MAX_SUBJECT as MAX_REVOKED_SUBJECT
from runink.core.server.revocations import RevocationsUnknown
from runink.core.server.roles_api import add_role_routes
from runink.core.server.tls import TlsFiles
from runink.core.units import MAX_MEMORY, MAX_PIDS, NAME, NAME_WORDS

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024  # bytes of a request body
SCHEDULER_HEADER = "X-Runink-Scheduler"  # the API of the server that schedules now (AddedHeaders)
MAX_DETAIL = 500  # characters of an error's detail (it may quote what the client sent)
MAX_HERD_SECRETS = 1000  # secrets one herd keeps (each at most MAX_SECRET_BYTES): ~64 MiB of Barn at most
# a label's text as the records check it, in the regex dialect pydantic uses
LABEL_PATTERN = structs.ecma_pattern(LABEL_TEXT)
#: node labels as a request gives them (the records' LabelKey and LabelValue)
LabelMap = dict[
    Annotated[str, Field(min_length=1, max_length=253, pattern=LABEL_PATTERN)],
    Annotated[str, Field(max_length=253, pattern=LABEL_PATTERN)],
]
JOBS_PAGE = 500  # jobs a page of a job list holds unless asked for fewer or more
MAX_JOBS_PAGE = 5_000
MAX_WAIT = 30.0  # seconds a job's reader may wait for its next change
AUDIT_PAGE = 1000  # audit records per Barn read of GET /v1/audit
READY_TIMEOUT = 2.0  # seconds /readyz waits for the Barn
RETRY_AFTER = "1"  # seconds, for a 503 after repeated conflicts
#: reads that parse every record of a herd (cost reports, job lists) at once on one server,
#: and how long another waits for its turn before a 503: 12 cost reports at once held 4.6 GB
HEAVY_READS, HEAVY_WAIT = 2, 10.0


class Busy(Exception):
    """Too many heavy reads at once on this server: a 503, try again."""

    status = 503


class OneAtATime(Busy):
    """A caller's second heavy read while its first runs: a 429 at once. One viewer's 30 cost
    reports in flight held both of a server's slots, and every other herd's job lists waited
    10 s for a 503 (a review)."""

    status = 429


NamePath = Annotated[str, Path(pattern=NAME.pattern, max_length=63)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QuotaIn(Body):
    cpu: float = Field(default=0.0, ge=0, le=1_000_000, allow_inf_nan=False)
    memory: int = Field(default=0, ge=0, le=2**62)
    gpu: int = Field(default=0, ge=0, le=1_000_000)
    max_slices: int = Field(default=0, ge=0, le=1_000_000_000)


class HerdAdmissionIn(Body):
    """The herd's own admission limits (absent: the cluster's ``[admission]``; 0: no bound)."""

    max_cpu: float | None = Field(default=None, ge=0, le=4096, allow_inf_nan=False)
    max_memory: int | None = Field(default=None, ge=0, le=MAX_MEMORY)
    max_gpu: int | None = Field(default=None, ge=0, le=1024)
    max_timeout: float | None = Field(default=None, ge=0, le=366 * 86400, allow_inf_nan=False)
    rate: float | None = Field(default=None, ge=0, le=1_000_000, allow_inf_nan=False)
    burst: int | None = Field(default=None, ge=1, le=1_000_000)
    budget: float | None = Field(default=None, ge=0, le=1e12, allow_inf_nan=False)
    max_queued: int | None = Field(default=None, ge=0, le=1_000_000_000)
    budget_period: float = Field(default=30 * 86400.0, gt=0, le=366 * 86400, allow_inf_nan=False)


def _roots(values: list[str]) -> list[str]:
    return sorted({check_root(v) for v in values})


Roots = Annotated[
    list[Annotated[str, Field(min_length=2, max_length=4096)]],
    Field(max_length=MAX_ROOTS, description="absolute folders its pipelines' .dsl files may be in (not /)"),
    AfterValidator(_roots),
]


def _restricted(labels: dict[str, str]) -> dict[str, str]:
    check_restricted(labels, "node label")
    return labels


#: the restricted labels a herd is kept to (a node must have them all to run its tasks)
HerdNodeLabels = Annotated[
    LabelMap,
    Field(max_length=MAX_LABELS, description=f"labels under {RESTRICTED_LABELS} a node must have to run its tasks"),
    AfterValidator(_restricted),
]


class HerdIn(Body):
    name: str = Field(pattern=NAME.pattern, max_length=63)
    quota: QuotaIn = QuotaIn()
    admission: HerdAdmissionIn = HerdAdmissionIn()
    roots: Roots = []
    node_labels: HerdNodeLabels = {}


class RootsIn(Body):
    roots: Roots


class HerdNodeLabelsIn(Body):
    node_labels: HerdNodeLabels


class NodeLabelsIn(Body):
    """A node's restricted labels (``restricted.runink.io/...``), set by a cluster admin."""

    labels: LabelMap = Field(max_length=MAX_LABELS)


class ResourcesIn(Body):
    cpu: float = Field(default=0.0, ge=0, le=4096, allow_inf_nan=False)
    memory: int = Field(default=0, ge=0, le=MAX_MEMORY)
    gpu: int = Field(default=0, ge=0, le=1024)
    pids: int = Field(default=0, ge=0, le=MAX_PIDS)


class PinnedCapacityIn(Body):
    cpu: float = Field(default=0.0, ge=0, le=4096, allow_inf_nan=False)
    memory: int = Field(default=0, ge=0, le=MAX_MEMORY)
    gpu: int = Field(default=0, ge=0, le=1024)


class PinnedIn(Body):
    """A node's capacity cap, set by a cluster admin (``pinned``: null lifts it)."""

    pinned: PinnedCapacityIn | None


#: names of the herd's secrets a task receives: each a valid secret name, none twice (as TaskRecord's)
SecretNamesIn = Annotated[
    list[Annotated[str, StringConstraints(pattern=f"^{SECRET_NAME.pattern}$")]],
    Field(max_length=MAX_TASK_SECRETS),
    AfterValidator(lambda names: no_repeats(names, "secret")),
]


class JobIn(Body):
    herd: str = Field(pattern=NAME.pattern, max_length=63)
    command: list[Annotated[str, Field(min_length=1)]] = Field(default=[], max_length=MAX_COMMAND_ARGS)
    # several commands run in turn in one slice, sharing its work dir (seeds 002 and 003)
    commands: list[Annotated[list[str], Field(min_length=1, max_length=MAX_COMMAND_ARGS)]] = Field(
        default=[], max_length=MAX_COMMANDS
    )
    resources: ResourcesIn = ResourcesIn()
    timeout: float | None = Field(default=None, gt=0, le=366 * 86400, allow_inf_nan=False)
    retries: int = Field(default=0, ge=0, le=100)
    backoff: float = Field(default=1.0, ge=0, le=3600, allow_inf_nan=False)
    priority: int = Field(default=0, ge=-1000, le=1000)
    node_labels: LabelMap = Field(default_factory=dict, max_length=MAX_LABELS)
    secrets: SecretNamesIn = []  # names of the herd's secrets the command receives (files)
    secrets_env: bool = False  # ...and as environment variables

    @model_validator(mode="after")
    def _one_of(self) -> JobIn:
        if bool(self.command) == bool(self.commands):
            raise ValueError("give command (one program and its arguments) or commands (a list of them), not both")
        size = sum(len(arg.encode()) + 1 for line in (self.command, *self.commands) for arg in line)
        if size > MAX_COMMAND_BYTES:
            raise ValueError(f"the command lines are {size:,} bytes in all, at most {MAX_COMMAND_BYTES:,}")
        if self.commands:
            in_one_slice(self.commands)  # (its refusals, as a 422 naming the field)
        return self


class PipelineIn(Body):
    """A pipeline run: its .dsl (an absolute path every node that runs it can read: the nodes
    compile it again) and its scenarios as tasks, in dependency order (``runink submit``
    builds them by compiling the file)."""

    herd: str = Field(pattern=NAME.pattern, max_length=63)
    pipeline: str = Field(min_length=2, max_length=4096, pattern=r"^/.*\.dsl$")
    # each a PipelineTask (a record, not a pydantic model: checked by ``pipeline_tasks_of``;
    # its schema, msgspec's, is written into the OpenAPI document)
    tasks: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=MAX_PIPELINE_TASKS,
        description="The scenarios as tasks, in dependency order; checked as the stored task is "
        "(a 422 names body.tasks.N.FIELD).",
        json_schema_extra=lambda schema: schema.update(items=structs.json_schema(PipelineTask)),
    )
    priority: int = Field(default=0, ge=-1000, le=1000)


class BindingIn(Body):
    kind: SubjectKind
    subject: str = Field(min_length=1, max_length=MAX_SUBJECT)
    role: str = Field(min_length=1, max_length=63)


class UnbindIn(Body):
    kind: SubjectKind
    subject: str = Field(min_length=1, max_length=MAX_SUBJECT)


SecretPath = Annotated[str, Path(pattern=f"^{SECRET_NAME.pattern}$", max_length=128)]


class SecretIn(Body):
    value: str = Field(max_length=MAX_SECRET_BYTES)  # text (UTF-8); never echoed back


class TokenIn(Body):
    name: str = Field(pattern=NAME.pattern, max_length=63)  # the service account's
    role: str = Field(min_length=1, max_length=63)
    ttl: float = Field(default=3600.0, ge=60, le=MAX_TTL, allow_inf_nan=False)  # seconds


class RevokeIn(Body):
    """One of: a token (the CLI sends the token itself: who may revoke it is read from it), its
    ``jti``, or a ``subject`` (every token it holds, issued up to now)."""

    token: str | None = Field(default=None, min_length=1, max_length=MAX_TOKEN)
    jti: str | None = Field(default=None, pattern=r"^[0-9a-f]{1,64}$")
    subject: str | None = Field(default=None, min_length=1, max_length=MAX_REVOKED_SUBJECT)

    @model_validator(mode="after")
    def _one(self) -> RevokeIn:
        if sum(value is not None for value in (self.token, self.jti, self.subject)) != 1:
            raise ValueError("give exactly one of token, jti and subject")
        if self.subject is not None and not self.subject.isprintable():
            raise ValueError("subject: printable text only")
        return self


class NodeTokenIn(Body):
    ttl: float = Field(default=30 * 86400.0, ge=60, le=MAX_TTL, allow_inf_nan=False)  # seconds


class JoinTokenIn(Body):
    ttl: float = Field(default=3600.0, ge=60, le=MAX_JOIN_TTL, allow_inf_nan=False)  # seconds


class JoinIn(Body):
    token: str = Field(max_length=200)  # `runink nodes join-token`'s
    csr: str = Field(max_length=16 * 1024)  # PEM: the node made its key, it keeps it


class BodyTooLarge(HTTPException):
    """Raised while the body is read (FastAPI passes an HTTPException through as it is)."""

    def __init__(self) -> None:
        super().__init__(413, f"request body larger than {MAX_BODY} bytes")


class RequestMetrics:
    """Counts each request and times it (until its answer's headers are sent), by route
    template, never by path: ``/v1/jobs/{job_id}``, one series whatever the job. Gives each
    request an id, in its answer's ``X-Request-Id`` and in every log line it causes."""

    def __init__(self, app: ASGIApp, manager: PluginManager) -> None:
        self.app = app
        self.manager = manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500
        elapsed: float | None = None
        request_id = uuid.uuid4().hex[:16]

        async def timed_send(message: Message) -> None:
            nonlocal status, elapsed
            if message["type"] == "http.response.start":
                status, elapsed = int(message["status"]), time.perf_counter() - began
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            with logs.correlation(request=request_id):  # (the log lines of this request carry it)
                await self.app(scope, receive, timed_send)
        finally:
            found = scope.get("route")
            route = getattr(found, "path", None) or "unmatched"
            method = str(scope.get("method", ""))
            took = elapsed if elapsed is not None else time.perf_counter() - began
            metrics.report(
                self.manager,
                [
                    metrics.sample("runink_api_requests_total", 1, route=route, method=method, status=str(status)),
                    metrics.sample("runink_api_request_seconds", took, route=route, method=method),
                ],
            )


class BodyLimit:
    """Refuses a body past ``limit`` bytes: at once by its Content-Length, else (a chunked
    body) as soon as the bytes read pass it, so a large body is never held in memory."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await _too_large(scope, send)
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge()
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await _too_large(scope, send)


class AddedHeaders:
    """Adds the headers ``headers()`` gives (taken as each answer starts) to every answer:
    INSECURE_HEADER on a server that authenticates nobody, SCHEDULER_HEADER where the cluster
    schedules."""

    def __init__(self, app: ASGIApp, headers: Callable[[], list[tuple[bytes, bytes]]]) -> None:
        self.app = app
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers()]}
            await send(message)

        await self.app(scope, receive, marked)


async def _too_large(scope: Scope, send: Send) -> None:
    response = JSONResponse({"detail": BodyTooLarge().detail}, status_code=413)
    await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": printable(detail, MAX_DETAIL)}, status_code=status, headers=headers)


def _revoking(jti: str) -> tuple[str, str]:
    return "tokens.revoke", f"tokens/{jti}"


def pipeline_tasks_of(given: list[dict[str, Any]]) -> list[PipelineTask]:
    """A pipeline submission's tasks, checked; a 422 naming the first bad field (``body.tasks.N...``)."""
    tasks = []
    for index, task in enumerate(given):
        try:
            tasks.append(PipelineTask.model_validate(task))
        except RecordError as exc:
            raise _in_body(exc, "tasks", index) from None
    return tasks


def _in_body(exc: RecordError, *where: str | int) -> RequestValidationError:
    """A record's error in a request's body (``where``: the part of it the record was) as the
    422 any other malformed body gets."""
    return RequestValidationError([{"type": "value_error", "loc": ("body", *where, *exc.loc), "msg": exc.msg}])


#: what each name pattern asks, in words (a 422 quoted the regular expression)
PATTERN_WORDS = {
    NAME.pattern: NAME_WORDS,
    f"^{SECRET_NAME.pattern}$": "expected 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
}


def validation_detail(errors: Sequence[Any]) -> str:
    """One line naming the first bad field: ``body.resources.cpu: Input should be ...``; a
    name that does not match its pattern says what a name is, with the value given."""
    if not errors:
        return "request: invalid"
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "request"
    pattern = (first.get("ctx") or {}).get("pattern")
    if first.get("type") == "string_pattern_mismatch" and pattern in PATTERN_WORDS:
        return f"{where} {printable(str(first.get('input')), 80)!r}: {PATTERN_WORDS[pattern]}"
    return f"{where}: {first.get('msg', 'invalid')}"


def _use(tasks: list[TaskRecord]) -> dict[str, Any]:
    """What these tasks hold on their nodes, as the scheduler counts it (``assigned_to``):
    SCHEDULED or RUNNING, or cancelled there and not yet stopped; their resources and slices."""
    held = [t for t in tasks if assigned_to(t) is not None]
    return {
        "cpu": sum(t.resources.cpu for t in held),
        "memory": sum(t.resources.memory for t in held),
        "gpu": sum(t.resources.gpu for t in held),
        "pids": sum(t.resources.pids for t in held),
        "slices": len(held),
    }


def _identify(request: Request) -> Identity:
    """The identity the request's token names: 401 without (the plugins' routes' dependency,
    ``RouteGuard.caller``: FastAPI runs it on a thread)."""
    auth: ApiAuth = request.app.state.auth
    return auth.identify(request.headers, request.client.host if request.client else None)


async def _caller(request: Request) -> Identity:
    """(every route of the server's own but the public ones) As ``_identify``: known at once
    for a token checked before, else found on a thread (a plugin may do I/O)."""
    auth: ApiAuth = request.app.state.auth
    known = auth.identify_known(request.headers)
    if known is not None:
        return known
    return await run_in_threadpool(_identify, request)


Caller = Annotated[Identity, Depends(_caller)]


class _Guard:
    """The RouteGuard the plugins' routes get (core/security.py)."""

    def __init__(self, auth: ApiAuth, store: ClusterStore, declare: Callable[[str], dict[str, Any]]) -> None:
        self.auth, self.store, self.declare = auth, store, declare
        self.caller = _identify

    def check(self, identity: Identity, action: str, resource: str, herd: str) -> None:
        self.auth.check(identity, action, resource, herd)

    def herds(self, identity: Identity, action: str) -> list[str]:
        resource = action.partition(".")[0]  # (as the server's own routes name it: "jobs" for jobs.read)
        return [h.name for h in self.store.herds() if self.auth.decide(identity, action, resource, h.name).allowed]


def create_app(
    lifecycle: Lifecycle,
    store: ClusterStore,
    job_waits: JobWaits | None = None,
    *,
    auth: ApiAuth | None = None,
    tokens: ClusterTokens | None = None,
    tls: TlsFiles | None = None,
    ca_key: pathlib.Path | None = None,
    manager: PluginManager | None = None,
    admission: Admission | None = None,
    scaling: tuple[Scaler, ScalingPolicy] | None = None,
    scheduling_api: Callable[[], str] | None = None,
) -> FastAPI:
    """The REST API over ``lifecycle`` and ``store``; ``job_waits`` (fed by the server's watch
    of the Barn) lets a job's reader wait for its next change: without it, ``wait`` is ignored.
    ``auth``: who may call what (core/server/auth.py); None: nobody is authenticated and every
    answer says so (``--insecure-dev``). ``tokens``: the cluster's own, minted by the token
    routes and served as JWKS; None: those routes answer 404. ``tls``: the server's TLS files
    (its CA served to joining nodes); ``ca_key``: the CA's key, to sign the certificates of
    nodes that join (else those routes answer 404). ``manager``: the plugins requests are
    reported to as metrics (none: not measured). ``admission``: what every submission must
    pass (core/control/admission.py; none: only the quota and fit checks). ``scaling``: the
    cluster's scaler and autoscaling policy, shown by ``GET /v1/scaling`` (none: autoscaling off).
    ``scheduling_api``: the API of the server that schedules now ("" unknown), named in every
    answer's SCHEDULER_HEADER: a submission there is placed in the commit that stores it."""
    auth = auth or ApiAuth(None, store, insecure=True)
    app = FastAPI(
        title="Runink",
        summary="Jobs over a pool of machines: herds with quotas, nodes, jobs and their tasks",
        version="1",
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, validation_detail(exc.errors()))

    @app.exception_handler(Unauthenticated)
    async def _unauthenticated(request: Request, exc: Unauthenticated) -> JSONResponse:
        # and the connection closed: one without credentials holds no slot of its address's
        # between requests (a few kept alive, asking now and then, locked its neighbours out)
        return _error(401, str(exc), {"WWW-Authenticate": "Bearer", "Connection": "close"})

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> JSONResponse:
        return _error(403, str(exc))

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(TooLarge)
    async def _too_large(request: Request, exc: TooLarge) -> JSONResponse:  # (never sent: nothing was done)
        return _error(413, f"too large to store: {exc}")

    @app.exception_handler(AdmissionRefused)
    async def _not_admitted(request: Request, exc: AdmissionRefused) -> JSONResponse:
        wait = None if exc.retry_after is None else {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
        return _error(exc.status if 400 <= exc.status < 600 else 403, str(exc), wait)

    @app.exception_handler(Busy)
    async def _busy(request: Request, exc: Busy) -> JSONResponse:
        return _error(exc.status, str(exc), {"Retry-After": RETRY_AFTER})

    heavy = threading.BoundedSemaphore(HEAVY_READS)
    heavy_callers: set[str] = set()  # subjects with a heavy read under way here
    heavy_lock = threading.Lock()

    @contextlib.contextmanager
    def heavy_read(identity: Identity, what: str) -> Iterator[None]:
        with heavy_lock:
            if identity.subject in heavy_callers:
                who = printable(identity.subject, 256)
                raise OneAtATime(f"{who} is reading {what} on this server already: one at a time")
            heavy_callers.add(identity.subject)
        try:
            if not heavy.acquire(timeout=HEAVY_WAIT):
                raise Busy(f"{HEAVY_READS} {what} are being read on this server; try again")
            try:
                yield
            finally:
                heavy.release()
        finally:
            with heavy_lock:
                heavy_callers.discard(identity.subject)

    @app.exception_handler(RevocationsUnknown)
    async def _revocations_unknown(request: Request, exc: RevocationsUnknown) -> JSONResponse:
        # (no token is taken, nor minted, without them: the caller's token may be good all the same)
        return _error(503, f"{exc}; try again", {"Retry-After": RETRY_AFTER})

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, exc: Conflict) -> JSONResponse:
        return _error(503, f"{exc}; try again", {"Retry-After": RETRY_AFTER})

    @app.exception_handler(BarnError)
    async def _barn_away(request: Request, exc: BarnError) -> JSONResponse:
        # the Barn did not answer in time (no leader a moment, a loaded machine): a read may be
        # tried again; a change may have been made, so its caller checks before trying again
        why = printable(str(exc), 300)
        log.warning("%s %s: the Barn: %s", request.method, request.url.path, why)
        then = "try again" if request.method in ("GET", "HEAD") else "it may have been done: check before trying again"
        return _error(503, f"the Barn did not answer ({why}); {then}", {"Retry-After": RETRY_AFTER})

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # the client gets one line; uvicorn logs the traceback on this server only
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return _error(500, f"internal error: {type(exc).__name__}")

    app.add_middleware(BodyLimit, limit=MAX_BODY)
    if auth.insecure:
        insecure = [(INSECURE_HEADER.lower().encode(), INSECURE_VALUE.encode())]
        app.add_middleware(AddedHeaders, headers=lambda: insecure)
    if scheduling_api is not None:

        def scheduler() -> list[tuple[bytes, bytes]]:
            found = scheduling_api()
            return [(SCHEDULER_HEADER.lower().encode(), found.encode())] if found else []

        app.add_middleware(AddedHeaders, headers=scheduler)
    if manager is not None:
        app.add_middleware(RequestMetrics, manager=manager)  # (outermost: every answer counted)

    app.state.auth = auth

    def signer() -> ClusterTokens:
        """The cluster's own tokens; NotFound on a server given no key."""
        if tokens is None:
            raise NotFound("this cluster signs no tokens (its servers were given no --auth-key)")
        return tokens

    def action(name: str) -> dict[str, Any]:
        """A route's declaration of what it does (``openapi_extra``): checked by the tests to
        be on every route that is not public."""
        return {"x-runink-action": name}

    add_role_routes(app, store, auth, action)
    if auth.manager is not None:  # plugins' routes (the catalog's), guarded as these are
        router = APIRouter()
        auth.manager.hooks.api_routes(router, _Guard(auth, store, action))
        app.include_router(router)

    # --- who am I, the cluster's keys ----------------------------------------------------

    @app.get("/healthz", openapi_extra=action("public"), tags=["health"])
    def healthz() -> dict[str, str]:
        """Alive: the server answers (nothing else is checked)."""
        return {"status": "alive"}

    @app.get("/readyz", openapi_extra=action("public"), tags=["health"], responses={503: {}})
    async def readyz() -> JSONResponse:
        """Ready: a linearizable read of the Barn answers (its raft group has a quorum and a
        leader), within READY_TIMEOUT seconds; else 503 saying why."""
        try:
            revision = await asyncio.wait_for(run_in_threadpool(store.barn.revision), READY_TIMEOUT)
        except (TimeoutError, RuninkError, OSError) as exc:
            why = "no answer" if isinstance(exc, TimeoutError) else printable(str(exc), 300)
            return _error(503, f"not ready: the Barn: {why}", {"Retry-After": "1"})
        return JSONResponse({"status": "ready", "revision": revision})

    @app.get("/.well-known/jwks.json", openapi_extra=action("public"))
    def jwks() -> dict[str, Any]:
        """The public keys of the cluster's own tokens."""
        return signer().jwks()

    @app.get("/v1/whoami", openapi_extra=action("authenticated"))
    def whoami(identity: Caller) -> dict[str, Any]:
        grants = auth.grants(identity, CLUSTER) if not auth.insecure else []
        return {
            "subject": identity.subject,
            "groups": list(identity.groups),
            "authenticated_by": identity.authenticated_by,
            "cluster_roles": sorted({g.role for g in grants if g.herd == CLUSTER}),
        }

    # --- herds -------------------------------------------------------------------------

    @app.post("/v1/herds", status_code=201, openapi_extra=action("herds.create"))
    def create_herd(body: HerdIn, identity: Caller) -> dict[str, Any]:
        auth.check(identity, "herds.create", f"herds/{body.name}", CLUSTER)
        herd = Herd(
            name=body.name,
            quota=Quota(**body.quota.model_dump()),
            admission=HerdAdmission(**body.admission.model_dump()),
            roots=body.roots,
            node_labels=body.node_labels,
        )
        store.create_herd(herd)
        auth.forget_bindings(herd.name)  # (a deleted herd's of that name, read before: not this one's)
        return dump_record(herd)

    @app.put("/v1/herds/{name}/roots", openapi_extra=action("herds.update"))
    def set_herd_roots(name: NamePath, body: RootsIn, identity: Caller) -> dict[str, Any]:
        """The folders the herd's pipelines may be in (replacing those it had): each scenario's
        slice is granted its .dsl's whole folder, so only a cluster admin says which are a herd's."""
        auth.check(identity, "herds.update", f"herds/{name}/roots", CLUSTER)
        herd = store.update(keys.herd(name), Herd, lambda h: h.model_copy(update={"roots": body.roots}))
        return dump_record(herd)

    @app.put("/v1/herds/{name}/node-labels", openapi_extra=action("herds.update"))
    def set_herd_node_labels(name: NamePath, body: HerdNodeLabelsIn, identity: Caller) -> dict[str, Any]:
        """The restricted labels a node must have to run the herd's tasks (replacing those it
        had; none: any node). Tasks waiting are placed by them from the next pass on; running
        ones run on where they are."""
        auth.check(identity, "herds.update", f"herds/{name}/node-labels", CLUSTER)
        update = {"node_labels": body.node_labels}
        herd = store.update(keys.herd(name), Herd, lambda h: h.model_copy(update=update))
        return dump_record(herd)

    @app.get("/v1/herds", openapi_extra=action("herds.read"))
    def list_herds(identity: Caller) -> dict[str, Any]:
        """The herds the caller may read."""
        readable = [h for h in store.herds() if auth.decide(identity, "herds.read", f"herds/{h.name}", h.name).allowed]
        return {"herds": [dump_record(h) for h in readable]}

    @app.get("/v1/herds/{name}", openapi_extra=action("herds.read"))
    def describe_herd(name: NamePath, identity: Caller) -> dict[str, Any]:
        auth.check(identity, "herds.read", f"herds/{name}", name)
        herd = store.herd(name).record
        live = [v.record for v in store.live() if v.record.herd == name]  # (not every task ever run)
        use = {**_use(live), "not_ended": len(live)}
        bound = {} if admission is None else {"max_queued": admission.queue_limit(herd)[0]}
        return {**dump_record(herd), "used": use, **bound}

    @app.delete("/v1/herds/{name}", status_code=204, openapi_extra=action("herds.delete"))
    def remove_herd(name: NamePath, identity: Caller) -> None:
        """Delete the herd: its jobs, secrets and bindings, and every token holding a role in
        it (revoked before its records go: a herd made again under its name starts with none
        of them), and what plugins keep of it (``runink_herd_deleted``)."""
        auth.check(identity, "herds.delete", f"herds/{name}", name)
        revocations = None if tokens is None else tokens.revocations

        def revoke_its_tokens() -> None:
            if revocations is not None:  # (up to LEEWAY on: a server whose clock runs ahead signs too)
                revocations.revoke_subject(HERD_TOKENS + name, identity.subject, ahead=LEEWAY)

        try:
            store.delete_herd(name, revoke_its_tokens)
        finally:
            auth.forget_bindings(name)
        plugins = manager or auth.manager
        for plugin in [] if plugins is None else herd_deleted(plugins, name):  # (the catalog's rows)
            log.warning("herd %s deleted, but plugin %s could not forget it (see its error above)", name, plugin)

    # --- role bindings and tokens ----------------------------------------------------------

    def list_bindings(identity: Identity, herd: str) -> dict[str, Any]:
        auth.check(identity, "rbac.read", "rbac", herd)
        if herd != CLUSTER:
            store.herd(herd)  # NotFound names it
        return {"bindings": [b.model_dump(mode="json") for b in bindings(store, herd)]}

    def add_binding(identity: Identity, herd: str, body: BindingIn) -> dict[str, Any]:
        auth.check(identity, "rbac.bind", f"rbac/{body.kind}/{body.subject}", herd)
        try:
            binding = Binding.model_validate(
                {"kind": body.kind, "subject": body.subject, "role": body.role, "herd": herd, "by": identity.subject}
            )
        except RecordError as exc:
            raise _in_body(exc) from None
        bind_role(store, binding)
        auth.forget_bindings(herd)
        return binding.model_dump(mode="json")

    def remove_binding(identity: Identity, herd: str, body: UnbindIn) -> None:
        auth.check(identity, "rbac.bind", f"rbac/{body.kind}/{body.subject}", herd)
        unbind(store, herd, body.kind, body.subject)
        auth.forget_bindings(herd)

    @app.get("/v1/herds/{name}/rbac", openapi_extra=action("rbac.read"))
    def herd_bindings(name: NamePath, identity: Caller) -> dict[str, Any]:
        return list_bindings(identity, name)

    @app.post("/v1/herds/{name}/rbac", status_code=201, openapi_extra=action("rbac.bind"))
    def bind_in_herd(name: NamePath, body: BindingIn, identity: Caller) -> dict[str, Any]:
        return add_binding(identity, name, body)

    @app.post("/v1/herds/{name}/rbac/unbind", status_code=204, openapi_extra=action("rbac.bind"))
    def unbind_in_herd(name: NamePath, body: UnbindIn, identity: Caller) -> None:
        remove_binding(identity, name, body)

    @app.get("/v1/rbac", openapi_extra=action("rbac.read"))
    def cluster_bindings(identity: Caller) -> dict[str, Any]:
        return list_bindings(identity, CLUSTER)

    @app.post("/v1/rbac", status_code=201, openapi_extra=action("rbac.bind"))
    def bind_in_cluster(body: BindingIn, identity: Caller) -> dict[str, Any]:
        return add_binding(identity, CLUSTER, body)

    @app.post("/v1/rbac/unbind", status_code=204, openapi_extra=action("rbac.bind"))
    def unbind_in_cluster(body: UnbindIn, identity: Caller) -> None:
        remove_binding(identity, CLUSTER, body)

    # --- secrets (names and versions out, values in only) -----------------------------------

    def secret_backend(herd: str) -> SecretBackend:
        """The cluster's secret backend once ``herd`` is known to exist; NotFound otherwise,
        Refused while it is being deleted (the Barn backend compares that in its write too)."""
        if store.herd(herd).record.deleting:  # (NotFound names it)
            raise Refused(f"herd {herd!r} is being deleted")
        if lifecycle.secrets is None:
            raise NotFound("this cluster keeps no secrets (its servers were given no --secrets-key)")
        return lifecycle.secrets

    @app.get("/v1/herds/{name}/secrets", openapi_extra=action("secrets.read"))
    def list_secrets(name: NamePath, identity: Caller) -> dict[str, Any]:
        """The herd's secrets: names, versions and when each was last set; never a value."""
        auth.check(identity, "secrets.read", "secrets", name)
        infos = secret_backend(name).list(name)
        return {"secrets": [{"name": i.name, "version": i.version, "updated": i.updated} for i in infos]}

    @app.put("/v1/herds/{name}/secrets/{secret}", openapi_extra=action("secrets.write"))
    def set_secret(name: NamePath, secret: SecretPath, body: SecretIn, identity: Caller) -> dict[str, Any]:
        """Store a new version of the secret (slices started from now on get it)."""
        auth.check(identity, "secrets.write", f"secrets/{secret}", name)
        try:
            value = body.value.encode("utf-8")
        except UnicodeEncodeError:  # (a lone surrogate: JSON allows it, text does not)
            raise Refused(f"secret {secret!r} of herd {name!r}: the value is not valid text") from None
        if len(value) > MAX_SECRET_BYTES:  # (checked again in bytes: a character may be 4)
            raise Refused(f"secret {secret!r} of herd {name!r}: {len(value)} bytes, at most {MAX_SECRET_BYTES}")
        backend = secret_backend(name)
        kept = {info.name for info in backend.list(name)}
        if secret not in kept and len(kept) >= MAX_HERD_SECRETS:  # (the Barn is every herd's)
            raise Refused(f"herd {name!r} keeps {len(kept)} secrets, at most {MAX_HERD_SECRETS}: delete some first")
        try:
            version = backend.put(name, secret, value)
        except InvalidSecretError as exc:
            raise Refused(str(exc)) from None
        return {"herd": name, "name": secret, "version": version}

    @app.delete("/v1/herds/{name}/secrets/{secret}", status_code=204, openapi_extra=action("secrets.write"))
    def delete_secret(name: NamePath, secret: SecretPath, identity: Caller) -> None:
        auth.check(identity, "secrets.write", f"secrets/{secret}", name)
        if not secret_backend(name).delete(name, secret):
            raise NotFound(f"herd {name!r} has no secret {secret!r}")

    def mint(identity: Identity, herd: str, body: TokenIn) -> dict[str, Any]:
        auth.check(identity, "tokens.create", f"tokens/{body.name}", herd)
        cluster_tokens = signer()
        roles = CLUSTER_ROLES if herd == CLUSTER else HERD_ROLES
        if body.role not in roles:
            where = "the cluster" if herd == CLUSTER else "a herd"
            raise Refused(f"role {body.role!r}: not a role of {where} (one of {', '.join(roles)})")
        made = None if herd == CLUSTER else store.herd(herd).record  # (NotFound names a missing one)
        if made is not None and made.deleting:
            raise Refused(f"herd {herd!r} is being deleted: it takes no new tokens")
        # a token lives no longer than the one that minted it (an hour's token made 90 days' ones)
        ttl = body.ttl
        minter_expires = identity.claims.get("exp")
        if isinstance(minter_expires, int | float):
            ttl = min(ttl, float(minter_expires) - time.time())
            if ttl < 1:
                raise Refused("the token you call with expires now: it cannot mint one that outlives it")
        token, expires = cluster_tokens.mint(f"sa:{body.name}", [Grant(body.role, herd)], ttl)
        subject = f"sa:{body.name}"
        jti = cluster_tokens.jti_of(token)  # (what `runink token revoke --jti` names it by)
        if made is not None and not _same_herd(made):  # deleted while it was signed: never given
            if cluster_tokens.revocations is not None and jti is not None:
                cluster_tokens.revocations.revoke_token(jti, subject, expires, identity.subject)
            raise Refused(f"herd {herd!r} was deleted meanwhile: no token was given")
        return {"token": token, "subject": subject, "role": body.role, "herd": herd, "expires": expires, "jti": jti}

    def _same_herd(before: Herd) -> bool:
        """Whether ``before`` (a herd as read) is still there, the same one, not being deleted."""
        try:
            now = store.herd(before.name).record
        except NotFound:
            return False
        return now.created == before.created and not now.deleting

    @app.post("/v1/herds/{name}/tokens", status_code=201, openapi_extra=action("tokens.create"))
    def herd_token(name: NamePath, body: TokenIn, identity: Caller) -> dict[str, Any]:
        """A service account's token holding ``role`` in the herd for ``ttl`` seconds."""
        return mint(identity, name, body)

    @app.post("/v1/herds/{name}/tokens/revoke", openapi_extra=action("tokens.revoke"))
    def revoke_herd_tokens(name: NamePath, identity: Caller) -> dict[str, Any]:
        """Revoke every token this cluster signed that holds a role in the herd, issued up to
        now (its service accounts', whoever minted them): what a herd admin does when another
        admin leaves. Every server refuses them within a second."""
        cluster_tokens = signer()
        if cluster_tokens.revocations is None:
            raise NotFound("this server keeps no revocations")
        with auth.change(identity, "tokens.revoke", "tokens/*", name) as audits:
            store.herd(name)  # NotFound names it (once allowed: a 404 told anyone which herds exist)
            record = cluster_tokens.revocations.revoke_subject(HERD_TOKENS + name, identity.subject, ahead=LEEWAY)
        for entry in audits:
            auth.write_audit(entry)
        return {"revoked": {**record, "herd": name}}

    @app.post("/v1/tokens", status_code=201, openapi_extra=action("tokens.create"))
    def cluster_token(body: TokenIn, identity: Caller) -> dict[str, Any]:
        """A service account's token holding a cluster role."""
        return mint(identity, CLUSTER, body)

    @app.post("/v1/tokens/revoke", openapi_extra=action("tokens.revoke"))
    def revoke_token(body: RevokeIn, identity: Caller) -> dict[str, Any]:
        """Revoke a token the cluster signed before it expires, or every token of a subject
        issued up to now (a service account's ``sa:NAME``, a node's ``node:NAME``). A token
        given whole may be revoked by an admin of each herd its roles are in; a ``jti`` or a
        ``subject`` by a cluster admin. Every server refuses it within a second."""
        cluster_tokens = signer()
        revocations = cluster_tokens.revocations
        if revocations is None:
            raise NotFound("this server keeps no revocations")
        if body.token is not None:
            try:
                target = cluster_tokens.runink_authenticate(
                    AuthRequest(headers={"authorization": f"Bearer {body.token}"})
                )
            except AuthenticationError as exc:
                raise Refused(f"{exc} (an expired or revoked token needs no revoking)") from None
            if target is None:
                raise Refused("token: not one this cluster signed")
            jti = target.claims.get("jti")
            if not isinstance(jti, str):
                raise Refused("token: it has no jti; revoke its subject instead")
            herds = sorted({g.herd for g in target.claims.get("grants", ())}) or [CLUSTER]
            with contextlib.ExitStack() as stack:  # (allowed in every herd it holds a role in)
                audits = [e for h in herds for e in stack.enter_context(auth.change(identity, *_revoking(jti), h))]
                record = revocations.revoke_token(jti, target.subject, float(target.claims["exp"]), identity.subject)
        else:
            what = body.jti if body.jti is not None else f"subject {body.subject}"
            with auth.change(identity, "tokens.revoke", f"tokens/{what}", CLUSTER) as audits:
                if body.jti is not None:
                    record = revocations.revoke_token(body.jti, "", None, identity.subject)
                else:
                    assert body.subject is not None
                    record = revocations.revoke_subject(body.subject, identity.subject)
                    if body.subject.startswith(NODE_SUBJECT):  # and the join tokens it was not given yet
                        join.forget_node(store, body.subject.removeprefix(NODE_SUBJECT))
        for entry in audits:  # (the revocation's leases are not transactions: recorded once it held)
            auth.write_audit(entry)
        return {"revoked": record}

    @app.get("/v1/audit", openapi_extra=action("audit.read"))
    def read_audit(
        identity: Caller,
        day: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}-\d{2}$")] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> dict[str, Any]:
        """The last ``limit`` decisions about changes of ``day`` (UTC; default: today), oldest first."""
        auth.check(identity, "audit.read", "audit", CLUSTER)
        try:
            if day is not None:
                dt.date.fromisoformat(day)
        except ValueError:  # (2026-13-45 matched the pattern and listed nothing: a review)
            raise RequestValidationError(
                [{"type": "value_error", "loc": ("query", "day"), "msg": f"{day!r} is no day (YYYY-MM-DD)"}]
            ) from None
        shown = f"{day or audit_day(time.time())}/"
        # a page at a time, keeping the last ``limit`` of each: a busy day was read whole into
        # memory; the changes made and those not made merged in time order (their keys' DAY/TIME)
        found: list[tuple[str, bytes]] = []
        for prefix in (AUDIT, AUDIT_UNDONE):
            kept: collections.deque[KeyValue] = collections.deque(maxlen=limit)
            for page in store.pages(prefix + shown, AUDIT_PAGE):
                kept.extend(page)
            found += [(kv.key[len(prefix) :], kv.value) for kv in kept]
        return {"records": [json.loads(value) for _, value in sorted(found)[-limit:]]}

    # --- jobs --------------------------------------------------------------------------

    # (the two routes on every job's way answer a JSONResponse of their own: FastAPI's checks
    # and encoding of a returned dict were ~0.5 ms of each; response_model keeps the docs)
    @app.post("/v1/jobs", status_code=201, openapi_extra=action("jobs.submit"), response_model=dict[str, Any])
    def submit_job(body: JobIn, identity: Caller) -> JSONResponse:
        with auth.change(identity, "jobs.submit", "jobs", body.herd) as audit:
            # Checked as the stored task would be, so a malformed request is a 422 naming the
            # field; what lifecycle refuses after this (quota, fit) is a 409.
            argv = body.command or in_one_slice(body.commands)
            try:
                TaskRecord.model_validate(
                    {
                        "id": "check",
                        "job_id": "check",
                        "herd": body.herd,
                        "command": argv,
                        "resources": body.resources.model_dump(),
                        "timeout": body.timeout,
                    }
                )
            except RecordError as exc:
                raise _in_body(exc) from None
            stored: list[int] = []
            job = lifecycle.submit_command(
                body.herd,
                argv,
                Amount(**body.resources.model_dump()),
                timeout=body.timeout,
                retries=body.retries,
                backoff=body.backoff,
                priority=body.priority,
                node_labels=body.node_labels,
                secrets=body.secrets,
                secrets_env=body.secrets_env,
                also=audit,
                admit=None if admission is None else admission.gate(identity),
                on_stored=stored.append,
            )
        # (the revision: a waiter's first ``after``, so it waits without reading the job first)
        return JSONResponse({"job": dump_record(job), "revision": stored[0]}, status_code=201)

    @app.post("/v1/pipelines", status_code=201, openapi_extra=action("jobs.submit"))
    def submit_pipeline(body: PipelineIn, identity: Caller) -> dict[str, Any]:
        with auth.change(identity, "jobs.submit", f"pipelines{body.pipeline}", body.herd) as audit:
            roots = store.herd(body.herd, recent=True).record.roots
            if not under_root(body.pipeline, roots):
                # its slices get the .dsl's whole folder: only where a cluster admin said
                raise Forbidden(
                    f"herd {body.herd}: {body.pipeline} is not in a folder its pipelines may be in "
                    f"({', '.join(roots) or 'none set'}; a cluster admin sets them: "
                    f"runink herd roots {body.herd} DIR...)"
                )
            # what the records refuse after this (a scenario twice, quota, fit) is a 409
            stored: list[int] = []
            job = lifecycle.submit_pipeline(
                body.herd,
                body.pipeline,
                pipeline_tasks_of(body.tasks),
                priority=body.priority,
                also=audit,
                admit=None if admission is None else admission.gate(identity),
                on_stored=stored.append,
            )
        return {"job": dump_record(job), "revision": stored[0]}

    @app.get("/v1/cost", openapi_extra=action("jobs.read"))
    def read_cost(
        identity: Caller,
        herd: Annotated[str | None, Query(pattern=NAME.pattern, max_length=63)] = None,
        since: Annotated[float, Query(ge=0, le=366 * 86400, allow_inf_nan=False)] = 7 * 86400.0,
        by: Literal["herd", "pipeline", "scenario", "user"] = "herd",
    ) -> dict[str, Any]:
        """Estimate against actual cost of the jobs submitted in the last ``since`` seconds, of
        ``herd`` or of every herd the caller may read, grouped ``by``."""
        if herd is not None:
            auth.check(identity, "jobs.read", "cost", herd)
            store.herd(herd)  # NotFound names it
            names = [herd]
        else:
            names = [h.name for h in store.herds() if auth.decide(identity, "jobs.read", "jobs", h.name).allowed]
        after = time.time() - since
        with heavy_read(identity, "cost reports or job lists"):
            jobs = [j for name in names for j in store.jobs(name) if j.submitted >= after]
            tasks = [v.record for name in names for v in store.tasks(name)]
            rates = admission.rates if admission is not None else CostConfig()
            rows = cost_report(jobs, tasks, by, rates)
        return {"by": by, "since": after, "currency": rates.currency, "rows": rows}

    @app.get("/v1/jobs", openapi_extra=action("jobs.read"))
    def list_jobs(
        identity: Caller,
        herd: Annotated[str | None, Query(pattern=NAME.pattern, max_length=63)] = None,
        state: RunState | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_JOBS_PAGE)] = JOBS_PAGE,
        after: Annotated[str | None, Query(pattern=NAME.pattern, max_length=63)] = None,
    ) -> dict[str, Any]:
        """The jobs of ``herd``, or of every herd the caller may read, oldest first: a page of at
        most ``limit``, past the job id ``after``. ``next``: the ``after`` of the next page
        (null: this page is the last). A page may hold fewer than ``limit`` jobs and still have
        a next one, when a ``state`` few jobs are in was asked for."""
        if herd is not None:
            auth.check(identity, "jobs.read", "jobs", herd)
            store.herd(herd)  # NotFound names the herd
            names = [herd]
        else:
            names = [h.name for h in store.herds() if auth.decide(identity, "jobs.read", "jobs", h.name).allowed]
        with heavy_read(identity, "cost reports or job lists"):
            jobs, next_after = store.jobs_page(names, after=after, limit=limit, state=state)
        return {"jobs": [dump_record(j) for j in jobs], "next": next_after}

    def check_job(identity: Identity, what: str, job_id: str, herd: str) -> None:
        """``auth.check`` of ``what`` on the job; to a caller who may not read the herd's jobs
        it is "no such job", as for an id that names none (a 403 naming the herd told that the
        job exists, and whose it is)."""
        try:
            auth.check(identity, what, f"jobs/{job_id}", herd)
        except Forbidden:
            if not auth.decide(identity, "jobs.read", "jobs", herd).allowed:
                raise NotFound(f"job {job_id!r}: no such job") from None
            raise

    @app.get("/v1/jobs/{job_id}", openapi_extra=action("jobs.read"), response_model=dict[str, Any])
    async def describe_job(  # noqa: PLR0917 (FastAPI: each query parameter is one)
        job_id: NamePath,
        identity: Caller,
        explain: bool = False,
        wait: Annotated[float, Query(ge=0, le=MAX_WAIT, allow_inf_nan=False)] = 0.0,
        after: Annotated[int, Query(ge=0)] = 0,
        output: bool = False,
    ) -> JSONResponse:
        """The job and its tasks, with the job record's ``revision``. With ``wait=S`` and
        ``after=REV`` (a revision an earlier answer gave): answered once the job's record is
        past ``REV`` (its state changed), or after ``S`` seconds as it is; no polling needed.
        With ``output=true``, an answer whose job has ended carries its first task's output
        (``output``: per stream, what ``GET .../logs`` answers from offset 0) if the caller may
        read logs: ``runink exec`` needs no more reads."""

        def may_read(job: JobRecord) -> None:
            check_job(identity, "jobs.read", job_id, job.herd)

        def answer_of(found: dict[str, Any]) -> JSONResponse:
            job, tasks = found["job"], found["tasks"]
            readable = output and tasks and RunState(job["state"]).final
            if readable and auth.decide(identity, "logs.read", f"jobs/{job_id}", job["herd"]).allowed:
                task, state = tasks[0], job["state"]  # (ended: at its last attempt)
                reads = logs.read_all(job["herd"], task["id"], task["attempt"])
                found["output"] = {
                    stream: log_answer(job_id, state, task["id"], stream, offset=0, read=read)
                    for stream, read in reads.items()
                }
            return JSONResponse(found)

        def read(woken: tuple[str, int] | None = None) -> JSONResponse:
            """``woken``: (herd, revision) of a waiter the job's change woke: the records the
            watch saw may answer (``job_answer``'s ``seen_past``)."""
            return answer_of(job_answer(store, job_id, explain=explain, check=may_read, seen_past=woken))

        def read_now() -> tuple[JSONResponse, str, int]:
            """(the answer, the job's herd, its record's revision)"""
            found = job_answer(store, job_id, explain=explain, check=may_read)
            return answer_of(found), found["job"]["herd"], found["revision"]

        if not wait or job_waits is None:
            return await run_in_threadpool(read)
        async with job_waits.waiter(job_id) as changed:  # (registered before the read: no change missed)
            seen = job_waits.seen(job_id)
            if changed is not None and after and seen is not None and seen[0] <= after:
                # the feed saw nothing past what this reader has: wait for it before reading
                # (the feed lags the Barn, never leads it), once the caller may read the job
                check_job(identity, "jobs.read", job_id, seen[1])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), wait)
                return await run_in_threadpool(read, (seen[1], after))
            answer, herd, revision = await run_in_threadpool(read_now)
            if changed is None or revision > after:
                return answer
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), wait)
                return await run_in_threadpool(read, (herd, after))
            return answer

    logs = TaskLogs(store)

    @app.get("/v1/jobs/{job_id}/logs", openapi_extra=action("logs.read"))
    def job_logs(  # noqa: PLR0917 (FastAPI: each query parameter is one)
        job_id: NamePath,
        identity: Caller,
        stream: Literal["stdout", "stderr"] = "stdout",
        offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
        task: Annotated[str | None, Query(pattern=NAME.pattern, max_length=63)] = None,
        attempt: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    ) -> dict[str, Any]:
        """What is kept of a task's output from ``offset`` (default: the job's first task, its
        current attempt). The server keeps the last bytes of each attempt's stream; ``dropped``
        counts those between ``offset`` and the first byte returned that are no longer kept.
        ``data`` is base64: the output is bytes, not text."""
        job = store.job(job_id).record
        check_job(identity, "logs.read", job_id, job.herd)
        task_id = task or job.tasks[0]
        if task_id not in job.tasks:
            raise NotFound(f"task {task_id!r}: not a task of job {job_id}")
        read = logs.read(job.herd, task_id, stream, offset, attempt)
        return log_answer(job.id, job.state.value, task_id, stream, offset=offset, read=read)

    def log_answer(job_id: str, state: str, task_id: str, stream: str, *, offset: int, read: LogRead) -> dict[str, Any]:
        """``GET /v1/jobs/{job_id}/logs``'s answer for ``read`` (asked from ``offset``)."""
        return {
            "job": job_id,
            "state": state,
            "task": task_id,
            "attempt": read.attempt,
            "stream": stream,
            "offset": read.start,
            "next_offset": read.next_offset,
            "dropped": read.dropped(offset),
            "kept_bytes": logs.tail_bytes,
            "data": base64.b64encode(read.data).decode(),
        }

    @app.post("/v1/jobs/{job_id}/cancel", openapi_extra=action("jobs.cancel"))
    def cancel_job(job_id: NamePath, identity: Caller) -> dict[str, Any]:
        check_job(identity, "jobs.cancel", job_id, store.job(job_id).record.herd)
        return {"job": dump_record(lifecycle.cancel(job_id))}

    # --- nodes -------------------------------------------------------------------------

    def node_view(node: NodeRecord, tasks: list[TaskRecord]) -> dict[str, Any]:
        return {**dump_record(node), "used": _use([t for t in tasks if assigned_to(t) == node.id])}

    @app.get("/v1/nodes", openapi_extra=action("nodes.read"))
    def list_nodes(identity: Caller) -> dict[str, Any]:
        auth.check(identity, "nodes.read", "nodes", CLUSTER)
        tasks = [v.record for v in store.assigned()]
        return {"nodes": [node_view(v.record, tasks) for v in store.nodes()]}

    @app.get("/v1/scaling", openapi_extra=action("nodes.read"))
    def scaling_state(identity: Caller) -> dict[str, Any]:
        """The autoscaler: its policy, the nodes its scaler runs, what it wants, its last decisions."""
        auth.check(identity, "nodes.read", "nodes", CLUSTER)
        state = store.scaling().record
        answer: dict[str, Any] = {
            "enabled": scaling is not None,
            "scaler": None,
            "policy": None,
            "nodes": [],
            "desired": state.desired,
            "removing": sorted(state.removing),
            "decisions": dump_record(state)["decisions"],
        }
        if scaling is not None:
            scaler, policy = scaling
            answer.update(scaler=scaler.name or type(scaler).__name__, policy=dataclasses.asdict(policy))
            answer["nodes"] = scaler.nodes()
            if not state.decisions:  # (nothing decided yet: it wants what it has)
                answer["desired"] = len(answer["nodes"])
        return answer

    @app.get("/v1/nodes/{node_id}", openapi_extra=action("nodes.read"))
    def describe_node(node_id: NamePath, identity: Caller) -> dict[str, Any]:
        auth.check(identity, "nodes.read", f"nodes/{node_id}", CLUSTER)
        node = store.node(node_id).record
        return node_view(node, [v.record for v in store.assigned(node.id)])

    @app.post("/v1/nodes/{node_id}/token", status_code=201, openapi_extra=action("nodes.manage"))
    def node_token(node_id: NamePath, identity: Caller, body: NodeTokenIn | None = None) -> dict[str, Any]:
        """A token the agent of ``node_id`` connects with (`runink agent --token-file`): it may
        act as that node only, and nothing on this API."""
        auth.check(identity, "nodes.manage", f"nodes/{node_id}", CLUSTER)
        token, expires = signer().mint_node(node_id, (body or NodeTokenIn()).ttl)
        return {"token": token, "node": node_id, "expires": expires}

    # --- nodes joining: a one-time token for a node certificate ------------------------------

    def signing() -> tuple[pathlib.Path, pathlib.Path]:
        if tls is None or ca_key is None:
            raise NotFound("this server signs no node certificates (it was given no --tls-ca-key)")
        return tls.ca, ca_key

    @app.get("/v1/cluster/ca", openapi_extra=action("public"))
    def cluster_ca() -> dict[str, Any]:
        """The cluster CA's certificate: a joining node keeps it only if its fingerprint is the
        one its join token carries."""
        if tls is None:
            raise NotFound("this cluster speaks no TLS")
        pem = pki.read_pem(tls.ca)
        return {"ca": pem.decode("ascii", "replace"), "fingerprint": pki.fingerprint(pem)}

    @app.post("/v1/nodes/{node_id}/join-token", status_code=201, openapi_extra=action("nodes.manage"))
    def join_token(node_id: NamePath, identity: Caller, body: JoinTokenIn | None = None) -> dict[str, Any]:
        """A one-time token a new machine joins as ``node_id`` with (`runink node join`)."""
        auth.check(identity, "nodes.manage", f"nodes/{node_id}", CLUSTER)
        ca, _ = signing()
        token, expires = join.mint(store, node_id, (body or JoinTokenIn()).ttl, ca)
        return {"token": token, "node": node_id, "expires": expires}

    @app.post("/v1/nodes/join", openapi_extra=action("public"))
    def join_cluster(body: JoinIn) -> dict[str, Any]:
        """Spend a join token: the certificate ``node.NAME`` (client usage) for the key of the
        signing request, NAME being the node the token was minted for."""
        ca, key = signing()
        try:
            token = join.JoinToken.parse(body.token)
        except ValueError as exc:
            raise Unauthenticated(str(exc)) from None
        signed: list[str] = []

        def sign(node: str) -> bytes:
            signed.append(node)
            revoked_up_to = None
            if tokens is not None and tokens.revocations is not None:
                try:  # (read now: another server may have revoked it a moment ago)
                    revoked_up_to = tokens.revocations.revoked_up_to(NODE_SUBJECT + node, afresh=True)
                except RevocationsUnknown as exc:
                    raise Busy(f"join: {exc}; try again") from None
            if revoked_up_to is not None and revoked_up_to >= time.time():  # (its server's clock runs ahead)
                until = time.strftime("%H:%M:%SZ", time.gmtime(revoked_up_to))
                raise Refused(f"join: node {node}'s revocation covers what is issued until {until}: join after it")
            return join.sign_node(ca, key, node, body.csr.encode("utf-8", "replace"), revoked_up_to)

        certificate = join.redeem(store, token, sign)
        node = signed[0]
        allowed = AuthzDecision(True, "a join token minted for this node", "")
        auth.write_audit(auth.audit_entry(Identity(f"join:{node}"), "nodes.join", f"nodes/{node}", CLUSTER, allowed))
        return {"node": node, "cert": certificate.decode("ascii"), "ca": pki.read_pem(ca).decode("ascii")}

    @app.post("/v1/nodes/{node_id}/cordon", openapi_extra=action("nodes.manage"))
    def cordon(node_id: NamePath, identity: Caller) -> dict[str, Any]:
        auth.check(identity, "nodes.manage", f"nodes/{node_id}", CLUSTER)
        return dump_record(lifecycle.cordon(node_id))

    @app.post("/v1/nodes/{node_id}/uncordon", openapi_extra=action("nodes.manage"))
    def uncordon(node_id: NamePath, identity: Caller) -> dict[str, Any]:
        auth.check(identity, "nodes.manage", f"nodes/{node_id}", CLUSTER)
        return dump_record(lifecycle.uncordon(node_id))

    @app.put("/v1/nodes/{node_id}/labels", openapi_extra=action("nodes.manage"))
    def label_node(node_id: NamePath, body: NodeLabelsIn, identity: Caller) -> dict[str, Any]:
        """Set the node's restricted labels (``restricted.runink.io/...``), replacing those it
        had: a node's agent cannot claim them, so tasks asking for one go where an admin said."""
        auth.check(identity, "nodes.manage", f"nodes/{node_id}/labels", CLUSTER)
        return dump_record(lifecycle.label(node_id, body.labels))

    @app.put("/v1/nodes/{node_id}/capacity", openapi_extra=action("nodes.manage"))
    def pin_node(node_id: NamePath, body: PinnedIn, identity: Caller) -> dict[str, Any]:
        """Cap the node's capacity at ``pinned`` (each resource on its own; 0 or none: not
        capped): what its agent claims when it registers (again) cannot pass it, so a node with
        stolen credentials cannot draw more than an admin allows it."""
        auth.check(identity, "nodes.manage", f"nodes/{node_id}/capacity", CLUSTER)
        pinned = None if body.pinned is None else Amount.model_validate(body.pinned.model_dump())
        return dump_record(lifecycle.pin(node_id, pinned))

    @app.post("/v1/nodes/{node_id}/drain", openapi_extra=action("nodes.manage"))
    def drain(node_id: NamePath, identity: Caller) -> dict[str, Any]:
        auth.check(identity, "nodes.manage", f"nodes/{node_id}", CLUSTER)
        return dump_record(lifecycle.drain(node_id))

    return app
