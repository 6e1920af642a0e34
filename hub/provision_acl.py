"""Broker accounts of one federation and what each may read and write (pure: no I/O).

Derived from ``fedsa_common.wire.protocol.Topics`` and ``fedsa_common.net.transport.chunk_filter``
so the ACL cannot drift from the topics the processes really use. Chunked messages travel on
``T/{frame}`` subtopics, so their rules end in ``/+``; raw JSON messages use the topic itself.

Who may do what (``docs/security.md`` has the same table):

* device C of region R: write its own update frames, presence, metrics and secure-aggregation
  messages to its hub; read the round announcement (federation-wide: global shared parameters
  and the selection, nothing private), the retained full global parameters (downlink
  deltas), its own acknowledgements, its regional hub's status (to warn when no hub
  serves its region) and its hub's secure-aggregation messages to it. Nothing of other
  devices, no partials.
* regional hub R: read the announcement, its region's updates, presence and secure-aggregation
  messages, the cloud's acks of its partials; write acks and secure-aggregation messages to
  its region's devices, its partials and its status.
* cloud: write announcements, the full global parameters, summaries, partial acks and its
  status; read partials, presence, metrics and hub status.  Lifecycle commands (``hub
  federation stop|extend|reset``) run with the cloud's credentials: it also reads and
  writes the control topic and reads back its own announcement and full global (to find
  a retained 'finished' announcement, and what ``reset`` must clear).
* monitor (``hub status``, scenario monitor): read-only; no device updates and no regional
  partials either, since a partial can be one device's update (one participant, async
  mode, over-selection) and is never noised.  The scenario monitor's report then takes its
  counts from the round summaries.  It reads the intake processes' statuses of a region
  served by several (``hub status`` lists them), not their partials.

* bridge of region R (multi-site deployments, on the cloud broker only): exactly the topics
  that cross R's link (``hub.provision_bridge``): write R's partials, its hub's status and its
  devices' presence; read the announcement, the full global, R's partial acks and the
  cloud's status.  Nothing of another region.

Mosquitto's ACL file cannot express "the region of this user" with ``pattern`` lines
(``%c``/``%u`` substitute whole identifiers only), so every account gets its own ``user`` block.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from fedsa_common.net.broker_auth import Role
from fedsa_common.net.transport import chunk_filter
from fedsa_common.wire.protocol import Topics, check_name
from hub.provision_bridge import CLOUD_HUB_NAME, bridge_topics, bridge_user

Access = Literal["read", "write"]

CLOUD_USER = "hub-cloud"
MONITOR_USER = "monitor"
# The partial-ack topic is ack/cloud/R, so a region called "cloud" would make device acks
# (ack/R/C) and partial acks the same topics, and its hub could acknowledge others' partials.
RESERVED_REGIONS = frozenset({"cloud"})


def regional_user(region: str) -> str:
    return f"hub-regional-{region}"


@dataclass(frozen=True)
class Account:
    """One broker login. ``region``/``client`` say which identity it is bound to."""

    username: str
    role: Role
    region: str | None = None
    client: str | None = None


@dataclass(frozen=True)
class Rule:
    access: Access
    topic: str  # an MQTT topic filter, as Mosquitto's ACL file takes it


def federation_accounts(regions: dict[str, list[str]]) -> list[Account]:
    """Cloud, monitor, one regional hub per region and one account per device.

    Device user names are their client ids; ``ValueError`` if one collides with a hub or
    monitor user name, if a device is listed twice, or if a region name is reserved.
    """
    accounts = [Account(CLOUD_USER, "cloud"), Account(MONITOR_USER, "monitor")]
    for region in regions:
        check_name("region", region)
        if region in RESERVED_REGIONS:
            raise ValueError(f"region name {region!r} is reserved (it is a topic level of the "
                             "cloud's acknowledgements)")
        accounts.append(Account(regional_user(region), "regional", region=region))
    taken = {a.username: a for a in accounts}
    for region, clients in regions.items():
        for client in clients:
            check_name("client id", client)
            if client in taken:
                other = taken[client]
                where = f"device of region {other.region}" if other.role == "device" else \
                    f"{other.role} account"
                raise ValueError(f"device {client!r} of region {region!r}: the name is already "
                                 f"used by a {where}")
            taken[client] = Account(client, "device", region=region, client=client)
            accounts.append(taken[client])
    return accounts


def site_accounts(regions: dict[str, list[str]]
                  ) -> tuple[list[Account], dict[str, list[Account]]]:
    """Accounts of a multi-site deployment: the cloud broker's (cloud, monitor, one bridge
    per region) and each site broker's (a monitor, the regional hub, the region's devices).

    Names are checked as for one broker (``federation_accounts``), so a directory can move
    between the two layouts without a device changing its name.
    """
    accounts = federation_accounts(regions)
    cloud = [a for a in accounts if a.role in ("cloud", "monitor")]
    cloud += [Account(bridge_user(r), "bridge", region=r) for r in regions]
    sites = {r: [Account(MONITOR_USER, "monitor"), *(a for a in accounts if a.region == r)]
             for r in regions}
    return cloud, sites


def rules_for(account: Account, topics: Topics) -> list[Rule]:
    """The topics ``account`` may read and write; see the module doc for the why."""
    if account.role == "bridge":
        region = _region(account)
        return [Rule("write" if b.direction == "out" else "read", b.pattern)
                for b in bridge_topics(topics, region)]
    announce = chunk_filter(topics.announce)
    full_global = chunk_filter(topics.global_params)  # downlink deltas' full parameters
    if account.role == "device":
        region, client = _bound(account)
        return [
            Rule("write", chunk_filter(topics.update(region, client))),
            # a region served by several intake processes: one level deeper (its shard)
            Rule("write", chunk_filter(topics.update_any_shard(region, client))),
            Rule("write", topics.presence(region, client)),
            Rule("write", topics.metrics(region, client)),
            Rule("write", chunk_filter(topics.secagg_up(region, client))),
            Rule("read", announce),
            Rule("read", full_global),
            Rule("read", topics.ack(region, client)),
            Rule("read", topics.status("regional", region)),  # is its region served?
            Rule("read", chunk_filter(topics.secagg_down(region, client))),
        ]
    if account.role == "regional":
        region = _region(account)
        return [
            Rule("read", announce),
            Rule("read", chunk_filter(topics.update_filter(region))),
            # several intake processes (``intake_shards``): they log in as the regional hub
            # and read their shard's updates, and the leader reads and acks their partials
            Rule("read", chunk_filter(topics.update_filter(region, "+"))),
            *(Rule(access, topic) for access in ("read", "write") for topic in (
                chunk_filter(topics.intake_partial_filter(region)),
                topics.intake_ack(region, "+"), topics.intake_status(region, "+"))),
            Rule("read", topics.presence(region, "+")),
            Rule("read", topics.partial_ack(region)),
            Rule("read", chunk_filter(topics.secagg_up_filter(region))),
            Rule("write", topics.ack(region, "+")),
            Rule("write", chunk_filter(topics.secagg_down(region, "+"))),
            Rule("write", chunk_filter(topics.partial(region))),
            Rule("write", topics.status("regional", region)),
        ]
    if account.role == "cloud":
        return [
            Rule("write", announce),
            Rule("write", full_global),
            Rule("write", topics.summary),
            Rule("write", topics.partial_ack("+")),
            Rule("write", topics.status("cloud", CLOUD_HUB_NAME)),
            Rule("write", topics.control),
            Rule("read", topics.control),
            Rule("read", announce),
            Rule("read", full_global),
            Rule("read", chunk_filter(topics.partial_filter)),
            Rule("read", topics.presence_filter),
            Rule("read", topics.metrics_filter),
            Rule("read", topics.status_filter),
        ]
    return [  # monitor: what hub.status and scenarios.monitor need, minus partials
        Rule("read", announce),
        Rule("read", topics.metrics_filter),
        Rule("read", topics.summary),
        Rule("read", f"{topics.base}/ack/+/+"),
        Rule("read", topics.presence_filter),
        Rule("read", topics.status_filter),
        Rule("read", topics.intake_status("+", "+")),  # a region's intake processes
    ]


def render_acl(federation: str, accounts: Iterable[Account]) -> str:
    """Mosquitto ``acl_file`` text: one ``user`` block per account, nothing for anonymous."""
    topics = Topics(federation)
    lines = [
        f"# Mosquitto ACL for fedsa-edge federation {federation!r}, written by `hub provision`.",
        "# Regenerate rather than edit. Anything not listed here is denied.",
    ]
    for account in accounts:
        lines += ["", f"user {account.username}"]
        lines += [f"topic {rule.access} {rule.topic}" for rule in rules_for(account, topics)]
    return "\n".join(lines) + "\n"


def _bound(account: Account) -> tuple[str, str]:
    if account.region is None or account.client is None:
        raise ValueError(f"device account {account.username!r} needs a region and a client")
    return account.region, account.client


def _region(account: Account) -> str:
    if account.region is None:
        raise ValueError(f"{account.role} account {account.username!r} needs a region")
    return account.region
