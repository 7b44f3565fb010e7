"""OPA authorization plugin: asks an Open Policy Agent server whether a request is allowed.

Each ``runink_authorize`` call is one ``POST {url}/v1/data/{path}`` (OPA's Data API) with
``{"input": {identity, action, resource, herd, grants}}``; the policy's ``result`` decides.
Configured by ``[plugin.opa]`` (``url``, ``path``, ``timeout``); with no ``url`` it abstains.

It fails closed: an undefined decision, an answer of any other shape, an HTTP error, a timeout,
an unreachable server, a body over 1 MiB or one that is not JSON are all denies, never an
exception out of the hook. The POST is made with httpx, not opa-python-client: that client's
timeout is per socket read (a server trickling bytes held a 0.3 s call for 5.5 s), it retries
with back-off, and it reads a body of any size.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from runink.core.config import RuninkConfig
from runink.core.errors import ConfigError
from runink.core.hookspecs import hookimpl
from runink.core.model import AuthzDecision, Grant, Identity

if TYPE_CHECKING:  # imported once configured: every CLI start loads this plugin
    import httpx

    from runink.core.driverload import OptionsSchema

NAME = "opa"
DEFAULT_PATH = "runink/authz/allow"
DEFAULT_TIMEOUT = 2.0
MIN_TIMEOUT, MAX_TIMEOUT = 0.1, 30.0
MAX_ANSWER_BYTES = 1024 * 1024
#: [plugin.opa] (checked by runink.core.plugin_options before runink_configure)
OPTIONS: OptionsSchema = {"url": str, "path": str, "timeout": float}
MAX_REASON_CHARS = 200
_PATH = re.compile(r"[A-Za-z0-9_]+(/[A-Za-z0-9_]+)*")
# A call that times out can leave its worker busy with the request a while longer; more workers
# than that keep later calls from queueing behind a stuck one.
_WORKERS = 8


class _Unreachable(Exception):
    """No usable answer from OPA: the reason, one line, without the request's input."""


@dataclass(frozen=True)
class OpaTarget:
    url: str  # {base}/v1/data/{path}
    path: str
    timeout: float


def _option_error(config: RuninkConfig, key: str, message: str) -> ConfigError:
    where = config.source_of(f"plugin.{NAME}.{key}")
    return ConfigError(f"[plugin.{NAME}] {key} ({where}): {message}")


