"""The CLI's client of a cluster's REST API: which server to ask, and one-line errors.

The server is found, first match wins, from ``--server``, ``$RUNINK_SERVER``, the config's
``[cluster] server``, or the cluster ``runink up`` started (its context file, as kind sets
kubectl's context). Several comma-separated addresses may be given: any server answers API
calls, so the client tries the next one when one cannot be reached.

Every call carries a bearer token, first match wins: ``$RUNINK_TOKEN``, the one ``runink
login`` stored, or the admin token of the cluster ``runink up`` started.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runink.core.errors import RuninkError

if TYPE_CHECKING:  # imported when a client is made: ~70 ms every CLI start would pay otherwise
    import httpx

TIMEOUT = (10.0, 2.0)  # seconds: a request's, and a connection's


class ClusterError(RuninkError):
    """The cluster said no (its one-line reason), or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status of the answer, if there was one


def context_file() -> Path:
    """Where ``runink up`` writes the local cluster it started (``runink down`` removes it)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "runink" / "cluster.json"


def read_context() -> dict[str, Any] | None:
    try:
        data = json.loads(context_file().read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


MAX_TOKEN = 16 * 1024  # characters of a token the CLI or an agent reads


def one_token(text: str, where: str) -> str:
    """``text`` stripped, if it is one token (one line, no spaces, at most MAX_TOKEN
    characters); else RuninkError naming ``where``."""
    text = text.strip()
    if not text or len(text) > MAX_TOKEN or not text.isprintable() or " " in text:
        raise RuninkError(f"{where}: not one token of at most 16 KiB on one line, without spaces")
    return text


def token_file() -> Path:
    """Where ``runink login`` keeps the CLI's token (readable by its owner only)."""
    return context_file().with_name("token")


def read_token() -> str | None:
    """The token the CLI sends (see the module's doc), or None."""
    if token := os.environ.get("RUNINK_TOKEN", "").strip():
        return token
    try:
        stored = token_file().read_text().strip()
    except OSError:
        stored = ""
    if stored:
        return stored
    context = read_context()
    found = context.get("token") if context else None
    return found if isinstance(found, str) and found else None


def server_addresses(flag: str | None, configured: str | None) -> list[str]:
    """The API addresses to try, in order, as ``http://host:port``."""
    text = flag or os.environ.get("RUNINK_SERVER") or configured
    if not text:
        context = read_context()
        if context and isinstance(context.get("api"), list):
            return [str(a) for a in context["api"]]
        raise ClusterError(
            "no cluster to talk to: give --server HOST:PORT, set $RUNINK_SERVER or [cluster] server, "
            "or start a local one with `runink up`"
        )
    return [a if "://" in a else f"http://{a}" for a in (part.strip() for part in text.split(",")) if a]


def cluster_ca(configured: str | None) -> str | None:
    """The CA certificate an https:// server is checked against: ``[cluster] ca``, else the
    one of the cluster ``runink up`` started; None: the system's CAs."""
    if configured:
        return configured
    context = read_context()
    found = context.get("ca") if context else None
    return found if isinstance(found, str) and found else None


class ClusterClient:
    def __init__(self, addresses: list[str], timeout: tuple[float, float] = TIMEOUT, *, ca: str | None = None) -> None:
        import ssl

        import httpx

        self.addresses = addresses
        token = read_token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        verify: ssl.SSLContext | bool = True
        if ca is not None:
            try:
                verify = ssl.create_default_context(cafile=ca)
            except (OSError, ssl.SSLError) as exc:
                why = exc.strerror if isinstance(exc, OSError) else exc
                raise ClusterError(f"the cluster CA {ca}: {why}") from None
        self._http = httpx.Client(timeout=httpx.Timeout(timeout[0], connect=timeout[1]), headers=headers, verify=verify)

    def close(self) -> None:
        self._http.close()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
        """The answer's JSON; raises ClusterError with the server's one-line reason."""
        import httpx

        unreachable = []
        query = {k: v for k, v in params.items() if v is not None}
        for address in self.addresses:
            try:
                answer = self._http.request(method, address + path, json=body, params=query)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing was sent: the next one
                unreachable.append(f"{address}: {exc.__class__.__name__}")
                continue
            except httpx.TransportError as exc:
                if method == "GET":  # reading again elsewhere changes nothing
                    unreachable.append(f"{address}: {exc.__class__.__name__}")
                    continue
                # The request may have been carried out: sending it again elsewhere could do it
                # twice (two jobs for one `exec`), so say so instead.
                raise ClusterError(
                    f"{method} {path}: {address} did not answer ({exc.__class__.__name__}); it may have been "
                    "done: check (e.g. `runink jobs list`) before trying again"
                ) from None
            if answer.status_code >= 400:
                raise ClusterError(f"{method} {path}: {answer.status_code} {_detail(answer)}", answer.status_code)
            return answer.json() if answer.content else None
        raise ClusterError(f"no server answered ({'; '.join(unreachable)})")


def _detail(answer: httpx.Response) -> str:
    try:
        detail = answer.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    text = detail if isinstance(detail, str) else answer.text
    return " ".join(str(text).split())[:2000]
