"""A scenario's ``links``: validated with errors naming the field, left out of dumps (and
digests) unless used, and written into the worker spec of the devices it names (pure)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_client.simulation import Simulation
from edge_client.worker import read_worker_spec
from fedsa_common.federation.config import ConfigError
from fedsa_common.net.link_schedule import LinkSchedule
from scenarios.bench import scenario_digest
from scenarios.config import load_scenario
from scenarios.runner import write_worker_specs
from tests.support.sessions import RecordingSession

ROOT = Path(__file__).parents[2] / "scenarios"


def tiny_with(tmp_path: Path, links: dict[str, Any]) -> Path:
    raw = yaml.safe_load((ROOT / "tiny.yaml").read_text())
    raw["scenario"]["links"] = links
    path = tmp_path / "links.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("links", "message"),
    [
        ({"devices": {"west-0": {"offline": [[0, 5]]}}},
         r"links\.devices\.west-0: no such device in the topology"),
        ({"regions": {"west": {"publish_delay_s": 1}}},
         r"links\.regions\.west: no such region in topology\.regions \(north, south\)"),
        ({"devices": {"north-0": {"publish_delay_s": -1}}},
         r"scenario\.links\.devices\.north-0\.publish_delay_s"),
        ({"devices": {"north-0": {"offline": [[5, 2]]}}},
         r"scenario\.links\.devices\.north-0.*offline\[0\] must be \[start, end\)"),
        ({"devices": {"north-0": {"offline": [[0, 10], [5, 20]]}}},
         r"scenario\.links\.devices\.north-0.*offline\[1\] starts before offline\[0\] ends"),
        ({"devices": {"north-0": {"ofline": [[0, 1]]}}},
         r"scenario\.links\.devices\.north-0\.ofline"),
    ],
)
def test_bad_links_name_the_field(tmp_path, links, message):
    with pytest.raises(ConfigError, match=message):
        load_scenario(tiny_with(tmp_path, links))


def test_links_stay_out_of_dumps_and_digests_unless_used(tmp_path):
    plain = load_scenario(ROOT / "tiny.yaml")
    assert "links" not in plain.model_dump()["scenario"]
    assert scenario_digest(load_scenario(tiny_with(tmp_path, {}))) == scenario_digest(plain)
    used = load_scenario(tiny_with(tmp_path, {"devices": {"north-1": {"offline": [[1, 2]]}}}))
    assert used.model_dump()["scenario"]["links"]["devices"]["north-1"]["offline"] == [(1, 2)]
    assert scenario_digest(used) != scenario_digest(plain)


def test_worker_specs_give_the_named_devices_their_link(tmp_path):
    """A device's own entry wins over its region's; the others get no link (their session
    is their own), and only a worker with a simulated link is asked for its report."""
    config = load_scenario(tiny_with(tmp_path, {
        "devices": {"north-1": {"offline": [[3, 9]], "publish_delay_s": 0.5,
                                "delay_jitter_s": 0.25}},
        "regions": {"north": {"publish_delay_s": 2}}}))
    specs = write_worker_specs(config, "mqtt://127.0.0.1:1", tmp_path, 0.0)
    raw = json.loads(specs[0].read_text())
    assert raw["link_report"] == str(tmp_path / "workers" / "links-0.json")
    links = {d["client"]: d.get("link") for d in raw["devices"]}
    assert links["south-0"] is None and links["south-1"] is None
    assert links["north-0"]["publish_delay_s"] == 2 and links["north-0"]["offline"] == []
    own = LinkSchedule.from_json(links["north-1"])
    assert own is not None and own.offline == ((3.0, 9.0),)
    assert (own.publish_delay_s, own.delay_jitter_s) == (0.5, 0.25)
    assert own.seed != LinkSchedule.from_json(links["north-0"]).seed  # jitter per device
    _, hosted, _ = read_worker_spec(specs[0])
    sims = {h.spec.client: h.hooks for h in hosted}
    assert isinstance(sims["north-1"], Simulation) and sims["north-1"].link == own
    assert isinstance(sims["south-0"], Simulation) and sims["south-0"].link is None


def test_without_links_the_worker_spec_is_as_before(tmp_path):
    specs = write_worker_specs(load_scenario(ROOT / "tiny.yaml"), "mqtt://127.0.0.1:1",
                               tmp_path, 0.0)
    raw = json.loads(specs[0].read_text())
    assert "link_report" not in raw
    assert all("link" not in d for d in raw["devices"])


def test_a_simulated_device_sees_its_session_through_its_link():
    session = RecordingSession()
    plain = Simulation(client="a")
    assert plain.over_link(session) is session  # type: ignore[arg-type]
    churned = Simulation(client="b", link=LinkSchedule(offline=((0.0, 3600.0),)))
    link = churned.over_link(session)  # type: ignore[arg-type]
    assert link is not session and link.inner is session
    link.publish("t", b"lost")
    assert session.sent == []
    assert churned.link_dropped() == {"published": 1, "received": 0}
