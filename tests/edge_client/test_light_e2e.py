"""Light devices through real hubs and a real broker (``benchmarks.scale_rounds.run_scale``,
the benchmark's harness shrunk): Mosquitto, ``hub serve`` for the cloud and two regions, and
one ``edge-client load`` process hosting 100 light devices in each region, for two rounds.

Every round completes with every device's update applied (nothing rejected, dropped or
refused), and what the cloud took in per round is one partial per region, not one message
per device: the hierarchy's promise, measured at the broker.
"""

from __future__ import annotations

import pytest

from benchmarks.scale_rounds import run_scale
from fedsa_common.net.broker import mosquitto_path

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto not installed"),
]

REGIONS = ("north", "south")
PER_REGION = 100
ROUNDS = 2


def test_two_hundred_light_devices_complete_every_round_through_two_regions(tmp_path):
    res = run_scale(tmp_path, regions=REGIONS, per_region=PER_REGION, rounds=ROUNDS,
                    model="tiny-bert", timeout_s=900.0, echo=lambda _msg: None)
    assert res["load_codes"] == [0]  # every update acknowledged, the federation finished
    assert set(res["hub_codes"].values()) == {0}
    summaries = res["summaries"]
    assert [s["round"] for s in summaries] == list(range(1, ROUNDS + 1))
    everyone = {f"p0-{r}-{i:04d}" for r in REGIONS for i in range(PER_REGION)}
    for s in summaries:
        assert s["applied_step"] and s["selected"] == len(everyone)
        assert {uid.split(":")[0] for uid in s["applied"]} == everyone
        assert {uid.split(":")[1] for uid in s["applied"]} == {str(s["round"])}
        assert s["rejected"] == {} and s["dropped"] == {} and s["duplicates"] == 0
        assert s["regions_reported"] == sorted(REGIONS)
        # the cloud's work: one final partial per region, whatever the region's devices
        assert len(res["partial_ids"][s["round"]]) == len(REGIONS)
        assert res["partials"][s["round"]] < len(everyone) / 10  # resends included
