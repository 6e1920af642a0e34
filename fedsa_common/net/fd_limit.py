"""How many MQTT sessions fit in one process: its file-descriptor limit, raised where allowed.

Why: sessions driven by one epoll loop (``session_loop``) cost one descriptor each, so the
process's ``RLIMIT_NOFILE`` is what bounds them (1,024 by default on many systems, often with
a far higher hard limit that an unprivileged process may raise its soft limit to).  A host of
many sessions asks here first, so that it either gets the descriptors or is refused at once
with a message naming the option that sets the count, instead of sessions that never
connect ("Too many open files" deep in a connection attempt).

The arithmetic (``plan_fd_limit``) is pure; ``ensure_sessions_fit`` reads and sets the limit.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from fedsa_common.wire.errors import OptionError

# Descriptors kept for everything but the sessions: standard streams, log files, the loop's
# epoll and wake-up pair, torch's and Python's own, a broker's or child process's pipes.
FD_RESERVE = 128


class FdLimitError(OptionError):
    """The sessions asked for cannot get a descriptor each in this process."""


@dataclass(frozen=True)
class FdPlan:
    """The soft limit to set (the current one when it is enough) for ``sessions``."""

    sessions: int
    needed: int  # descriptors: the sessions plus FD_RESERVE
    soft: int  # the soft limit to run with


def fds_needed(sessions: int) -> int:
    """Descriptors a process hosting ``sessions`` loop-driven sessions needs."""
    if sessions < 0:
        raise ValueError(f"sessions must be >= 0, not {sessions}")
    return sessions + FD_RESERVE


def plan_fd_limit(sessions: int, soft: int, hard: int, *, option: str = "--devices",
                  what: str = "MQTT sessions") -> FdPlan:
    """The soft limit that gives ``sessions`` a descriptor each: the current ``soft`` when it
    suffices, else the hard limit (an unprivileged process may raise its soft limit up to
    it; ``RLIM_INFINITY`` means as many as needed).  Raises ``FdLimitError`` naming
    ``option`` when even the hard limit is too low."""
    needed = fds_needed(sessions)
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return FdPlan(sessions, needed, soft)
    if hard == resource.RLIM_INFINITY or needed <= hard:
        return FdPlan(sessions, needed, needed if hard == resource.RLIM_INFINITY else hard)
    room = max(0, hard - FD_RESERVE)
    raise FdLimitError(
        f"{sessions} {what} need {needed} file descriptors (one each plus {FD_RESERVE} for "
        f"the rest) but this process may open at most {hard} (its hard limit, ulimit -Hn), "
        f"room for {room}: lower {option} and run several processes, or raise the hard "
        "limit (limits.conf nofile, systemd LimitNOFILE=, docker --ulimit nofile=)", option)


def ensure_sessions_fit(sessions: int, *, option: str = "--devices",
                        what: str = "MQTT sessions") -> FdPlan:
    """Raise this process's soft descriptor limit as far as ``sessions`` need (children
    started later, such as a broker, inherit it); ``FdLimitError`` when they cannot fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    plan = plan_fd_limit(sessions, soft, hard, option=option, what=what)
    if plan.soft != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (plan.soft, hard))
        except (ValueError, OSError) as err:
            raise FdLimitError(
                f"{sessions} {what} need {plan.needed} file descriptors; raising this "
                f"process's limit from {soft} to {plan.soft} failed ({err}), room for "
                f"{max(0, soft - FD_RESERVE)}: lower {option} and run several processes",
                option
            ) from err
    return plan
