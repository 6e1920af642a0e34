"""The search space of ``scenarios tune`` and how a trial's parameters enter a scenario.

Pure (no Optuna, no I/O), so the space and the parameter application are tested in
milliseconds; ``scenarios.tune`` asks Optuna for values within these dimensions.  Ranges
default to a neighbourhood of what the scenario already uses (a tenth to ten times its
learning rate, half to twice its local steps), because a scenario author's values are the
best prior there is.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

from fedsa_common.federation.config import ConfigError
from scenarios.config import ScenarioConfig
from scenarios.tune_section import PARAMS, FloatRange, IntRange, TuneSection

# where each parameter lives in a scenario file
TARGETS: dict[str, tuple[str, ...]] = {
    "lr": ("training", "lr"),
    "lora_r": ("model", "lora", "r"),
    "local_steps": ("training", "local_steps"),
    "compression_ratio": ("fedsa_lora", "compression", "ratio"),
}
DEFAULT_RANKS: tuple[int, ...] = (4, 8, 16)
DEFAULT_RATIO = (0.02, 0.5)


@dataclass(frozen=True)
class Dimension:
    """One searched parameter: a float or int range, or a list of choices."""

    name: str
    kind: Literal["float", "int", "choice"]
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.name} in {list(self.choices)}"
        scale = " (log)" if self.log else ""
        return f"{self.name} in [{self.low:g}, {self.high:g}]{scale}"


def compression_tunable(config: ScenarioConfig) -> bool:
    comp = config.fedsa_lora.compression
    return comp.enable and comp.method != "dense"


def search_space(config: ScenarioConfig) -> list[Dimension]:
    """The dimensions to search for ``config`` (its ``tune:`` section or the defaults).

    Raises ConfigError when ``tune.params`` asks for compression_ratio while compression
    is off: a ratio that nothing reads would make trials differ in name only.
    """
    tune = config.tune or TuneSection()
    wanted = list(tune.params) if tune.params is not None else [
        p for p in PARAMS if p != "compression_ratio" or compression_tunable(config)]
    if "compression_ratio" in wanted and not compression_tunable(config):
        raise ConfigError("tune.params: compression_ratio needs fedsa_lora.compression "
                          "enabled with a sparsifying method")
    dims: list[Dimension] = []
    for name in wanted:
        if name == "lr":
            lr = tune.lr or FloatRange(low=config.training.lr / 10, high=config.training.lr * 10)
            dims.append(Dimension("lr", "float", lr.low, lr.high, lr.log))
        elif name == "lora_r":
            dims.append(Dimension("lora_r", "choice", choices=tuple(tune.lora_r
                                                                   or DEFAULT_RANKS)))
        elif name == "local_steps":
            base = config.training.local_steps
            steps = tune.local_steps or IntRange(low=max(1, base // 2), high=max(2, base * 2))
            dims.append(Dimension("local_steps", "int", steps.low, steps.high))
        else:
            ratio = tune.compression_ratio or FloatRange(low=DEFAULT_RATIO[0],
                                                         high=DEFAULT_RATIO[1])
            dims.append(Dimension("compression_ratio", "float", ratio.low, ratio.high,
                                  ratio.log))
    return dims


def apply_params(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of scenario-file ``data`` with ``params`` written where they belong,
    creating sections the file leaves to their defaults.  Unknown names are a KeyError."""
    out = copy.deepcopy(data)
    for name, value in params.items():
        *path, leaf = TARGETS[name]
        node = out
        for key in path:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out
