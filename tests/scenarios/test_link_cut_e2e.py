"""``scenarios/sites.yaml`` as shipped, played by the runner on real processes: a Mosquitto
per site (north, south) bridged over TLS to the cloud's, as ``hub provision --site`` writes
them, the cloud hub on the cloud broker, each regional hub and its devices' worker on its
site's, all with their provisioned credentials.  Site north's link is cut as round 1 is
announced and healed 5 s later (the cloud broker refuses north's bridge meanwhile).

What must hold: north's hub acknowledged its devices' updates while cut off (the site
works on); round 1 completes only after the heal, with every update; no acknowledged
update is lost; the bytes over each site's link are reported per round.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsa_common.net.broker import mosquitto_path
from scenarios.config import load_scenario
from scenarios.runner import run_scenario

SITES = Path(__file__).parents[2] / "scenarios" / "sites.yaml"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto not installed"),
]


def test_a_cut_site_link_delays_the_round_and_loses_nothing(tmp_path):
    report = run_scenario(load_scenario(SITES), tmp_path, echo=lambda _: None)
    assert report["expectations"]["ok"], report["expectations"]["failures"]
    assert report["updates"]["lost"] == []
    assert [(f["action"], f["step"]) for f in report["faults"]] == [
        ("cut_link", "do"), ("cut_link", "undo")]

    (outage,) = report["links"]
    assert outage["region"] == "north" and outage["round"] == 1
    assert outage["acked_while_cut"]  # north's hub kept taking its devices' updates
    assert {uid.split(":")[0] for uid in outage["acked_while_cut"]} <= {"north-0", "north-1"}
    # the round waited for north's partial, which crossed after the heal
    assert outage["round_completed_s"] > outage["healed_s"]
    assert report["rounds"][0]["accepted"] == 4

    per_round = report["bridges"]["per_round"]
    for region in ("north", "south"):
        for rnd in ("1", "2"):
            assert per_round[region][rnd]["up"] > 0 and per_round[region][rnd]["down"] > 0
