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
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from edge_client.attack import Attack, poison
from edge_client.conditions import DeviceConditions, compute_delay, transfer_delay
from edge_client.data import DataSpec, DeviceData, load_device_data
from edge_client.downlink import HeldGlobal, check_fetched, from_announcement
from edge_client.host import ModelHost
from edge_client.microbatch import MicroBatchPlanner
from edge_client.personalize import finetune_local, proximal_for
from edge_client.progress import RoundProgress
from edge_client.schedule import local_steps_for, round_lr_scale
from edge_client.secagg_client import DeviceSecAgg
from edge_client.snapshot import (
    load_held,
    model_info,
    save_global,
    save_held,
    saved_global,
    saved_info,
)
from edge_client.split_state import (
    carry_residual,
    final_global,
    importance_report,
    local_start,
    round_split,
    shared_start,
)
from edge_client.state import DeviceState, StateDir
from edge_client.training import TokenizedSplit, evaluate, tokenize, train_steps
from fedsa_common.broker_auth import BrokerAuth, credentials_auth, load_credentials
from fedsa_common.codec import get_codec
from fedsa_common.config import FederationConfig, LoraInit
from fedsa_common.dp import privatize_update, round_dp_plan
from fedsa_common.envelope import Envelope
from fedsa_common.errors import WireError
from fedsa_common.liveness import Reminder, hub_serving
from fedsa_common.protocol import (
    Ack,
    AnnounceHeader,
    GlobalHeader,
    Metrics,
    Presence,
    Topics,
    UpdateHeader,
    announced_config,
    check_name,
    decode_json,
    decode_message,
    encode_json,
    encode_message,
)
from fedsa_common.secagg.identity import DeviceIdentity
from fedsa_common.split import role, trainable_names
from fedsa_common.transport import BrokerUnreachable, MqttSession, Will
from quant.adapters import init_adapter_values

log = logging.getLogger("fedsa.device")


@dataclass(frozen=True)
class DeviceSpec:
    client: str
    region: str
    federation: str
    data: DataSpec
    state_dir: Path
    conditions: DeviceConditions = field(default_factory=DeviceConditions)
    memory_mb: float | None = None  # peak-RSS budget for training (None: unlimited)
    attack: Attack | None = None  # a simulated malicious device (scenario adversaries)
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


MAX_RESEND_S = 60.0
MAX_ANNOUNCE_BYTES = 64_000_000
FETCH_TIMEOUT_S = 30.0  # waiting for the retained full global of an announced version


@dataclass
class Tokenized:
    train: TokenizedSplit
    test: TokenizedSplit


