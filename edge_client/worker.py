"""Hosting devices in one process: ``edge-client join`` hosts one real device, a scenario
worker (``edge-client worker --spec FILE``) several virtual ones over one shared base model.

The worker spec file is written by the scenario runner (scenarios/runner.py); what it
simulates of a device (attack, slow compute and links, online windows) becomes that
device's hooks (edge_client/simulation.py), so the device itself runs as a real one.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_client.data import DataSpec
from edge_client.device import Device, DeviceSpec
from edge_client.host import ModelHost
from edge_client.round_hooks import NO_HOOKS, RoundHooks
from edge_client.simulation import Simulation
from fedsa_common.net.broker_auth import credentials_auth, load_credentials
from fedsa_common.process.atomic import write_json
from fedsa_common.wire.errors import UserError

log = logging.getLogger("fedsa.device")


@dataclass(frozen=True)
class Hosted:
    """One device a process hosts: its spec, its hooks, and when it is online."""

    spec: DeviceSpec
    hooks: RoundHooks = NO_HOOKS
    # absolute (epoch seconds) [start, end) windows in which it is online; None = always
    online: list[tuple[float, float]] | None = None


def run_devices(devices: list[Hosted], broker_url: str, host: ModelHost | None = None,
                payload_limit: int = 1_000_000) -> int:
    """Run several virtual devices over one shared base model until the federation ends.

    Returns 1 when a device failed; raises the first error when every failure was a user's
    to fix (a ``UserError``: a broker never reached, a client id another device runs).

    A device with online windows is started at the beginning of each window (a fresh
    session over its state directory, as after a reboot) and vanishes at its end.
    """
    host = host or ModelHost()
    errors: list[BaseException] = []
    finished = threading.Event()
    live: set[Device] = set()  # the running sessions, for an interrupt to stop
    lock = threading.Lock()

    def serve(hosted: Hosted, over: threading.Event) -> None:
        spec = hosted.spec
        windows = hosted.online or [(0.0, float("inf"))]
        try:
            for start, end in windows:
                if finished.wait(max(0.0, start - time.time())):
                    return
                device = Device(spec, broker_url, host, payload_limit, hooks=hosted.hooks)
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
        except UserError as err:  # one line: the message says what and why (an unreachable
            log.error("%s: %s", spec.client, err)  # broker, a duplicate client id)
            errors.append(err)
        except BaseException as err:  # surfaced below; one device failing must be visible
            log.exception("%s failed", spec.client)
            errors.append(err)
        finally:
            over.set()

    # Waited for through events, not Thread.join: on Python 3.11 a join interrupted by
    # Ctrl-C marks the thread as stopped, so a second join would return at once. Daemon
    # threads, so that after a second interrupt the process exits without them.
    ended = [threading.Event() for _ in devices]
    for hosted, done in zip(devices, ended, strict=True):
        threading.Thread(target=serve, args=(hosted, done), name=hosted.spec.client,
                         daemon=True).start()
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
    if errors and all(isinstance(e, UserError) for e in errors):
        raise errors[0]  # nothing else went wrong: the caller names what to fix
    return 1 if errors else 0


def read_worker_spec(path: Path) -> tuple[str, list[Hosted], dict[str, Any]]:
    """The worker spec file written by the scenario runner: the broker, the devices with
    what the scenario simulates of each, and the whole file (worker-wide options)."""
    raw = json.loads(Path(path).read_text())
    devices = []
    for d in raw["devices"]:
        spec = DeviceSpec(
            client=d["client"], region=d["region"], federation=raw["federation"],
            data=DataSpec.model_validate(d["data"]), state_dir=Path(d["state_dir"]),
            memory_mb=d.get("memory_mb"),
            auth=credentials_auth(Path(d["credentials"]), federation=raw["federation"],
                                  role="device", region=d["region"], client=d["client"])
            if d.get("credentials") else None,
            secagg_identity=load_credentials(Path(d["credentials"])).secagg_identity()
            if d.get("credentials") else None,
            secagg_unauthenticated=bool(d.get("secagg_unauthenticated", False)))
        simulation = Simulation.from_json(d)
        devices.append(Hosted(spec, simulation, simulation.conditions.online))
    return raw["broker"], devices, raw


def write_link_report(path: Path, devices: list[Hosted]) -> None:
    """What each device's simulated link lost (``published`` and ``received`` messages, over
    all its sessions), for the scenario report; devices without one are left out."""
    write_json(path, {h.spec.client: h.hooks.link_dropped() for h in devices
                      if isinstance(h.hooks, Simulation) and h.hooks.link is not None})
