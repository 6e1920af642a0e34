"""One device's session with the federation.

It learns the current round from the retained announcement, trains when selected, sends
the compressed delta of its shared parameters once (QoS 1, identified by client and round so
a redelivery is harmless), evaluates its personalized model on its own test split, reports
metrics, and persists its local parameters so a restart resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from edge_client.data import DataSpec, DeviceData, load_device_data
from edge_client.host import ModelHost
from edge_client.state import DeviceState, StateDir
from edge_client.training import TokenizedSplit, evaluate, tokenize, train_steps
from fedsa_common.config import FederationConfig
from fedsa_common.envelope import Envelope
from fedsa_common.errors import WireError
from fedsa_common.protocol import (
    AnnounceHeader,
    Metrics,
    Presence,
    Topics,
    UpdateHeader,
    check_name,
    decode_message,
    encode_json,
    encode_message,
)
from fedsa_common.split import local_names, role, shared_names, trainable_names
from fedsa_common.transport import MqttSession, Will
from quant.adapters import init_adapter_values
from quant.codec import get_codec

log = logging.getLogger("fedsa.device")


@dataclass(frozen=True)
class DeviceSpec:
    client: str
    region: str
    federation: str
    data: DataSpec
    state_dir: Path


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
        self.data: DeviceData | None = None
        self.tokens: Tokenized | None = None
        presence = self.topics.presence(spec.region, spec.client)
        offline = Presence(client=spec.client, region=spec.region, online=False)
        self.session = MqttSession(
            broker_url,
            client_id=f"dev-{spec.federation}-{spec.client}",
            payload_limit=payload_limit,
            will=Will(presence, encode_json(offline)),
            on_connect=self._on_connect,
        )
        self.session.subscribe(self.topics.announce, self._on_announce)

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
            self.inbox.put((payload, time.time()))

    # work thread ----------------------------------------------------------------------
    def run(self) -> None:
        """Serve rounds until the federation announces it has finished."""
        self.session.connect()
        try:
            while not self.done.is_set():
                try:
                    payload, _ = self.inbox.get(timeout=1.0)
                except queue.Empty:
                    continue
                while not self.inbox.empty():  # only the newest announcement matters
                    payload, _ = self.inbox.get_nowait()
                try:
                    header, env = decode_message(AnnounceHeader, payload, max_bytes=64_000_000)
                except WireError as err:
                    log.warning("%s: ignored bad announcement: %s", self.spec.client, err)
                    continue
                self.on_round(header, env, len(payload))
        finally:
            self._publish_presence(Presence(client=self.spec.client, region=self.spec.region,
                                            online=False, ts=time.time()))
            self.session.close()

    def on_round(self, header: AnnounceHeader, env: Envelope, bytes_down: int) -> None:
        if header.federation != self.spec.federation:
            return
        if header.status == "finished":
            log.info("%s: federation finished at round %d", self.spec.client, header.round)
            self.done.set()
            return
        if header.round <= self.state.last_round:
            self.resend_pending(header.round)
            return
        if self.spec.client not in header.selected.get(self.spec.region, []):
            return
        config = FederationConfig.model_validate(header.config)
        payload, metrics = self.train_round(header, config, env, bytes_down)
        bytes_up = self.session.publish(self.topics.update(self.spec.region, self.spec.client),
                                        payload)
        self.store.clear_pending()
        metrics = metrics.model_copy(update={"bytes_up": bytes_up})
        self.session.publish_raw(self.topics.metrics(self.spec.region, self.spec.client),
                                 encode_json(metrics))
        log.info("%s: round %d trained (loss %.3f), accuracy %.3f, sent %d bytes",
                 self.spec.client, header.round, metrics.train_loss or 0.0, metrics.accuracy,
                 bytes_up)

    def resend_pending(self, current_round: int) -> None:
        """After a crash between persisting and the broker's ack, send the same update again;
        the hub counts an update id once."""
        pending = self.store.load_pending()
        if pending is None or self.state.last_round != current_round:
            return
        self.session.publish(self.topics.update(self.spec.region, self.spec.client), pending)
        self.store.clear_pending()
        log.info("%s: re-sent pending update of round %d", self.spec.client, current_round)

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
            shared = shared_names(names, algorithm)
            local = local_names(names, algorithm)
            if shared != sorted(header.shared):
                raise ValueError(f"announced shared set differs from {algorithm}'s split")
            if self.state.config_hash not in (None, header.config_hash):
                log.warning("%s: configuration changed; resetting local state", self.spec.client)
                self.state.local, self.state.residual = {}, {}
            if not self.state.local:
                self.state.local = init_adapter_values({n: adapter.shapes()[n] for n in local},
                                                       seed)
            data = self.load_data(config.model.num_labels or 0)
            if self.tokens is None:
                self.tokens = Tokenized(tokenize(adapter, data.train.texts, data.train.labels),
                                        tokenize(adapter, data.test.texts, data.test.labels))
            global_shared = {n: env.tensors[n].to(torch.float32) for n in shared}
            adapter.set(self.state.local)
            adapter.set(global_shared)
            trainable = trainable_names(names, algorithm)
            adapter.set_trainable(trainable)
            global_accuracy = (evaluate(adapter, self.tokens.test, tr.eval_batch_size)
                               if has_global_model(local, trainable) else None)
            round_seed = (seed * 1_000_003 + zlib.crc32(self.spec.client.encode()) * 31
                          + header.round) % 2**31
            result = train_steps(adapter, self.tokens.train, steps=tr.local_steps,
                                 batch_size=tr.batch_size, lr=tr.lr, head_lr=tr.head_lr,
                                 weight_decay=tr.weight_decay, seed=round_seed)
            accuracy = evaluate(adapter, self.tokens.test, tr.eval_batch_size)
            new_shared = adapter.get(shared)
            new_local = adapter.get(local)
            adapter.enable_all()
        delta = {n: new_shared[n] - global_shared[n] for n in shared}
        comp = config.fedsa_lora.compression
        codec = get_codec(comp.codec, **comp.codec_params)
        residual = self.state.residual if set(self.state.residual) == set(shared) else None
        encoded = codec.encode(delta, residual)
        update = UpdateHeader(
            federation=self.spec.federation, round=header.round, client=self.spec.client,
            region=self.spec.region, base_version=header.version, codec=comp.codec,
            codec_params=comp.codec_params, codec_meta=encoded.meta,
            num_samples=result.samples, train_loss=result.loss, train_s=result.seconds,
        )
        payload = encode_message(update, encoded.tensors)
        self.state.local = new_local
        self.state.residual = dict(encoded.residual)
        self.state.last_round = header.round
        self.state.base_version = header.version
        self.state.config_hash = header.config_hash
        self.store.save(self.state)
        self.store.save_pending(payload)
        metrics = Metrics(federation=self.spec.federation, client=self.spec.client,
                          region=self.spec.region, round=header.round, accuracy=accuracy,
                          n_test=len(self.tokens.test), train_loss=result.loss,
                          train_s=result.seconds, bytes_down=bytes_down,
                          global_accuracy=global_accuracy)
        return payload, metrics


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
    """Run several virtual devices over one shared base model until the federation ends."""
    host = host or ModelHost()
    devices = [Device(s, broker_url, host, payload_limit) for s in specs]
    errors: list[BaseException] = []

    def serve(device: Device) -> None:
        try:
            device.run()
        except BaseException as err:  # surfaced below; one device failing must be visible
            log.exception("%s failed", device.spec.client)
            errors.append(err)

    threads = [threading.Thread(target=serve, args=(d,), name=d.spec.client) for d in devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 1 if errors else 0


def device_specs_from_json(path: Path) -> tuple[str, list[DeviceSpec], dict]:
    """The worker spec file written by the scenario runner."""
    raw = json.loads(Path(path).read_text())
    specs = [
        DeviceSpec(client=d["client"], region=d["region"], federation=raw["federation"],
                   data=DataSpec.model_validate(d["data"]), state_dir=Path(d["state_dir"]))
        for d in raw["devices"]
    ]
    return raw["broker"], specs, raw
