"""Light devices: many devices in one process that join like real ones but train nothing,
to load the hubs and the broker with a federation's real traffic (``edge-client load``).

Each light device is a device on the wire: its own MQTT session (paho, a persistent session
with the client id ``dev-FEDERATION-CLIENT`` and the offline presence as its will), an
online presence with a session id on every connect, the retained round announcement, the
selection in it, one update per selected round published with QoS 1 and resent with the
device's backoff (edge_client/resend.py) until its regional hub acknowledges it, and its
exit when the federation finishes.  What it sends is a real update: a seeded random delta
(normal, ``scale`` standard deviation) of the round's shared tensors at their announced
shapes, built by ``prepare_update`` (edge_client/update_build.py, what a real device uses:
DP, the announced codec, the header) and serialised by the wire's ``encode_message``.

What it leaves out, because it has no model and no data: training, evaluation and metrics
reports (hubs do not need them; a scenario report of a load run has no accuracy), the codec's
error-feedback residual (kept by a real device between rounds: one model's worth of memory
per device), state on disk (a restarted load run starts fresh), the regional hub's status
(a real device only warns when none serves) and secure aggregation (a light device sits
such rounds out, saying why).

Why light devices do not each have a thread of their own: a process hosts thousands of them.
Their sessions (``LoopSession``, the same configuration as a real device's ``MqttSession``)
share one network thread and one epoll selector (fedsa_common/net/session_loop.py), so a
process holds as many as its file-descriptor limit allows (fedsa_common/net/fd_limit.py
raises the soft limit to the hard one where needed, and refuses by name what cannot fit),
where paho's thread per session, watching with select(), stopped at ~330.  The network
thread only reads and queues: an announcement is decoded once per process
(``Announcements``: the same payload reaches every device), and updates are built and
published by a small pool of worker threads (``LightHost``), which also resends what is
unacknowledged.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from edge_client.resend import backoff_after
from edge_client.round_hooks import NO_HOOKS
from edge_client.state_lock import DuplicateClientId
from edge_client.update_build import Draft, prepare_update, round_seed
from fedsa_common.federation.config import FederationConfig, announced_config
from fedsa_common.net.broker_auth import BrokerAuth
from fedsa_common.net.fd_limit import ensure_sessions_fit
from fedsa_common.net.session_loop import LoopSession, SessionLoop
from fedsa_common.net.transport import Will
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import (
    Ack,
    AnnounceHeader,
    Presence,
    Topics,
    announced_shapes,
    check_name,
    decode_json,
    decode_message,
    encode_json,
    encode_message,
)

log = logging.getLogger("fedsa.device.light")

MAX_ANNOUNCE_BYTES = 64_000_000  # as a real device (edge_client/device.py)
DEFAULT_SCALE = 1e-3  # of the synthesised deltas: well inside any configured norm bound
TICK_S = 0.25  # how often the host looks for updates due for a resend


@dataclass(frozen=True)
class LightSpec:
    """One light device: who it is, and the sample count its updates declare (their
    weight in the region's sum)."""

    federation: str
    region: str
    client: str
    samples: int = 10


@dataclass(frozen=True)
class Synthesised:
    """The training figures of a synthesised update (``TrainFigures``): no loss, no time,
    no importance report."""

    loss: float | None = None
    seconds: float = 0.0
    importance: Mapping[str, float] | None = None


SYNTHESISED = Synthesised()


def synthetic_delta(shapes: Mapping[str, tuple[int, ...]], seed: int, scale: float
                    ) -> dict[str, torch.Tensor]:
    """A seeded normal delta (standard deviation ``scale``) of every tensor in ``shapes``:
    the same for the same seed, so a replayed round sends the same update."""
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(shapes[n], generator=gen) * scale for n in sorted(shapes)}


@dataclass(frozen=True)
class Round:
    """A decoded announcement, as every light device of a process reads it."""

    header: AnnounceHeader
    config: FederationConfig
    shapes: dict[str, tuple[int, ...]]  # the shared tensors' announced shapes


