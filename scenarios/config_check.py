"""The check of a scenario file that ``hub config validate`` runs (hub/config_check.py):
registered under the ``fedsa_edge.config_checks`` entry point, so the hub, a floor below,
finds it without importing the scenarios package.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from edge_client.data.spec import DataSpec
from fedsa_common.config.errors import FieldError, describe_errors
from fedsa_common.federation.config import ConfigError
from hub import config_check
from hub.config_check import CheckResult, describe
from scenarios.config import ScenarioConfig
from scenarios.tune_space import search_space

# A scenario's ``data:`` is a free-form dict that a validator checks against DataSpec.
_VIRTUAL = {("scenario", "data"): DataSpec}


def check_scenario(data: dict[str, Any]) -> CheckResult:
    """A scenario file's configuration, its data spec and its tune section."""
    try:
        cfg = ScenarioConfig.model_validate(data)
    except ValidationError as err:
        return CheckResult("scenario", tuple(describe_errors(ScenarioConfig, err, _VIRTUAL)))
    try:
        search_space(cfg)
    except ConfigError as err:
        path, _, msg = str(err).partition(": ")
        return CheckResult("scenario", (FieldError(path, msg),))
    sc = cfg.scenario
    tune = " with a tune: section" if cfg.tune is not None else ""
    return CheckResult("scenario", (), (
        f"valid scenario {sc.name!r}: {describe(cfg)}; {sc.topology.num_devices} devices in "
        f"{len(sc.topology.regions)} regions{tune}"))


def check_data(data: Any) -> CheckResult:
    """Either kind of file's parsed YAML, with this package's scenario check."""
    return config_check.check_data(data, check_scenario)
