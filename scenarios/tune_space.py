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
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from fedsa_common.config import ConfigError, Strict

if TYPE_CHECKING:
    from scenarios.config import ScenarioConfig

Param = Literal["lr", "lora_r", "local_steps", "compression_ratio"]
PARAMS: tuple[str, ...] = ("lr", "lora_r", "local_steps", "compression_ratio")

# where each parameter lives in a scenario file
TARGETS: dict[str, tuple[str, ...]] = {
    "lr": ("training", "lr"),
    "lora_r": ("model", "lora", "r"),
    "local_steps": ("training", "local_steps"),
    "compression_ratio": ("fedsa_lora", "compression", "ratio"),
}
DEFAULT_RANKS: tuple[int, ...] = (4, 8, 16)
DEFAULT_RATIO = (0.02, 0.5)


class FloatRange(Strict):
    low: float = Field(gt=0)
    high: float = Field(gt=0)
    log: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class IntRange(Strict):
    low: int = Field(ge=1)
    high: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class TuneSection(Strict):
    """The optional ``tune:`` section of a scenario file.

    ``params`` picks what is searched (default: all four, compression_ratio only when
    compression is on); a range left out gets its default.
    """

    params: list[Param] | None = Field(None, min_length=1)
    lr: FloatRange | None = None
    lora_r: list[int] | None = Field(None, min_length=1)
    local_steps: IntRange | None = None
    compression_ratio: FloatRange | None = None
    sampler_seed: int = 0

    @model_validator(mode="after")
    def _values(self) -> TuneSection:
        if self.lora_r is not None and not all(1 <= r <= 256 for r in self.lora_r):
            raise ValueError("lora_r: ranks must be between 1 and 256")
        if self.compression_ratio is not None and self.compression_ratio.high > 1:
            raise ValueError("compression_ratio: high must be at most 1")
        if self.params is not None and len(set(self.params)) != len(self.params):
            raise ValueError("params: a parameter is listed twice")
        return self


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
