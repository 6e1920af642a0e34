"""What data a device trains on, as one validated value (and its one-line CLI form).

One ``DataSpec`` fully determines a device's share: the source, the class filter, how the
pool is partitioned across the federation, which part is this device's, and its caps.
"""

from __future__ import annotations

import codecs
from typing import Any, Literal
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .sentiment import COLUMNS as SENTIMENT_COLUMNS
from .sentiment import SOURCE_FILES as SENTIMENT_SOURCES

NEWSGROUPS = "20newsgroups"
SENTIMENT = "sentiment"
PROMPT_RESPONSE = "prompt_response"
# options of labelled text that prompt/response data has no use for, with their defaults
_LABELLED_ONLY = {"text_column": "text", "label_column": "label", "classes": None,
                  "labels": None}


def _split_names(value: Any) -> Any:
    """Accept ``"a,b,c"`` (the CLI form) where a list of names is expected."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class DataSpec(BaseModel):
    """Source, class filter, partition and per-device caps; see ``parse_data_spec``.

    ``sources`` keeps only some of the sentiment corpora (tweets, movies, amazon, nyt).
    ``max_units`` keeps a seeded random sample of that many distinct ``client_column``
    values (whole units: a user, a document), so a federation of small natural devices
    can be drawn from a large source.  ``partition: grouped`` deals whole units of
    ``client_column`` out to ``num_clients`` devices of similar size (see
    ``partition_indices``), where ``column`` makes one device per unit, or ``parts``
    devices per unit (``part`` picks one) when a unit is too big for one device.
    ``encoding`` is a user file's text encoding (any name Python's codecs know, e.g.
    ``cp1252``); under the default a UTF-8 byte-order mark is skipped.

    ``format``: ``labelled`` (texts with labels, for a classifier; the default) or
    ``prompt_response`` (a user's JSONL file of ``{"prompt": ..., "response": ...}``
    objects, for a causal language model; ``prompt_column``/``response_column`` name other
    fields).  Prompt/response data is partitioned like labelled data (``iid`` shards,
    ``column``/``grouped`` by a client field), except ``dirichlet``, which needs labels.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(min_length=1)
    text_column: str = Field(default="text", min_length=1)
    label_column: str = Field(default="label", min_length=1)
    encoding: str = Field(default="utf-8", min_length=1)
    client_column: str | None = None
    classes: int | list[str] | None = None
    labels: list[str] | None = None
    sources: list[str] | None = None
    max_units: int | None = Field(default=None, ge=1)
    partition: Literal["iid", "dirichlet", "column", "grouped"] = "iid"
    alpha: float = Field(default=0.5, gt=0)
    num_clients: int = Field(default=1, ge=1)
    shard: int | None = Field(default=None, ge=0)
    client: str | None = None
    parts: int = Field(default=1, ge=1)
    part: int | None = Field(default=None, ge=0)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    max_train: int | None = Field(default=None, ge=1)
    max_test: int | None = Field(default=None, ge=1)
    min_per_client: int = Field(default=10, ge=0)
    seed: int = 0
    format: Literal["labelled", "prompt_response"] = "labelled"
    prompt_column: str = Field(default="prompt", min_length=1)
    response_column: str = Field(default="response", min_length=1)

    @field_validator("classes", mode="before")
    @classmethod
    def _classes_from_text(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        return _split_names(value)

    @field_validator("classes")
    @classmethod
    def _classes_sane(cls, value: int | list[str] | None) -> int | list[str] | None:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be >= 1")
        if isinstance(value, list):
            _check_names(value)
        return value

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_from_text(cls, value: Any) -> Any:
        return _split_names(value)

    @field_validator("labels")
    @classmethod
    def _labels_sane(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            _check_names(value)
        return value

    @field_validator("sources", mode="before")
    @classmethod
    def _sources_from_text(cls, value: Any) -> Any:
        return _split_names(value)

    @field_validator("sources")
    @classmethod
    def _sources_known(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            _check_names(value)
            unknown = [name for name in value if name not in SENTIMENT_SOURCES]
            if unknown:
                raise ValueError(f"unknown {unknown}; expected some of {list(SENTIMENT_SOURCES)}")
        return value

    @field_validator("encoding")
    @classmethod
    def _encoding_known(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}; e.g. utf-8, cp1252, latin-1") from None
        return value

    @field_validator("shard")
    @classmethod
    def _shard_in_range(cls, value: int | None, info: ValidationInfo) -> int | None:
        num_clients = info.data.get("num_clients")
        if value is not None and num_clients is not None and value >= num_clients:
            raise ValueError(f"must be < num_clients ({num_clients}), got {value}")
        return value

    @model_validator(mode="after")
    def _partition_fields_agree(self) -> DataSpec:
        # Raised as ValueError with the field name first, since model-level errors carry
        # no location of their own.
        if self.partition == "column":
            if self.client_column is None:
                raise ValueError("client_column: required when partition=column")
            if self.shard is not None:
                raise ValueError("shard: not used with partition=column; set client instead")
            if self.part is not None and self.part >= self.parts:
                raise ValueError(f"part: must be < parts ({self.parts}), got {self.part}")
        else:
            if self.client is not None:
                raise ValueError(
                    f"client: only used with partition=column, not {self.partition}"
                )
            if self.parts != 1 or self.part is not None:
                field = "parts" if self.parts != 1 else "part"
                raise ValueError(f"{field}: only used with partition=column")
        if self.partition == "grouped" and self.client_column is None:
            raise ValueError("client_column: required when partition=grouped (the units)")
        if self.max_units is not None and self.client_column is None:
            raise ValueError("max_units: needs client_column (the column whose units it samples)")
        if self.source == NEWSGROUPS and self.client_column is not None:
            raise ValueError("client_column: 20newsgroups has no client column")
        if self.source == SENTIMENT:
            if self.client_column is not None and self.client_column not in SENTIMENT_COLUMNS:
                raise ValueError(
                    f"client_column: sentiment has columns {list(SENTIMENT_COLUMNS)}, "
                    f"not {self.client_column!r}"
                )
        elif self.sources is not None:
            raise ValueError(f"sources: only used with source={SENTIMENT}, not {self.source!r}")
        if self.source in (NEWSGROUPS, SENTIMENT) and codecs.lookup(self.encoding).name != "utf-8":
            raise ValueError(f"encoding: only used with a CSV/TSV/JSONL file, not {self.source}")
        self._fits_format()
        return self

    def _fits_format(self) -> None:
        if self.format == "labelled":
            for key in ("prompt_column", "response_column"):
                if getattr(self, key) != DataSpec.model_fields[key].default:
                    raise ValueError(f"{key}: only used with format={PROMPT_RESPONSE}")
            return
        if self.source in (NEWSGROUPS, SENTIMENT):
            raise ValueError(f"format: {self.source} is labelled text; {PROMPT_RESPONSE} "
                             "needs a JSONL file of prompt/response objects")
        if self.partition == "dirichlet":
            raise ValueError("partition: dirichlet deals out labels; prompt/response data "
                             "has none (use iid, column or grouped)")
        for key, default in _LABELLED_ONLY.items():
            if getattr(self, key) != default:
                raise ValueError(f"{key}: not used with format={PROMPT_RESPONSE} (its "
                                 f"fields are prompt_column and response_column)")

    @property
    def prompt_response(self) -> bool:
        return self.format == PROMPT_RESPONSE


def _check_names(names: list[str]) -> None:
    if not names:
        raise ValueError("must not be empty")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate names {dupes}")


def parse_data_spec(text: str) -> DataSpec:
    """Parse ``SOURCE[?key=value&key=value]`` into a validated ``DataSpec``.

    Values are percent-decoded (so ``%26`` or ``%3F`` can appear in a path or label) and
    then coerced by pydantic; list fields accept ``a,b,c``. Field errors are pydantic
    ``ValidationError``s whose location names the field; syntax errors are ``ValueError``.
    """
    source, sep, query = text.strip().partition("?")
    fields: dict[str, str] = {"source": unquote(source)}
    if sep and query:
        for item in query.split("&"):
            if not item:
                continue
            key, eq, value = item.partition("=")
            key = unquote(key).strip()
            if not eq or not key:
                raise ValueError(f"data spec: expected key=value, got {item!r}")
            if key in fields:
                raise ValueError(f"data spec: {key} given more than once")
            fields[key] = unquote(value)
    return DataSpec.model_validate(fields)
