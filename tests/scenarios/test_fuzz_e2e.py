"""Integration fuzz: thousands of hostile payloads on the real topics of a running federation.

Starts a real broker (Mosquitto when installed, else embedded amqtt) and, through the
scenario runner, a cloud hub, two regional hubs and four devices (tiny random BERT) as OS
processes for three rounds.  Once round 1 is announced an attacker publishes a few thousand
payloads from ``tests.support.hostile`` onto the topics a device can write: update topics
(well-formed frames of mutated updates, broken frames, raw garbage), presence, metrics, and
the cloud's partial topic.

It then checks what the issue asks: every process stayed up and the federation finished
all rounds with every genuine update applied and none lost (report.json), and the hubs'
own counters (their final retained status messages) account for the hostile messages: each
one a hub must refuse is counted once under a named reason.  Messages whose fate depends on
hub state (an update for a future round is held; a partial that passes every stateless
check may be a duplicate) are classified apart and bound the count from above.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from prometheus_client.parser import text_string_to_metric_families

from fedsa_common.federation.config import FederationConfig
from fedsa_common.net.broker import start_broker
from fedsa_common.net.transport import MqttSession
from fedsa_common.wire.chunking import FRAME_MAGIC
from fedsa_common.wire.codec import get_codec
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import (
    AnnounceHeader,
    Metrics,
    PartialHeader,
    Presence,
    Topics,
    UpdateHeader,
    decode_json,
    decode_message,
)
from hub.cloud import initial_global
from scenarios.config import ScenarioConfig
from scenarios.runner import count_labels, run_scenario
from tests.support.hostile import (
    WIRE_REASONS,
    broken_frame,
    frame,
    hostile_json,
    hostile_message,
    random_bytes,
)

pytestmark = pytest.mark.integration

TINY = Path(__file__).parents[2] / "scenarios" / "tiny.yaml"
MAX_BYTES = 16_000_000  # what the hubs accept (TransportSection default)
COUNTS = {"update": 1500, "partial": 600, "presence": 300, "metrics": 100}
BURST = 250  # messages published before waiting for the hubs to count them (broker queue)
METRICS_NAME = {"regional/north": "regional-north", "cloud/cloud": "cloud"}


@dataclass
class Ledger:
    """What the attacker sent, by the hub that must count it and how sure that is."""

    certain: Counter[str] = field(default_factory=Counter)  # hub -> must be refused
    uncertain: Counter[str] = field(default_factory=Counter)  # hub -> may be refused
    sent: Counter[str] = field(default_factory=Counter)  # kind -> messages sent
    caught_up: bool = False  # the hubs had counted every certain refusal after the last burst
    finished_at: float | None = None


@dataclass
class Shot:
    """One hostile message: where it goes and which hubs must (or may) refuse it."""

    kind: str
    topic: str
    payload: bytes
    certain: tuple[str, ...] = ()
    uncertain: tuple[str, ...] = ()
    pid: str | None = None  # partials: the id the cloud judges duplicates by


class Attacker:
    """Prepares thousands of hostile payloads while the federation starts (they target the
    shapes and codec the cloud will announce), then publishes them all as soon as round 1
    is announced and the attacked regional hub listens."""

    def __init__(self, url: str, config: FederationConfig, out: Path, seed: int = 0) -> None:
        self.config = config
        self.out = out
        self.federation = config.federation.name
        self.topics = Topics(self.federation)
        self.rng = random.Random(seed)
        self.shapes = {n: tuple(t.shape) for n, t in initial_global(config).items()}
        self.ledger = Ledger()
        self.announced: dict[str, tuple[int, ...]] | None = None
        self.statuses: dict[str, dict[str, Any]] = {}
        self.ready = threading.Event()
        self.lock = threading.Lock()
        self.session = MqttSession(url, client_id="attacker", clean_session=True,
                                   max_message_bytes=64_000_000)
        self.session.subscribe(self.topics.announce, self._on_announce)
        self.session.subscribe_raw(self.topics.status_filter, self._on_status)

    def _on_announce(self, _topic: str, payload: bytes) -> None:
        if not payload:
            return
        header, env = decode_message(AnnounceHeader, payload, max_bytes=64_000_000)
        if header.status == "running" and self.announced is None:
            self.announced = {n: tuple(t.shape) for n, t in env.tensors.items()}
            self._check_ready()

    def _on_status(self, topic: str, payload: bytes) -> None:
        if payload:
            role, name = topic.split("/")[-2:]
            with self.lock:
                self.statuses[f"{role}/{name}"] = json.loads(payload)
            self._check_ready()

    def _check_ready(self) -> None:
        with self.lock:
            north_up = self.statuses.get("regional/north", {}).get("online")
        if self.announced is not None and north_up:
            self.ready.set()

    def run(self) -> None:
        kinds = [k for k, n in COUNTS.items() for _ in range(n)]
        self.rng.shuffle(kinds)
        shots = [shot for i, kind in enumerate(kinds)
                 if (shot := getattr(self, kind)(i)) is not None]
        # the cloud acknowledges a partial whose id it has seen as a duplicate before any
        # other check: a malformed one reusing the id of one it may have taken is not certain
        maybe_seen = {s.pid for s in shots if s.uncertain and s.pid}
        for shot in shots:
            if shot.certain and shot.pid in maybe_seen:
                shot.certain, shot.uncertain = (), shot.certain
        assert self.ready.wait(240), "round 1 was never announced"
        assert self.announced == self.shapes, "the cloud announced other shapes"
        for start in range(0, len(shots), BURST):
            for shot in shots[start : start + BURST]:
                self.session.publish_raw(shot.topic, shot.payload)
                self.ledger.sent[shot.kind] += 1
                self.ledger.certain.update(shot.certain)
                self.ledger.uncertain.update(shot.uncertain)
            self.ledger.caught_up = self.wait_for_hubs()
            if not self.ledger.caught_up:
                break  # the federation is over (or a hub is stuck): nothing more to learn
        self.ledger.finished_at = time.time()

    def wait_for_hubs(self, timeout: float = 30.0) -> bool:
        """Flow control: wait until each attacked hub has counted every message it must
        refuse so far (its Prometheus endpoint), so the broker never has to queue (and, past
        its limit, drop) more than one burst for a hub."""
        until = time.time() + timeout
        while time.time() < until:
            if all(self.refused_now(hub) >= self.ledger.certain[hub] for hub in METRICS_NAME):
                return True
            time.sleep(0.05)
        return False

    def refused_now(self, hub: str) -> float:
        """The hub's refusals (duplicates aside) as its metrics endpoint reports them."""
        ports = json.loads((self.out / "metrics_ports.json").read_text())
        url = f"http://127.0.0.1:{ports[METRICS_NAME[hub]]}/metrics"
        try:
            text = urllib.request.urlopen(url, timeout=2).read().decode()
        except OSError:
            return -1.0  # not serving yet
        return sum(sample.value for family in text_string_to_metric_families(text)
                   if family.name == "fedsa_hub_updates_rejected"
                   for sample in family.samples
                   if sample.name.endswith("_total") and sample.labels["reason"] != "duplicate")

    # ---------------------------------------------------------------- payloads
    def update(self, i: int) -> Shot:
        client = f"mallory-{i % 7}"
        topic = self.topics.update("north", client)
        north = ("regional/north",)
        choice = self.rng.random()
        if choice < 0.15:  # a frame defect the transport refuses at once
            suffix, raw = broken_frame(random_bytes(self.rng, 0, 400), self.rng)
            return Shot("update", f"{topic}/{suffix}", raw, certain=north)
        if choice < 0.25:  # raw garbage on a frame topic
            raw = random_bytes(self.rng, 1, 300)
            if raw.startswith(FRAME_MAGIC[: len(raw)]):
                raw = b"\x00" + raw
            return Shot("update", f"{topic}/0", raw, certain=north)
        comp = self.config.fedsa_lora.compression
        params = comp.round_codec_params(self.config.federation.seed, 1)
        enc = get_codec(comp.codec, **params).encode(
            {n: torch.randn(s) * 0.01 for n, s in self.shapes.items()})
        template = UpdateHeader(federation=self.federation, round=1, client=client,
                                region="north", base_version=0, codec=comp.codec,
                                codec_params=params, codec_meta=enc.meta, num_samples=8)
        payload = hostile_message(template.model_dump(mode="json"), enc.tensors, self.rng)
        shot = Shot("update", f"{topic}/0", frame(payload))
        try:
            h, _ = decode_message(UpdateHeader, payload, max_bytes=MAX_BYTES)
        except WireError:
            shot.certain = north
            return shot
        if topic.endswith(f"/update/{h.client}") and h.round > 1:
            shot.uncertain = north  # held until its round comes, which it may never do
        else:  # a wrong topic, or an unselected client / unknown round at the intake
            shot.certain = north
        return shot

    def partial(self, i: int) -> Shot | None:
        topic = self.topics.partial("mallory")
        # an empty partial: even one that survives mutation intact adds nothing to a round
        template = PartialHeader(federation=self.federation, round=1, region="mallory",
                                 base_version=0, seq=i, final=False, count=0, weight=0.0,
                                 accepted=[])
        sums = {n: torch.zeros(s) for n, s in self.shapes.items()}
        for _ in range(20):
            payload = hostile_message(template.model_dump(mode="json"), sums, self.rng)
            fate, pid = self.partial_fate(payload, topic)
            cloud = ("cloud/cloud",)
            if fate == "certain":
                return Shot("partial", f"{topic}/0", frame(payload), certain=cloud, pid=pid)
            if fate == "uncertain":
                return Shot("partial", f"{topic}/0", frame(payload), uncertain=cloud, pid=pid)
        return None

    def partial_fate(self, payload: bytes, topic: str) -> tuple[str, str | None]:
        """certain: the cloud must refuse it whatever its state; uncertain: it passes every
        stateless check (the cloud may take it, drop it as late, or see a duplicate); skip:
        it would add updates (not sent: that is a forged region, not malformed input).
        With the partial id when the cloud gets as far as its duplicate check."""
        try:
            h, env = decode_message(PartialHeader, payload, max_bytes=MAX_BYTES)
        except WireError:
            return "certain", None
        pid = None
        if h.federation == self.federation and topic.endswith(f"/partial/{h.region}"):
            pid = f"{h.region}:{h.round}:{h.seq}"
        stateless_ok = (
            h.federation == self.federation and topic.endswith(f"/partial/{h.region}")
            and h.count == len(h.accepted)
            and h.weight <= h.count * self.config.round_policy.max_samples_per_update
            and {n: tuple(t.shape) for n, t in env.tensors.items()} == self.shapes
            and all(bool(torch.isfinite(t.to(torch.float32)).all())
                    for t in env.tensors.values()))
        if not stateless_ok:
            return "certain", pid
        return ("skip" if h.count else "uncertain"), pid

    def presence(self, i: int) -> Shot | None:
        client = f"mallory-{i % 7}"
        topic = self.topics.presence("north", client)
        template = Presence(client=client, region="north", online=False, ts=1.0)
        for _ in range(20):
            payload = hostile_json(template.model_dump(mode="json"), self.rng)
            if not payload:
                continue  # an empty presence clears a retained one: ignored by design
            try:
                p = decode_json(Presence, payload)
            except WireError:
                p = None
            if p is None or topic != self.topics.presence(p.region, p.client):
                # both the region's hub and the cloud read presence, and both refuse it
                return Shot("presence", topic, payload,
                            certain=("regional/north", "cloud/cloud"))
            if not p.online:  # a well-formed goodbye of a made-up device: applied, harmless
                return Shot("presence", topic, payload)
            # a well-formed "online" would be a device joining (spoofing): not sent
        return None

    def metrics(self, i: int) -> Shot | None:
        """Only the operator's monitor reads metrics; hostile ones must not disturb it."""
        template = Metrics(federation=self.federation, client=f"mallory-{i % 7}",
                           region="north", round=1, accuracy=0.5, n_test=10)
        for _ in range(20):
            payload = hostile_json(template.model_dump(mode="json"), self.rng)
            try:
                decode_json(Metrics, payload)
            except WireError:
                return Shot("metrics", self.topics.metrics("north", template.client), payload)
        return None


