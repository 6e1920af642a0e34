"""``hub provision --site`` without a broker: which topics cross a site's bridge and which way,
the bridge block of a site's mosquitto.conf, the cloud's bridge accounts and the files of a
multi-site directory (tests/hub/test_provision_sites.py runs them in real Mosquitto
processes)."""

from __future__ import annotations

import inspect
import json
import stat

import paho.mqtt.client as mqtt
import pytest

from fedsa_common.net.broker_auth import load_credentials
from fedsa_common.wire.protocol import Topics
from hub.provision import ProvisionSpec, Site, parse_site_options, provision
from hub.provision_acl import Account, rules_for, site_accounts
from hub.provision_bridge import BridgeLogin, BridgeTLS, bridge_topics, render_bridge

T = Topics("fed")
REGIONS = {"north": ["dev-0", "dev-1"], "south": ["dev-2"]}
SITES = {"north": Site(["gw-north.example"], 8884), "south": Site(["10.0.0.7"])}


def crossing(topic: str, region: str = "north") -> str | None:
    """How a concrete topic crosses ``region``'s bridge: "in", "out" or None (stays)."""
    found = {b.direction for b in bridge_topics(T, region)
             if mqtt.topic_matches_sub(b.pattern, topic)}
    assert len(found) <= 1, f"{topic} matches patterns of both directions"
    return found.pop() if found else None


def frame(topic: str) -> str:
    return f"{topic}/0"


# Topics member -> (a concrete topic for region north's site, how it crosses north's bridge)
CROSSING = {
    "announce": (frame(T.announce), "in"),
    "global_params": (frame(T.global_params), "in"),
    "partial_ack": (T.partial_ack("north"), "in"),
    "status": (T.status("cloud", "cloud"), "in"),
    "partial": (frame(T.partial("north")), "out"),
    "presence": (T.presence("north", "dev-0"), "out"),
    "update": (frame(T.update("north", "dev-0")), None),
    # a region served by several intake processes: sharded updates and what its intake
    # processes and leader exchange stay in the site
    "update_any_shard": (frame(T.update("north", "dev-0", 1)), None),
    "device_update": (frame(T.device_update("north", "dev-0", 2)), None),
    "intake_partial": (frame(T.intake_partial("north", 0)), None),
    "intake_ack": (T.intake_ack("north", 1), None),
    "intake_status": (T.intake_status("north", 1), None),
    "ack": (T.ack("north", "dev-0"), None),
    "secagg_up": (frame(T.secagg_up("north", "dev-0")), None),
    "secagg_down": (frame(T.secagg_down("north", "dev-0")), None),
    "metrics": (T.metrics("north", "dev-0"), None),  # per device and round
    "summary": (T.summary, None),  # lists every device's update id; monitors read it at the cloud
    "control": (T.control, None),  # only the cloud hub reads it
}


@pytest.mark.parametrize("name", sorted(CROSSING))
def test_what_crosses_a_sites_bridge(name):
    topic, direction = CROSSING[name]
    assert crossing(topic) == direction


def test_every_topic_of_the_protocol_has_a_crossing_rule():
    """A new topic in Topics needs a decision here (hub/provision_bridge.py)."""
    members = {n for n, _ in inspect.getmembers(Topics) if not n.startswith("_")}
    filters = {"all", "update_filter", "partial_filter", "presence_filter", "metrics_filter",
               "status_filter", "secagg_up_filter", "intake_partial_filter"}
    assert members - filters == set(CROSSING)


@pytest.mark.parametrize("topic", [
    frame(T.partial("south")), T.partial_ack("south"), T.presence("south", "dev-2"),
    T.status("regional", "south"),
])
def test_nothing_of_another_region_crosses(topic):
    assert crossing(topic, "north") is None


def test_status_of_the_regional_hub_goes_up_and_the_clouds_comes_down():
    assert crossing(T.status("regional", "north")) == "out"
    assert crossing(T.status("cloud", "cloud")) == "in"


def test_the_cloud_acl_gives_each_bridge_exactly_its_topics():
    cloud, sites = site_accounts(REGIONS)
    assert [a.username for a in cloud] == ["hub-cloud", "monitor", "bridge-north",
                                           "bridge-south"]
    bridge = next(a for a in cloud if a.username == "bridge-north")
    rules = {(r.access, r.topic) for r in rules_for(bridge, T)}
    assert rules == {("write" if b.direction == "out" else "read", b.pattern)
                     for b in bridge_topics(T, "north")}
    assert ("write", f"{T.partial('north')}/+") in rules
    assert not any("south" in topic for _, topic in rules)
    assert [a.username for a in sites["north"]] == ["monitor", "hub-regional-north", "dev-0",
                                                    "dev-1"]
    with pytest.raises(ValueError, match="bridge account 'b' needs a region"):
        rules_for(Account("b", "bridge"), T)


