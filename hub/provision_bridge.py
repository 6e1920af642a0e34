"""What crosses the wide-area link between a site's broker and the cloud broker (pure: no I/O).

Why: the hierarchy exists so that what travels between a site and the cloud grows with the
number of regions, not devices.  A Mosquitto bridge forwards exactly the topic patterns it
is given, so the patterns below *are* that promise; the cloud broker's ACL for the site's
bridge account is derived from the same list (``out`` = the bridge may write it there,
``in`` = it may read it), so the bridge can neither forward nor be given anything else.

Down (cloud -> site, ``in``): the round announcement and the full global parameters (both
retained: a site that reconnects gets the current ones, and a lifecycle command's
'finished' or cleared announcement reaches the site the same way), the cloud's
acknowledgements of this region's partials, and the cloud hub's status (so ``hub status``
at the site sees the cloud).
Up (site -> cloud, ``out``): the region's partial sums, its regional hub's status, and its
devices' presence (the cloud samples the devices that are online; one retained message per
device when it joins or leaves, nothing per round).
Stays in the site: device updates, device acks, secure-aggregation traffic and device
metrics (per device and per round).  The cloud's round summary stays at the cloud broker,
where monitors read it (it lists every device's update id, so it grows with devices).
The control topic stays at the cloud broker too: only the cloud hub reads it, and
lifecycle commands run against the cloud broker with the cloud's credentials.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedsa_common.net.transport import chunk_filter
from fedsa_common.wire.protocol import Topics

Direction = Literal["in", "out"]
CLOUD_HUB_NAME = "cloud"  # the name the cloud hub publishes its status under
BRIDGE_QOS = 1  # the protocol's messages are QoS 1; the bridge must not downgrade them
KEEPALIVE_S = 30
# Reconnect backoff of a cut link: first try after 2 s, at most every 30 s (jittered).
RESTART_TIMEOUT = (2, 30)


@dataclass(frozen=True)
class BridgeTopic:
    """One ``topic PATTERN DIRECTION QOS`` line of a Mosquitto bridge."""

    pattern: str
    direction: Direction
    why: str


@dataclass(frozen=True)
class BridgeTLS:
    """How the bridge checks the cloud broker: the CA file that signed its certificate."""

    cafile: str


@dataclass(frozen=True)
class BridgeLogin:
    username: str
    password: str


def bridge_user(region: str) -> str:
    """The cloud-broker account of region ``region``'s bridge."""
    return f"bridge-{region}"


def bridge_topics(t: Topics, region: str) -> list[BridgeTopic]:
    """Every topic pattern that crosses region ``region``'s link, with its direction."""
    return [
        BridgeTopic(chunk_filter(t.announce), "in", "round announcements (retained)"),
        BridgeTopic(chunk_filter(t.global_params), "in", "full global parameters (retained)"),
        BridgeTopic(t.partial_ack(region), "in", "the cloud's acks of this region's partials"),
        BridgeTopic(t.status("cloud", CLOUD_HUB_NAME), "in", "cloud hub status (retained)"),
        BridgeTopic(chunk_filter(t.partial(region)), "out", "this region's partial sums"),
        BridgeTopic(t.status("regional", region), "out", "regional hub status (retained)"),
        BridgeTopic(t.presence(region, "+"), "out", "device presence (retained, on change)"),
    ]


def bridge_client_id(federation: str, region: str) -> str:
    """The bridge's client id at the cloud broker (and in its state notification's topic)."""
    return f"bridge-{federation}-{region}"


def render_bridge(federation: str, region: str, address: str, *,
                  login: BridgeLogin | None = None, tls: BridgeTLS | None = None,
                  max_packet_bytes: int | None = None) -> str:
    """The ``connection`` block a site's ``mosquitto.conf`` ends with.

    ``address`` is ``HOST:PORT`` of the cloud broker.  ``cleansession false``: the cloud
    broker keeps the bridge's subscriptions and queues QoS 1 messages for it while the link
    is cut, and the site broker queues what goes up, so a cut link delays messages instead
    of losing them.  ``try_private``: the cloud broker knows it talks to a bridge, so
    retained messages keep their retain flag across the link.  Notifications (the link's
    state, retained on ``$SYS/broker/connection/CLIENTID/state``) stay at the site: the
    cloud's ACL would refuse them.
    """
    client_id = bridge_client_id(federation, region)
    lines = [
        f"# Bridge of region {region!r} to the cloud broker: only what the hierarchy needs",
        "# crosses the link (hub/provision_bridge.py says why each topic does).",
        f"connection {client_id}",
        f"address {address}",
        f"remote_clientid {client_id}",
        f"local_clientid local-{client_id}",
        "cleansession false",
        "try_private true",
        "bridge_protocol_version mqttv311",
        f"keepalive_interval {KEEPALIVE_S}",
        f"restart_timeout {RESTART_TIMEOUT[0]} {RESTART_TIMEOUT[1]}",
        "start_type automatic",
        "notifications true",
        "notifications_local_only true",
    ]
    if login is not None:
        lines += [f"remote_username {login.username}", f"remote_password {login.password}"]
    if tls is not None:
        lines += [f"bridge_cafile {tls.cafile}", "bridge_tls_version tlsv1.2",
                  "bridge_insecure false"]
    if max_packet_bytes is not None:
        lines.append(f"bridge_max_packet_size {max_packet_bytes}")
    for topic in bridge_topics(Topics(federation), region):
        lines.append(f"topic {topic.pattern} {topic.direction} {BRIDGE_QOS}")
    return "\n".join(lines) + "\n"