class Announcements:
    """Decodes each distinct announcement payload once per process.

    Every device of the host receives the same retained announcement on its own session;
    decoding it (safetensors, the configuration's validation) once instead of per device
    keeps the host's work per round proportional to its updates.  Keyed by the payload's
    digest, so a different payload is never mistaken for a known one; keeps the last
    ``keep``."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self.lock = threading.Lock()
        self.known: OrderedDict[bytes, Round | WireError] = OrderedDict()
        self.decoded = 0  # payloads actually decoded (for tests and the host's log)

    def read(self, payload: bytes) -> Round:
        """The announcement in ``payload``; ``WireError`` when it does not decode or its
        configuration does not validate (the same error for every device receiving it)."""
        key = hashlib.blake2b(payload, digest_size=20).digest()
        with self.lock:
            got = self.known.get(key)
            if got is None:
                got = self._decode(payload)
                self.decoded += 1
                self.known[key] = got
                while len(self.known) > self.keep:
                    self.known.popitem(last=False)
        if isinstance(got, WireError):
            # a fresh error per device: raising the cached one again would chain every
            # device's traceback (and the payload in its frame) onto it
            raise WireError(got.reason, got.detail)
        return got

    @staticmethod
    def _decode(payload: bytes) -> Round | WireError:
        try:
            header, env = decode_message(AnnounceHeader, payload, max_bytes=MAX_ANNOUNCE_BYTES)
            config = announced_config(header)
            shapes = announced_shapes(header, env.tensors,
                                      config.transport.max_message_bytes)
        except WireError as err:
            return err
        missing = [n for n in header.shared if n not in shapes]
        if missing and header.status == "running":
            return WireError("bad_header", f"no shape announced for {', '.join(missing)}")
        return Round(header, config, {n: shapes[n] for n in header.shared if n in shapes})


@dataclass
class _Pending:
    """The update a device has not seen acknowledged yet, and when it goes out again."""

    id: str
    round: int
    payload: bytes
    backoff: float
    next_at: float  # monotonic


class LightDevice:
    """One light device: its session and the state of its current update.  Built and run by
    ``LightHost``; its handlers run on the host's network thread, only read and hand work to
    the host."""

    def __init__(self, spec: LightSpec, host: LightHost) -> None:
        check_name("client id", spec.client)
        check_name("region", spec.region)
        self.spec = spec
        self.host = host
        self.topics = Topics(spec.federation)
        self.session_id = uuid.uuid4().hex[:16]
        self.started = time.time()
        self.last_round = 0
        self.pending: _Pending | None = None
        # where updates go: one level deeper when the announced configuration serves the
        # region with several intake processes (``intake_shards``)
        self.update_topic = self.topics.update(spec.region, spec.client)
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.duplicate: str | None = None  # a hub's word that this client id runs twice
        offline = self.presence(online=False)
        self.session = LoopSession(
            host.broker_url, client_id=f"dev-{spec.federation}-{spec.client}",
            loop=host.loop, payload_limit=host.payload_limit,
            will=Will(self.topics.presence(spec.region, spec.client), encode_json(offline)),
            on_connect=self._on_connect, auth=host.auth)
        self.session.subscribe(self.topics.announce, self._on_announce)
        self.session.subscribe_raw(self.topics.ack(spec.region, spec.client), self._on_ack)

    def presence(self, online: bool) -> Presence:
        return Presence(client=self.spec.client, region=self.spec.region, online=online,
                        ts=time.time(), session=self.session_id, since=self.started)

    # network thread ---------------------------------------------------------------------
    def _on_connect(self) -> None:
        """Say online on every (re)connect (on the network thread publishing only queues)."""
        self.session.publish_raw(self.topics.presence(self.spec.region, self.spec.client),
                                 encode_json(self.presence(online=True)), retain=True)

    def _on_announce(self, _topic: str, payload: bytes) -> None:
        if not payload:
            return
        try:
            rnd = self.host.announcements.read(payload)
        except WireError as err:
            log.warning("%s: ignored bad announcement: %s", self.spec.client, err)
            return
        header = rnd.header
        if header.federation != self.spec.federation:
            return
        if header.status == "finished":
            self.done.set()
            self.host.wake.set()
            return
        if (header.round <= self.last_round
                or self.spec.client not in header.selected.get(self.spec.region, [])):
            return
        self.last_round = header.round
        self.host.submit(lambda: self.send_round(rnd))

    def _on_ack(self, _topic: str, payload: bytes) -> None:
        try:
            ack = decode_json(Ack, payload)
        except WireError as err:
            log.warning("%s: ignored bad ack: %s", self.spec.client, err)
            return
        if ack.kind == "duplicate":
            if ack.session == self.session_id and self.duplicate is None:
                self.duplicate = ack.reason or f"client id {self.spec.client!r} is in use"
                self.host.wake.set()
            return
        with self.lock:
            if self.pending is None or ack.id != self.pending.id:
                return
            round_ = self.pending.round
            self.pending = None
        self.host.count(round_, "accepted" if ack.accepted else f"refused.{ack.reason}")

    # worker threads ---------------------------------------------------------------------
    def send_round(self, rnd: Round) -> None:
        """Build the round's update from a synthesised delta and publish it (QoS 1); kept
        for resending until acknowledged."""
        header, config = rnd.header, rnd.config
        self.update_topic = self.topics.device_update(self.spec.region, self.spec.client,
                                                      config.shards_of(self.spec.region))
        if config.fedsa_lora.privacy.secure_aggregation.enable:
            self.host.count(header.round, "skipped.secure_aggregation")
            log.warning("%s: sat out round %d: light devices do not take part in secure "
                        "aggregation", self.spec.client, header.round)
            return
        seed = round_seed(config.federation.seed, self.spec.client, header.round)
        delta = synthetic_delta(rnd.shapes, seed, self.host.scale)
        prepared = prepare_update(Draft(delta, self.spec.samples), header, config,
                                  federation=self.spec.federation, client=self.spec.client,
                                  region=self.spec.region, residual=None,
                                  result=SYNTHESISED, hooks=NO_HOOKS)
        payload = encode_message(prepared.header, prepared.encoded.tensors)
        backoff = config.round_policy.resend_s
        with self.lock:  # before publishing: the acknowledgement may come at once
            self.pending = _Pending(prepared.header.update_id, header.round, payload, backoff,
                                    time.monotonic() + backoff)
        self.host.count(header.round, "sent")
        self.publish(payload)

    def resend_if_due(self, now: float) -> bytes | None:
        """The update to send again when its time came (and the next time set), else None."""
        p = self.pending  # a read without the lock first: most devices have nothing due
        if p is None or now < p.next_at:
            return None
        with self.lock:
            p = self.pending
            if p is None or now < p.next_at:
                return None
            p.backoff, wait = backoff_after(p.backoff)
            p.next_at = now + wait
            self.host.count(p.round, "resent")
            return p.payload

    def publish(self, payload: bytes) -> None:
        try:
            self.session.publish(self.update_topic, payload, timeout=30)
        except (TimeoutError, ConnectionError) as err:  # resent with backoff
            log.info("%s: update not acknowledged by the broker yet: %s", self.spec.client,
                     err)

    def leave(self) -> None:
        """Say offline (the presence stays the other copy's when a hub said this client id
        runs twice) and close the session."""
        try:
            if self.duplicate is None and self.session.connected:
                self.session.publish_raw(
                    self.topics.presence(self.spec.region, self.spec.client),
                    encode_json(self.presence(online=False)), retain=True, timeout=10)
        except (TimeoutError, ConnectionError) as err:
            log.info("%s: offline presence not published: %s", self.spec.client, err)
        self.session.close()


@dataclass
class RoundCounts:
    """What this host's devices did in one round."""

    selected_at: float
    counts: Counter[str] = field(default_factory=Counter)
    reported: bool = False


