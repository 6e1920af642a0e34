"""What the cloud knows of each device, for ``hub status``: its region, the last round it
was selected for and the last round whose step took its update (pure: no I/O).

The cloud publishes the table in its retained status, so an operator reading the broker
sees which devices take part without access to any hub.  Accepted rounds are rebuilt from
the checkpoint's round history after a restart; selections are kept from then on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class DeviceRecord:
    region: str | None = None
    last_selected: int | None = None
    last_accepted: int | None = None


def _round_of(uid: str) -> tuple[str, int] | None:
    """``client:round`` (an update id) as its parts; None for anything else."""
    client, sep, rnd = uid.rpartition(":")
    if not sep or not client or not rnd.isdigit():
        return None
    return client, int(rnd)


class DeviceTable:
    def __init__(self) -> None:
        self.records: dict[str, DeviceRecord] = {}
        # when the step that took each device's last accepted update was applied (epoch
        # seconds; for the metrics' update age, not in the status)
        self.accepted_at: dict[str, float] = {}

    def _get(self, client: str) -> DeviceRecord:
        return self.records.setdefault(client, DeviceRecord())

    def seen(self, client: str, region: str) -> None:
        self._get(client).region = region

    def selected(self, selected: dict[str, list[str]], rnd: int) -> None:
        for region, clients in selected.items():
            for client in clients:
                rec = self._get(client)
                rec.region, rec.last_selected = region, rnd

    def accepted(self, update_ids: Iterable[str], at: float | None = None) -> None:
        """Updates a round's step took (the summary's ``applied`` ids), at ``at`` (now
        when not given; 0 when unknown)."""
        at = time.time() if at is None else at
        for uid in update_ids:
            parsed = _round_of(uid)
            if parsed is not None:
                rec = self._get(parsed[0])
                if parsed[1] >= (rec.last_accepted or 0):
                    rec.last_accepted = parsed[1]
                    if at > 0:
                        self.accepted_at[parsed[0]] = at

    @classmethod
    def from_history(cls, history: Iterable[dict[str, Any]]) -> DeviceTable:
        """The accepted rounds recorded in a checkpoint's round summaries."""
        table = cls()
        for record in history:
            if record.get("applied_step"):
                ended = (record.get("started_at") or 0.0) + (record.get("duration_s") or 0.0)
                table.accepted(record.get("applied") or [], at=ended)
        return table

    def status_fields(self, max_bytes: int) -> dict[str, Any]:
        """``{"devices": {client: record}}`` for the cloud's status, or, past ``max_bytes``
        of JSON, only their count (``devices_omitted``): a status must fit one message."""
        devices = {c: asdict(r) for c, r in sorted(self.records.items())}
        if len(json.dumps(devices)) > max_bytes:
            return {"devices_omitted": len(devices)}
        return {"devices": devices}