class Device:
    def __init__(self, spec: DeviceSpec, broker_url: str, host: ModelHost,
                 payload_limit: int = 1_000_000) -> None:
        check_name("client id", spec.client)
        check_name("region", spec.region)
        self.spec = spec
        self.host = host
        self.topics = Topics(spec.federation)
        self.store = StateDir(spec.state_dir, spec.client, spec.region, spec.federation)
        self.state: DeviceState = self.store.load()
        self.inbox: queue.Queue[tuple[bytes, float]] = queue.Queue()
        self.done = threading.Event()
        self.gone = threading.Event()  # vanished without saying goodbye (scenario churn)
        self.stopping = threading.Event()  # asked to leave cleanly (Ctrl-C, SIGTERM)
        self.acks: queue.Queue[Ack] = queue.Queue()
        self.pending = self.store.load_pending()
        self.pending_round = self.state.last_round
        self.resend_s = 5.0
        self.backoff = self.resend_s
        self.next_resend = time.monotonic() + self.resend_s
        self.data: DeviceData | None = None
        self.tokens: Tokenized | None = None
        self.planner = MicroBatchPlanner.for_budget(spec.memory_mb)  # learns across rounds
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
        self.federation_wait = Reminder(spec.report_every_s, time.monotonic())
        presence = self.topics.presence(spec.region, spec.client)
        offline = Presence(client=spec.client, region=spec.region, online=False)
        self.session = MqttSession(
            broker_url,
            client_id=f"dev-{spec.federation}-{spec.client}",
            payload_limit=payload_limit,
            will=Will(presence, encode_json(offline)),
            on_connect=self._on_connect,
            auth=spec.auth,
        )
        self.session.subscribe(self.topics.announce, self._on_announce)
        self.session.subscribe_raw(self.topics.ack(spec.region, spec.client), self._on_ack)
        self.session.subscribe_raw(self.topics.status("regional", spec.region),
                                   self._on_hub_status)
        self.secagg = DeviceSecAgg(self.session, self.topics, spec.client, spec.region,
                                   spec.federation, self.gone, spec.secagg_identity,
                                   spec.secagg_unauthenticated)

    # network thread -------------------------------------------------------------------
    def _on_connect(self) -> None:
        online = Presence(client=self.spec.client, region=self.spec.region, online=True,
                          ts=time.time())
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
            self.inbox.put((payload, time.time()))

    def _on_hub_status(self, _topic: str, payload: bytes) -> None:
        try:
            self.hub_serves = hub_serving(payload)
        except WireError as err:
            log.warning("%s: ignored bad status of the regional hub: %s", self.spec.client, err)

    def _on_ack(self, _topic: str, payload: bytes) -> None:
        try:
            self.acks.put(decode_json(Ack, payload))
        except WireError as err:
            log.warning("%s: ignored bad ack: %s", self.spec.client, err)

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
                    announced_config(header)  # a config that does not validate is bad input
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
            else:
                self._publish_presence(Presence(client=self.spec.client,
                                                region=self.spec.region, online=False,
                                                ts=time.time()))
                self.session.close()

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

    def on_round(self, header: AnnounceHeader, env: Envelope, bytes_down: int) -> None:
        if header.federation != self.spec.federation:
            return
        if header.status == "finished":
            log.info("%s: federation finished at round %d%s", self.spec.client, header.round,
                     f" (downlink: {dict(self.downlink)})" if self.downlink else "")
            if env.tensors or not header.shared:  # under downlink deltas a fetch may fail
                self.keep_final_global(header, env)
            self.done.set()
            return
        if header.round <= self.state.last_round:
            return
        if self.spec.client not in header.selected.get(self.spec.region, []):
            return
        config = FederationConfig.model_validate(header.config)
        cond = self.spec.conditions
        self.resend_s = config.round_policy.resend_s
        self.pause(transfer_delay(bytes_down, cond.downlink_kbps, cond.latency_ms))
        if not self.secagg.begin(header, config, env):  # secure aggregation: keys, shares
            self.pause(0.0)
            return
        # everything downloaded since the last report (run() counts it), or this round's
        payload, metrics = self.train_round(header, config, env,
                                            self.down_unreported or bytes_down)
        self.pause(transfer_delay(len(payload), cond.uplink_kbps, cond.latency_ms))
        bytes_up = self.session.publish(self.topics.update(self.spec.region, self.spec.client),
                                        payload)
        self.pending, self.pending_round = payload, header.round
        self.backoff = self.resend_s
        self.next_resend = time.monotonic() + self.backoff
        metrics = metrics.model_copy(update={"bytes_up": bytes_up})
        self.session.publish_raw(self.topics.metrics(self.spec.region, self.spec.client),
                                 encode_json(metrics))
        self.down_unreported = 0
        log.info("%s: round %d trained (loss %.3f), accuracy %.3f, sent %d bytes",
                 self.spec.client, header.round, metrics.train_loss or 0.0, metrics.accuracy,
                 bytes_up)

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
            self.session.publish(self.topics.update(self.spec.region, self.spec.client),
                                 self.pending, timeout=10)
            log.info("%s: re-sent update of round %d", self.spec.client, self.pending_round)
        except (TimeoutError, ConnectionError) as err:
            log.info("%s: resend failed: %s", self.spec.client, err)
        self.backoff = min(MAX_RESEND_S, self.backoff * 2)
        self.next_resend = time.monotonic() + self.backoff * random.uniform(0.75, 1.25)

    def load_data(self, num_labels: int) -> DeviceData:
        if self.data is None:
            self.data = load_device_data(self.spec.data)
            if self.data.num_labels > num_labels:
                raise ValueError(f"{self.spec.client}: data has {self.data.num_labels} labels, "
                                 f"the federation's model has {num_labels}")
        return self.data

    def train_round(self, header: AnnounceHeader, config: FederationConfig, env: Envelope,
                    bytes_down: int) -> tuple[bytes, Metrics]:
        algorithm = config.fedsa_lora.algorithm
        seed = config.federation.seed
        tr = config.training
        with self.host.lock:
            adapter = self.host.adapter(config)
            names = adapter.names
            shapes = adapter.shapes()
            # the announced split (adaptive or fixed), validated: see edge_client/split_state
            shared, local = round_split(names, header.shared, env.tensors, shapes, config,
                                        header.round)
            if not self.same_state(header.config_hash, config):
                log.warning("%s: configuration changed; resetting local state", self.spec.client)
                # fresh values: the saved global belongs to the old configuration
                self.state.local = init_adapter_values({n: shapes[n] for n in local}, seed,
                                                       config.lora_init)
                self.state.residual = {}
            # an empty local state is not a fresh device: after rounds that shared every
            # tensor (head and B sharing) the tensors that become local start from the last
            # global, which ``local_start`` reads (a fresh device has none: initial values)
            data = self.load_data(config.model.num_labels or 0)
            if self.tokens is None:
                self.tokens = Tokenized(tokenize(adapter, data.train.texts, data.train.labels),
                                        tokenize(adapter, data.test.texts, data.test.labels))
            global_shared = {n: env.tensors[n].to(torch.float32) for n in shared}
            adapter.set(self.local_start(local, shapes, seed, config.lora_init))
            adapter.set(global_shared)
            trainable = trainable_names(names, algorithm)
            adapter.set_trainable(trainable)
            global_accuracy = (evaluate(adapter, self.tokens.test, tr.eval_batch_size,
                                        planner=self.planner, autocast=tr.autocast)
                               if has_global_model(local, trainable) else None)
            # adaptive split: a shared tensor that was local here starts from its own value
            adapter.set(shared_start([n for n in shared if n in self.state.local],
                                     global_shared, self.state.local))
            round_seed = (seed * 1_000_003 + zlib.crc32(self.spec.client.encode()) * 31
                          + header.round) % 2**31
            self.progress.start(header.round)
            scale = round_lr_scale(tr.round_lr_decay, header.round)
            result = train_steps(adapter, self.tokens.train,
                                 steps=local_steps_for(tr, len(self.tokens.train)),
                                 batch_size=tr.batch_size, lr=tr.lr * scale,
                                 head_lr=tr.head_lr * scale if tr.head_lr else None,
                                 b_lr_ratio=tr.b_lr_ratio,
                                 weight_decay=tr.weight_decay, seed=round_seed,
                                 planner=self.planner, autocast=tr.autocast,
                                 on_step=self.progress.step,
                                 proximal=proximal_for(config, global_shared),
                                 importance=config.fedsa_lora.adaptive_split.importance_based,
                                 warmup_steps=tr.warmup_steps, lr_schedule=tr.lr_schedule,
                                 gradient_checkpointing=tr.gradient_checkpointing)
            self.progress.finish(result)
            new_shared = adapter.get(shared)  # the update is fixed before any fine-tuning
            tuned = finetune_local(adapter, self.tokens.train, config, local, trainable,
                                   seed=round_seed + 1, planner=self.planner)
            accuracy = evaluate(adapter, self.tokens.test, tr.eval_batch_size,
                                planner=self.planner, autocast=tr.autocast)
            new_local = adapter.get(local)
            adapter.enable_all()
        busy = result.seconds + (tuned.seconds if tuned is not None else 0.0)
        self.pause(compute_delay(busy, self.spec.conditions.slowdown))
        delta = {n: new_shared[n] - global_shared[n] for n in shared}
        # DP: clip (local mode: and noise) before the codec, so its residual never holds more
        # (adaptive clipping: to the round's announced clip norm, and it reports whether the
        # update was within it)
        plan = round_dp_plan(config, header.dp_clip_norm)
        delta, norm = privatize_update(delta, plan)
        if plan is not None and norm is not None:
            log.info("%s: update norm %.4g (clip norm %.4g)", self.spec.client, norm,
                     plan.clip_norm)
        samples = result.samples
        if self.spec.attack is not None:
            delta = poison(delta, self.spec.attack)
            samples = self.spec.attack.declared(samples)
            log.info("%s: round %d update poisoned (%s x%g), declaring %d samples",
                     self.spec.client, header.round, self.spec.attack.kind,
                     self.spec.attack.factor, samples)
        comp = config.fedsa_lora.compression
        # randk: the round's shared seed, derived here and by the hub from the same values
        codec_params = comp.round_codec_params(config.federation.seed, header.round)
        codec = get_codec(comp.codec, **codec_params)
        residual = carry_residual(self.state.residual, shared, shapes)
        encoded = codec.encode(delta, residual)
        update = UpdateHeader(
            federation=self.spec.federation, round=header.round, client=self.spec.client,
            region=self.spec.region, base_version=header.version, codec=comp.codec,
            codec_params=codec_params, codec_meta=encoded.meta,
            num_samples=samples, **header_train_stats(config, result.loss, result.seconds),
            importance=importance_report(result.importance),
            dp_unclipped=plan.unclipped(norm) if plan is not None else None,
        )
        update, encoded = self.secagg.masked_update(update, encoded, delta, residual)
        payload = encode_message(update, encoded.tensors)
        self.state.local = new_local
        self.state.residual = dict(encoded.residual)
        self.state.last_round = header.round
        self.state.base_version = header.version
        self.state.config_hash = header.config_hash
        self.state.state_hash = config.state_digest()
        self.store.save(self.state)
        save_global(self.store.path, global_shared,  # for 'edge-client export'
                    model_info(config, data.label_names, client=self.spec.client,
                               round_=header.round, config_hash=header.config_hash))
        self.store.save_pending(payload)
        metrics = Metrics(federation=self.spec.federation, client=self.spec.client,
                          region=self.spec.region, round=header.round, accuracy=accuracy,
                          n_test=len(self.tokens.test), train_loss=result.loss,
                          train_s=result.seconds, bytes_down=bytes_down,
                          global_accuracy=global_accuracy)
        return payload, metrics

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


