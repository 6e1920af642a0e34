"""The cloud hub: samples devices, announces rounds, combines regional partials into the
global shared parameters, checkpoints durably, and announces the next round.

Synchronous rounds close when every region with selected devices sent its final partial,
when enough updates arrived (over-selection), or at the deadline.  Asynchronous mode
(FedBuff) applies a server step whenever ``buffer_size`` updates are buffered.  Partials
built on an older global version are weighted by 1/sqrt(1+staleness) when the policy
allows them and dropped (and accounted for) otherwise.

Partials go through the cloud's intake (``CloudIntake``, hub/cloud_intake.py: the pure rules
for a partial); this hub decodes them, persists the intake and acknowledges.

Durability: the round in flight (its announcement, the partial sums received, which update
ids they carry) is persisted before partials are acknowledged, and the global parameters
are checkpointed after every round, so a restarted cloud hub continues the same round.

Server step: the round's weighted mean delta (after any central DP noise) goes through the
server optimizer (``server_optimizer``, hub/server_optimizer.py: sgd by default, or
FedAvgM / FedAdam / FedYogi / FedAdagrad), whose change is added to the global; the same
holds for a FedBuff step.  Its moments are checkpointed with the global.

Downlink deltas (``fedsa_lora.compression.downlink``, hub/downlink.py): the server step goes
through the downlink codec and the announcement carries the encoded change since the
previous version; the full global shared parameters of the current version are published
retained on ``Topics.global_params`` before every announcement, for devices that cannot
apply the delta (a late joiner, a device that missed a version).
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import torch

from fedsa_common.federation.adaptive_split import split_changes
from fedsa_common.federation.config import NUM_LABELS_REQUIRED, ConfigError, FederationConfig
from fedsa_common.net.broker_auth import BrokerAuth
from fedsa_common.net.transport import MqttSession
from fedsa_common.process.atomic import (
    read_json,
    read_tensors,
    write_bytes,
    write_json,
    write_tensors,
)
from fedsa_common.wire.chunking import split_payload
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.liveness import Reminder, hub_serving
from fedsa_common.wire.protocol import (
    Ack,
    AnnounceHeader,
    Control,
    GlobalHeader,
    PartialHeader,
    Presence,
    RoundSummary,
    decode_json,
    decode_message,
    encode_json,
    encode_message,
    params_digest,
)
from hub.aggregation import RunningSum, apply_server_update, l2_norm
from hub.checkpoint import CloudState, load_checkpoint, save_checkpoint
from hub.cloud_intake import DROPPED, CloudIntake
from hub.device_table import DeviceTable
from hub.downlink import DownlinkState, downlink_step
from hub.duplicate_ids import notice
from hub.lifecycle import (
    CloudLock,
    LifecycleError,
    check_growth,
    checkpoint_rounds,
    read_retained_announce,
    resolve_total,
    set_target,
    with_rounds,
)
from hub.privacy import CloudPrivacy
from hub.process import Event, HubProcess
from hub.region_hubs import RegionHubs, may_start, selectable
from hub.server_optimizer import ServerOptimizerState, server_change
from hub.split_policy import SplitPolicy, check_held, describe
from quant.adapters import adapter_shapes, init_adapter_values

log = logging.getLogger("fedsa.hub.cloud")

INFLIGHT_JSON = "inflight.json"
INFLIGHT_TENSORS = "inflight.safetensors"
INFLIGHT_ANNOUNCE = "inflight-announce.bin"
CONTROL_MAX_AGE_S = 60.0  # older commands (queued for the cloud while it was down) are ignored
HUB_GRACE_S = 30.0  # how long a region's devices wait for its hub's status before skipped


def initial_global(config: FederationConfig) -> dict[str, torch.Tensor]:
    """The common starting point of the shared parameters, computed from shapes alone."""
    if config.model.needs_num_labels:
        raise ConfigError(f"model.num_labels: {NUM_LABELS_REQUIRED}")
    shapes = adapter_shapes(config.model, config.model.num_labels or 0)
    # with an adaptive split: all of A and B; with head sharing: the head as well
    names = SplitPolicy(config, list(shapes)).held()
    return init_adapter_values({n: shapes[n] for n in names}, config.federation.seed,
                               config.lora_init)


def shared_now(state: CloudState) -> list[str]:
    """The tensors the next announcement shares: the current split (adaptive split, head
    sharing), or every tensor the cloud holds under a fixed split."""
    return sorted(state.params if state.shared is None else state.shared)


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


def save_inflight(state_dir: Path, intake: CloudIntake) -> None:
    """Persist the round in flight (announcement, then sums, then the JSON naming them)."""
    meta, tensors = intake.to_state()
    write_bytes(state_dir / INFLIGHT_ANNOUNCE, intake.announce_payload)
    write_tensors(state_dir / INFLIGHT_TENSORS, tensors)
    write_json(state_dir / INFLIGHT_JSON, meta)


def load_inflight(state_dir: Path) -> CloudIntake | None:
    path = state_dir / INFLIGHT_JSON
    if not path.exists():
        return None
    return CloudIntake.from_state(read_json(path), read_tensors(state_dir / INFLIGHT_TENSORS),
                                  (state_dir / INFLIGHT_ANNOUNCE).read_bytes())


def clear_inflight(state_dir: Path) -> None:
    for name in (INFLIGHT_JSON, INFLIGHT_TENSORS, INFLIGHT_ANNOUNCE):
        (state_dir / name).unlink(missing_ok=True)


class CloudHub(HubProcess):
    role = "cloud"

    def __init__(self, broker_url: str, config: FederationConfig, state_dir: Path, *,
                 auth: BrokerAuth | None = None, hub_grace_s: float = HUB_GRACE_S,
                 connect_timeout_s: float = 300.0, report_every_s: float = 30.0,
                 session: MqttSession | None = None) -> None:
        super().__init__(broker_url, config.federation.name, "cloud", state_dir,
                         config.transport.payload_limit, config.transport.max_message_bytes,
                         auth=auth, connect_timeout_s=connect_timeout_s,
                         report_every_s=report_every_s, session=session)
        self.config = config
        self.policy = config.round_policy
        self.online: dict[str, str] = {}  # client -> region
        # regions whose regional hub serves (hub/region_hubs.py): only their devices are
        # selected, since nothing collects the updates of a region without one
        self.region_hubs = RegionHubs(hub_grace_s)
        # when the first device came online: round 1 waits wait_for_clients_s from then
        self.first_device_at: float | None = None
        self.devices = DeviceTable()  # for `hub status`, in the retained cloud status
        self.inflight: CloudIntake | None = None
        self.pending_acks: list[tuple[str, Ack]] = []
        self.dirty = False
        self.privacy = CloudPrivacy(None)  # differential privacy; set up in run()
        self.downlink = config.fedsa_lora.compression.downlink
        self.global_payload: bytes | None = None  # downlink deltas: the retained full global
        # lifecycle (hub/lifecycle.py): the total rounds (a checkpoint or `hub federation
        # extend|stop` may change it), the configuration file's, and the total the privacy
        # plan was made for; a stop with --now closes the round in flight
        self.rounds = config.rounds
        self.file_rounds = config.rounds
        self.calibrated_rounds = config.rounds
        self.close_now = False
        self.lock = CloudLock(self.state_dir)

    @property
    def privacy_epsilon_spent(self) -> float:
        return self.privacy.epsilon

    def load_state(self) -> CloudState:
        """The checkpoint (or a fresh state), with the federation's total rounds resolved.

        Only ``rounds`` may differ from the configuration the checkpoint was made with;
        anything else is a ``LifecycleError`` naming the fields."""
        state = load_checkpoint(self.state_dir)
        if state is None:
            state = CloudState(0, 0, initial_global(self.config), self.config.digest())
        else:
            ran = checkpoint_rounds(self.config, completed=state.round,
                                    config_hash=state.config_hash, saved_config=state.config,
                                    state_dir=self.state_dir)
            total = resolve_total(self.config.rounds, saved_rounds=ran, target=state.target,
                                  file_rounds_before=state.file_rounds)
            check_growth(self.config, total, ran)
            self.set_rounds(total)
            self.calibrated_rounds = total if total < ran else ran
            log.info("resuming from checkpoint: round %d, version %d, %d rounds in all%s",
                     state.round, state.version, total,
                     f" (was {ran})" if total != ran else "")
        state.file_rounds = self.file_rounds
        split = SplitPolicy(self.config, list(state.params))
        if split.per_round:  # the round's split: from the round, or importance_based's decision
            state.shared = split.resume(state.round, state.shared)
            check_held(state.params, state.shared)
            log.info("%s: round %d shares %s",
                     f"adaptive split ({split.section.strategy})" if split.adaptive
                     else "head sharing", state.round + 1, describe(state.shared))
        if self.downlink.enable and state.downlink is None:
            state.downlink = DownlinkState()
        optimizer = self.config.server_optimizer
        if optimizer.name != "sgd" and state.optimizer is None:
            state.optimizer = ServerOptimizerState(optimizer.name)
        if optimizer.adaptive and self.config.server_step > 0.5:
            log.warning("server_optimizer %s with server_lr %g moves every shared coordinate "
                        "by about server_lr per round; typical values are 1e-2..1e-1",
                        optimizer.name, self.config.server_step)
        return state

    def set_rounds(self, total: int) -> None:
        """Run ``total`` rounds in all: the announced configuration says so from the next
        announcement on (devices keep their local state: ``state_digest`` ignores it)."""
        self.config = with_rounds(self.config, total)
        self.rounds = total

    def save_checkpoint(self, state: CloudState) -> None:
        """Checkpoint ``state`` with the configuration this cloud runs now (its rounds: the
        total, unless a stop before round 1 left none to run)."""
        state.config = self.config.model_dump(mode="json")
        state.config_hash = self.config.digest()
        state.target = self.rounds if self.rounds != self.config.rounds else None
        save_checkpoint(self.state_dir, state)

    def run(self) -> int:
        """Serve until the federation's last round is done (or it is stopped)."""
        self.lock.acquire()
        try:
            return self._run()
        finally:
            self.lock.release()

    def _run(self) -> int:
        state = self.load_state()
        self.devices = DeviceTable.from_history(state.history)
        # records the configuration and total it runs with, for lifecycle commands and the
        # next start (a fresh cloud's round 0 too)
        self.save_checkpoint(state)
        self.privacy = CloudPrivacy.for_config(self.config, state.history)
        inflight = load_inflight(self.state_dir)
        if inflight is not None and inflight.round == state.round + 1:
            self.inflight = inflight
            log.info("continuing round %d in flight (%d updates received before the restart)",
                     inflight.round, inflight.total.count)
            if self.downlink.enable:  # re-published with the announcement once connected
                self.global_payload = self.global_message(state, inflight.round)[0]
        self.listen("presence", self.topics.presence_filter, raw=True)
        self.listen("hub_status", self.topics.status("regional", "+"), raw=True)
        self.listen("partial", self.topics.partial_filter)
        self.listen("control", self.topics.control, raw=True)
        self.connect()
        self.publish_status(round=state.round, version=state.version, rounds=self.rounds)
        if self.inflight is None:
            self.check_retained(state)
            self.wait_for_clients(state)
        while state.round < self.rounds:
            self.run_round(state)
        self.announce(state, "finished", {})
        self.publish_status(round=state.round, version=state.version, rounds=self.rounds,
                            finished=True)
        log.info("federation finished after %d rounds", state.round)
        self.session.close(unsubscribe=True)  # keeps the "finished" status (no will)
        return 0

    def status_extra(self) -> dict[str, Any]:
        """The device table (``hub status`` lists it) while it fits half a message."""
        return self.devices.status_fields(self.session.payload_limit // 2)

    # ------------------------------------------------------------------ lifecycle
    def check_retained(self, state: CloudState) -> None:
        """Act on a retained 'finished' announcement before waiting for devices, which exit
        on it: clear it when this cloud goes on (an extension), refuse to start over it
        from a fresh state (the name's earlier run: `hub federation reset` clears it)."""
        payload = read_retained_announce(self.session, self.topics,
                                         self.config.transport.max_message_bytes)
        if payload is None:
            return
        header, raw = payload
        if header.status != "finished" or state.round >= self.rounds:
            return
        if state.round == 0:
            raise LifecycleError(
                f"federation {self.federation!r} already finished (round {header.round}) on "
                f"{self.session.broker_url}, whose retained announcement says so; a cloud "
                "with a fresh --state-dir cannot continue it. Start the cloud with the "
                "--state-dir it ran with (`hub federation extend` adds rounds), or clear the "
                "name with `hub federation reset` to run it again from the start")
        log.info("clearing the retained announcement that round %d finished the federation: "
                 "it goes on to %d rounds", header.round, self.rounds)
        frames = len(split_payload(raw, self.session.payload_limit))
        for i in range(frames):
            self.session.publish_raw(f"{self.topics.announce}/{i}", b"", retain=True)

    def on_control(self, event: Event, state: CloudState) -> None:
        """Obey ``hub federation stop|extend``; the answer goes out in the cloud status."""
        control = decode_json(Control, event.payload)
        if control.federation != self.federation:
            raise WireError("wrong_federation", control.federation)
        age = time.time() - control.issued_at
        if age > CONTROL_MAX_AGE_S:
            log.warning("ignored %s command issued %.0fs ago (queued while the cloud was "
                        "down?)", control.action, age)
            return
        current = self.inflight.round if self.inflight is not None else state.round
        try:
            if control.action == "stop":
                total = current
                self.close_now = control.now and self.inflight is not None
            else:
                assert control.rounds is not None  # the model checks it
                total = control.rounds
                if total < current:
                    raise LifecycleError(f"round {current} is under way; the total cannot be "
                                         f"{total} (`hub federation stop` ends it after it)")
                check_growth(self.config, total, self.calibrated_rounds)
            self.set_rounds(total)
            set_target(self.state_dir, total)
            answer: dict[str, Any] = {"accepted": True}
            log.info("%s: the federation now ends after round %d%s", control.action, total,
                     " (the round in flight closes now)" if self.close_now else "")
        except LifecycleError as err:
            answer = {"accepted": False, "reason": str(err)}
            log.warning("refused %s command: %s", control.action, err)
        self.publish_status(round=state.round, version=state.version, rounds=self.rounds,
                            control={"action": control.action, "issued_at": control.issued_at,
                                     **answer})

    # ------------------------------------------------------------------ events
    def wait_for_clients(self, state: CloudState) -> None:
        """Wait for ``min_clients`` selectable devices (and for the hubs of the regions
        whose devices came), or, from the first device's presence, ``wait_for_clients_s``
        for as many as came; say every ``report_every_s`` what is missing.

        The wait counts from the first device, not from this start: a cloud started long
        before its devices would otherwise run round 1 with the first one that came."""
        need = self.config.sampling.min_clients
        reminder = Reminder(self.report_every_s, time.time())
        while state.round < self.rounds:
            now = time.time()
            ready = self.selectable(now)
            pending = self.region_hubs.pending(set(self.online.values()), now)
            if may_start(ready=len(ready), need=need, pending=len(pending),
                         waited_since=self.first_device_at, now=now,
                         wait_s=self.config.sampling.wait_for_clients_s):
                if len(ready) < need:
                    log.warning("starting with %d of %d wanted devices", len(ready), need)
                break
            if reminder.due(now):
                log.info("waiting for devices of federation %s: %d of %d online%s",
                         self.federation, len(ready), need,
                         f"; waiting for the regional hub of {', '.join(sorted(pending))}"
                         if pending else "")
            event = self.next_event(1.0)
            if event is not None:
                self.handle_event(event, state)
        log.info("%d devices online", len(self.online))

    def selectable(self, now: float | None = None) -> dict[str, str]:
        """The online devices (client -> region) of regions whose regional hub serves."""
        now = time.time() if now is None else now
        return selectable(self.online, self.region_hubs.absent(set(self.online.values()), now))

    def note_unserved(self, rnd: int) -> None:
        """Log (by region) and count the online devices round ``rnd`` cannot select because
        their region has no serving regional hub."""
        pool = self.selectable()
        skipped: dict[str, int] = {}
        for client, region in self.online.items():
            if client not in pool:
                skipped[region] = skipped.get(region, 0) + 1
        for region, n in sorted(skipped.items()):
            log.warning("round %d: not selecting %d device%s of region %s: no regional hub "
                        "serves it (no online status on %s); start `hub serve --role "
                        "regional --region %s`", rnd, n, "" if n == 1 else "s", region,
                        self.topics.status("regional", region), region)
            self.counters["selection.no_regional_hub"] += n

    def handle_event(self, event: Event, state: CloudState) -> None:
        try:
            if event.kind == "presence":
                self.on_presence(event)
            elif event.kind == "hub_status":
                self.on_hub_status(event)
            elif event.kind == "partial" and self.inflight is not None:
                self.on_partial(event, state)
            elif event.kind == "control":
                self.on_control(event, state)
            elif event.kind == "connected" and self.inflight is not None:
                # after a broker restart the retained announcement may be gone: restore it
                # (and first the full global it may refer devices to)
                if self.global_payload is not None:
                    self.session.publish(self.topics.global_params, self.global_payload,
                                         retain=True, timeout=30)
                self.session.publish(self.topics.announce, self.inflight.announce_payload,
                                     retain=True, timeout=30)
        except WireError as err:
            if self.inflight is not None:
                self.inflight.rejected[err.reason] += 1
            self.count_reject(err, event.topic)

    def on_presence(self, event: Event) -> None:
        if not event.payload:
            return
        p = decode_json(Presence, event.payload)
        if event.topic != self.topics.presence(p.region, p.client):
            raise WireError("wrong_topic", event.topic)
        if p.online:
            self.online[p.client] = p.region
            self.region_hubs.on_device(p.region, time.time())
            self.devices.seen(p.client, p.region)
            if self.first_device_at is None:
                self.first_device_at = time.time()
            self.check_duplicate(p)
        elif self.duplicates.is_current(p.client, p.session):
            self.online.pop(p.client, None)
        # else: the will of a connection that another copy of the client id displaced

    def check_duplicate(self, p: Presence) -> None:
        """Flag a client id that two running devices claim, as a regional hub does for its
        region; two copies that joined different regions only the cloud sees, so it tells
        the newer one itself (on its acknowledgement topic, as its regional hub would)."""
        dup = self.flag_duplicate(p)
        if dup is not None and dup.newer_region and dup.older_region != dup.newer_region:
            self.session.publish_raw(self.topics.ack(dup.newer_region, dup.client),
                                     encode_json(notice(dup)))

    def on_hub_status(self, event: Event) -> None:
        """A regional hub's retained status: whether its region's devices may be selected."""
        region = event.topic.rsplit("/", 1)[-1]
        serving = hub_serving(event.payload)
        if not self.region_hubs.on_status(region, serving):
            return
        if serving:
            log.info("regional hub of %s serves", region)
        else:
            log.warning("regional hub of %s is not serving (offline or finished): its "
                        "devices are not selected until it is back", region)

    # ------------------------------------------------------------------ rounds
    def global_message(self, state: CloudState, rnd: int) -> tuple[bytes, str]:
        """The retained full-global message of the current version (downlink deltas) and
        the digest of its parameters."""
        names = shared_now(state)
        shared = {n: state.params[n] for n in names}
        digest = params_digest(shared)
        header = GlobalHeader(federation=self.federation, round=rnd, version=state.version,
                              config_hash=self.config.digest(), shared=names,
                              global_digest=digest)
        return encode_message(header, shared), digest

    def announce(self, state: CloudState, status: str, selected: dict[str, list[str]]) -> bytes:
        rnd = state.round + (1 if status == "running" else 0)
        names = shared_now(state)
        shared = {n: state.params[n] for n in names}
        body: dict[str, torch.Tensor] = shared
        downlink: dict[str, Any] = {}
        if self.downlink.enable:
            # the full parameters go first, so a device sent to fetch them finds this version
            self.global_payload, digest = self.global_message(state, rnd)
            nbytes = self.session.publish(self.topics.global_params, self.global_payload,
                                          retain=True)
            self.counters["bytes.global"] += nbytes
            downlink["global_digest"] = digest
            delta = (state.downlink or DownlinkState()).delta_for(state.version, names)
            if delta is not None:
                downlink.update(delta_from=delta.base_version, delta_codec=delta.codec,
                                delta_params=delta.params, delta_meta=delta.meta,
                                shapes={n: list(s) for n, s in delta.shapes.items()})
                body = delta.tensors
        header = AnnounceHeader(
            federation=self.federation,
            round=rnd,
            version=state.version,
            status=status,  # type: ignore[arg-type]
            selected=selected,
            config=self.config.model_dump(mode="json"),
            config_hash=self.config.digest(),
            deadline_s=self.policy.deadline_s,
            issued_at=time.time(),
            shared=names,
            dp_clip_norm=self.privacy.clip_norm if status == "running" else None,
            **downlink,
        )
        payload = encode_message(header, body)
        if status == "running":  # persisted first, so a restart re-announces the same round
            self.inflight = CloudIntake(header.round, payload, selected, header.issued_at,
                                        RunningSum.zeros({n: tuple(t.shape)
                                                          for n, t in shared.items()}))
            save_inflight(self.state_dir, self.inflight)
        nbytes = self.session.publish(self.topics.announce, payload, retain=True)
        self.counters["bytes.announced"] += nbytes
        return payload

    def target_updates(self) -> int | None:
        """With over-selection, the round closes once this many updates arrived."""
        if self.policy.over_select <= 1:
            return None
        return self.config.sampling.clients_per_round or max(
            1, math.floor(len(self.selectable()) / self.policy.over_select))

    def sample(self, rnd: int, pool: dict[str, str]) -> dict[str, list[str]]:
        """Round ``rnd``'s selection from ``pool`` (the selectable devices)."""
        k = self.config.sampling.clients_per_round
        if self.policy.over_select > 1:
            base = k or len(pool)
            k = math.ceil(base * self.policy.over_select)
        return select_clients(pool, k, self.config.federation.seed, rnd)

    def round_closed(self) -> bool:
        assert self.inflight is not None
        fl = self.inflight
        if self.close_now:
            return True
        if self.policy.mode == "async":
            return fl.total.count >= self.policy.buffer_size
        target = self.target_updates()
        if target is not None and fl.total.count >= target:
            return True
        return set(fl.finals) >= set(fl.selected)

    def run_round(self, state: CloudState) -> None:
        rnd = state.round + 1
        if self.inflight is None or self.inflight.round != rnd:
            pool = self.selectable()
            if len(pool) < len(self.online):
                self.note_unserved(rnd)
            selected = self.sample(rnd, pool)
            self.devices.selected(selected, rnd)
            # the population sampled from is the pool: devices of unserved regions never are
            self.privacy.note_sampling(rnd, sum(len(v) for v in selected.values()), len(pool))
            self.announce(state, "running", selected)
            log.info("round %d/%d announced to %d devices", rnd, self.rounds,
                     sum(len(v) for v in selected.values()))
            # `hub status` shows the selection while the round runs
            self.publish_status(round=state.round, version=state.version, rounds=self.rounds)
        fl = self.inflight
        assert fl is not None
        self.round_started(rnd, fl.started)
        grace = self.policy.deadline_s * 0.2 + 10.0
        deadline = fl.started + self.policy.deadline_s + grace
        while not self.round_closed() and time.time() < deadline:
            event = self.next_event(deadline - time.time())
            while event is not None:
                self.handle_event(event, state)
                event = self.next_event(0.0) if not self.events.empty() else None
            self.flush_acks()
        self.flush_acks()
        self.finish_round(state, fl)

    def flush_acks(self) -> None:
        if self.dirty and self.inflight is not None:
            save_inflight(self.state_dir, self.inflight)
            self.dirty = False
        acks, self.pending_acks = self.pending_acks, []
        for region, ack in acks:
            self.session.publish_raw(self.topics.partial_ack(region), encode_json(ack))

    def finish_round(self, state: CloudState, fl: CloudIntake) -> None:
        applied = fl.total.count >= self.policy.min_quorum and fl.total.weight > 0
        selected = sum(len(v) for v in fl.selected.values())
        step_norm = None
        if applied:  # the round's shared tensors; the others keep their global value
            # a robust rule's combination of the regions' estimates; or the weighted mean,
            # noised first (over the announced count): the optimizer post-processes
            mean = fl.mean(self.policy.aggregation)
            if mean is None:
                mean = self.privacy.mean(fl.total, selected)
            else:
                log.info("round %d: %d regional estimates combined by %s (weighted by their "
                         "update counts)", fl.round, len(fl.estimates),
                         self.policy.aggregation.rule)
            step_norm = l2_norm(mean)
            old = {n: state.params[n] for n in mean}
            change, optimizer = server_change(mean, self.config.server_optimizer,
                                              self.config.server_step, state.optimizer)
            if state.optimizer is not None:  # sgd keeps no state (nor checkpoint entry)
                state.optimizer = optimizer
            if self.downlink.enable:  # the new global is what devices reconstruct
                new, state.downlink = downlink_step(
                    old, change, self.downlink, self.config.federation.seed, fl.round,
                    state.version, state.downlink or DownlinkState())
            else:
                new = apply_server_update(old, change)
            state.params = {**state.params, **new}
            state.version += 1
            self.devices.accepted(fl.applied)
        else:
            for uid in fl.applied:
                fl.dropped[uid] = "below_quorum"
        state.round = fl.round
        dp_fields = self.privacy.close_round(fl.round, selected, len(self.selectable()),
                                              applied, fl.unclipped, fl.total.count)
        split_fields = self.next_split(state, fl, applied)
        summary = RoundSummary(
            federation=self.federation, round=fl.round, version=state.version,
            mode=self.policy.mode, selected=selected,
            applied=fl.applied if applied else [], dropped=fl.dropped,
            rejected=dict(fl.rejected), duplicates=fl.duplicates,
            regions_reported=sorted(fl.finals), applied_step=applied, bytes_in=fl.bytes_in,
            started_at=fl.started, duration_s=time.time() - fl.started, **dp_fields,
            **split_fields, step_norm=step_norm,
        )
        record: dict[str, Any] = summary.model_dump(mode="json")
        state.history.append(record)
        self.save_checkpoint(state)
        clear_inflight(self.state_dir)
        self.inflight = None
        self.close_now = False
        self.session.publish_raw(self.topics.summary, self.summary_payload(summary))
        self.round_done(fl.round, accepted=fl.total.count)
        self.publish_status(round=fl.round, version=state.version, accepted=fl.total.count,
                            rounds=self.rounds)
        log.info("round %d done: %d updates from %d regions in %.1fs%s", fl.round,
                 fl.total.count, len(fl.finals), summary.duration_s,
                 "" if applied else " (below quorum, not applied)")

    def next_split(self, state: CloudState, fl: CloudIntake, applied: bool
                   ) -> dict[str, Any]:
        """Decide the next round's shared tensors (adaptive split, head sharing) and return
        the summary's ``shared``/``next_shared`` fields ({} under a fixed split)."""
        split = SplitPolicy(self.config, list(state.params))
        if not split.per_round:
            return {}
        current = sorted(fl.total.sums)
        nxt = split.next(fl.round, fl.importance, current, applied)
        if nxt != current:
            log.info("round %d: next round shares %s (was %s; %d importance reports)",
                     fl.round, describe(nxt), describe(current), fl.importance.reports)
        state.shared = nxt
        return {"shared": current, "next_shared": nxt}

    def summary_payload(self, summary: RoundSummary) -> bytes:
        """The summary as one raw message.  Update id lists grow with the round (and forged
        partials can inflate them); past the payload limit they are left out of the
        published copy, never the checkpoint, so a large round cannot stop the cloud."""
        payload = encode_json(summary)
        if len(payload) <= self.session.payload_limit:
            return payload
        log.warning("round %d summary is %d bytes > payload limit; publishing it without "
                    "the %d applied and %d dropped ids (they are in the checkpoint)",
                    summary.round, len(payload), len(summary.applied), len(summary.dropped))
        return encode_json(summary.model_copy(update={"applied": [], "dropped": {}}))

    # ------------------------------------------------------------------ partials
    def on_partial(self, event: Event, state: CloudState) -> None:
        """Decode a regional partial, hand it to the round's intake, queue its ack."""
        fl = self.inflight
        assert fl is not None
        header, env = decode_message(PartialHeader, event.payload,
                                     max_bytes=self.config.transport.max_message_bytes)
        if header.federation != self.federation:
            raise WireError("wrong_federation", header.federation)
        if not event.topic.endswith(f"/partial/{header.region}"):
            raise WireError("wrong_topic", event.topic)
        try:
            ack = fl.accept(header, env.tensors, version=state.version, policy=self.policy,
                            shared_set_changes=split_changes(self.config))
        except WireError as err:
            # a negative acknowledgement, so the region stops resending what will never be
            # taken (its hub logs and counts the updates lost); sent for a partial whose
            # header names the region of the topic it came on, and counted by the caller
            pid = header.pid
            log.warning("refused partial %s (%d updates): %s", pid, header.count, err)
            self.counters["partials.refused"] += 1
            self.pending_acks.append((header.region, Ack(kind="partial", id=pid,
                                                         accepted=False, reason=err.reason)))
            raise
        if ack.reason != "duplicate":  # a redelivery changes a count, saved with the next
            self.dirty = True
        if ack.reason in DROPPED:
            self.counters[f"dropped.{ack.reason}"] += header.count
            log.info("dropped %s (%d updates): %s", ack.id, header.count, ack.reason)
        self.pending_acks.append((header.region, ack))
