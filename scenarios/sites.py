"""A scenario's site topology (``scenario.topology.sites: true``): the brokers
``hub provision --site`` writes, started by ``hub.site_brokers`` (one Mosquitto for the
cloud, one per region, each bridged to the cloud's over TLS), and what the runner needs to
place its processes on them, watch them and cut their links.

Why a module of its own: the runner plays one broker or a site topology with the same
processes; only where each process connects, with which credentials, and what is observed
differ, and that difference lives here.  Every process logs in with the credentials
provisioned for it (the cloud hub at the cloud broker, each regional hub and its devices
at their site's), so a scenario exercises the ACLs and bridges an operator deploys.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsa_common.net.transport import MqttSession
from fedsa_common.wire.protocol import Topics
from hub.bridge_traffic import Recorder, crossing_per_round
from hub.site_brokers import SiteBrokers, start_site_brokers
from scenarios.config import TopologySection
from scenarios.metrics_ports import allocate
from scenarios.monitor import Monitor, Observations


@dataclass
class SiteTopology:
    """The running site brokers, plus a tap on the cloud broker that records every message
    reaching it, from which the bytes crossing each bridge per round are counted."""

    brokers: SiteBrokers
    federation: str
    tap: MqttSession
    recorder: Recorder

    @property
    def cloud_url(self) -> str:
        return self.brokers.url()

    def hub_credentials(self, region: str | None = None) -> Path:
        """How the cloud hub (``region`` None) or a regional hub reaches its broker: its
        provisioned credentials file (which names the broker's URL and CA)."""
        user = "hub-cloud" if region is None else f"hub-regional-{region}"
        return self.brokers.creds_path(user, region)

    def device_credentials(self, region: str, client: str) -> Path:
        return self.brokers.creds_path(client, region)

    def monitor(self) -> Monitor:
        """The scenario monitor: the cloud broker for rounds, each site for its devices."""
        return Monitor(self.cloud_url, self.federation, auth=self.brokers.observer_auth(),
                       site_urls={r: self.brokers.url(r) for r in self.brokers.spec.sites})

    def bridge_bytes(self) -> dict[str, dict[str, dict[str, int]]]:
        """``{region: {round: {"up", "down", "up_msgs", "down_msgs"}}}`` (hub.bridge_traffic)."""
        return crossing_per_round(self.federation, list(self.brokers.spec.sites),
                                  self.recorder.messages())

    def close(self) -> None:
        self.tap.close()
        self.brokers.close()


def start_sites(federation: str, topology: TopologySection, out: Path) -> SiteTopology:
    """Provision one site per region into ``out``, start every broker, wait for the bridges
    and start the byte tap."""
    devices: dict[str, list[str]] = {}
    for region, client in topology.devices():
        devices.setdefault(region, []).append(client)
    brokers = start_site_brokers(federation, devices, out, allocate(["cloud", *devices]))
    recorder = Recorder()
    tap = MqttSession(brokers.url(), f"bridge-tap-{uuid.uuid4().hex[:8]}", clean_session=True,
                      auth=brokers.observer_auth(), max_message_bytes=64_000_000)
    tap.subscribe_raw(Topics(federation).all, recorder)
    try:
        tap.connect(timeout=30)
    except BaseException:
        brokers.close()
        raise
    return SiteTopology(brokers, federation, tap, recorder)


def bridge_report(sites: SiteTopology) -> dict[str, Any]:
    """The report's ``bridges`` section: bytes over each site's link per round, and the
    totals per region (payload bytes; MQTT and TLS framing excluded)."""
    per_round = sites.bridge_bytes()
    totals = {r: {"up": sum(b.get("up", 0) for b in rounds.values()),
                  "down": sum(b.get("down", 0) for b in rounds.values())}
              for r, rounds in per_round.items()}
    return {"per_round": per_round, "total": totals}


def link_outages(obs: Observations, played: list[dict[str, Any]],
                 topology: TopologySection, t0: float) -> list[dict[str, Any]]:
    """One entry per ``cut_link`` fault played (``played``: the fault injector's log, times
    in seconds from ``t0``): when the link was cut and healed, the updates of the site's
    devices its hub acknowledged meanwhile (the site worked on), and the round running at
    the cut with when it completed (after the heal, when its partial had to cross)."""
    region_of = {client: region for region, client in topology.devices()}
    out: list[dict[str, Any]] = []
    for entry in played:
        if entry["action"] != "cut_link":
            continue
        region = entry["target"].partition(":")[2]
        if entry["step"] == "do":
            out.append({"region": region, "cut_s": entry["t"], "healed_s": None})
            continue
        open_cut = next((o for o in reversed(out)
                         if o["region"] == region and o["healed_s"] is None), None)
        if open_cut is not None:
            open_cut["healed_s"] = entry["t"]
    for outage in out:
        start, end = outage["cut_s"], outage["healed_s"]
        outage["acked_while_cut"] = sorted(
            uid for uid, at in obs.acked.items()
            if region_of.get(uid.rpartition(":")[0]) == outage["region"]
            and start <= at - t0 and (end is None or at - t0 <= end))
        running = max((r for r, a in obs.announces.items() if a.issued_at - t0 <= start),
                      default=None)
        done = None if running is None else obs.announces.get(running + 1) or obs.finished
        outage["round"] = running
        outage["round_completed_s"] = None if done is None else round(done.issued_at - t0, 2)
    return out