def header_train_stats(config: FederationConfig, loss: float, seconds: float
                       ) -> dict[str, float | None]:
    """``train_loss`` and ``train_s`` for the update header: none under local DP, whose
    report must reveal nothing but the noised update (both depend on the device's data and
    would reach the broker and the hubs in the clear next to it)."""
    dp = config.fedsa_lora.privacy.differential_privacy
    if dp.enable and dp.mode == "local":
        return {"train_loss": None, "train_s": None}
    return {"train_loss": loss, "train_s": seconds}


def has_global_model(local: list[str], trainable: list[str]) -> bool:
    """Whether the round's global parameters are a whole model, up to the device's head.

    True when no LoRA parameter the device trains stays local (fedit shares A and B; ffa
    shares B and keeps A frozen at the common seeded initialisation, identical on every
    device).  Then the announced global LoRA with this device's own head is worth evaluating
    as the "global" accuracy; under fedsa (B local) and local there is no such model.
    """
    trained = set(trainable)
    return not any(role(n) in ("lora_A", "lora_B") for n in local if n in trained)


def run_devices(specs: list[DeviceSpec], broker_url: str, host: ModelHost | None = None,
                payload_limit: int = 1_000_000) -> int:
    """Run several virtual devices over one shared base model until the federation ends.

    Returns 1 when a device failed; raises ``BrokerUnreachable`` when the only failures
    were devices that never reached the broker.

    A device with online windows is started at the beginning of each window (a fresh
    session over its state directory, as after a reboot) and vanishes at its end.
    """
    host = host or ModelHost()
    errors: list[BaseException] = []
    finished = threading.Event()
    live: set[Device] = set()  # the running sessions, for an interrupt to stop
    lock = threading.Lock()

    def serve(spec: DeviceSpec, over: threading.Event) -> None:
        windows = spec.conditions.online or [(0.0, float("inf"))]
        try:
            for start, end in windows:
                if finished.wait(max(0.0, start - time.time())):
                    return
                device = Device(spec, broker_url, host, payload_limit)
                with lock:
                    if finished.is_set():  # interrupted while this session was being built
                        return
                    live.add(device)
                timer = threading.Timer(max(0.0, end - time.time()), device.vanish)
                if end != float("inf"):
                    timer.start()
                try:
                    device.run()
                finally:
                    timer.cancel()
                    with lock:
                        live.discard(device)
                if device.done.is_set():
                    finished.set()
                    return
        except BrokerUnreachable as err:  # one line: the message says what and why
            log.error("%s: %s", spec.client, err)
            errors.append(err)
        except BaseException as err:  # surfaced below; one device failing must be visible
            log.exception("%s failed", spec.client)
            errors.append(err)
        finally:
            over.set()

    # Waited for through events, not Thread.join: on Python 3.11 a join interrupted by
    # Ctrl-C marks the thread as stopped, so a second join would return at once. Daemon
    # threads, so that after a second interrupt the process exits without them.
    ended = [threading.Event() for _ in specs]
    for spec, done in zip(specs, ended, strict=True):
        threading.Thread(target=serve, args=(spec, done), name=spec.client, daemon=True).start()
    try:
        for done in ended:
            done.wait()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM through cli_common.stop_on_sigterm
        log.warning("stopping: devices leave after their current step (interrupt again to "
                    "exit at once)")
        with lock:
            finished.set()
            for device in live:
                device.stop()
        for done in ended:
            done.wait()
        raise
    if errors and all(isinstance(e, BrokerUnreachable) for e in errors):
        raise errors[0]  # nothing else went wrong: the caller names the broker
    return 1 if errors else 0