def hostile_refusals(status: dict[str, Any]) -> Counter[str]:
    """A hub's refusals by reason, without duplicates (honest devices resending)."""
    return Counter({k.removeprefix("rejected."): v for k, v in status["counters"].items()
                    if k.startswith("rejected.") and k != "rejected.duplicate"})


def test_hubs_survive_thousands_of_hostile_payloads(tmp_path: Path) -> None:
    raw = yaml.safe_load(TINY.read_text())
    raw["rounds"] = 3
    # a second of link latency per transfer keeps rounds long enough for the attack
    raw["scenario"]["stragglers"] = {"link": {"latency_ms": 1000}}
    config = ScenarioConfig.model_validate(raw)
    broker_log = tmp_path / "broker.log"
    with start_broker("auto", log_path=broker_log) as broker:
        attacker = Attacker(broker.url, config.federation_config(count_labels(config)),
                            tmp_path)
        attacker.session.connect()
        errors: list[BaseException] = []

        def attack() -> None:
            try:
                attacker.run()
            except BaseException as err:  # reported by the test, not lost in the thread
                errors.append(err)

        thread = threading.Thread(target=attack, daemon=True)
        thread.start()
        report = run_scenario(config, tmp_path, broker.url, echo=lambda _: None)
        thread.join(60)
        time.sleep(1.0)  # the hubs' last retained status messages
        with attacker.lock:
            statuses = dict(attacker.statuses)
        attacker.session.close()
    assert not errors, errors
    ledger = attacker.ledger
    # the hubs counted each burst before the next (live, on their metrics endpoints), so
    # the broker dropped nothing and the attack was over before the federation
    assert ledger.caught_up, "the attack outlasted the federation; counts are incomplete"
    assert "dropped" not in broker_log.read_text()
    assert sum(ledger.sent.values()) >= 0.95 * sum(COUNTS.values()), ledger.sent

    # the federation finished every round with every genuine update, no process died
    assert report["final"]["rounds_completed"] == 3 and report["final"]["finished"]
    assert "failed_processes" not in report["final"]
    assert all(row["accepted"] == 4 for row in report["rounds"]), report["rounds"]
    assert report["updates"]["lost"] == []
    assert all(set(row["device_accuracy"]) <= {f"{r}-{i}" for r in ("north", "south")
                                               for i in range(2)} for row in report["rounds"])


    for hub in ("regional/north", "cloud/cloud"):
        status = statuses[hub]
        assert status.get("finished"), status
        refused = hostile_refusals(status)
        assert set(refused) <= WIRE_REASONS, sorted(set(refused) - WIRE_REASONS)
        total = sum(refused.values())
        low, high = ledger.certain[hub], ledger.certain[hub] + ledger.uncertain[hub]
        assert low <= total <= high, (hub, low, total, high, refused)
    assert sum(hostile_refusals(statuses["regional/south"]).values()) == 0
    # report.json: the cloud's round summaries carry the refusals of every round
    assert sum(row["rejected"] for row in report["rounds"]) >= ledger.certain["cloud/cloud"]

