"""The cloud hub: samples devices, announces rounds, combines regional partials into the
global shared parameters, checkpoints durably, and announces the next round.

It restarts from its last checkpoint, so a crash costs at most the round in flight.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import torch

from fedsa_common.config import FederationConfig
from fedsa_common.errors import WireError
from fedsa_common.protocol import (
    AnnounceHeader,
    PartialHeader,
    Presence,
    decode_json,
    decode_message,
    encode_message,
)
from fedsa_common.split import shared_names
from hub.aggregation import RunningSum, apply_server_update
from hub.checkpoint import CloudState, load_checkpoint, save_checkpoint
from hub.process import Event, HubProcess
from quant.adapters import adapter_shapes, init_adapter_values

log = logging.getLogger("fedsa.hub.cloud")


def initial_global(config: FederationConfig) -> dict[str, torch.Tensor]:
    """The common starting point of the shared parameters, computed from shapes alone."""
    if config.model.num_labels is None:
        raise ValueError("model.num_labels must be set in the cloud hub's configuration")
    shapes = adapter_shapes(config.model, config.model.num_labels)
    names = shared_names(shapes, config.fedsa_lora.algorithm)
    values = init_adapter_values({n: shapes[n] for n in names}, config.federation.seed)
    return values


def select_clients(online: dict[str, str], k: int | None, seed: int, rnd: int
                   ) -> dict[str, list[str]]:
    """Seeded sample of ``k`` online devices, grouped by region (all of them when k is None)."""
    clients = sorted(online)
    if k is not None and k < len(clients):
        clients = sorted(random.Random(seed * 100_003 + rnd).sample(clients, k))
    grouped: dict[str, list[str]] = {}
    for c in clients:
        grouped.setdefault(online[c], []).append(c)
    return grouped


class CloudHub(HubProcess):
    role = "cloud"

    def __init__(self, broker_url: str, config: FederationConfig, state_dir: Path) -> None:
        super().__init__(broker_url, config.federation.name, "cloud", state_dir,
                         config.transport.payload_limit, config.transport.max_message_bytes)
        self.config = config
        self.online: dict[str, str] = {}  # client -> region

    def load_state(self) -> CloudState:
        state = load_checkpoint(self.state_dir)
        if state is None:
            return CloudState(0, 0, initial_global(self.config), self.config.digest())
        if state.config_hash != self.config.digest():
            raise ValueError(
                f"checkpoint in {self.state_dir} was made with another configuration "
                f"({state.config_hash} != {self.config.digest()}); use a fresh --state-dir"
            )
        log.info("resuming from checkpoint: round %d, version %d", state.round, state.version)
        return state

    def run(self) -> int:
        state = self.load_state()
        self.listen("presence", self.topics.presence_filter, raw=True)
        self.listen("partial", self.topics.partial_filter)
        self.session.connect()
        self.wait_for_clients()
        while state.round < self.config.rounds:
            self.run_round(state)
        self.announce(state, "finished", {})
        self.publish_status(round=state.round, version=state.version, finished=True)
        log.info("federation finished after %d rounds", state.round)
        self.session.close()
        return 0

    def wait_for_clients(self) -> None:
        need = self.config.sampling.min_clients
        until = time.time() + self.config.sampling.wait_for_clients_s
        while len(self.online) < need:
            if time.time() > until and self.online:
                log.warning("starting with %d of %d wanted devices", len(self.online), need)
                return
            event = self.next_event(1.0)
            if event is not None:
                self.handle_common(event)
        log.info("%d devices online", len(self.online))

    def handle_common(self, event: Event) -> None:
        if event.kind != "presence" or not event.payload:
            return
        try:
            p = decode_json(Presence, event.payload)
        except WireError as err:
            self.count_reject(err, event.topic)
            return
        if event.topic != self.topics.presence(p.region, p.client):
            self.count_reject(WireError("wrong_topic", event.topic), event.topic)
        elif p.online:
            self.online[p.client] = p.region
        else:
            self.online.pop(p.client, None)

    def announce(self, state: CloudState, status: str, selected: dict[str, list[str]]) -> None:
        header = AnnounceHeader(
            federation=self.federation,
            round=state.round + (1 if status == "running" else 0),
            version=state.version,
            status=status,  # type: ignore[arg-type]
            selected=selected,
            config=self.config.model_dump(mode="json"),
            config_hash=self.config.digest(),
            deadline_s=self.config.round_policy.deadline_s,
            issued_at=time.time(),
            shared=sorted(state.params),
        )
        nbytes = self.session.publish(self.topics.announce, encode_message(header, state.params),
                                      retain=True)
        self.counters["bytes.announced"] += nbytes

    def run_round(self, state: CloudState) -> None:
        rnd = state.round + 1
        cfg = self.config
        selected = select_clients(self.online, cfg.sampling.clients_per_round,
                                  cfg.federation.seed, rnd)
        started = time.time()
        self.announce(state, "running", selected)
        n_selected = sum(len(v) for v in selected.values())
        log.info("round %d/%d announced to %d devices", rnd, cfg.rounds, n_selected)
        total = RunningSum.zeros({n: tuple(t.shape) for n, t in state.params.items()})
        partials: dict[str, PartialHeader] = {}
        deadline = started + cfg.round_policy.deadline_s * 1.2 + 10.0
        while set(partials) != set(selected) and time.time() < deadline:
            event = self.next_event(deadline - time.time())
            if event is None:
                continue
            if event.kind == "partial":
                try:
                    header, sums = self.check_partial(event, state, rnd, selected, partials)
                except WireError as err:
                    self.count_reject(err, event.topic)
                    continue
                total.merge(sums, header.weight, header.count)
                partials[header.region] = header
            else:
                self.handle_common(event)
        applied = total.count >= cfg.round_policy.min_quorum and total.weight > 0
        if applied:
            state.params = apply_server_update(state.params, total.mean(), cfg.server_lr)
            state.version += 1
        state.round = rnd
        rejected: dict[str, int] = {}
        for p in partials.values():
            for reason, n in p.rejected.items():
                rejected[reason] = rejected.get(reason, 0) + n
        record = {
            "round": rnd,
            "version": state.version,
            "selected": n_selected,
            "accepted": total.count,
            "rejected": rejected,
            "duplicates": sum(p.duplicates for p in partials.values()),
            "regions_reported": sorted(partials),
            "applied": applied,
            "bytes_in": sum(p.bytes_in for p in partials.values()),
            "started_at": started,
            "duration_s": time.time() - started,
        }
        state.history.append(record)
        save_checkpoint(self.state_dir, state)
        self.publish_status(round=rnd, version=state.version, accepted=total.count)
        log.info("round %d done: %d/%d updates from %d regions in %.1fs%s", rnd, total.count,
                 n_selected, len(partials), record["duration_s"],
                 "" if applied else " (below quorum, not applied)")

    def check_partial(self, event: Event, state: CloudState, rnd: int,
                      selected: dict[str, list[str]], seen: dict[str, PartialHeader]
                      ) -> tuple[PartialHeader, dict[str, torch.Tensor]]:
        header, env = decode_message(PartialHeader, event.payload,
                                     max_bytes=self.config.transport.max_message_bytes)
        if header.federation != self.federation:
            raise WireError("wrong_federation", header.federation)
        if header.round != rnd:
            raise WireError("stale" if header.round < rnd else "future", f"round {header.round}")
        if header.base_version != state.version:
            raise WireError("wrong_base_version", str(header.base_version))
        if header.region not in selected:
            raise WireError("unexpected_region", header.region)
        if header.region in seen:
            raise WireError("duplicate", header.region)
        if not event.topic.endswith(f"/partial/{header.region}"):
            raise WireError("wrong_topic", event.topic)
        if not set(header.accepted) <= set(selected[header.region]):
            raise WireError("not_selected", header.region)
        if header.count != len(header.accepted):
            raise WireError("bad_header", "count does not match accepted list")
        shapes = {n: tuple(t.shape) for n, t in state.params.items()}
        got = {n: tuple(t.shape) for n, t in env.tensors.items()}
        if got != shapes:
            raise WireError("shape_mismatch", header.region)
        sums = {n: t.to(torch.float32) for n, t in env.tensors.items()}
        if not all(bool(torch.isfinite(t).all()) for t in sums.values()):
            raise WireError("non_finite", header.region)
        return header, sums
