"""Scenarios as a library: load a scenario file and run it against real processes, getting
its report as a dict (what ``scenarios run`` does; the command is a thin layer over these
calls).

``run`` starts a broker (unless given one), the cloud hub, the regional hubs and the device
workers as child processes, waits for the federation to finish, stops them all and returns
the report it wrote to ``OUT/report.json``.  Mistakes in the file raise ``ConfigError`` or
``DataError`` (``UserError`` types naming the field); a federation that fails raises
``RuntimeError`` or ``TimeoutError``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedsa_common.net.broker_auth import parse_url
from fedsa_common.wire.errors import OptionError
from scenarios.config import ScenarioConfig, load_scenario

log = logging.getLogger("fedsa.scenarios")


def check_broker(url: str | None) -> None:
    """Refuse a malformed broker URL now rather than after the data and processes are set
    up (``OptionError`` naming ``--broker``)."""
    if url is not None:
        try:
            parse_url(url)
        except ValueError as err:
            raise OptionError(str(err), "--broker") from None


def load(file: str | Path, overrides: list[str] | None = None) -> ScenarioConfig:
    """The scenario in ``file`` with ``KEY=VALUE`` overrides (dotted keys, as ``--set``
    takes them), checked down to the first device's data (``partition: column`` needs its
    owners to fit the topology) before anything starts."""
    config = load_scenario(Path(file), overrides)
    config.scenario.device_data(0)
    return config


def run(scenario: ScenarioConfig | str | Path, out: str | Path, *, broker: str | None = None,
        overrides: list[str] | None = None,
        echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``scenario`` (a file, with ``overrides``, or a loaded ``ScenarioConfig``) once and
    return its report: ``report["final"]`` (rounds_completed, accuracy, bytes_up_total,
    wall_s, ...), ``report["rounds"]`` (one row per round) and ``report["expectations"]``
    (``ok``, ``failures``) when the file has an ``expect:`` section.  ``echo`` receives the
    progress lines (default: the ``fedsa.scenarios`` logger at INFO)."""
    check_broker(broker)
    if not isinstance(scenario, ScenarioConfig):
        scenario = load(scenario, overrides)
    elif overrides:
        raise OptionError("overrides apply to a scenario file, not a loaded ScenarioConfig",
                          "--set")
    from scenarios.runner import run_scenario  # the processes' machinery, once needed

    return run_scenario(scenario, Path(out), broker, echo=echo or log.info)
