"""``hub status``: a federation's state from what its hubs left retained on the broker.

Hubs publish a retained JSON status (``fedsa/F/status/ROLE/NAME``, with a last will that
says ``online: false``), the cloud a retained round announcement, and devices a retained
presence.  A region served by several intake processes (``intake_shards``) has one status
per process on ``fedsa/F/region/R/intake/status/SHARD`` beside its leader's; they stay in
the region's site (its bridge does not carry them), and are listed under the region's hub.
Reading those needs no access to any hub, so an operator can ask any broker the
federation uses (a site's broker for its intake processes).  Collection (MQTT) and
rendering (pure) are separate so the rendering is tested without a broker.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fedsa_common.net.broker_auth import BrokerAuth
from fedsa_common.net.transport import MqttSession
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.liveness import status_serving
from fedsa_common.wire.protocol import AnnounceHeader, Topics, decode_message

OVERDUE_FACTOR = 2.0  # a round running this many deadlines is reported as stalled
DEVICE_LINES_MAX = 50  # more devices than this are listed by --json only


@dataclass
class Snapshot:
    """Everything retained for one federation, as found on the broker."""

    federation: str
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)  # "role/name" -> body
    announce: dict[str, Any] | None = None  # AnnounceHeader fields, without tensors
    presence: dict[str, bool] = field(default_factory=dict)  # "region/client" -> online
    # region -> shard -> the status of that intake process (intake_shards > 1)
    intake: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.statuses and self.announce is None and not self.intake


def collect(broker_url: str, federation: str, timeout_s: float = 5.0,
            settle_s: float = 1.0, *, auth: BrokerAuth | None = None) -> Snapshot:
    """Subscribe, gather retained messages, and return once they stop arriving.

    Retained messages come right after the subscription; waiting ``settle_s`` after the
    last one is enough, and ``timeout_s`` bounds the wait when nothing is retained.
    Raises ``ConnectionError`` when the broker cannot be reached within ``timeout_s``.
    """
    topics = Topics(federation)
    snap = Snapshot(federation)
    lock = threading.Lock()
    last = [0.0]

    def seen() -> None:
        last[0] = time.monotonic()

    def on_status(topic: str, payload: bytes) -> None:
        key = topic.removeprefix(f"{topics.base}/status/")
        try:
            body = json.loads(payload) if payload else None
        except ValueError:
            body = {"online": None, "error": "status is not JSON"}
        with lock:
            if isinstance(body, dict):
                snap.statuses[key] = body
            seen()

    def on_intake_status(topic: str, payload: bytes) -> None:
        region, _, shard = topic.removeprefix(f"{topics.base}/region/").partition(
            "/intake/status/")
        try:
            body = json.loads(payload) if payload else None
            number = int(shard)
        except ValueError:
            return
        with lock:
            if isinstance(body, dict):
                snap.intake.setdefault(region, {})[number] = body
            seen()

    def on_announce(_topic: str, payload: bytes) -> None:
        if not payload:
            return
        try:
            header, _ = decode_message(AnnounceHeader, payload, max_bytes=256_000_000)
        except WireError:
            return
        with lock:
            snap.announce = header.model_dump(mode="json", exclude={"config"}) | {
                "rounds": header.config.get("rounds")}
            seen()

    def on_presence(topic: str, payload: bytes) -> None:
        key = topic.removeprefix(f"{topics.base}/presence/")
        try:
            online = bool(json.loads(payload).get("online")) if payload else False
        except (ValueError, AttributeError):
            return
        with lock:
            snap.presence[key] = online
            seen()

    session = MqttSession(broker_url, client_id=f"status-{federation}-{time.time_ns()}",
                          clean_session=True, max_message_bytes=256_000_000,
                          reconnect_max_s=2.0, auth=auth)
    session.subscribe_raw(topics.status_filter, on_status)
    session.subscribe_raw(topics.presence_filter, on_presence)
    session.subscribe_raw(topics.intake_status("+", "+"), on_intake_status)
    session.subscribe(topics.announce, on_announce)
    start = time.monotonic()
    session.connect(timeout=timeout_s)
    try:
        while True:
            now = time.monotonic()
            if now - start >= timeout_s:
                break
            with lock:
                if last[0] and now - last[0] >= settle_s:
                    break
            time.sleep(0.05)
    finally:
        session.close()
    return snap


def unserved_regions(snap: Snapshot) -> dict[str, list[str]]:
    """Regions with online devices and no serving regional hub, with those devices: the
    cloud does not select them (nothing would collect their updates)."""
    unserved: dict[str, list[str]] = {}
    for key, online in sorted(snap.presence.items()):
        region, _, client = key.partition("/")
        hub = snap.statuses.get(f"regional/{region}")
        if online and (hub is None or not status_serving(hub)):
            unserved.setdefault(region, []).append(client)
    return unserved


def device_rows(snap: Snapshot) -> list[dict[str, Any]]:
    """One row per device: online (its retained presence; None when none is retained),
    and the last round it was selected for and whose step took its update (the cloud's
    retained status; None when the cloud has not said)."""
    cloud = snap.statuses.get("cloud/cloud") or {}
    known = cloud.get("devices")
    table: dict[str, Any] = known if isinstance(known, dict) else {}
    rows: dict[str, dict[str, Any]] = {}
    for key, online in snap.presence.items():
        region, _, client = key.partition("/")
        rows[client] = {"client": client, "region": region, "online": online,
                        "last_selected": None, "last_accepted": None}
    for client, rec in table.items():
        if not isinstance(rec, dict):
            continue
        row = rows.setdefault(client, {"client": client, "region": rec.get("region"),
                                       "online": None})
        row["last_selected"] = rec.get("last_selected")
        row["last_accepted"] = rec.get("last_accepted")
    return sorted(rows.values(), key=lambda r: (str(r["region"]), r["client"]))


def duplicate_clients(snap: Snapshot) -> list[dict[str, Any]]:
    """Client ids that two running devices claimed, as the hubs flagged them
    (hub/duplicate_ids.py; a regional hub in its region, the cloud across regions): region
    (``north,south`` for copies in two regions), client, the two sessions, the newer one
    (told to leave) and when it was detected; one entry per pair, whichever hub saw it."""
    found: dict[tuple[str, Any], dict[str, Any]] = {}
    for key, body in sorted(snap.statuses.items()):
        role, _, name = key.partition("/")
        flagged = body.get("duplicate_clients")
        if role not in ("regional", "cloud") or not isinstance(flagged, dict):
            continue
        for client, rec in sorted(flagged.items()):
            if not isinstance(rec, dict) or (client, rec.get("newer")) in found:
                continue
            regions = [r for r in rec.get("regions") or [] if isinstance(r, str) and r]
            region = ",".join(dict.fromkeys(regions)) or name
            found[(client, rec.get("newer"))] = {
                "region": region, "client": client, "sessions": rec.get("sessions"),
                "newer": rec.get("newer"), "detected": rec.get("detected")}
    return list(found.values())


def _device_line(row: dict[str, Any]) -> str:
    state = {True: "online", False: "offline", None: "unknown"}[row["online"]]
    name = f"{row['region']}/{row['client']}"

    def rnd(v: Any) -> str:
        return "-" if v is None else str(v)

    return (f"  {name:<22} {state:<8} last selected round {rnd(row['last_selected'])}, "
            f"last accepted update round {rnd(row['last_accepted'])}")


def _age(ts: Any, now: float) -> str:
    if not isinstance(ts, int | float) or ts <= 0:
        return "age unknown"
    secs = max(0.0, now - ts)
    return f"{secs:.0f}s ago" if secs < 120 else f"{secs / 60:.0f} min ago"


def _hub_line(key: str, body: dict[str, Any], now: float, indent: str = "  ") -> str:
    counters = body.get("counters") or {}
    rejected = sum(v for k, v in counters.items() if k.startswith("rejected."))
    state = "finished" if body.get("finished") else (
        "online" if body.get("online") else "OFFLINE")
    rnd = body.get("round")
    width = 24 - len(indent)
    parts = [f"{indent}{key:<{width}} {state:<8} round {'-' if rnd is None else rnd}"]
    if "updates.accepted" in counters:
        parts.append(f"updates accepted {counters['updates.accepted']}")
    parts.append(f"rejected {rejected}")
    if body.get("online"):
        parts.append(f"status {_age(body.get('ts'), now)}")
    return ", ".join(parts)


def _down(body: dict[str, Any]) -> bool:
    """Its last will (or a status) says offline, and it had not finished."""
    return not body.get("online") and not body.get("finished")


def render(snap: Snapshot, now: float | None = None) -> tuple[str, bool]:
    """The report an operator reads, and whether the federation looks healthy.

    Unhealthy: a hub (or a region's intake process) whose last will says offline, no cloud
    status while rounds run, or a round running longer than ``OVERDUE_FACTOR`` deadlines.
    """
    now = time.time() if now is None else now
    lines: list[str] = []
    problems: list[str] = []
    ann = snap.announce
    if ann is None:
        lines.append(f"federation {snap.federation}: no round announcement retained")
    else:
        total = ann.get("rounds")
        of = f" of {total}" if total else ""
        if ann["status"] == "finished":
            lines.append(f"federation {snap.federation}: finished after round {ann['round']}"
                         f"{of} (version {ann['version']})")
        else:
            running = max(0.0, now - float(ann.get("issued_at") or now))
            lines.append(f"federation {snap.federation}: round {ann['round']}{of} running "
                         f"for {running:.0f}s (deadline {ann['deadline_s']:.0f}s), "
                         f"version {ann['version']}")
            if running > OVERDUE_FACTOR * float(ann["deadline_s"]):
                problems.append(f"round {ann['round']} overdue ({running:.0f}s)")
            selected = ann.get("selected") or {}
            n_sel = sum(len(v) for v in selected.values())
            per_region = ", ".join(f"{r} {len(c)}" for r, c in sorted(selected.items()))
            lines.append(f"participants: {n_sel} selected"
                         + (f" ({per_region})" if per_region else ""))
    finished = ann is not None and ann["status"] == "finished"
    if snap.presence:
        online = sum(snap.presence.values())
        lines.append(f"devices online: {online} of {len(snap.presence)} seen")
    for region, clients in unserved_regions(snap).items() if not finished else ():
        lines.append(f"region {region}: no regional hub serves it; its {len(clients)} online "
                     f"device{'' if len(clients) == 1 else 's'} ({', '.join(clients)}) "
                     "cannot be selected")
        problems.append(f"region {region} has no regional hub")
    rows = device_rows(snap)
    if rows and len(rows) <= DEVICE_LINES_MAX:
        lines.append("devices:")
        lines.extend(_device_line(row) for row in rows)
    elif rows:
        lines.append(f"devices: {len(rows)} (--json lists them)")
    for dup in duplicate_clients(snap):
        lines.append(f"client id {dup['region']}/{dup['client']}: two running devices claim "
                     f"it (sessions {', '.join(map(str, dup['sessions'] or []))}), detected "
                     f"{_age(dup['detected'], now)}; the newer ({dup['newer']}) was told to "
                     "leave: give each device its own --client-id")
    lines.append("hubs:" if snap.statuses or snap.intake else "hubs: no retained hub status")
    keys = set(snap.statuses) | {f"regional/{region}" for region in snap.intake}
    for key in sorted(keys, key=lambda k: (not k.startswith("cloud/"), k)):
        body = snap.statuses.get(key)
        if body is None:  # intake processes whose leader left no status
            lines.append(f"  {key:<22} no status retained")
        else:
            lines.append(_hub_line(key, body, now))
            if _down(body) and not finished:
                problems.append(f"{key} offline")
        role, _, region = key.partition("/")
        intakes = snap.intake.get(region, {}) if role == "regional" else {}
        for shard, intake in sorted(intakes.items()):
            lines.append(_hub_line(f"intake {shard}", intake, now, indent="    "))
            if _down(intake) and not finished:
                problems.append(f"{key} intake {shard} offline")
    has_cloud = any(k.startswith("cloud/") for k in snap.statuses)
    if ann is not None and not finished and not has_cloud and ann["round"] > 1:
        problems.append("no cloud hub status")  # the cloud first reports after round 1
    if finished:
        lines.append("health: finished")
    elif problems:
        lines.append("health: DEGRADED: " + "; ".join(problems))
    else:
        lines.append("health: ok")
    return "\n".join(lines), not problems
