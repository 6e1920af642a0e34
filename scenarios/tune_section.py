"""The ``tune:`` section of a scenario file: which parameters ``scenarios tune`` searches and
within which ranges.

A leaf, like the other sections of a scenario file (``adversaries``, ``grammar``):
``scenarios.config`` holds it in ``ScenarioConfig``, and ``scenarios.tune_space``, which turns
a whole ``ScenarioConfig`` into a search space, imports both, so neither imports the other's
importer.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedsa_common.federation.config import Strict

Param = Literal["lr", "lora_r", "local_steps", "compression_ratio"]
PARAMS: tuple[str, ...] = ("lr", "lora_r", "local_steps", "compression_ratio")


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
