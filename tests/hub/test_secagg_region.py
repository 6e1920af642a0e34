"""The regional hub's secure-aggregation driver and the device driver over a real broker
(Mosquitto if installed, else the embedded one), without a model: the real ``RegionalHub``
runs in a thread, the test plays the cloud (announcements, reading partials), and scripted
devices run the real ``DeviceSecAgg`` with synthetic deltas in their own MQTT sessions.

Devices carry signing identities certified by one provisioning authority, so every round
here runs the signed protocol with its consistency check.  Round 1 loses too many devices
after the key exchange: the region's round fails, only an empty final partial is
forwarded, and the hub keeps serving.  Round 2 completes and its partial is the plain
weighted sum.  Plain updates are refused in secure rounds.  A hub given the authority's
public key leaves a device whose certificate is another authority's out of the roster, and
its round goes on with the others.  A second test plays a hostile
hub over the real broker: a device refuses its roster of forged keys, or of members the
announcement did not select, and shares nothing.
"""

from __future__ import annotations

import queue
import threading
import time

import pytest
import torch

from edge_client.secagg_client import DeviceSecAgg
from fedsa_common.federation.config import FederationConfig
from fedsa_common.net.transport import MqttSession, Will
from fedsa_common.privacy.secagg import params as secagg_params_module
from fedsa_common.privacy.secagg import wire
from fedsa_common.privacy.secagg.config_check import secagg_params
from fedsa_common.privacy.secagg.identity import Authority
from fedsa_common.privacy.secagg.messages import Roster, ShareKeys
from fedsa_common.privacy.secagg.protocol import SecAggClient
from fedsa_common.privacy.secagg.vector import gather, scatter
from fedsa_common.wire.codecs.common import EncodedDelta
from fedsa_common.wire.envelope import Envelope
from fedsa_common.wire.protocol import (
    Ack,
    AnnounceHeader,
    PartialHeader,
    Presence,
    Topics,
    UpdateHeader,
    decode_json,
    decode_message,
    encode_json,
    encode_message,
)
from hub.regional import RegionalHub
from tests.support.secagg import deal_off_polynomial

pytestmark = pytest.mark.integration

FED = "sa"
REGION = "r1"
SHAPES = {"m.0.lora_A.weight": (4, 24), "m.1.lora_A.weight": (4, 24)}
CONFIG = FederationConfig.model_validate({
    "federation": {"name": FED, "seed": 2},
    "fedsa_lora": {"compression": {"method": "randk", "ratio": 0.25},
                   "privacy": {"secure_aggregation": {"enable": True}}},
    "round_policy": {"deadline_s": 60, "resend_s": 1.0},
})
#: the same with ``verifiable_shares: false``: devices learn it from the announcement only
NO_VSS = FederationConfig.model_validate({**CONFIG.model_dump(mode="json"), "fedsa_lora": {
    **CONFIG.model_dump(mode="json")["fedsa_lora"],
    "privacy": {"secure_aggregation": {"enable": True, "verifiable_shares": False}}}})
AUTHORITY = Authority.generate()  # what `hub provision` holds
STALE_AUTHORITY = Authority.generate()  # one that an earlier provisioning directory held


class ScriptedDevice:
    """A device without a model: real session, real secure-aggregation driver."""

    def __init__(self, url: str, client: str, authority: Authority = AUTHORITY,
                 driver: type[DeviceSecAgg] = DeviceSecAgg) -> None:
        topics = Topics(FED)
        self.client, self.topics = client, topics
        offline = Presence(client=client, region=REGION, online=False)
        self.session = MqttSession(url, client_id=f"dev-{client}",
                                   will=Will(topics.presence(REGION, client),
                                             encode_json(offline)))
        self.gone = threading.Event()
        self.secagg = driver(self.session, topics, client, REGION, FED, self.gone,
                             authority.issue(FED, REGION, client))
        self.acks: queue.Queue[Ack] = queue.Queue()
        self.session.subscribe_raw(topics.ack(REGION, client),
                                   lambda _t, p: self.acks.put(decode_json(Ack, p)))
        self.session.connect()
        g = torch.Generator().manual_seed(sum(map(ord, client)))
        self.delta = {n: torch.randn(s, generator=g) * 0.05 for n, s in SHAPES.items()}
        self.samples = 10 + len(client)
        self.began = False

    def play(self, header: AnnounceHeader, env: Envelope, vanish: bool,
             stop: threading.Event) -> None:
        # the configuration as a real device has it: from the announcement
        self.began = self.secagg.begin(header, FederationConfig.model_validate(header.config),
                                       env)
        if vanish:
            self.gone.set()
            self.session.drop()  # the broker publishes the offline will
            return
        if not self.began:
            return  # it sits the round out, as a real device does
        update = UpdateHeader(federation=FED, round=header.round, client=self.client,
                              region=REGION, base_version=header.version, codec="randk",
                              num_samples=self.samples)
        update, enc = self.secagg.masked_update(update, EncodedDelta({}, {}, {}), self.delta,
                                                None)
        self.session.publish(self.topics.update(REGION, self.client),
                             encode_message(update, enc.tensors))
        while not stop.is_set():
            self.secagg.poll()
            time.sleep(0.1)


