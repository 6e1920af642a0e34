"""The descriptor arithmetic of fedsa_common/net/fd_limit.py (pure), and the refusal of a
session count no limit this process may set can hold."""

from __future__ import annotations

import resource

import pytest

from fedsa_common.net.fd_limit import (
    FD_RESERVE,
    FdLimitError,
    ensure_sessions_fit,
    fds_needed,
    plan_fd_limit,
)
from fedsa_common.wire.errors import OptionError

INF = resource.RLIM_INFINITY


def test_each_session_costs_one_descriptor_on_top_of_the_reserve():
    assert fds_needed(0) == FD_RESERVE
    assert fds_needed(10_000) == 10_000 + FD_RESERVE
    with pytest.raises(ValueError, match="sessions"):
        fds_needed(-1)


def test_a_soft_limit_that_suffices_is_kept():
    plan = plan_fd_limit(500, soft=1024, hard=4096)
    assert (plan.soft, plan.needed) == (1024, 500 + FD_RESERVE)
    assert plan_fd_limit(10**6, soft=INF, hard=INF).soft == INF


def test_a_soft_limit_too_low_is_raised_to_the_hard_one():
    assert plan_fd_limit(2500, soft=1024, hard=524_288).soft == 524_288
    # exactly enough is enough
    assert plan_fd_limit(4096 - FD_RESERVE, soft=1024, hard=4096).soft == 4096
    # no hard limit: as many as needed, not "infinity" (which setrlimit may refuse)
    assert plan_fd_limit(2500, soft=1024, hard=INF).soft == 2500 + FD_RESERVE


def test_more_than_the_hard_limit_holds_is_refused_naming_the_option_and_the_room():
    with pytest.raises(FdLimitError) as err:
        plan_fd_limit(10_000, soft=1024, hard=4096, option="--per-process",
                      what="light devices")
    assert isinstance(err.value, OptionError) and err.value.option == "--per-process"
    message = str(err.value)
    assert "10000 light devices need 10128 file descriptors" in message
    assert "at most 4096" in message
    assert f"room for {4096 - FD_RESERVE}: lower --per-process" in message
    with pytest.raises(FdLimitError, match="at most 4096"):  # one past the edge
        plan_fd_limit(4096 - FD_RESERVE + 1, soft=1024, hard=4096)


def test_this_process_is_refused_past_its_hard_limit_and_keeps_its_limits():
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    if before[1] == INF:
        pytest.skip("no hard limit on file descriptors here")
    with pytest.raises(FdLimitError) as err:
        ensure_sessions_fit(before[1], option="--devices")
    assert err.value.option == "--devices"
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == before
    assert ensure_sessions_fit(10).soft == before[0]  # enough already: unchanged
