"""A region served by several intake processes, without a broker: which process takes a
device (``intake_shard``), the topics, the configuration's refusals by name, an intake
process's filter and tags, and the leader's merge (each partial once, persisted, one
partial of the region at its processes' quorum, equal to the sum of what they sent)."""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path

import pytest
import torch

from fedsa_common.federation.config import ConfigError, FederationConfig, federation_config_from
from fedsa_common.wire.protocol import (
    Ack,
    AnnounceHeader,
    PartialHeader,
    Topics,
    decode_message,
    encode_message,
)
from fedsa_common.wire.shards import MAX_INTAKE_SHARDS, intake_shard
from hub.intake_worker import IntakeWorker
from hub.process import Event
from hub.region_leader import RegionLeader
from tests.support.sessions import RecordingSession

T = Topics("f")
SHAPES = {"a.lora_A.weight": (2, 3), "b.lora_A.weight": (4,)}


# ---------------------------------------------------------------------- shards and topics
def test_a_device_always_goes_to_the_same_intake_process():
    assert intake_shard("dev-7", 3) == zlib.crc32(b"dev-7") % 3
    assert intake_shard("anything", 1) == 0
    spread = {intake_shard(f"d{i}", 4) for i in range(200)}
    assert spread == {0, 1, 2, 3}
    for bad in (0, MAX_INTAKE_SHARDS + 1):
        with pytest.raises(ValueError, match="intake_shards"):
            intake_shard("d", bad)


def test_update_topics_gain_a_shard_level_only_with_several_processes():
    assert T.device_update("eu", "d1", 1) == T.update("eu", "d1") == "fedsa/f/region/eu/update/d1"
    shard = intake_shard("d1", 2)
    assert T.device_update("eu", "d1", 2) == f"fedsa/f/region/eu/update/{shard}/d1"
    assert T.update_filter("eu", 1) == "fedsa/f/region/eu/update/1/+"
    assert T.update_any_shard("eu", "d1") == "fedsa/f/region/eu/update/+/d1"
    assert T.intake_partial("eu", 1).startswith("fedsa/f/region/eu/")  # stays in the site


def test_a_workers_partial_id_names_it_and_a_regions_reads_as_before():
    h = PartialHeader(federation="f", round=3, region="eu", base_version=2, seq=1, count=0,
                      weight=0.0, accepted=[])
    assert h.pid == "eu:3:1" and "worker" not in h.model_dump(mode="json")
    w = h.model_copy(update={"worker": 1})
    assert w.pid == "eu/1:3:1" and w.source == "eu/1"


# ---------------------------------------------------------------------- configuration
def test_intake_shards_leave_digests_alone_at_one():
    assert FederationConfig(intake_shards={"eu": 1}).digest() == FederationConfig().digest()
    assert FederationConfig(intake_shards={"eu": 2}).digest() != FederationConfig().digest()
    assert FederationConfig(intake_shards={"eu": 3}).shards_of("eu") == 3
    assert FederationConfig().shards_of("eu") == 1


@pytest.mark.parametrize(("extra", "names"), [
    ({"fedsa_lora": {"compression": {"method": "randk", "ratio": 0.5},
                     "privacy": {"secure_aggregation": {"enable": True}}}},
     "secure_aggregation"),
    ({"round_policy": {"aggregation": {"rule": "median"}}}, "rule median"),
    ({"round_policy": {"mode": "async"}}, "mode sync"),
])
def test_what_several_intake_processes_cannot_do_is_refused_by_name(extra, names):
    with pytest.raises(ConfigError, match=rf"intake_shards \(eu > 1\).*{names}"):
        federation_config_from({"intake_shards": {"eu": 2}, **extra})
    federation_config_from({"intake_shards": {"eu": 1}, **extra})  # one process: as before


@pytest.mark.parametrize(("shards", "names"), [
    ({"eu": 0}, r"intake_shards\.eu: 0 not in"), ({"eu": 65}, r"intake_shards\.eu: 65"),
    ({"e/u": 2}, r"intake_shards: region 'e/u'"),
])
def test_bad_intake_shards_are_named(shards, names):
    with pytest.raises(ConfigError, match=names):
        federation_config_from({"intake_shards": shards})


