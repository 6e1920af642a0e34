"""Importance reports on the wire: validated where they are parsed, absent when unused so
headers read exactly as before."""

from __future__ import annotations

import pytest

from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import (
    MAX_IMPORTANCE,
    PartialHeader,
    RoundSummary,
    UpdateHeader,
    parse_header,
)

A = "bert.encoder.layer.0.attention.self.query.lora_A.weight"
UPDATE = {"proto": 1, "kind": "update", "federation": "f", "round": 1, "client": "c",
          "region": "r", "base_version": 0, "codec": "dense", "num_samples": 3}
PARTIAL = {"proto": 1, "kind": "partial", "federation": "f", "round": 1, "region": "r",
           "base_version": 0, "count": 2, "weight": 2.0, "accepted": ["a:1", "b:1"]}


def decode(cls, header: dict):
    """As a receiver parses a header (the envelope itself refuses non-finite JSON)."""
    return parse_header(cls, header)


def test_absent_reports_leave_headers_as_they_were() -> None:
    assert "importance" not in decode(UpdateHeader, UPDATE).model_dump(mode="json")
    assert "importance" not in decode(PartialHeader, PARTIAL).model_dump(mode="json")
    summary = RoundSummary(federation="f", round=1, version=1, mode="sync", selected=1,
                           applied=[], applied_step=True, started_at=0.0, duration_s=1.0)
    assert not {"shared", "next_shared"} & set(summary.model_dump(mode="json"))


def test_valid_reports_round_trip() -> None:
    u = decode(UpdateHeader, {**UPDATE, "importance": {A: 0.25}})
    assert u.importance == {A: 0.25}
    p = decode(PartialHeader, {**PARTIAL, "importance": {"reports": 2,
                                                         "tensors": {A: [2, 1.2, 0.8]}}})
    assert p.importance is not None and p.importance.tensors[A] == (2, 1.2, 0.8)
    assert PartialHeader.model_validate(p.model_dump(mode="json")) == p  # outbox persistence


@pytest.mark.parametrize("importance", [
    {A: -1.0},
    {A: float("inf")},
    {A: float("nan")},
    {"a/b": 1.0},                          # not a wire name
    {"x" * 201: 1.0},
    {f"t{i}": 0.0 for i in range(MAX_IMPORTANCE + 1)},
    {A: "much"},
])
def test_bad_update_reports_are_bad_headers(importance) -> None:
    with pytest.raises(WireError) as err:
        decode(UpdateHeader, {**UPDATE, "importance": importance})
    assert err.value.reason == "bad_header"


@pytest.mark.parametrize("summary", [
    {"reports": 0, "tensors": {}},
    {"reports": 2, "tensors": {A: [3, 1.0, 0.5]}},    # more reports name it than exist
    {"reports": 2, "tensors": {A: [2, 2.5, 1.0]}},    # normalized values are <= 1 each
    {"reports": 2, "tensors": {A: [2, 1.0, 1.5]}},    # sum of squares above the sum
    {"reports": 2, "tensors": {A: [2, -0.1, 0.0]}},
    {"reports": 2, "tensors": {A: [2, 1.0]}},
    {"reports": 2, "tensors": {A: [2, 1.0, 0.5]}, "extra": 1},
])
def test_impossible_region_summaries_are_bad_headers(summary) -> None:
    with pytest.raises(WireError) as err:
        decode(PartialHeader, {**PARTIAL, "importance": summary})
    assert err.value.reason == "bad_header"