def announce(session: MqttSession, rnd: int, selected: list[str], status: str = "running",
             config: FederationConfig = CONFIG) -> tuple[AnnounceHeader, Envelope]:
    header = AnnounceHeader(federation=FED, round=rnd, version=rnd - 1, status=status,
                            selected={REGION: selected}, config=config.model_dump(mode="json"),
                            config_hash=config.digest(), deadline_s=60.0,
                            issued_at=time.time(), shared=sorted(SHAPES))
    tensors = {n: torch.zeros(s) for n, s in SHAPES.items()}
    session.publish(Topics(FED).announce, encode_message(header, tensors), retain=True)
    return header, Envelope(header.model_dump(mode="json"), tensors)


def wait_partial(partials: queue.Queue, rnd: int, timeout: float = 60.0
                 ) -> tuple[PartialHeader, dict[str, torch.Tensor]]:
    until = time.time() + timeout
    while time.time() < until:
        try:
            header, tensors = partials.get(timeout=1.0)
        except queue.Empty:
            continue
        if header.round == rnd and header.final:
            return header, tensors
    raise AssertionError(f"no final partial for round {rnd}")


class GarbageDealer(DeviceSecAgg):
    """A real device driver that sends every other member garbage share ciphertexts (its
    commitments and its own share stay honest)."""

    def _send(self, r, stage, msg):  # type: ignore[no-untyped-def]
        if isinstance(msg, ShareKeys):
            msg = ShareKeys(msg.client, {v: bytes(len(ct)) if v != self.client else ct
                                         for v, ct in msg.ciphertexts.items()},
                            msg.commitments, msg.vss)
        super()._send(r, stage, msg)


class OffPolynomialDealer(DeviceSecAgg):
    """A real device driver whose shares for every other member authenticate and match
    its SHA-256 commitments but lie off the polynomial of its Feldman commitments."""

    def _send(self, r, stage, msg):  # type: ignore[no-untyped-def]
        if isinstance(msg, ShareKeys):
            msg = deal_off_polynomial(r.client, msg, set(msg.ciphertexts) - {self.client})
        super()._send(r, stage, msg)


def run_round(url: str, cloud: MqttSession, rnd: int, names: list[str], vanish: set[str],
              selected: list[str] | None = None, stale: frozenset[str] = frozenset(),
              garbage: frozenset[str] = frozenset(), dealer: type[DeviceSecAgg] = GarbageDealer,
              config: FederationConfig = CONFIG
              ) -> tuple[list[ScriptedDevice], list[threading.Thread], threading.Event]:
    """``stale``: devices certified by another authority (an earlier provisioning's);
    ``garbage``: devices that deal bad shares (as ``dealer`` does)."""
    devices = [ScriptedDevice(url, c, STALE_AUTHORITY if c in stale else AUTHORITY,
                              dealer if c in garbage else DeviceSecAgg)
               for c in names]
    header, env = announce(cloud, rnd, selected or names, config=config)
    stop = threading.Event()
    threads = [threading.Thread(target=d.play, args=(header, env, d.client in vanish, stop))
               for d in devices]
    for t in threads:
        t.start()
    return devices, threads, stop


def serve_region(url: str, state_dir, authority: bytes | None = None
                 ) -> tuple[RegionalHub, threading.Thread, MqttSession, queue.Queue]:
    """The real regional hub in a thread, and the test's cloud session that acknowledges
    each partial and queues it (header, tensors)."""
    hub = RegionalHub(url, FED, REGION, state_dir, secagg_authority=authority)
    hub_thread = threading.Thread(target=hub.run)
    hub_thread.start()
    cloud = MqttSession(url, client_id="test-cloud")
    partials: queue.Queue = queue.Queue()

    def on_partial(_topic: str, payload: bytes) -> None:
        header, env = decode_message(PartialHeader, payload, max_bytes=10_000_000)
        partials.put((header, env.tensors))
        ack = Ack(kind="partial", id=f"{REGION}:{header.round}:{header.seq}", accepted=True)
        threading.Thread(target=cloud.publish_raw,
                         args=(Topics(FED).partial_ack(REGION), encode_json(ack))).start()

    cloud.subscribe(Topics(FED).partial(REGION), on_partial)
    cloud.connect()
    time.sleep(1.0)  # the hub subscribes before the first announcement
    return hub, hub_thread, cloud, partials