def test_bridge_block_of_a_sites_configuration():
    text = render_bridge("fed", "north", "cloud.example:8883",
                         login=BridgeLogin("bridge-north", "pw"),
                         tls=BridgeTLS("/etc/fedsa/ca.crt"), max_packet_bytes=4000)
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    for expected in ("connection bridge-fed-north", "address cloud.example:8883",
                     "remote_username bridge-north", "remote_password pw",
                     "cleansession false", "try_private true", "bridge_insecure false",
                     "bridge_cafile /etc/fedsa/ca.crt", "notifications_local_only true",
                     "bridge_max_packet_size 4000",
                     "topic fedsa/fed/round/+ in 1",
                     "topic fedsa/fed/cloud/partial/north/+ out 1"):
        assert expected in lines, expected
    assert lines[0] == "connection bridge-fed-north"  # the block starts the bridge section
    assert sum(ln.startswith("topic ") for ln in lines) == len(bridge_topics(T, "north"))
    plain = render_bridge("fed", "north", "127.0.0.1:1883")
    assert "remote_username" not in plain and "bridge_cafile" not in plain


def test_provision_with_sites_writes_a_directory_per_site(tmp_path):
    out = tmp_path / "fed"
    spec = ProvisionSpec("fed", REGIONS, hosts=["cloud.example"], sites=SITES)
    result = provision(spec, out)
    assert sorted(result.added) == sorted([
        "hub-cloud", "monitor", "bridge-north", "bridge-south",
        "north/monitor", "north/hub-regional-north", "north/dev-0", "north/dev-1",
        "south/monitor", "south/hub-regional-south", "south/dev-2"])
    north = out / "sites" / "north"
    assert not (north / "ca.key").exists()  # the CA key stays with the operator
    assert (north / "ca.crt").read_bytes() == (out / "ca.crt").read_bytes()
    assert stat.S_IMODE((north / "mosquitto.conf").stat().st_mode) == 0o600  # bridge password
    assert stat.S_IMODE((out / "mosquitto.conf").stat().st_mode) == 0o644
    dev = load_credentials(north / "credentials" / "dev-0.json")
    assert dev.broker == "mqtts://gw-north.example:8884"
    hub = load_credentials(out / "sites" / "south" / "credentials" / "hub-regional-south.json")
    assert hub.broker == "mqtts://10.0.0.7:8883"
    bridge = load_credentials(out / "credentials" / "bridge-north.json")
    assert (bridge.role, bridge.region, bridge.broker) == (
        "bridge", "north", "mqtts://cloud.example:8883")
    conf = (north / "mosquitto.conf").read_text().splitlines()
    assert "listener 8884" in conf and "address cloud.example:8883" in conf
    assert f"remote_password {bridge.password}" in conf
    assert "user dev-0\n" not in (out / "acl").read_text()  # devices live at their site
    assert "user hub-cloud\n" not in (north / "acl").read_text()
    assert "user dev-2\n" not in (north / "acl").read_text()
    names = {line.split(":")[0] for line in (north / "passwd").read_text().splitlines()}
    assert names == {"monitor", "hub-regional-north", "dev-0", "dev-1"}
    manifest = json.loads((out / "provision.json").read_text())
    assert manifest["sites"]["north"] == {"hosts": ["gw-north.example"], "port": 8884,
                                          "broker": "mqtts://gw-north.example:8884"}

    again = provision(spec, out)  # a re-run keeps every password, bridges' included
    assert again.added == [] and "bridge-north" in again.kept and "north/dev-0" in again.kept
    assert f"remote_password {bridge.password}" in (north / "mosquitto.conf").read_text()
    fewer = provision(ProvisionSpec("fed", {"north": ["dev-0"], "south": ["dev-2"]},
                                    hosts=["cloud.example"], sites=SITES), out)
    assert fewer.removed == ["north/dev-1"]


def test_site_options_and_their_errors():
    assert parse_site_options(["north=gw-n, 10.0.0.5", "south=gw-s"], ["north=8884"], 8883) == {
        "north": Site(["gw-n", "10.0.0.5"], 8884), "south": Site(["gw-s"], 8883)}
    with pytest.raises(ValueError, match="REGION=HOST"):
        parse_site_options(["north"], [], 8883)
    with pytest.raises(ValueError, match="--site-port 'east=1'"):
        parse_site_options(["north=gw"], ["east=1"], 8883)
    with pytest.raises(ValueError, match=r"no site for region.*south"):
        ProvisionSpec("fed", REGIONS, sites={"north": SITES["north"]})
    with pytest.raises(ValueError, match="east is not a region"):
        ProvisionSpec("fed", REGIONS, sites={**SITES, "east": Site(["x"])})
    with pytest.raises(ValueError, match="site port"):
        Site(["x"], 0)
