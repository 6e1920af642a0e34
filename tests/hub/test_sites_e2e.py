"""A federation over a two-broker site deployment as ``hub provision --site`` writes it:
real processes throughout (``benchmarks.bridge_bytes.run_federation``): the cloud Mosquitto
and site north's Mosquitto bridged to it over TLS, ``hub serve --role cloud`` on the cloud
broker, ``hub serve --role regional`` and one device worker with two tiny-BERT devices
(``scenarios/tiny.yaml``, one round) on the site broker, each with its own credentials.

The round completing shows that everything the hierarchy needs crosses the bridge; the
observers (read-all accounts on both brokers) show that device updates were published at the
site and never reached the cloud broker, while the partial did.  Marked slow: three Python
processes importing torch take a minute and more on a busy 2-core machine;
tests/hub/test_provision_sites.py is the shrunk variant in the default suite.
"""

from __future__ import annotations

import pytest

from benchmarks.bridge_bytes import run_federation
from fedsa_common.net.broker import mosquitto_path
from fedsa_common.wire.protocol import Topics

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto not installed"),
]


def test_a_round_over_a_bridged_site_keeps_device_updates_in_the_site(tmp_path):
    res = run_federation(tmp_path, per_region=2, rounds=1, regions=("north",),
                         devices_per_worker=2, echo=lambda _msg: None)
    t = Topics(res["federation"])
    assert len(res["history"]) == 1
    assert sorted(uid.split(":")[0] for uid in res["history"][0]["applied"]) == [
        "north-0", "north-1"]
    updates = {f"{t.update('north', c)}/0" for c in ("north-0", "north-1")}
    assert updates <= set(res["site_topics"]["north"])  # published at the site ...
    assert not updates & set(res["cloud_topics"])  # ... and not at the cloud
    assert res["leaked"] == []
    assert f"{t.partial('north')}/0" in res["cloud_topics"]
    crossed = res["bridges"]["north"]["1"]
    assert crossed["up"] > 0 and crossed["down"] > 0