def expected_sum(devices: list[ScriptedDevice], rnd: int) -> dict[str, torch.Tensor]:
    """The plain weighted sum of ``devices``' deltas as round ``rnd``'s codec sends them."""
    comp = CONFIG.fedsa_lora.compression
    params = comp.round_codec_params(CONFIG.federation.seed, rnd)
    expected = {n: torch.zeros(s, dtype=torch.float64) for n, s in SHAPES.items()}
    for d in devices:
        values = gather(d.delta, SHAPES, comp.codec, params)
        for n, t in scatter(values, SHAPES, comp.codec, params).items():
            expected[n] += d.samples * t
    return expected


def assert_partial_is_their_sum(header: PartialHeader, tensors: dict[str, torch.Tensor],
                                devices: list[ScriptedDevice], rnd: int, roster: int) -> None:
    """The partial's weight is ``devices``' samples and its tensors their plain weighted sum,
    within the fixed-point rounding of a ``roster``-member round."""
    assert header.weight == sum(d.samples for d in devices)
    expected = expected_sum(devices, rnd)
    fp = secagg_params(CONFIG).fixed_point(roster)
    tol = 4 / 2 ** (fp.frac_bits + 1) + 1e-6
    for n in SHAPES:
        assert torch.allclose(tensors[n].double(), expected[n], atol=tol)


def test_failed_round_forwards_nothing_and_the_next_round_sums(tmp_path, broker):
    hub, hub_thread, cloud, partials = serve_region(broker.url, tmp_path / "hub")
    everyone = []
    try:
        # round 1: 4 selected (threshold 3), 2 vanish after sharing keys -> too few inputs
        names = ["a1", "a2", "a3", "a4"]
        devices, threads, stop = run_round(broker.url, cloud, 1, names, {"a3", "a4"})
        everyone += devices
        header, tensors = wait_partial(partials, 1)
        assert header.count == 0 and header.accepted == [] and header.weight == 0
        assert all(float(t.abs().sum()) == 0 for t in tensors.values())
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert all(d.began for d in devices)  # all four took part in stages 0 and 1

        # round 2: b9 is selected but sends a plain update: refused, never folded in
        spoiler = ScriptedDevice(broker.url, "b9")
        everyone.append(spoiler)
        names = ["b1", "b2", "b3", "b4"]
        devices, threads, stop = run_round(broker.url, cloud, 2, names, set(),
                                           selected=[*names, "b9"])
        everyone += devices
        plain = UpdateHeader(federation=FED, round=2, client="b9", region=REGION,
                             base_version=1, codec="dense", num_samples=5)
        spoiler.session.publish(Topics(FED).update(REGION, "b9"),
                                encode_message(plain, spoiler.delta))
        ack = spoiler.acks.get(timeout=30)
        assert not ack.accepted and ack.reason == "wrong_codec"
        spoiler.session.drop()  # gone: the key stage does not wait for it
        header, tensors = wait_partial(partials, 2)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert header.count == 4 and header.accepted == ["b1:2", "b2:2", "b3:2", "b4:2"]
        assert_partial_is_their_sum(header, tensors, devices, 2, roster=4)
        assert hub.counters["secagg.failed"] == 1 and hub.counters["secagg.completed"] == 1
        assert hub.counters["secagg.failed.secagg_too_few"] == 1  # by reason, for metrics
        assert not any(k.startswith("secagg.excluded.") for k in hub.counters)  # all honest
        assert hub.counters["secagg.sent.survivors"] >= 4  # the consistency round ran
        assert all(d.secagg.counters == {} for d in devices)
    finally:
        announce(cloud, 2, [], status="finished")
        hub_thread.join(timeout=30)
        for d in everyone:
            d.session.close()  # a no-op for the ones that dropped
        cloud.close()
    assert not hub_thread.is_alive()


