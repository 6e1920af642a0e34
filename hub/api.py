"""The hubs as a library: serve a cloud or regional hub in this process (what ``hub serve``
runs, and the command is a thin layer over these calls), or start one as a managed child
process.

``serve_cloud`` and ``serve_regional`` block until the federation finishes and return the
exit status; Ctrl-C (or SIGTERM after ``fedsa_common.process.cli_common.stop_on_sigterm``) stops
them with state as after the last persisted step.  Mistakes raise ``UserError`` types
(``ConfigError``, ``LifecycleError``, ``OptionError``, ``BrokerUnreachable``) whose
``option`` names the ``hub serve`` option concerned.  The hub classes load when a hub
starts.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsa_common.federation.config import (
    NUM_LABELS_REQUIRED,
    ConfigError,
    FederationConfig,
    federation_config_from,
    load_federation_config,
)
from fedsa_common.process.managed import ManagedProcess, option_args
from fedsa_common.wire.errors import OptionError
from fedsa_common.wire.names import check_name
from hub.metrics_devices import MAX_DEVICES

if TYPE_CHECKING:
    from fedsa_common.net.broker import BrokerProcess
    from fedsa_common.net.broker_auth import BrokerAuth

log = logging.getLogger("fedsa.hub")

# The network thread needs the GIL for every message it receives; with Python's default
# 5 ms switch interval it waits that long behind each decode of the main thread, which
# capped ingest at a few hundred updates per second.
SWITCH_INTERVAL_S = 0.0002


def tune_process(torch_threads: int = 1) -> None:
    """Process-wide settings a hub serves best with (``hub serve`` applies them): torch
    threads (a hub's work is many small tensor operations, where thread hand-offs cost more
    than they gain) and a short GIL switch interval.  Left to the caller because they change
    the whole process."""
    import torch

    torch.set_num_threads(torch_threads)
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def _name(kind: str, value: str, option: str) -> str:
    try:
        return check_name(kind, value)
    except ValueError as err:
        raise OptionError(str(err), option) from None


CloudConfig = FederationConfig | Mapping[str, Any] | str | Path | None


def cloud_config(config: CloudConfig, federation: str) -> FederationConfig:
    """The cloud's configuration named ``federation``: a ``FederationConfig``, the same as a
    dict (the YAML file's content) or a YAML file (``ConfigError`` naming the bad fields), or
    None for the defaults; a classifier's ``model.num_labels`` is required (the cloud sizes
    the head from it before any device reports)."""
    _name("federation", federation, "--federation")
    if isinstance(config, FederationConfig):
        cfg = config
    elif isinstance(config, Mapping):
        cfg = federation_config_from(dict(config))
    else:
        cfg = load_federation_config(None if config is None else Path(config))
    if cfg.model.needs_num_labels:
        raise ConfigError(f"model.num_labels: {NUM_LABELS_REQUIRED}")
    return cfg.model_copy(update={"federation": cfg.federation.model_copy(
        update={"name": federation})})


@contextlib.contextmanager
def _metrics(hub: Any, port: int, host: str, max_devices: int = MAX_DEVICES
             ) -> Iterator[None]:
    """Serve the hub's metrics while the block runs (nothing for port 0): a library caller
    that runs several hubs one after the other must not keep their ports bound."""
    if not port:
        yield
        return
    from hub.metrics import serve_metrics

    try:
        server = serve_metrics(hub, port, host, max_devices)
    except OSError as err:
        raise OptionError(f"cannot serve metrics on {host}:{port}: {err}",
                          "--metrics-port") from None
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def serve_regional(broker: str, federation: str, region: str, state_dir: str | Path, *,
                   auth: BrokerAuth | None = None, payload_limit: int = 1_000_000,
                   connect_timeout_s: float = 300.0, report_every_s: float = 30.0,
                   secagg_authority: bytes | None = None, metrics_port: int = 0,
                   metrics_host: str = "127.0.0.1", intake_shards: int = 1,
                   intake_options: Mapping[str, Any] | None = None) -> int:
    """Run the regional hub of ``region`` until the federation finishes; its exit status.

    ``secagg_authority``: the secure-aggregation authority's public key (with it the hub
    leaves a device whose certificate does not verify out of the round).  ``metrics_port``
    (0: off) serves Prometheus metrics.  ``intake_shards`` > 1: this process is the
    region's leader (``hub.region_leader``) and runs that many intake processes as children
    (``hub.intake_pool``), started with ``intake_options`` (``hub serve`` options by their
    Python names: ``broker``, ``credentials``, ...; default: ``broker`` alone)."""
    _name("federation", federation, "--federation")
    _name("region", region, "--region")
    if intake_shards > 1:
        from hub.intake_pool import IntakePool
        from hub.region_leader import RegionLeader

        leader = RegionLeader(broker, federation, region, intake_shards, Path(state_dir),
                              payload_limit, auth=auth, connect_timeout_s=connect_timeout_s,
                              report_every_s=report_every_s)
        options = dict(intake_options or {"federation": federation, "region": region,
                                          "broker": broker})
        with IntakePool(intake_shards, Path(state_dir), options), \
                _metrics(leader, metrics_port, metrics_host):
            return leader.run()
    from hub.regional import RegionalHub

    hub = RegionalHub(broker, federation, region, Path(state_dir), payload_limit, auth=auth,
                      connect_timeout_s=connect_timeout_s, report_every_s=report_every_s,
                      secagg_authority=secagg_authority)
    with _metrics(hub, metrics_port, metrics_host):
        return hub.run()


def serve_intake(broker: str, federation: str, region: str, shard: int, shards: int,
                 state_dir: str | Path, *, auth: BrokerAuth | None = None,
                 payload_limit: int = 1_000_000, connect_timeout_s: float = 300.0,
                 report_every_s: float = 30.0, leader_pid: int | None = None) -> int:
    """Run intake process ``shard`` of ``shards`` of ``region`` (``hub.intake_worker``)
    until the federation finishes; its exit status.  ``leader_pid``: the region leader that
    started it; the process stops (as on SIGTERM) once that leader is gone, e.g. SIGKILLed
    (``fedsa_common.process.parent_watch``)."""
    _name("federation", federation, "--federation")
    _name("region", region, "--region")
    from hub.intake_worker import IntakeWorker

    if leader_pid is not None:
        from fedsa_common.process.parent_watch import exit_with_parent

        exit_with_parent(leader_pid)

    return IntakeWorker(broker, federation, region, shard, shards, Path(state_dir),
                        payload_limit, auth=auth, connect_timeout_s=connect_timeout_s,
                        report_every_s=report_every_s).run()


def serve_cloud(config: CloudConfig, federation: str,
                state_dir: str | Path, *, broker: str | None = None,
                auth: BrokerAuth | None = None, hub_grace_s: float = 30.0,
                connect_timeout_s: float = 300.0, report_every_s: float = 30.0,
                metrics_port: int = 0, metrics_host: str = "127.0.0.1",
                metrics_max_devices: int = MAX_DEVICES,
                on_broker: Callable[[BrokerProcess], None] | None = None) -> int:
    """Run the cloud hub of ``federation`` until it finishes; its exit status.

    ``config``: see ``cloud_config``.  Without ``broker`` the cloud starts one (Mosquitto if
    installed, else the embedded broker), tells ``on_broker`` (e.g. to print its URL) and
    stops it when the hub ends.  A restart with the same ``state_dir`` resumes from the
    checkpoint; a configuration that does not fit it raises ``LifecycleError``.
    ``metrics_max_devices``: devices with per-device metric series (0: none)."""
    cfg = cloud_config(config, federation)
    from fedsa_common.net.broker import start_broker
    from hub.cloud import CloudHub

    started = None
    if broker is None:
        started = start_broker()
        broker = started.url
        if on_broker is not None:
            on_broker(started)
    cloud = None
    try:
        cloud = CloudHub(broker, cfg, Path(state_dir), auth=auth, hub_grace_s=hub_grace_s,
                         connect_timeout_s=connect_timeout_s, report_every_s=report_every_s)
        with _metrics(cloud, metrics_port, metrics_host, metrics_max_devices):
            return cloud.run()
    finally:
        if started is not None:
            if cloud is not None:  # disconnect first, or it logs the broker's end as a loss
                cloud.session.close()
            started.stop()


def serve_args(role: str, federation: str, state_dir: str | Path, **options: Any
               ) -> list[str]:
    """``hub serve``'s arguments (after ``hub``) for a hub with these options, by their
    Python name (``broker``, ``region``, ``config``, ``credentials``, ``metrics_port``,
    ``hub_grace``, ...; None leaves one out)."""
    if role not in ("cloud", "regional", "intake"):
        raise OptionError(f"role {role!r} must be cloud, regional or intake", "--role")
    _name("federation", federation, "--federation")
    return ["serve", *option_args({"role": role, "federation": federation,
                                   "state_dir": state_dir, **options})]


def start_hub(role: str, federation: str, state_dir: str | Path, *,
              log_path: str | Path | None = None, **options: Any) -> ManagedProcess:
    """Start ``hub serve --role ROLE`` as a child process (its output to ``log_path``);
    ``options`` as for ``serve_args``.  ``stop()`` (or leaving a ``with`` block) stops it
    cleanly, ``wait()`` returns its exit status."""
    return ManagedProcess("hub", serve_args(role, federation, state_dir, **options),
                          None if log_path is None else Path(log_path))
