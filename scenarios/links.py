"""The ``links`` part of a scenario file: devices whose link goes down in given windows or
holds each publish back (pure; no I/O).

Why: churn (``availability``) ends a device's whole session, and ``cut_link`` faults cut a
site off; neither loses single messages of a device that keeps running.  A device listed
here keeps its process, state and round, and its worker sees its session through a
``SimulatedLink`` (fedsa_common/net/simulated_link.py) following the ``LinkSchedule`` made
here: while offline, what it publishes and what it would receive is lost without a word, as
over a link that died after the message left, so acknowledgements and resends must make up
for it.

Windows count from the start of the device's link, which is the start of its session: the
scenario start, or with churn the start of each online window (a fresh session, as after a
reboot, gets a fresh link).  Jitter is drawn per device from the scenario ``seed``, so a
scenario replays the same way.
"""

from __future__ import annotations

import zlib

from pydantic import Field, model_validator

from fedsa_common.federation.config import Strict
from fedsa_common.net.link_schedule import LinkSchedule


class DeviceLink(Strict):
    """``offline``: ``[start_s, end_s)`` windows, sorted and disjoint, in which the link is
    down; every publish is held back ``publish_delay_s`` plus up to ``delay_jitter_s``."""

    offline: list[tuple[float, float]] = Field(default_factory=list)
    publish_delay_s: float = Field(0.0, ge=0)
    delay_jitter_s: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _windows(self) -> DeviceLink:
        self.schedule(0)  # LinkSchedule's checks; its message names the window (offline[i])
        return self

    def schedule(self, seed: int) -> LinkSchedule:
        return LinkSchedule(offline=tuple(self.offline), publish_delay_s=self.publish_delay_s,
                            delay_jitter_s=self.delay_jitter_s, seed=seed)


class LinksSection(Strict):
    """Per device (client id) or per region (every device of it, unless listed itself)."""

    devices: dict[str, DeviceLink] = Field(default_factory=dict)
    regions: dict[str, DeviceLink] = Field(default_factory=dict)

    @property
    def used(self) -> bool:
        return bool(self.devices or self.regions)

    def check_names(self, devices: list[tuple[str, str]]) -> None:
        """Raise ValueError naming the entry that is no device or region of the topology."""
        clients = [c for _, c in devices]
        regions = sorted({r for r, _ in devices})
        for client in self.devices:
            if client not in clients:
                raise ValueError(f"links.devices.{client}: no such device in the topology "
                                 f"(devices are REGION-INDEX: {', '.join(clients[:6])}"
                                 f"{', ...' if len(clients) > 6 else ''})")
        for region in self.regions:
            if region not in regions:
                raise ValueError(f"links.regions.{region}: no such region in "
                                 f"topology.regions ({', '.join(regions)})")


def link_schedules(devices: list[tuple[str, str]], section: LinksSection, seed: int
                   ) -> dict[str, LinkSchedule]:
    """The schedule of each device (region, client) that has a simulated link."""
    out = {}
    for region, client in devices:
        link = section.devices.get(client) or section.regions.get(region)
        if link is not None:
            out[client] = link.schedule(zlib.crc32(f"{seed}:{client}".encode()))
    return out
