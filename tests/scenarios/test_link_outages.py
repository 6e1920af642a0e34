"""``scenarios.sites.link_outages``: what report.json's ``links`` says about each cut link,
from the monitor's observations and the fault log (pure)."""

from __future__ import annotations

from fedsa_common.wire.protocol import AnnounceHeader
from scenarios.config import TopologySection
from scenarios.monitor import Observations
from scenarios.sites import link_outages

T0 = 1000.0
TOPOLOGY = TopologySection(regions={"north": 2, "south": 1}, sites=True)


def announce(rnd: int, at: float, status: str = "running") -> AnnounceHeader:
    return AnnounceHeader.model_construct(round=rnd, issued_at=T0 + at, status=status)


def test_a_cut_counts_its_sites_acks_and_the_rounds_end():
    obs = Observations()
    obs.announces = {1: announce(1, 10.0), 2: announce(2, 30.0)}
    obs.finished = announce(2, 40.0, "finished")
    obs.acked = {"north-0:1": T0 + 12.0, "north-1:1": T0 + 25.0, "south-0:1": T0 + 13.0,
                 "north-0:2": T0 + 33.0}
    played = [
        {"t": 11.0, "step": "do", "action": "cut_link", "target": "region:north"},
        {"t": 11.5, "step": "do", "action": "kill", "target": "cloud"},
        {"t": 20.0, "step": "undo", "action": "cut_link", "target": "region:north"},
        {"t": 31.0, "step": "do", "action": "cut_link", "target": "region:north"},
    ]
    first, second = link_outages(obs, played, TOPOLOGY, T0)
    assert first == {"region": "north", "cut_s": 11.0, "healed_s": 20.0,
                     "acked_while_cut": ["north-0:1"], "round": 1, "round_completed_s": 30.0}
    # never healed: acks count to the end, and round 2 ended with the federation
    assert second["healed_s"] is None and second["acked_while_cut"] == ["north-0:2"]
    assert second["round"] == 2 and second["round_completed_s"] == 40.0