# ---------------------------------------------------------------------- processes
def announcement(clients: list[str], shards: int = 2) -> Event:
    cfg = FederationConfig.model_validate({"federation": {"name": "f"},
                                           "fedsa_lora": {"compression": {"method": "dense"}},
                                           "intake_shards": {"eu": shards}})
    header = AnnounceHeader(federation="f", round=1, version=0, status="running",
                            selected={"eu": clients}, config=cfg.model_dump(mode="json"),
                            config_hash=cfg.digest(), deadline_s=600, issued_at=time.time(),
                            shared=sorted(SHAPES))
    payload = encode_message(header, {n: torch.zeros(s) for n, s in SHAPES.items()})
    return Event("announce", T.announce, payload, time.time())


def worker_partial(worker: int, seq: int, ids: list[str], value: float, final: bool = True,
                   rnd: int = 1) -> Event:
    header = PartialHeader(federation="f", round=rnd, region="eu", base_version=0, seq=seq,
                           final=final, count=len(ids), weight=2.0 * len(ids), accepted=ids,
                           bytes_in=10, worker=worker)
    sums = {n: torch.full(s, value) for n, s in SHAPES.items()}
    return Event("worker_partial", T.intake_partial("eu", worker),
                 encode_message(header, sums), time.time())


def acks(session: RecordingSession, topic: str) -> list[Ack]:
    return [Ack.model_validate(json.loads(p)) for t, p in session.raw if t == topic]


def test_an_intake_process_serves_its_shard_and_tags_its_partials(tmp_path: Path):
    session = RecordingSession()
    clients = [f"d{i}" for i in range(8)]
    mine = [c for c in clients if intake_shard(c, 2) == 1]
    worker = IntakeWorker("mqtt://x:1", "f", "eu", 1, 2, tmp_path,
                          session=session)  # type: ignore[arg-type]
    worker.subscribe()
    assert set(session.subscribed) >= {T.update_filter("eu", 1), T.intake_ack("eu", 1)}
    assert T.update_filter("eu") not in session.subscribed
    assert worker.status_topic() == T.intake_status("eu", 1)
    worker.handle(announcement(clients))
    assert worker.intake.rounds[1].selected == mine  # its quorum is its devices'
    other = next(c for c in clients if c not in mine)
    assert worker.update_topic_ok(T.update("eu", mine[0], 1), mine[0])
    assert not worker.update_topic_ok(T.update("eu", other, 1), other)  # not its device
    assert not worker.update_topic_ok(T.update("eu", mine[0]), mine[0])  # no shard level
    [(header, _)] = worker.flush(final=True)
    assert header.worker == 1 and header.pid == "eu/1:1:0"


def test_the_leader_merges_each_partial_once_and_forwards_one(tmp_path: Path):
    session = RecordingSession()
    clients = ["a", "b", "c", "d"]
    leader = RegionLeader("mqtt://x:1", "f", "eu", 2, tmp_path,
                          session=session)  # type: ignore[arg-type]
    leader.handle(announcement(clients))
    leader.handle(worker_partial(0, 0, ["a:1", "b:1"], 1.5))
    leader.handle(worker_partial(0, 0, ["a:1", "b:1"], 1.5))  # a resend
    leader.handle(worker_partial(1, 0, ["c:1"], 0.25, final=False, rnd=2))  # not announced
    leader.after_batch()
    assert [(a.id, a.accepted, a.reason) for a in acks(session, T.intake_ack("eu", 0))] == [
        ("eu/0:1:0", True, None), ("eu/0:1:0", True, "duplicate")]
    assert acks(session, T.intake_ack("eu", 1)) == []  # resent until round 2 is announced
    assert not session.published  # one process's final is not the region's quorum
    # a restarted leader has what it acknowledged
    again = RegionLeader("mqtt://x:1", "f", "eu", 2, tmp_path,
                         session=RecordingSession())  # type: ignore[arg-type]
    assert again.taken == {"eu/0:1:0"} and again.worker_finals == {(1, 0)}
    assert again.pending[0].total.count == 2
    leader.handle(worker_partial(1, 0, ["c:1"], 0.25, final=False))
    assert not session.published  # d is still awaited
    leader.handle(worker_partial(1, 1, [], 0.0))  # process 1 closes: both finals are in
    [(topic, payload)] = session.published
    header, env = decode_message(PartialHeader, payload, max_bytes=1_000_000)
    assert topic == T.partial("eu") and header.worker is None
    assert (header.pid, header.final, header.count, header.weight) == ("eu:1:0", True, 3, 6.0)
    assert header.accepted == ["a:1", "b:1", "c:1"] and header.bytes_in == 30
    for n, s in SHAPES.items():
        assert torch.equal(env.tensors[n], torch.full(s, 1.75))
