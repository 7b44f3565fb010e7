"""Names, addresses, durations and memory sizes as the config, the DSL and the CLI write them.

Apart from the data classes in ``model`` (which re-exports these): the CLI reads a
``--timeout`` or ``--memory`` without importing them.
"""

from __future__ import annotations

import math
import re

_MEMORY_UNITS = {
    "": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
}
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)


#: a herd, node or job name: what may appear as one part of a Barn key (and a cgroup's)
NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
NAME_WORDS = "expected 1-63 lower-case letters, digits, '.', '_' or '-', starting and ending with a letter or digit"


def check_name(value: str, what: str) -> str:
    """``value`` if it is a valid herd, node or job name; else ValueError saying what is wrong."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise ValueError(f"{what} {value!r}: {NAME_WORDS}")
    return value


MAX_MEMORY = 2**60  # 1 EiB: the largest memory limit a scenario or the config may set
MAX_PIDS = 4 * 1024 * 1024  # the kernel's PID_MAX_LIMIT: the largest pids limit


def split_address(text: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[v6]:PORT`` too) as (host, port), the host ``""`` when not given; None
    when it is not one (no port, or one past 65535)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        return None
    return host.strip("[]"), int(port)


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
#: a duration's upper bound: beyond it a value is a typo (or an attack) that would only
#: surface as a crash where it is used (a timer)
MAX_DURATION = 366 * 86400.0


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``"10m"``, ``"90s"``, ``"1.5h"``, ``"250ms"`` or a number of seconds.

    Positive, finite and at most 366 days; raises ValueError naming the value otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"invalid duration {value!r} (expected e.g. 30s, 10m, 2h)")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(value)
        if not match:
            raise ValueError(f"invalid duration {value!r} (expected e.g. 30s, 10m, 2h)")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not seconds > 0:  # also NaN
        raise ValueError(f"invalid duration {value!r}: must be positive")
    if not seconds <= MAX_DURATION:  # also inf
        raise ValueError(f"invalid duration {value!r}: at most 366 days")
    return seconds


def parse_memory(value: str | int | float) -> int:
    """Bytes from ``"256Mi"``, ``"1G"``, ``"512k"`` or a plain number of bytes.

    Raises ValueError naming the value when it cannot be read.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid memory size {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"invalid memory size {value!r}: negative")
        if not math.isfinite(value):  # NaN, inf: int() would raise something else
            raise ValueError(f"invalid memory size {value!r}")
        return int(value)
    match = _MEMORY_RE.match(value)
    if not match:
        raise ValueError(f"invalid memory size {value!r} (expected e.g. 512Mi, 2G or a byte count)")
    number, unit = match.groups()
    return int(float(number) * _MEMORY_UNITS[(unit or "").lower()])


def format_bytes(count: float) -> str:
    """Bytes as people read them: "512 B", "1.5 MiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def amount_text(resource: str, amount: float) -> str:
    """An amount of ``resource`` as people read it: memory as bytes are ("2.0 GiB": a refusal
    said 2.14748e+09), any other as a number."""
    return format_bytes(amount) if resource == "memory" else f"{amount:g}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` stays on this machine: a loopback address, or "localhost"."""
    import ipaddress  # (here: the CLI's start imports this module, rarely this function)

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: only "localhost" is known to stay on this machine
        return False
