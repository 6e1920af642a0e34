"""The cloud's round summary stays publishable however many ids a round collects (pure,
no broker: the hub object is built but never connected)."""

from __future__ import annotations

from pathlib import Path

from fedsa_common.federation.config import FederationConfig
from fedsa_common.wire.protocol import RoundSummary, decode_json
from hub.cloud import CloudHub


def summary(n: int) -> RoundSummary:
    return RoundSummary(federation="f", round=3, version=3, mode="sync", selected=n,
                        applied=[f"device-{i:06d}:3" for i in range(n)],
                        dropped={f"late-{i:06d}:3": "late" for i in range(n)},
                        rejected={}, duplicates=0, regions_reported=["north"],
                        applied_step=True, bytes_in=0, started_at=0.0, duration_s=1.0)


def test_oversized_summary_is_published_without_id_lists(tmp_path: Path) -> None:
    hub = CloudHub("mqtt://127.0.0.1:1", FederationConfig(), tmp_path)
    small = hub.summary_payload(summary(3))
    assert decode_json(RoundSummary, small).applied == summary(3).applied
    big = hub.summary_payload(summary(60_000))
    assert len(big) <= hub.session.payload_limit
    back = decode_json(RoundSummary, big, max_bytes=len(big))
    assert back.round == 3 and back.applied == [] and back.dropped == {}
