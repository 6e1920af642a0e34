"""One of several intake processes of a region (``intake_shards`` > 1 for it).

Why: one Python process decodes, checks and folds a region's updates at about a tenth of
the rate a do-nothing subscriber receives them (docs/benchmarks.md, "Regional-hub ingest");
a region served by several processes uses several cores.  Each is the regional hub's intake
(``RegionalHub``: validation, the persist before any acknowledgement, group commit, the
device acknowledgements) restricted to the devices of its shard
(``fedsa_common.wire.shards``): it subscribes to ``.../update/<region>/<shard>/+`` only,
serves only its shard's selected devices (so its quorum is theirs), and forwards its
running sums not to the cloud but to the region's leader (``hub.region_leader``) as
partials tagged with its shard, resent until the leader acknowledges them.  The leader
keeps the region's status, presence-based duplicate notices and the link to the cloud.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fedsa_common.net.broker_auth import BrokerAuth
from fedsa_common.net.transport import MqttSession
from fedsa_common.wire.protocol import PartialHeader, Presence
from fedsa_common.wire.shards import intake_shard
from hub.regional import RegionalHub

log = logging.getLogger("fedsa.hub.intake")


def worker_name(region: str, shard: int) -> str:
    """An intake process's name (client id, logs): ``region.shard``."""
    return f"{region}.{shard}"


class IntakeWorker(RegionalHub):
    role = "intake"

    def __init__(self, broker_url: str, federation: str, region: str, shard: int, shards: int,
                 state_dir: Path, payload_limit: int = 1_000_000, *,
                 auth: BrokerAuth | None = None, connect_timeout_s: float = 300.0,
                 report_every_s: float = 30.0, session: MqttSession | None = None) -> None:
        if not 0 <= shard < shards:
            raise ValueError(f"--shard {shard} not in 0..{shards - 1}")
        self.region, self.shard = region, shard  # before the session: its status topic
        self.shards = shards
        super().__init__(broker_url, federation, region, state_dir, payload_limit, auth=auth,
                         connect_timeout_s=connect_timeout_s, report_every_s=report_every_s,
                         name=worker_name(region, shard), session=session)

    @property
    def partial_topic(self) -> str:
        return self.topics.intake_partial(self.region, self.shard)

    @property
    def partial_ack_topic(self) -> str:
        return self.topics.intake_ack(self.region, self.shard)

    def status_topic(self) -> str:
        return self.topics.intake_status(self.region, self.shard)

    def subscribe(self) -> None:
        """Its shard's updates, the region's presence (a device that left ends the wait for
        it), the announcements and the leader's acknowledgements; no secure aggregation
        (refused with several intake processes: ``fedsa_common.config.shards``)."""
        self.listen("presence", f"{self.topics.base}/presence/{self.region}/+", raw=True)
        self.listen("announce", self.topics.announce)
        self.listen("update", self.topics.update_filter(self.region, self.shard))
        self.listen("partial_ack", self.partial_ack_topic, raw=True)

    def serves(self, client: str) -> bool:
        return intake_shard(client, self.shards) == self.shard

    def check_duplicate(self, p: Presence) -> None:
        """The leader tells a duplicate client id to leave, once for the region."""

    def update_topic_ok(self, topic: str, client: str) -> bool:
        """On its shard's topic, from a device of its shard (a device that published to
        another shard's topic would have its resends judged elsewhere)."""
        return self.serves(client) and topic == self.topics.update(self.region, client,
                                                                   self.shard)

    def flush(self, final: bool) -> list[tuple[PartialHeader, dict]]:
        """The intake's partials, tagged with this process's shard (their ids too)."""
        return [(h.model_copy(update={"worker": self.shard}), sums)
                for h, sums in super().flush(final)]