def test_the_hub_leaves_a_device_with_a_bad_certificate_out_and_the_round_goes_on(
        tmp_path, broker, caplog):
    """Issue 15: one device whose certificate is not the authority's (a credentials file
    kept from an earlier provisioning) used to enter the roster, every other member refused
    that roster, and the region lost its round.  The hub, given the authority's public key,
    now refuses that advertisement (counted, logged), the roster holds the other four, and
    the round's partial is their sum."""
    hub, hub_thread, cloud, partials = serve_region(broker.url, tmp_path / "hub",
                                                    AUTHORITY.public)
    names = ["c1", "c2", "c3", "c4", "c5"]
    devices, threads, stop = run_round(broker.url, cloud, 1, names, set(),
                                       stale=frozenset({"c3"}))
    try:
        header, tensors = wait_partial(partials, 1)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        honest = [d for d in devices if d.client != "c3"]
        assert header.count == 4 and header.accepted == ["c1:1", "c2:1", "c4:1", "c5:1"]
        assert_partial_is_their_sum(header, tensors, honest, 1, roster=4)
        assert hub.counters["secagg.excluded.secagg_unauthenticated"] == 1
        assert hub.counters["secagg.completed"] == 1
        assert "c3 left out of the secure round at stage keys: secagg_unauthenticated: " \
               "bad signature: certificate of c3" in caplog.text
        assert [d.began for d in devices] == [True, True, False, True, True]
        assert all(d.secagg.counters == {} for d in honest)  # nobody refused the roster
    finally:
        stop.set()
        announce(cloud, 1, [], status="finished")
        hub_thread.join(timeout=30)
        for d in devices:
            d.session.close()
        cloud.close()
    assert not hub_thread.is_alive()


@pytest.mark.parametrize(("dealer", "config", "vss_bound"), [
    (GarbageDealer, CONFIG, None), (OffPolynomialDealer, CONFIG, None),
    (GarbageDealer, NO_VSS, None), (GarbageDealer, CONFIG, 4)],
    ids=["garbage", "off_polynomial", "garbage_without_vss", "garbage_above_vss_bound"])
def test_a_device_dealing_garbage_shares_is_named_and_left_out_and_the_round_goes_on(
        tmp_path, broker, caplog, monkeypatch, dealer, config, vss_bound):
    """Issue 15, finding 4 from the dealer's side, over the real broker: one device sends
    every other member garbage share ciphertexts.  On 57270fd (and until now) each member
    then sat the round out and the region lost it, the hub unable to say why.  Now each
    member names that dealer in its share check; the hub leaves it out of the masking set,
    names it (log and ``secagg.excluded.secagg_bad_dealing``), and forwards the sum of the
    other four.  ``off_polynomial`` (issue 15, verifiable secret sharing): shares that
    decrypt and match their SHA-256 commitments but lie off the dealer's Feldman-committed
    polynomial, which before VSS no member could see and the unmasking failed on.
    ``garbage_without_vss``: the announced ``verifiable_shares: false`` reaches the
    devices (no commitments sent; the hub would refuse them) and the SHA-256 commitments
    still catch garbage.  ``garbage_above_vss_bound``: VSS configured on, but the roster
    of 5 is above the bound (lowered to 4 here): hub and devices both run the round
    without it, and the hub logs and counts that."""
    if vss_bound is not None:
        monkeypatch.setattr(secagg_params_module, "VSS_MAX_ROSTER", vss_bound)
    verifiable = config is CONFIG and vss_bound is None
    hub, hub_thread, cloud, partials = serve_region(broker.url, tmp_path / "hub",
                                                    AUTHORITY.public)
    names = ["g1", "g2", "g3", "g4", "g5"]
    devices, threads, stop = run_round(broker.url, cloud, 1, names, set(),
                                       garbage=frozenset({"g2"}), dealer=dealer, config=config)
    try:
        header, tensors = wait_partial(partials, 1)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        honest = [d for d in devices if d.client != "g2"]
        assert header.count == 4 and header.accepted == ["g1:1", "g3:1", "g4:1", "g5:1"]
        assert_partial_is_their_sum(header, tensors, honest, 1, roster=5)
        assert hub.counters["secagg.excluded.secagg_bad_dealing"] == 1
        assert hub.counters["secagg.completed"] == 1
        # reported only when configured on and left off for the roster's size
        assert hub.counters["secagg.without_vss"] == (vss_bound is not None)
        assert ("this round shares without verifiable secret sharing" in caplog.text) is (
            vss_bound is not None)
        assert all(bool(d.secagg.rounds[1].client._sent["share_keys"].vss) is verifiable
                   for d in honest)  # no commitments sent in a round without VSS
        assert ("g2 left out of the secure round at stage checks: secagg_bad_dealing: "
                "4 of 5 holders could not use its shares") in caplog.text
        assert [d.began for d in devices] == [True, False, True, True, True]
        assert devices[1].secagg.counters["secagg.secagg_excluded"] == 1
        assert all(d.secagg.counters == {"secagg.rejected_dealer": 1} for d in honest)
    finally:
        stop.set()
        announce(cloud, 1, [], status="finished")
        hub_thread.join(timeout=30)
        for d in devices:
            d.session.close()
        cloud.close()
    assert not hub_thread.is_alive()


