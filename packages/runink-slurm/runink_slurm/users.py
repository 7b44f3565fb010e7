"""Who a task's Slurm job runs as, when the agent runs as root.

A job runs as the user that submitted it. An agent run as root (as Runink's agents usually
are) would submit root jobs: a root job can leave its cgroup (its limits), read every other
job's folder (their secrets) and cancel them. So ``run_as`` maps herds to unprivileged users
(``{"etl" = "etl-jobs", "*" = "nobody:nogroup"}``; ``*`` is any other herd), and their jobs
are submitted with ``sbatch --uid --gid`` (root's right). Root itself is never one.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from runink.core.units import NAME as HERD_NAME

ANY_HERD = "*"
_WHO = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$")


@dataclass(frozen=True)
class JobUser:
    """An unprivileged user (and group) a herd's jobs run as."""

    name: str
    uid: int
    gid: int
    groups: frozenset[int]  # its gid and supplementary groups: what it may search through

    def may_search(self, info: os.stat_result) -> bool:
        """Whether this user may pass through a folder with ``info`` (its execute bit)."""
        if info.st_uid == self.uid:
            return bool(info.st_mode & stat.S_IXUSR)
        if info.st_gid in self.groups:
            return bool(info.st_mode & stat.S_IXGRP)
        return bool(info.st_mode & stat.S_IXOTH)


def _user(who: str, herd: str) -> JobUser:
    where = f"slurm executor: option run_as, herd {herd!r}"
    name, _, group = who.partition(":")
    if not _WHO.match(name) or (group and not _WHO.match(group)):
        raise ValueError(f"{where}: {who[:80]!r} is not USER or USER:GROUP (names or numeric ids)")
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, OverflowError):
        raise ValueError(f"{where}: no user {name!r} on this node") from None
    gid = entry.pw_gid
    if group:
        try:
            gid = grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
        except (KeyError, OverflowError):
            raise ValueError(f"{where}: no group {group!r} on this node") from None
    if entry.pw_uid == 0 or gid == 0:
        raise ValueError(f"{where}: {who!r} is root: a root job reaches every other job (name an unprivileged user)")
    groups = frozenset({gid, *os.getgrouplist(entry.pw_name, gid)})
    if 0 in groups:
        raise ValueError(f"{where}: {entry.pw_name!r} is in group root: its jobs would reach root's group's files")
    return JobUser(entry.pw_name, entry.pw_uid, gid, groups)


def parse_run_as(mapping: Mapping[str, object]) -> dict[str, JobUser]:
    """``run_as`` checked: herd (or ``*``) -> its jobs' user; ValueError naming a wrong entry."""
    if not isinstance(mapping, Mapping):
        raise ValueError('slurm executor: option run_as must map herds to users ({herd = "user[:group]"})')
    users = {}
    for herd, who in mapping.items():
        if not isinstance(herd, str) or (herd != ANY_HERD and not HERD_NAME.match(herd)):
            raise ValueError(f"slurm executor: option run_as: {str(herd)[:80]!r} is not a herd name (or '*')")
        if not isinstance(who, str):
            raise ValueError(f"slurm executor: option run_as, herd {herd!r}: the user must be text, USER[:GROUP]")
        users[herd] = _user(who, herd)
    return users


def unreachable(path: Path, user: JobUser, passable: Path | None = None) -> Path | None:
    """The first folder on the way to ``path`` (itself excluded) that ``user`` may not pass
    through, or None; ``passable``: one the caller makes passable before the job runs. (Read as
    the folders are now: a check that explains a refusal, not a barrier: the barrier is the
    kernel's, as the job runs as that user.)"""
    for folder in reversed(path.parents):
        if folder == passable:
            continue
        try:
            info = os.stat(folder)
        except OSError:
            return folder
        if not user.may_search(info):
            return folder
    return None