class LightHost:
    """Hosts light devices in this process: connects them, builds and publishes their
    updates on ``workers`` threads, resends what is unacknowledged, and logs per round how
    many updates were sent and acknowledged."""

    def __init__(self, specs: Sequence[LightSpec], broker_url: str, *,
                 auth: BrokerAuth | None = None, payload_limit: int = 1_000_000,
                 workers: int = 4, scale: float = DEFAULT_SCALE) -> None:
        if not specs:
            raise ValueError("no light devices to host")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, not {workers}")
        ensure_sessions_fit(len(specs), what="light devices (an MQTT session each)")
        self.broker_url = broker_url
        self.auth = auth
        self.payload_limit = payload_limit
        self.scale = scale
        self.announcements = Announcements()
        self.work: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self.wake = threading.Event()  # a device finished or was told to leave
        self.lock = threading.Lock()
        self.rounds: dict[int, RoundCounts] = {}
        self.workers = [threading.Thread(target=self._work, name=f"light-worker-{i}",
                                         daemon=True) for i in range(workers)]
        self.loop = SessionLoop(name="light-devices-net")
        self.devices = [LightDevice(spec, self) for spec in specs]

    def submit(self, job: Callable[[], None]) -> None:
        self.work.put(job)

    def count(self, round_: int, what: str) -> None:
        with self.lock:
            entry = self.rounds.setdefault(round_, RoundCounts(time.monotonic()))
            entry.counts[what] += 1

    def totals(self) -> Counter[str]:
        """Sent, resent, accepted and refused (by reason) updates over all rounds."""
        total: Counter[str] = Counter()
        with self.lock:
            for entry in self.rounds.values():
                total.update(entry.counts)
        return total

    def _work(self) -> None:
        while (job := self.work.get()) is not None:
            try:
                job()
            except Exception:  # one device's failure must not stop the others' work
                log.exception("light device work failed")

    def run(self, *, connect_timeout_s: float = 600.0, report_every_s: float = 30.0) -> int:
        """Connect every device, serve rounds until the federation finishes, leave.

        Returns 0, or 1 when a device's update went unacknowledged at the end.  Raises
        ``BrokerUnreachable`` when a device cannot connect within ``connect_timeout_s``, and
        ``DuplicateClientId`` when a hub said one of the client ids runs in another session
        too (another load process with the same ``--client-prefix``, or a real device)."""
        for t in self.workers:
            t.start()
        try:
            self._connect_all(connect_timeout_s, report_every_s)
            log.info("%d light devices connected to %s", len(self.devices),
                     self.devices[0].session.broker_url)
            return self._serve()
        finally:
            for _ in self.workers:
                self.work.put(None)
            with ThreadPoolExecutor(max_workers=min(32, len(self.devices))) as pool:
                list(pool.map(LightDevice.leave, self.devices))
            if not self.loop.close(timeout=30.0):
                log.warning("%d light devices had not closed their sessions after 30 s; "
                            "cut", self.loop.sessions)

    def _connect_all(self, timeout: float, report_every_s: float) -> None:
        """Start every session (the loop paces the connection attempts), then wait for each
        in turn; the first ``BrokerUnreachable`` is raised."""
        for device in self.devices:
            device.session.start()
        deadline = time.monotonic() + timeout
        for device in self.devices:
            device.session.await_connected(max(0.1, deadline - time.monotonic()),
                                           report_every_s=report_every_s)

    def _serve(self) -> int:
        while True:
            self.wake.wait(TICK_S)
            self.wake.clear()
            now = time.monotonic()
            for device in self.devices:
                payload = device.resend_if_due(now)
                if payload is not None:
                    self.submit(lambda d=device, p=payload: d.publish(p))
            self._report()
            duplicate = next((d for d in self.devices if d.duplicate is not None), None)
            if duplicate is not None:
                err = DuplicateClientId(duplicate.duplicate or duplicate.spec.client)
                err.option = "--client-prefix"
                raise err
            if all(d.done.is_set() for d in self.devices):
                break
        self._report(final=True)
        unacknowledged = [d.spec.client for d in self.devices if d.pending is not None]
        if unacknowledged:
            log.warning("the federation finished with %d updates unacknowledged (%s)",
                        len(unacknowledged), ", ".join(unacknowledged[:5]))
        return 1 if unacknowledged else 0

    def _report(self, final: bool = False) -> None:
        """Log each round once all its updates sent here were acknowledged (or at the end)."""
        with self.lock:
            for rnd, entry in sorted(self.rounds.items()):
                c = entry.counts
                answered = c["accepted"] + sum(v for k, v in c.items()
                                               if k.startswith("refused."))
                if entry.reported or not (final or (c["sent"] and answered >= c["sent"])):
                    continue
                entry.reported = True
                refused = {k.removeprefix("refused."): v for k, v in c.items()
                           if k.startswith("refused.")}
                log.info("round %d: %d updates sent, %d accepted%s, %d resent, in %.1fs",
                         rnd, c["sent"], c["accepted"],
                         f", refused {refused}" if refused else "", c["resent"],
                         time.monotonic() - entry.selected_at)


def light_specs(federation: str, regions: Mapping[str, int], *, prefix: str = "load-",
                samples: int = 10) -> list[LightSpec]:
    """``regions[R]`` light devices in each region R, client ids ``PREFIX R-0000``, ...;
    a different prefix per process keeps the ids of several load processes apart."""
    return [LightSpec(federation, region, f"{prefix}{region}-{i:04d}", samples)
            for region, n in regions.items() for i in range(n)]


def run_light_devices(specs: Sequence[LightSpec], broker_url: str, *,
                      auth: BrokerAuth | None = None, payload_limit: int = 1_000_000,
                      workers: int = 4, scale: float = DEFAULT_SCALE,
                      connect_timeout_s: float = 600.0, report_every_s: float = 30.0) -> int:
    """Host ``specs`` as light devices until the federation finishes; the exit status."""
    host = LightHost(specs, broker_url, auth=auth, payload_limit=payload_limit,
                     workers=workers, scale=scale)
    return host.run(connect_timeout_s=connect_timeout_s, report_every_s=report_every_s)
