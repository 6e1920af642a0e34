"""One device's session with the federation.

It learns the current round from the retained announcement, trains when selected, sends
the compressed delta of its shared parameters (QoS 1, identified by client and round so a
redelivery is harmless) and resends it with backoff until its regional hub acknowledges it,
evaluates its personalized model on its own test split, reports metrics, and persists its
local parameters and the unacknowledged update so a restart resumes where it stopped.

Under downlink deltas (edge_client/downlink.py) it follows every announcement, selected or
not: it applies the announced change to the global it holds, or fetches the full global
parameters retained on ``Topics.global_params`` when it cannot.  ``bytes_down`` in its
metrics counts every announcement and fetch payload it received since its last report.

A round's work is the sequence of named steps in edge_client/round_steps.py; this module
keeps what needs the device's session, state directory, data and shared model host.  What
a scenario simulates of a device (a poisoned update, slow compute and links, a link that
loses messages) comes in as its hooks (edge_client/round_hooks.py), its session may be
given (a test's recording fake), and hosting devices in a process is edge_client/worker.py.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from edge_client.causal import tokenize_pairs
from edge_client.data import DataSpec, DeviceData, load_device_data
from edge_client.downlink import HeldGlobal, check_fetched, from_announcement
from edge_client.host import ModelHost
from edge_client.memory import return_large_frees
from edge_client.microbatch import MicroBatchPlanner
from edge_client.personalize import finetune_local
from edge_client.progress import RoundProgress
from edge_client.resend import backoff_after
from edge_client.round_hooks import NO_HOOKS, RoundHooks
from edge_client.round_steps import (
    RoundPlan,
    next_state,
    own_shared_start,
    plan_round,
    round_metrics,
    score_model,
    shared_delta,
    start_model,
    train_shared,
)
from edge_client.secagg_client import DeviceSecAgg
from edge_client.snapshot import (
    load_held,
    model_info,
    save_global,
    save_held,
    saved_global,
    saved_info,
)
from edge_client.split_state import carry_residual, final_global, local_start
from edge_client.state import DeviceState, StateDir
from edge_client.state_lock import DuplicateClientId
from edge_client.training import TokenizedSplit, TrainResult, tokenize
from edge_client.update_build import Draft, prepare_update, round_seed
from fedsa_common.federation.config import FederationConfig, LoraInit, announced_config
from fedsa_common.net.broker_auth import BrokerAuth
from fedsa_common.net.transport import MqttSession, Will
from fedsa_common.privacy.secagg.identity import DeviceIdentity
from fedsa_common.wire.envelope import Envelope
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.liveness import Reminder, hub_serving
from fedsa_common.wire.protocol import (
    Ack,
    AnnounceHeader,
    GlobalHeader,
    Metrics,
    Presence,
    Topics,
    check_name,
    decode_json,
    decode_message,
    encode_json,
    encode_message,
)
from quant.adapters import AdapterModel, init_adapter_values

log = logging.getLogger("fedsa.device")


@dataclass(frozen=True)
class DeviceSpec:
    client: str
    region: str
    federation: str
    data: DataSpec
    state_dir: Path
    memory_mb: float | None = None  # peak-RSS budget for training (None: unlimited)
    auth: BrokerAuth | None = None  # broker credentials/TLS of this device (None: anonymous)
    # secure aggregation: the provisioned signing identity (from the credentials file), and
    # the explicit opt-in to take part without one (defends against a semi-honest hub only)
    secagg_identity: DeviceIdentity | None = None
    secagg_unauthenticated: bool = False
    # after this long without something it waits for (the broker, the federation's first
    # announcement, a serving hub for its region), the device says so
    report_every_s: float = 30.0
    connect_timeout_s: float = 600.0  # then BrokerUnreachable


class Abandoned(Exception):
    """The device went away (scenario churn) while it was working on a round."""


MAX_ANNOUNCE_BYTES = 64_000_000
FETCH_TIMEOUT_S = 30.0  # waiting for the retained full global of an announced version
# silence, in round deadlines, after which the retained announcement is read again; before
# the first announcement the default deadline counts
SILENCE_DEADLINES = 2
DEFAULT_SILENCE_S = SILENCE_DEADLINES * 300.0


@dataclass
class Tokenized:
    train: TokenizedSplit
    test: TokenizedSplit


class Device:
    """One device; ``hooks`` are what its host simulates of it (edge_client/round_hooks.py:
    none for a real device), ``session`` its MQTT session (built here when not given, e.g.
    a test's recording fake; a given one is expected to publish the device's offline will
    and to say nothing on connect)."""

    def __init__(self, spec: DeviceSpec, broker_url: str, host: ModelHost,
                 payload_limit: int = 1_000_000, *, hooks: RoundHooks = NO_HOOKS,
                 session: MqttSession | None = None) -> None:
        check_name("client id", spec.client)
        check_name("region", spec.region)
        self.spec = spec
        self.host = host
        self.hooks = hooks
        self.topics = Topics(spec.federation)
        # where updates go: one level deeper when the announced configuration serves the
        # region with several intake processes (``intake_shards``)
        self.update_topic = self.topics.update(spec.region, spec.client)
        self.store = StateDir(spec.state_dir, spec.client, spec.region, spec.federation)
        self.state: DeviceState = self.store.load()
        self.inbox: queue.Queue[tuple[bytes, float]] = queue.Queue()
        self.done = threading.Event()
        self.gone = threading.Event()  # vanished without saying goodbye (scenario churn)
        self.stopping = threading.Event()  # asked to leave cleanly (Ctrl-C, SIGTERM)
        # this start of the device, in its presence: a hub tells a restart (a new session)
        # from a second device with this client id (sessions that alternate)
        self.session_id = uuid.uuid4().hex[:16]
        self.started = time.time()
        self.duplicate: str | None = None  # a hub's word that this copy must leave
        self.acks: queue.Queue[Ack] = queue.Queue()
        self.pending = self.store.load_pending()
        self.pending_round = self.state.last_round
        self.resend_s = 5.0
        self.backoff = self.resend_s
        self.next_resend = time.monotonic() + self.resend_s
        self.data: DeviceData | None = None
        self.tokens: Tokenized | None = None
        self.planner = MicroBatchPlanner.for_budget(spec.memory_mb)  # learns across rounds
        if spec.memory_mb is not None:  # before the model loads (on the first round)
            return_large_frees()  # memory over CPU time, as the budget asks (memory.py)
        self.held: HeldGlobal | None = load_held(self.store.path)  # downlink deltas
        self.downlink = Counter[str]()  # how announced globals were obtained, and failures
        self.down_unreported = 0  # payload bytes received since the last metrics report
        self.progress = RoundProgress(spec.client)
        # the region's hub, from its retained status (set on the network thread): without
        # one the cloud never selects this device, which must then say why
        self.hub_serves: bool | None = None
        self.hub_missing_since: float | None = None
        self.hub_warned = False
        self.announced = False  # an announcement of the federation arrived (network thread)
        self.heard_at = time.monotonic()  # when one last arrived (or the announcements were
        self.silence_s = DEFAULT_SILENCE_S  # read again), and how long a silence may last
        self.federation_wait = Reminder(spec.report_every_s, time.monotonic())
        self.session = hooks.over_link(session if session is not None
                                       else self._own_session(broker_url, payload_limit))
        self.session.subscribe(self.topics.announce, self._on_announce)
        self.session.subscribe_raw(self.topics.ack(spec.region, spec.client), self._on_ack)
        self.session.subscribe_raw(self.topics.status("regional", spec.region),
                                   self._on_hub_status)
        self.secagg = DeviceSecAgg(self.session, self.topics, spec.client, spec.region,
                                   spec.federation, self.gone, spec.secagg_identity,
                                   spec.secagg_unauthenticated)

    def _own_session(self, broker_url: str, payload_limit: int) -> MqttSession:
        """The device's session: its will says it went offline, and it says it is online
        on every (re)connect."""
        spec = self.spec
        presence = self.topics.presence(spec.region, spec.client)
        offline = Presence(client=spec.client, region=spec.region, online=False,
                           session=self.session_id, since=self.started)
        return MqttSession(
            broker_url,
            client_id=f"dev-{spec.federation}-{spec.client}",
            payload_limit=payload_limit,
            will=Will(presence, encode_json(offline)),
            on_connect=self._on_connect,
            auth=spec.auth,
        )

    # network thread -------------------------------------------------------------------
    def _on_connect(self) -> None:
        online = Presence(client=self.spec.client, region=self.spec.region, online=True,
                          ts=time.time(), session=self.session_id, since=self.started)
        threading.Thread(target=self._publish_presence, args=(online,), daemon=True).start()

    def _publish_presence(self, presence: Presence) -> None:
        try:
            self.session.publish_raw(self.topics.presence(self.spec.region, self.spec.client),
                                     encode_json(presence), retain=True)
        except (TimeoutError, ConnectionError) as err:
            log.warning("%s: presence not published: %s", self.spec.client, err)

    def _on_announce(self, _topic: str, payload: bytes) -> None:
        if payload:
            self.announced = True
            self.heard_at = time.monotonic()
            self.inbox.put((payload, time.time()))

    def _on_hub_status(self, _topic: str, payload: bytes) -> None:
        try:
            self.hub_serves = hub_serving(payload)
        except WireError as err:
            log.warning("%s: ignored bad status of the regional hub: %s", self.spec.client, err)

    def _on_ack(self, _topic: str, payload: bytes) -> None:
        try:
            ack = decode_json(Ack, payload)
        except WireError as err:
            log.warning("%s: ignored bad ack: %s", self.spec.client, err)
            return
        if ack.kind != "duplicate":
            self.acks.put(ack)
        elif ack.session == self.session_id and self.duplicate is None:
            self.duplicate = ack.reason or f"client id {self.spec.client!r} is in use"
            self.stopping.set()  # the work thread leaves after its current step

    # work thread ----------------------------------------------------------------------
    def vanish(self) -> None:
        """Leave abruptly: in-flight work is abandoned and the broker publishes the will."""
        self.gone.set()

    def stop(self) -> None:
        """Leave cleanly after the current step: a round in training still sends its update
        (kept for resending if unacknowledged), then the device says it is offline."""
        self.stopping.set()

    def pause(self, seconds: float) -> None:
        """Sleep for simulated compute or link time; raises Abandoned if the device vanishes."""
        if seconds > 0 and self.gone.wait(seconds):
            raise Abandoned
        if self.gone.is_set():
            raise Abandoned

    def run(self) -> None:
        """Serve rounds until the federation announces it has finished (or the device goes).

        Raises ``BrokerUnreachable`` when the broker is not reached within the spec's
        ``connect_timeout_s`` (saying why every ``report_every_s`` meanwhile)."""
        self.session.connect(timeout=self.spec.connect_timeout_s,
                             report_every_s=self.spec.report_every_s)
        self.hub_missing_since = time.monotonic()
        self.federation_wait = Reminder(self.spec.report_every_s, time.monotonic())
        try:
            while not (self.done.is_set() or self.gone.is_set() or self.stopping.is_set()):
                self.report_waits(time.monotonic())
                self.reread_if_silent(time.monotonic())
                self.handle_acks()
                self.resend_pending()
                self.secagg.poll()  # e.g. answer a secure-aggregation unmasking request
                try:
                    payload, _ = self.inbox.get(timeout=0.5)
                except queue.Empty:
                    continue
                self.down_unreported += len(payload)
                while not self.inbox.empty():  # only the newest announcement matters
                    payload, _ = self.inbox.get_nowait()
                    self.down_unreported += len(payload)  # the others were downloaded too
                try:
                    header, env = decode_message(AnnounceHeader, payload,
                                                 max_bytes=MAX_ANNOUNCE_BYTES)
                    # a config that does not validate is bad input
                    config = announced_config(header)
                    self.update_topic = self.topics.device_update(
                        self.spec.region, self.spec.client, config.shards_of(self.spec.region))
                    self.silence_s = SILENCE_DEADLINES * header.deadline_s
                except WireError as err:
                    log.warning("%s: ignored bad announcement: %s", self.spec.client, err)
                    continue
                try:
                    tensors, fetched = self.sync_global(header, env)
                    if tensors is None and header.status == "running":
                        log.warning("%s: round %d: no global parameters of version %d; "
                                    "waiting for the next announcement", self.spec.client,
                                    header.round, header.version)
                        continue
                    self.on_round(header, Envelope(env.header, tensors or {}),
                                  len(payload) + fetched)
                except Abandoned:
                    log.info("%s: vanished during round %d; its work is lost", self.spec.client,
                             header.round)
                except WireError as err:  # e.g. an announced split this device refuses
                    log.warning("%s: sat out round %d: %s", self.spec.client, header.round, err)
        finally:
            if self.gone.is_set():
                self.session.drop()
            elif self.duplicate is not None:  # the presence is the other copy's to keep
                self.session.close()
            else:
                self._publish_presence(Presence(client=self.spec.client,
                                                region=self.spec.region, online=False,
                                                ts=time.time(), session=self.session_id,
                                                since=self.started))
                self.session.close()
        if self.duplicate is not None:
            raise DuplicateClientId(self.duplicate)

    def report_waits(self, now: float) -> None:
        """Say every ``report_every_s`` that no announcement of the federation came yet;
        warn once when no regional hub has served this device's region for that long (since
        connecting, or since its hub stopped), and say when one serves again."""
        if not self.announced and self.federation_wait.due(now):
            log.warning("%s: still waiting for federation %s on %s: no round announcement "
                        "yet (its cloud hub announces round 1 once min_clients devices are "
                        "online; check --federation; `hub status --federation %s` shows what "
                        "the broker holds)", self.spec.client, self.spec.federation,
                        self.session.broker_url, self.spec.federation)
        if self.hub_serves:
            if self.hub_warned:
                log.info("%s: the regional hub of region %s serves now", self.spec.client,
                         self.spec.region)
            self.hub_missing_since, self.hub_warned = None, False
            return
        if self.hub_missing_since is None:
            self.hub_missing_since = now
        if self.hub_warned or now - self.hub_missing_since < self.spec.report_every_s:
            return
        self.hub_warned = True
        why = ("its status says offline or finished" if self.hub_serves is False
               else f"no status on {self.topics.status('regional', self.spec.region)}")
        log.warning("%s: no regional hub serves region %s on %s (%s): the cloud does not "
                    "select this device until one does; start `hub serve --role regional "
                    "--region %s`, or check --region", self.spec.client, self.spec.region,
                    self.session.broker_url, why, self.spec.region)

    def reread_if_silent(self, now: float) -> None:
        """After ``silence_s`` without an announcement, subscribe to the announcements anew,
        so that the broker sends the retained one again.

        Why: an announcement lost on the way without the connection closing (a link that
        dropped it; a reconnect would subscribe again by itself) is never sent again, and a
        lost final one would leave the device waiting for ever for a federation that
        finished, without its final global parameters.  While rounds go on, each is
        announced within a deadline, so this does not happen then; when it does, the
        announcement read again is one the device may already have followed, which is
        harmless (a round is trained once)."""
        if now - self.heard_at < self.silence_s:
            return
        self.heard_at = now
        log.info("%s: no announcement for %.0fs; reading the retained one again",
                 self.spec.client, self.silence_s)
        try:  # unsubscribing first makes the session deliver a message it saw before
            self.session.unsubscribe(self.topics.announce, self._on_announce)
            self.session.subscribe(self.topics.announce, self._on_announce)
        except (TimeoutError, ConnectionError, RuntimeError) as err:
            log.warning("%s: announcements not read again: %s", self.spec.client, err)

    def on_round(self, header: AnnounceHeader, env: Envelope, bytes_down: int) -> None:
        """Follow one announcement: keep the final global and stop when the federation
        finished; train and send an update when selected for a round not yet trained."""
        if header.federation != self.spec.federation:
            return
        if header.status == "finished":
            self.finish(header, env)
            return
        if not selected(header, self.spec, self.state.last_round):
            return
        config = FederationConfig.model_validate(header.config)
        self.resend_s = config.round_policy.resend_s
        self.pause(self.hooks.delay("download", bytes_down))
        if not self.secagg.begin(header, config, env):  # secure aggregation: keys, shares
            self.pause(0.0)
            return
        # everything downloaded since the last report (run() counts it), or this round's
        payload, metrics = self.train_round(header, config, env,
                                            self.down_unreported or bytes_down)
        self.pause(self.hooks.delay("upload", len(payload)))
        self.send(header.round, payload, metrics)

    def finish(self, header: AnnounceHeader, env: Envelope) -> None:
        log.info("%s: federation finished at round %d%s", self.spec.client, header.round,
                 f" (downlink: {dict(self.downlink)})" if self.downlink else "")
        if env.tensors or not header.shared:  # under downlink deltas a fetch may fail
            self.keep_final_global(header, env)
        self.done.set()

    def send(self, round_: int, payload: bytes, metrics: Metrics) -> None:
        """Publish the round's update (kept for resending until acknowledged), then its
        metrics with the bytes sent.

        A publish the broker does not acknowledge in time (an outage longer than the
        timeout) is logged, not raised: raising would end the device's run, while the
        update is already kept as pending and the resends (``resend_pending``) carry it
        once the link is back."""
        self.pending, self.pending_round = payload, round_
        self.backoff = self.resend_s
        self.next_resend = time.monotonic() + self.backoff
        try:
            bytes_up = self.session.publish(
                self.update_topic, payload)
        except (TimeoutError, ConnectionError) as err:
            log.warning("%s: round %d update not acknowledged by the broker (%s); it is "
                        "resent until its hub acknowledges it", self.spec.client, round_, err)
            bytes_up = len(payload)  # handed to the link, and sent again later
        metrics = metrics.model_copy(update={"bytes_up": bytes_up})
        try:
            self.session.publish_raw(self.topics.metrics(self.spec.region, self.spec.client),
                                     encode_json(metrics))
        except (TimeoutError, ConnectionError) as err:
            log.warning("%s: round %d metrics not sent: %s", self.spec.client, round_, err)
        self.down_unreported = 0
        held_out = ("" if metrics.loss is None else
                    f", held-out loss {metrics.loss:.3f} (perplexity {metrics.perplexity:.4g})")
        log.info("%s: round %d trained (loss %.3f), %s %.3f%s, sent %d bytes",
                 self.spec.client, round_, metrics.train_loss or 0.0,
                 "accuracy" if metrics.loss is None else "exact match", metrics.accuracy,
                 held_out, bytes_up)

    # downlink deltas --------------------------------------------------------------------
    def sync_global(self, header: AnnounceHeader, env: Envelope
                    ) -> tuple[dict[str, torch.Tensor] | None, int]:
        """The announced version's global shared parameters and the payload bytes fetched
        for them: the announcement's own body without downlink deltas; under them the held
        copy, the held copy moved by the delta, or the retained full parameters (None when
        none arrived in time).  A bad delta is logged, counted and replaced by a fetch."""
        if header.federation != self.spec.federation or header.global_digest is None:
            return dict(env.tensors), 0
        try:
            tensors = from_announcement(header, env.tensors, self.held)
            if tensors is not None:
                self.downlink["held" if self.held is not None and self.held.is_version(header)
                              else "full" if not header.is_delta else "delta"] += 1
        except WireError as err:
            self.downlink["bad_delta"] += 1
            log.warning("%s: announced global of version %d not usable (%s); fetching the "
                        "full parameters", self.spec.client, header.version, err)
            tensors = None
        fetched = 0
        if tensors is None:
            held, fetched = self.fetch_global(header)
            self.down_unreported += fetched
            if held is None:
                self.downlink["fetch_failed"] += 1
                return None, fetched
            self.hold(held)
            self.downlink["fetched"] += 1
            if held.version != header.version:  # a newer one: this announcement is stale
                self.downlink["stale_announcement"] += 1
                return None, fetched
            tensors = dict(held.tensors)
        elif self.held is None or not self.held.is_version(header):
            assert header.global_digest is not None
            self.hold(HeldGlobal(header.version, header.config_hash, header.global_digest,
                                 tensors))
        return {n: t.clone() for n, t in tensors.items()}, fetched  # the held stay intact

    def hold(self, held: HeldGlobal) -> None:
        self.held = held
        save_held(self.store.path, held)

    def fetch_global(self, header: AnnounceHeader) -> tuple[HeldGlobal | None, int]:
        """Subscribe to the retained full global, wait (at most FETCH_TIMEOUT_S) for the
        announced version, unsubscribe.  Returns what arrived (a newer version too: the
        announcement was then stale) and the payload bytes received."""
        got: queue.Queue[bytes] = queue.Queue()

        def keep(_topic: str, payload: bytes) -> None:
            if payload:
                got.put(payload)

        received = 0
        found: HeldGlobal | None = None
        log.info("%s: fetching the full global parameters of version %d", self.spec.client,
                 header.version)
        try:
            self.session.subscribe(self.topics.global_params, keep)
            deadline = time.time() + FETCH_TIMEOUT_S
            while found is None or found.version < header.version:
                left = deadline - time.time()
                if left <= 0:
                    break
                self.pause(0.0)
                try:
                    payload = got.get(timeout=min(0.5, left))
                except queue.Empty:
                    continue
                received += len(payload)
                try:
                    g, genv = decode_message(GlobalHeader, payload,
                                             max_bytes=MAX_ANNOUNCE_BYTES)
                    candidate = check_fetched(header, g, genv.tensors)
                except WireError as err:
                    log.warning("%s: ignored bad full global: %s", self.spec.client, err)
                    continue
                if found is None or candidate.version > found.version:
                    found = candidate
        except (TimeoutError, ConnectionError) as err:
            log.warning("%s: full global not fetched: %s", self.spec.client, err)
        finally:
            try:
                self.session.unsubscribe(self.topics.global_params, keep)
            except (TimeoutError, ConnectionError, RuntimeError) as err:
                log.info("%s: unsubscribe from the full global failed: %s", self.spec.client,
                         err)
        if found is not None and found.version < header.version:
            log.warning("%s: only version %d of the full global arrived within %.0fs",
                        self.spec.client, found.version, FETCH_TIMEOUT_S)
            found = None
        return found, received

    def handle_acks(self) -> None:
        while not self.acks.empty():
            ack = self.acks.get_nowait()
            if self.pending is None or ack.id != f"{self.spec.client}:{self.pending_round}":
                continue
            if not ack.accepted:
                log.info("%s: hub refused update %s: %s", self.spec.client, ack.id, ack.reason)
            self.pending = None
            self.store.clear_pending()

    def resend_pending(self) -> None:
        """Resend the unacknowledged update with jittered exponential backoff; the hub counts
        an update id once, so resending is always safe."""
        if self.pending is None or time.monotonic() < self.next_resend:
            return
        try:
            self.session.publish(self.update_topic,
                                 self.pending, timeout=10)
            log.info("%s: re-sent update of round %d", self.spec.client, self.pending_round)
        except (TimeoutError, ConnectionError) as err:
            log.info("%s: resend failed: %s", self.spec.client, err)
        self.backoff, wait = backoff_after(self.backoff)
        self.next_resend = time.monotonic() + wait

    def load_data(self, num_labels: int, causal: bool = False) -> DeviceData:
        """The device's share, checked against the federation's model: prompt/response
        pairs for a causal model, labelled texts with no more labels than the head for a
        classifier."""
        if self.data is None:
            self.data = load_device_data(self.spec.data)
        if self.data.prompt_response != causal:
            have = ("prompt/response pairs (format=prompt_response)"
                    if self.data.prompt_response else "labelled texts")
            task = "causal_lm" if causal else "classification"
            raise ValueError(f"{self.spec.client}: --data holds {have}, but the federation's "
                             f"model.task is {task}")
        if not causal and self.data.num_labels > num_labels:
            raise ValueError(f"{self.spec.client}: data has {self.data.num_labels} labels, "
                             f"the federation's model has {num_labels}")
        return self.data

    def train_round(self, header: AnnounceHeader, config: FederationConfig, env: Envelope,
                    bytes_down: int) -> tuple[bytes, Metrics]:
        """One round's work, as the sequence of edge_client/round_steps.py: the update to
        send (also kept in the state directory until acknowledged) and the metrics."""
        client = self.spec.client
        with self.host.lock:
            adapter = self.host.adapter(config)
            shapes = adapter.shapes()
            plan = plan_round(adapter.names, shapes, header, env.tensors, config)
            if not self.same_state(header.config_hash, config):
                log.warning("%s: configuration changed; resetting local state", client)
                self.reset_local(plan, shapes, config)
            data, tokens = self.tokenized(adapter, config)
            start_model(adapter, plan, self.local_start(plan.local, shapes,
                                                        config.federation.seed,
                                                        config.lora_init))
            global_score = (score_model(adapter, tokens.test, config, self.planner)
                            if plan.evaluates_global else None)
            adapter.set(own_shared_start(plan, self.state.local))
            seed = round_seed(config.federation.seed, client, header.round)
            self.progress.start(header.round)
            result = train_shared(adapter, tokens.train, config, plan, round_=header.round,
                                  seed=seed, planner=self.planner, on_step=self.progress.step)
            self.progress.finish(result)
            new_shared = adapter.get(plan.shared)  # the update is fixed before fine-tuning
            tuned = finetune_local(adapter, tokens.train, config, plan.local,
                                   plan.trainable, seed=seed + 1, planner=self.planner)
            score = score_model(adapter, tokens.test, config, self.planner)
            new_local = adapter.get(plan.local)
            adapter.enable_all()
        busy = result.seconds + (tuned.seconds if tuned is not None else 0.0)
        self.pause(self.hooks.delay("compute", busy))
        payload, residual = self.build_update(header, config, plan, new_shared, shapes, result)
        self.state = next_state(self.state, header, config, new_local, residual)
        self.store.save(self.state)
        save_global(self.store.path, plan.global_shared,  # for 'edge-client export'
                    model_info(config, data.label_names, client=client, round_=header.round,
                               config_hash=header.config_hash))
        self.store.save_pending(payload)
        return payload, round_metrics(header, self.spec.federation, client, self.spec.region,
                                      score=score, n_test=len(tokens.test),
                                      result=result, bytes_down=bytes_down,
                                      global_score=global_score)

    def tokenized(self, adapter: AdapterModel, config: FederationConfig
                  ) -> tuple[DeviceData, Tokenized]:
        """The device's data and its tokenized splits, read and tokenized once."""
        data = self.load_data(config.model.num_labels or 0, config.model.causal)
        if self.tokens is None:
            self.tokens = Tokenized(*(
                tokenize_pairs(adapter.tokenizer, split.texts, split.responses or [],
                               adapter.max_length) if data.prompt_response
                else tokenize(adapter, split.texts, split.labels)
                for split in (data.train, data.test)))
        return data, self.tokens

    def build_update(self, header: AnnounceHeader, config: FederationConfig, plan: RoundPlan,
                     new_shared: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]],
                     result: TrainResult) -> tuple[bytes, dict[str, torch.Tensor]]:
        """The round's update message and the codec's new residual: the trained delta
        through DP and the device's hooks, the codec, then secure-aggregation masking."""
        residual = carry_residual(self.state.residual, plan.shared, shapes)
        prepared = prepare_update(Draft(shared_delta(new_shared, plan), result.samples),
                                  header, config, federation=self.spec.federation,
                                  client=self.spec.client, region=self.spec.region,
                                  residual=residual, result=result, hooks=self.hooks)
        dp, draft = prepared.dp, prepared.draft
        if dp is not None and draft.dp_norm is not None:
            log.info("%s: update norm %.4g (clip norm %.4g)", self.spec.client, draft.dp_norm,
                     dp.clip_norm)
        update, encoded = self.secagg.masked_update(prepared.header, prepared.encoded,
                                                    draft.delta, residual)
        return encode_message(update, encoded.tensors), dict(encoded.residual)

    def reset_local(self, plan: RoundPlan, shapes: dict[str, tuple[int, ...]],
                    config: FederationConfig) -> None:
        """Fresh local values after a configuration change (the saved global belongs to
        the old configuration), and no residual.

        An empty local state is not a fresh device: after rounds that shared every tensor
        (head and B sharing) the tensors that become local start from the last global,
        which ``local_start`` reads (a fresh device has none: initial values)."""
        self.state.local = init_adapter_values({n: shapes[n] for n in plan.local},
                                               config.federation.seed, config.lora_init)
        self.state.residual = {}

    def keep_final_global(self, header: AnnounceHeader, env: Envelope) -> None:
        """The final announcement carries the final global shared parameters; keep them for
        export when this device trained under the same configuration."""
        if (self.state.config_hash is None or saved_info(self.store.path) is None
                or not self.same_state(header.config_hash, announced_config(header))):
            return
        kept = final_global(saved_global(self.store.path), header.shared, env.tensors)
        if kept is not None:
            save_global(self.store.path, kept)

    def same_state(self, config_hash: str, config: FederationConfig) -> bool:
        """Whether local state made under the saved configuration fits ``config``: the same
        configuration, or one that differs only in ``rounds`` (an extended or stopped
        federation: B, head and residual go on).  True before any state was saved."""
        if self.state.config_hash in (None, config_hash):
            return True
        return self.state.state_hash == config.state_digest()

    def local_start(self, local: list[str], shapes: dict[str, tuple[int, ...]], seed: int,
                    init: LoraInit) -> dict[str, torch.Tensor]:
        """Start values of this round's local tensors (see edge_client/split_state.py); the
        saved global and initial values are only read for tensors that were shared."""
        missing = {n: shapes[n] for n in local if n not in self.state.local}
        if not missing:
            return {n: self.state.local[n] for n in local}
        return local_start(local, self.state.local, saved_global(self.store.path),
                           init_adapter_values(missing, seed, init))


def selected(header: AnnounceHeader, spec: DeviceSpec, last_round: int) -> bool:
    """Whether this device trains the announced round: one it has not trained yet, for
    which it is selected in its region."""
    return (header.round > last_round
            and spec.client in header.selected.get(spec.region, []))
