"""The device as a library: join a federation in this process (what ``edge-client join``
runs; the command is a thin layer over ``join``), or start a device as a managed child
process; ``load_devices`` and ``start_load_devices`` do the same for many light devices
(``edge-client load``, a load generator).

``join`` checks everything cheap first (names, precision, the data spec and file, the state
directory's lock and owner), before torch and the model load or the broker is contacted,
and raises ``UserError`` types (``OptionError``, ``DataError``, ``StateDirError``,
``BrokerUnreachable``) whose ``option`` names the ``edge-client join`` option concerned.
Light to import: torch loads when a device starts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsa_common.process.managed import ManagedProcess, option_args
from fedsa_common.wire.errors import OptionError
from fedsa_common.wire.names import check_name

if TYPE_CHECKING:
    from fedsa_common.net.broker_auth import BrokerAuth
    from fedsa_common.privacy.secagg.identity import DeviceIdentity

log = logging.getLogger("fedsa.device")

PRECISIONS = ("nf4", "fp4", "int8", "fp16", "bf16", "fp32")
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"


def join(federation: str, region: str, client_id: str, data: str, state_dir: str | Path, *,
         broker: str = DEFAULT_BROKER, auth: BrokerAuth | None = None,
         secagg_identity: DeviceIdentity | None = None, secagg_unauthenticated: bool = False,
         precision: str | None = None, threads: int = 0, memory_mb: float | None = None,
         report_every_s: float = 30.0, connect_timeout_s: float = 600.0) -> int:
    """Join ``federation`` as device ``client_id`` of ``region`` and train whenever
    selected, until the federation finishes; the exit status (1 when the device failed).

    ``data``: a data spec as ``--data`` takes it (``/data/notes.csv``,
    ``20newsgroups?classes=4&partition=dirichlet&num_clients=6&shard=0``).  The state
    directory is locked while the device runs: a second device on it raises
    ``StateDirBusy``.  Ctrl-C (or SIGTERM after ``cli_common.stop_on_sigterm``) stops the
    device after its current step."""
    _check_names(("--federation", "federation", federation), ("--region", "region", region),
                 ("--client-id", "client id", client_id))
    if precision not in (None, *PRECISIONS):
        raise OptionError(f"unknown precision {precision!r}; one of {', '.join(PRECISIONS)}",
                          "--precision")
    from edge_client.data import check_device_data
    from edge_client.state_lock import StateDirLock, check_owner

    data_spec, share = check_device_data(data)  # DataError names the file, line or option
    log.info("%s: data %s: %d training and %d test rows, %s", client_id, data_spec.source,
             len(share.train.texts), len(share.test.texts),
             "prompt/response pairs" if share.prompt_response else f"{share.num_labels} labels")
    state_dir = Path(state_dir)
    # held until the device ends; the kernel drops it after a crash too
    with StateDirLock(state_dir, client_id):
        check_owner(state_dir, client_id, region, federation)
        import torch

        from edge_client.device import DeviceSpec
        from edge_client.host import ModelHost
        from edge_client.worker import Hosted, run_devices

        if threads:
            torch.set_num_threads(threads)
        spec = DeviceSpec(client=client_id, region=region, federation=federation,
                          data=data_spec, state_dir=state_dir, memory_mb=memory_mb,
                          auth=auth, secagg_identity=secagg_identity,
                          secagg_unauthenticated=secagg_unauthenticated,
                          report_every_s=report_every_s, connect_timeout_s=connect_timeout_s)
        # a broker not reached within connect_timeout_s raises BrokerUnreachable
        return run_devices([Hosted(spec)], broker, ModelHost(precision))


def start_device(federation: str, region: str, client_id: str, data: str,
                 state_dir: str | Path, *, log_path: str | Path | None = None,
                 **options: Any) -> ManagedProcess:
    """Start ``edge-client join`` as a child process (its output to ``log_path``);
    ``options`` are ``join`` options by their Python name (``broker``, ``credentials``,
    ``precision``, ``memory_mb``, ...).  ``stop()`` stops it cleanly (the device says it is
    offline), ``wait()`` returns its exit status."""
    args = ["join", *option_args({"federation": federation, "region": region,
                                  "client_id": client_id, "data": data,
                                  "state_dir": state_dir, **options})]
    return ManagedProcess("edge_client", args, None if log_path is None else Path(log_path))


def load_devices(federation: str, regions: Sequence[str], devices: int, *,
         broker: str = DEFAULT_BROKER, auth: BrokerAuth | None = None,
         client_prefix: str = "load-", samples: int = 10, workers: int = 4,
         report_every_s: float = 30.0, connect_timeout_s: float = 600.0) -> int:
    """Run ``devices`` light devices in each of ``regions`` in this process until the
    federation finishes (what ``edge-client load`` runs); the exit status (1 when updates
    were left unacknowledged).

    Light devices (edge_client/light.py) join like real ones, with a session, presence and
    acknowledgements each, and send real encoded updates of synthesised deltas without a
    model: a load generator for hubs and brokers.  Client ids are ``CLIENT_PREFIX
    REGION-0000``, ...: give each load process its own prefix.  A process holds as many
    devices as its file-descriptor limit allows (one each, plus a reserve; the soft limit is
    raised to the hard one where needed, ``fedsa_common.net.fd_limit``): more are refused
    with an ``OptionError`` naming ``--devices``."""
    if not regions:
        raise OptionError("give at least one region", "--region")
    _check_names(("--federation", "federation", federation),
                 *(("--region", "region", r) for r in regions),
                 *(("--client-prefix", "client id", f"{client_prefix}{r}-0000")
                   for r in regions))
    if len(set(regions)) != len(regions):
        raise OptionError(f"a region is given twice: {', '.join(regions)}", "--region")
    for option, value in (("--devices", devices), ("--samples", samples),
                          ("--workers", workers)):
        if value < 1:
            raise OptionError(f"{option.removeprefix('--')} must be at least 1, not {value}",
                              option)
    from fedsa_common.net.fd_limit import ensure_sessions_fit

    ensure_sessions_fit(devices * len(regions), option="--devices",
                        what=f"light devices ({devices} in each of {len(regions)} regions, "
                             "an MQTT session each)")
    from edge_client.light import light_specs, run_light_devices

    specs = light_specs(federation, dict.fromkeys(regions, devices), prefix=client_prefix,
                        samples=samples)
    return run_light_devices(specs, broker, auth=auth, workers=workers,
                             connect_timeout_s=connect_timeout_s,
                             report_every_s=report_every_s)


def start_load_devices(federation: str, regions: Sequence[str], devices: int, *,
               log_path: str | Path | None = None, **options: Any) -> ManagedProcess:
    """Start ``edge-client load`` as a child process (its output to ``log_path``);
    ``options`` are ``load`` options by their Python name (``broker``, ``client_prefix``,
    ``samples``, ``workers``, ...).  ``stop()`` stops it (its devices say they are
    offline), ``wait()`` returns its exit status."""
    args = ["load", *option_args({"federation": federation, "region": list(regions),
                                  "devices": devices, **options})]
    return ManagedProcess("edge_client", args, None if log_path is None else Path(log_path))


def _check_names(*names: tuple[str, str, str]) -> None:
    for option, kind, value in names:
        try:
            check_name(kind, value)
        except ValueError as err:
            raise OptionError(str(err), option) from None
