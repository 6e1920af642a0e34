"""The cloud's per-device table for ``hub status`` (pure), and its rendering."""

from __future__ import annotations

import json

from hub.device_table import DeviceTable
from hub.status import Snapshot, device_rows, render


def test_selection_and_accepted_updates_are_kept_per_device() -> None:
    table = DeviceTable()
    table.seen("d3", "r2")
    table.selected({"r1": ["d1", "d2"]}, 1)
    table.accepted(["d1:1", "not-an-id", "d2:x"])
    table.selected({"r1": ["d1"]}, 2)
    fields = table.status_fields(10_000)
    assert fields == {"devices": {
        "d1": {"region": "r1", "last_selected": 2, "last_accepted": 1},
        "d2": {"region": "r1", "last_selected": 1, "last_accepted": None},
        "d3": {"region": "r2", "last_selected": None, "last_accepted": None}}}
    assert table.status_fields(10) == {"devices_omitted": 3}  # too big for the status


def test_accepted_rounds_come_back_from_the_checkpoint_history() -> None:
    history = [{"round": 1, "applied_step": True, "applied": ["d1:1", "d2:1"]},
               {"round": 2, "applied_step": False, "applied": ["d1:2"]},  # below quorum
               {"round": 3, "applied_step": True, "applied": ["d2:3"]}]
    records = DeviceTable.from_history(history).records
    assert records["d1"].last_accepted == 1 and records["d2"].last_accepted == 3


def test_status_lists_devices_from_presence_and_the_cloud_table() -> None:
    cloud = {"online": True, "round": 2, "devices": {
        "d1": {"region": "r1", "last_selected": 3, "last_accepted": 2},
        "d9": {"region": "r1", "last_selected": 1, "last_accepted": None}}}
    snap = Snapshot("demo", statuses={"cloud/cloud": cloud,
                                      "regional/r1": {"online": True, "round": 3}},
                    presence={"r1/d1": True, "r1/d2": False})
    rows = device_rows(snap)
    assert [(r["client"], r["online"], r["last_selected"], r["last_accepted"])
            for r in rows] == [("d1", True, 3, 2), ("d2", False, None, None),
                               ("d9", None, 1, None)]
    json.dumps(rows)  # what --json prints
    text, _ = render(snap, now=0.0)
    assert "  r1/d1                  online   last selected round 3, last accepted update " \
        "round 2" in text
    assert "  r1/d2                  offline  last selected round -, last accepted update " \
        "round -" in text
    assert "  r1/d9                  unknown  last selected round 1" in text