@pytest.mark.parametrize("how", ["rogue_authority", "not_selected"])
def test_device_refuses_a_forged_roster_from_whoever_publishes_as_the_hub(broker, caplog, how):
    """Issue 15, finding 2, over the real broker: the test publishes as the hub and answers
    a device's signed advertisement with a roster whose other entries are keys it made
    (``rogue_authority``: certified by an authority of its own, all four selected), or
    entries of accomplices with genuine certificates that the announcement did not select
    (``not_selected``).  On 4a146b2 the device sent its shares encrypted to those keys;
    now it refuses the roster (counted, logged with the reason), publishes no shares and
    sits the round out."""
    hub = MqttSession(broker.url, client_id="fake-hub")
    ups: queue.Queue[tuple[str, bytes]] = queue.Queue()
    hub.subscribe(Topics(FED).secagg_up_filter(REGION), lambda t, p: ups.put((t, p)))
    hub.connect()
    victim = ScriptedDevice(broker.url, "v1")
    others = ("x1", "x2", "x3")
    selected = ["v1"] if how == "not_selected" else ["v1", *others]
    header = AnnounceHeader(federation=FED, round=1, version=0, status="running",
                            selected={REGION: selected}, config=CONFIG.model_dump(mode="json"),
                            config_hash=CONFIG.digest(), deadline_s=20.0,
                            issued_at=time.time(), shared=sorted(SHAPES))
    env = Envelope(header.model_dump(mode="json"),
                   {n: torch.zeros(s) for n, s in SHAPES.items()})
    result: list[bool] = []
    player = threading.Thread(target=lambda: result.append(victim.secagg.begin(header, CONFIG,
                                                                               env)))
    try:
        time.sleep(0.5)
        player.start()
        _topic, payload = ups.get(timeout=30)
        got, adv = wire.decode(payload, 10_000_000)
        assert got.stage == "advertise" and adv.auth is not None  # signed
        ctx = victim.secagg.rounds[1].ctx
        signer = AUTHORITY if how == "not_selected" else Authority.generate()
        keys, auth = {"v1": (adv.c_pk, adv.s_pk)}, {"v1": adv.auth}
        for c in others:
            fake = SecAggClient(ctx, c, identity=signer.issue(FED, REGION, c)).advertise()
            keys[c], auth[c] = (fake.c_pk, fake.s_pk), fake.auth
        roster = Roster(ctx.params.threshold(4), keys, auth)
        hub.publish(Topics(FED).secagg_down(REGION, "v1"),
                    wire.encode(FED, 1, REGION, "v1", "roster", roster))
        player.join(timeout=60)
        assert result == [False]
        assert victim.secagg.counters["secagg.secagg_unauthenticated"] == 1
        why = ("roster member x1 was not announced as selected" if how == "not_selected"
               else "bad signature: certificate of x1")
        assert f"round 1 without secure aggregation: secagg_unauthenticated: {why}" in (
            caplog.text)
        time.sleep(1.0)
        stages = []
        while not ups.empty():
            stages.append(wire.decode(ups.get()[1], 10_000_000)[0].stage)
        assert "share_keys" not in stages
    finally:
        victim.session.close()
        hub.close()


def test_device_without_an_identity_sits_secure_rounds_out_unless_it_opts_in(broker):
    """The decision documented in docs/security.md: no provisioned identity, no secure
    round, unless the device was started with the explicit unauthenticated opt-in."""
    session = MqttSession(broker.url, client_id="no-ident")
    session.connect()
    try:
        plain = DeviceSecAgg(session, Topics(FED), "n1", REGION, FED, threading.Event())
        header = AnnounceHeader(federation=FED, round=1, version=0, status="running",
                                selected={REGION: ["n1"]},
                                config=CONFIG.model_dump(mode="json"),
                                config_hash=CONFIG.digest(), deadline_s=1.0,
                                issued_at=time.time(), shared=sorted(SHAPES))
        env = Envelope(header.model_dump(mode="json"),
                       {n: torch.zeros(s) for n, s in SHAPES.items()})
        assert plain.begin(header, CONFIG, env) is False
        assert plain.counters["secagg.no_identity"] == 1 and not plain.rounds
        opted = DeviceSecAgg(session, Topics(FED), "n2", REGION, FED, threading.Event(),
                             allow_unauthenticated=True)
        assert opted.begin(header, CONFIG, env) is False  # no hub answers: times out
        assert opted.counters["secagg.no_identity"] == 0 and 1 in opted.rounds
    finally:
        session.close()