def parse_options(config: RuninkConfig) -> OpaTarget | None:
    """The configured OPA target, or None when ``[plugin.opa]`` is absent or empty."""
    options = config.plugin_options(NAME)
    if not options:
        return None
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise _option_error(config, unknown[0], f"unknown option (known: {', '.join(OPTIONS)})")
    url = options.get("url")
    if url is None:
        raise _option_error(config, "url", "required when [plugin.opa] is set (e.g. http://127.0.0.1:8181)")
    if not isinstance(url, str):
        raise _option_error(config, "url", f"must be a string, not {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _option_error(config, "url", f"{url!r} is not an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        # The URL would end up in logs and error messages.
        raise _option_error(config, "url", "must not hold credentials")
    if parts.query or parts.fragment:
        raise _option_error(config, "url", "must have no query or fragment")
    path = options.get("path", DEFAULT_PATH)
    if not isinstance(path, str) or not _PATH.fullmatch(path):
        raise _option_error(
            config,
            "path",
            f"{path!r} must be segments of letters, digits and _ joined by / (e.g. {DEFAULT_PATH})",
        )
    timeout = options.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise _option_error(config, "timeout", f"must be a number of seconds, not {type(timeout).__name__}")
    if not MIN_TIMEOUT <= timeout <= MAX_TIMEOUT:
        raise _option_error(config, "timeout", f"{timeout} is outside {MIN_TIMEOUT}..{MAX_TIMEOUT} seconds")
    return OpaTarget(f"{url.rstrip('/')}/v1/data/{path}", path, float(timeout))


def input_document(
    identity: Identity, action: str, resource: str, herd: str, grants: Sequence[Grant]
) -> dict[str, Any]:
    """What the policy sees as ``input``."""
    return {
        "identity": {
            "subject": identity.subject,
            "groups": list(identity.groups),
            "claims": dict(identity.claims),
            "authenticated_by": identity.authenticated_by,
        },
        "action": action,
        "resource": resource,
        "herd": herd,
        "grants": [{"role": grant.role, "herd": grant.herd, "source": grant.source} for grant in grants],
    }


def one_line(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` printable, on one line, at most ``limit`` characters."""
    printable = "".join(char if char.isprintable() else " " for char in text)
    flat = " ".join(printable.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def decide(answer: Any, path: str) -> AuthzDecision:
    """The vote an OPA Data API answer stands for."""
    policy = f"OPA policy {path}"
    if not isinstance(answer, Mapping):
        return AuthzDecision(False, f"OPA unreachable: the answer is a JSON {type(answer).__name__}, not an object")
    if "result" not in answer:
        return AuthzDecision(False, f"{policy} gave no result (undefined decision): deny")
    result = answer["result"]
    if result is True:
        return AuthzDecision(True, f"{policy} allows")
    if result is False:
        return AuthzDecision(False, f"{policy} denies")
    if isinstance(result, Mapping) and isinstance(result.get("allow"), bool):
        given = result.get("reason")
        reason = one_line(given) if isinstance(given, str) else ""
        verdict = "allows" if result["allow"] else "denies"
        return AuthzDecision(result["allow"], f"{policy} {verdict}: {reason}" if reason else f"{policy} {verdict}")
    shape = "an object without a boolean allow" if isinstance(result, Mapping) else f"a {type(result).__name__}"
    return AuthzDecision(False, f"{policy} answered {shape}, not true/false or {{allow, reason}}: deny")


class OpaAuthorizer:
    """Votes on every authorization with the configured OPA policy's decision."""

    options_schema: ClassVar[OptionsSchema] = OPTIONS

    def __init__(self) -> None:
        self.target: OpaTarget | None = None
        self._client: httpx.Client | None = None
        self._pool: ThreadPoolExecutor | None = None

    @hookimpl
    def runink_configure(self, config: RuninkConfig) -> None:
        self.target = None  # abstain, not the old server, if the new options are bad
        target = parse_options(config)
        if self._client is not None:
            self._client.close()
            self._client = None
        if target is None:
            return
        import httpx

        # trust_env off: OPA is a sidecar or an internal service; a proxy from the
        # environment would see every identity.
        self._client = httpx.Client(timeout=target.timeout, follow_redirects=False, trust_env=False)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="runink-opa")
        self.target = target

    @hookimpl
    def runink_authorize(
        self, identity: Identity, action: str, resource: str, herd: str, grants: Sequence[Grant]
    ) -> AuthzDecision | None:
        target, client, pool = self.target, self._client, self._pool
        if target is None or client is None or pool is None:
            return None
        try:
            body = json.dumps({"input": input_document(identity, action, resource, herd, grants)}, default=str).encode()
        except (TypeError, ValueError) as exc:  # a claim json cannot encode even as a string
            return AuthzDecision(False, f"OPA input could not be encoded: {one_line(str(exc))}")
        deadline = time.monotonic() + target.timeout
        # In a worker so the whole call is bounded: httpx's timeouts bound each connect and
        # read, not their sum, nor name resolution.
        future = pool.submit(self._post, client, target, body, deadline)
        try:
            answer = future.result(timeout=target.timeout)
        except FutureTimeout:
            future.cancel()
            return AuthzDecision(False, f"OPA unreachable: no answer within {target.timeout:g} s")
        except _Unreachable as exc:
            return AuthzDecision(False, f"OPA unreachable: {exc}")
        except Exception as exc:  # fail closed whatever broke
            return AuthzDecision(False, f"OPA unreachable: {one_line(type(exc).__name__ + ': ' + str(exc))}")
        return decide(answer, target.path)

    @staticmethod
    def _post(client: httpx.Client, target: OpaTarget, body: bytes, deadline: float) -> Any:
        import httpx

        if time.monotonic() >= deadline:  # queued behind stuck calls: the caller has gone
            raise _Unreachable("no answer in time")
        try:
            with client.stream(
                "POST", target.url, content=body, headers={"Content-Type": "application/json"}
            ) as response:
                if response.status_code != 200:
                    raise _Unreachable(f"HTTP {response.status_code} from the OPA server")
                received = bytearray()
                for chunk in response.iter_bytes():
                    received += chunk
                    if len(received) > MAX_ANSWER_BYTES:
                        raise _Unreachable(f"answer over {MAX_ANSWER_BYTES} bytes")
                    if time.monotonic() >= deadline:
                        raise _Unreachable("no answer in time")
        except httpx.TimeoutException as exc:
            raise _Unreachable(f"timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise _Unreachable(one_line(f"{type(exc).__name__}: {exc}")) from exc
        try:
            return json.loads(received)
        except ValueError as exc:
            raise _Unreachable("the answer is not JSON") from exc
