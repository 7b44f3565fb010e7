"""`runink login --issuer URL --client-id ID`: a token from your identity provider through the
OAuth 2.0 device authorization grant (RFC 8628), for a CLI with no browser of its own: the
provider gives a code, you open its page anywhere and enter it, the CLI polls the provider's
token endpoint until you did (or refused, or the code expired) and keeps the ID token (its
audience is the CLI's client id: configure the servers' OIDC plugin with that audience), else
the access token. Every wait is bounded by the code's own lifetime."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from runink.core.errors import RuninkError
from runink.core.report import printable
from runink.core.units import is_loopback

GRANT = "urn:ietf:params:oauth:grant-type:device_code"
MAX_WAIT = 900.0  # seconds: the longest a code is waited for, whatever the provider says
DEFAULT_INTERVAL = 5.0  # seconds between polls when the provider names none (RFC 8628 3.2)


class DeviceLoginError(RuninkError):
    """The provider refused, the code expired, or the provider answered what the RFC does not."""


def _check_issuer(issuer: str, what: str = "--issuer") -> str:
    """``issuer`` if it is https (or http on loopback: development); DeviceLoginError else."""
    parts = urlsplit(issuer)
    host = parts.hostname or ""
    if parts.scheme != "https" and not (parts.scheme == "http" and is_loopback(host)):
        raise DeviceLoginError(f"{what} {printable(issuer, 300)}: an https:// URL (http only on loopback)")
    return issuer.rstrip("/")


def device_login(
    issuer: str,
    client_id: str,
    *,
    scope: str = "openid email profile groups",
    show: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
    timeout: float = 10.0,
) -> str:
    """The token (the ID token, else the access token) once the user approved the code
    ``show`` was given (with where to enter it)."""
    import httpx

    base = _check_issuer(issuer)
    with httpx.Client(timeout=timeout, follow_redirects=False) as http:
        discovery = _json(http.get(f"{base}/.well-known/openid-configuration"), "its discovery document")
        device_endpoint = discovery.get("device_authorization_endpoint")
        token_endpoint = discovery.get("token_endpoint")
        if not isinstance(device_endpoint, str) or not isinstance(token_endpoint, str):
            raise DeviceLoginError(f"{base}: the provider offers no device authorization (RFC 8628)")
        # the device code (enough to take the user's token) and the token travel to these: https
        # only, as the issuer (a discovery document once sent them in plaintext elsewhere)
        _check_issuer(device_endpoint, f"{base}: its device_authorization_endpoint")
        _check_issuer(token_endpoint, f"{base}: its token_endpoint")
        grant = _json(http.post(device_endpoint, data={"client_id": client_id, "scope": scope}), "the device code")
        try:
            device_code, user_code = str(grant["device_code"]), str(grant["user_code"])
            where = str(grant.get("verification_uri_complete") or grant["verification_uri"])
            lifetime = min(float(grant.get("expires_in", MAX_WAIT)), MAX_WAIT)
            interval = max(float(grant.get("interval", DEFAULT_INTERVAL)), 0.1)
        except (KeyError, TypeError, ValueError):
            raise DeviceLoginError(f"{base}: its device authorization answer is not RFC 8628's") from None
        where, user_code = printable(where, 500), printable(user_code, 100)  # (the provider's: onto a terminal)
        show(f"open {where} and enter the code {user_code} (waiting up to {lifetime:.0f} s)")
        deadline = time.monotonic() + lifetime
        while time.monotonic() < deadline:
            sleep(interval)
            answer = http.post(
                token_endpoint, data={"grant_type": GRANT, "device_code": device_code, "client_id": client_id}
            )
            body = _json(answer, "the token", ok=(200, 400, 401))
            if answer.status_code == 200:
                token = body.get("id_token") or body.get("access_token")
                if not isinstance(token, str) or not token:
                    raise DeviceLoginError(f"{base}: the token answer holds no token")
                return token
            error = body.get("error")
            if error == "authorization_pending":
                continue
            if error == "slow_down":
                interval += 5.0  # (RFC 8628 3.5)
                continue
            if error == "access_denied":
                raise DeviceLoginError("the login was refused at the provider")
            if error == "expired_token":
                break
            raise DeviceLoginError(f"{base}: the token endpoint answered {answer.status_code} {str(error)[:200]}")
    raise DeviceLoginError("the code expired before it was entered: run `runink login` again")


def _json(answer: Any, what: str, ok: tuple[int, ...] = (200,)) -> dict[str, Any]:
    if answer.status_code not in ok:
        raise DeviceLoginError(f"{answer.request.url}: {what}: {answer.status_code}")
    try:
        body = answer.json()
    except ValueError:
        raise DeviceLoginError(f"{answer.request.url}: {what}: not JSON") from None
    if not isinstance(body, dict):
        raise DeviceLoginError(f"{answer.request.url}: {what}: not a JSON object")
    return body