def device_specs_from_json(path: Path) -> tuple[str, list[DeviceSpec], dict]:
    """The worker spec file written by the scenario runner."""
    raw = json.loads(Path(path).read_text())
    specs = [
        DeviceSpec(client=d["client"], region=d["region"], federation=raw["federation"],
                   data=DataSpec.model_validate(d["data"]), state_dir=Path(d["state_dir"]),
                   conditions=conditions_from_json(d.get("conditions")),
                   memory_mb=d.get("memory_mb"), attack=Attack.from_json(d.get("attack")),
                   auth=credentials_auth(Path(d["credentials"]), federation=raw["federation"],
                                         role="device", region=d["region"], client=d["client"])
                   if d.get("credentials") else None,
                   secagg_identity=load_credentials(Path(d["credentials"])).secagg_identity()
                   if d.get("credentials") else None,
                   secagg_unauthenticated=bool(d.get("secagg_unauthenticated", False)))
        for d in raw["devices"]
    ]
    return raw["broker"], specs, raw


def conditions_from_json(raw: dict | None) -> DeviceConditions:
    if not raw:
        return DeviceConditions()
    online = raw.get("online")
    return DeviceConditions(
        online=[(float(a), float(b)) for a, b in online] if online is not None else None,
        slowdown=float(raw.get("slowdown", 1.0)),
        uplink_kbps=raw.get("uplink_kbps"), downlink_kbps=raw.get("downlink_kbps"),
        latency_ms=float(raw.get("latency_ms", 0.0)),
    )


def conditions_to_json(cond: DeviceConditions) -> dict:
    return asdict(cond)
