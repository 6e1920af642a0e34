"""systemd units for a provisioned broker directory (pure: text in, text out).

Why: ``hub provision`` already knows every process of a deployment (which broker, which hub,
which credentials file), so it can write the units an operator would otherwise type by hand,
and a site's directory copied to its gateway then holds everything that gateway runs.

Each directory gets ``systemd/``:

* ``fedsa-broker.service``: Mosquitto with the directory's ``mosquitto.conf`` (as root, it
  drops to ``--broker-user``).
* ``fedsa-hub-cloud.service`` (the cloud broker's directory): ``hub serve --role cloud`` with
  ``federation.yaml`` from the same directory (``hub config template edge-4bit`` is a start).
* ``fedsa-hub-regional-REGION.service``: ``hub serve --role regional`` (in the site's
  directory, or beside the cloud's without sites), with ``--intake-shards K`` for a region
  the federation configuration serves with K > 1 intake processes (``intake_shards``):
  the hub must run as many as the cloud announces, or the region's devices publish where
  no process reads.  Its intake processes are its children, in the unit's control group.
* ``fedsa-edge-client-REGION@.service``: a template for the region's devices, instance = the
  client id: ``systemctl enable --now fedsa-edge-client-north@dev-0`` on the device, with
  the device's credentials in ``/etc/fedsa-edge/DEV.json`` and ``FEDSA_DATA=...`` (the
  ``--data`` spec) in ``/etc/fedsa-edge/DEV.env``.

Hubs and devices run as a transient user (``DynamicUser``) with a private state directory
under ``/var/lib/fedsa-edge``; their credentials reach them through ``LoadCredential``, so
the 0600 files stay root's.  ``Restart=on-failure``: a hub or device exits 0 when the
federation finishes and stays stopped; a crash restarts it, and it resumes from its state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEVICE_CONFIG_DIR = "/etc/fedsa-edge"
STATE_ROOT = "fedsa-edge"  # under /var/lib (systemd's StateDirectory=)
BROKER_UNIT = "fedsa-broker.service"


@dataclass(frozen=True)
class Programs:
    """Absolute paths of the programs the units start (systemd needs absolute paths)."""

    hub: str
    edge_client: str
    mosquitto: str


def _unit(description: str, after: list[str], service: list[str]) -> str:
    lines = [
        "# Written by `hub provision`; regenerate rather than edit.",
        "[Unit]",
        f"Description={description}",
        f"After=network-online.target {' '.join(after)}".rstrip(),
        "Wants=network-online.target",
        "",
        "[Service]",
        *service,
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def _sandboxed(state: str, cmd: str, extra: list[str]) -> list[str]:
    """A Python process of ours: transient user, private state, credentials by systemd."""
    return [
        "Type=simple",
        "DynamicUser=yes",
        f"StateDirectory={STATE_ROOT}/{state}",
        f"CacheDirectory={STATE_ROOT}",
        f"Environment=HOME=%S/{STATE_ROOT}/{state} XDG_CACHE_HOME=%C/{STATE_ROOT}",
        *extra,
        f"ExecStart={cmd}",
        "Restart=on-failure",
        "RestartSec=5",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=60",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
    ]


def broker_unit(programs: Programs, broker_dir: Path, what: str) -> str:
    conf = broker_dir.resolve() / "mosquitto.conf"
    return _unit(f"Mosquitto for fedsa-edge ({what})", [], [
        "Type=simple",
        f"ExecStart={programs.mosquitto} -c {conf}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartSec=2",
    ])


def cloud_unit(programs: Programs, federation: str, broker_dir: Path) -> str:
    d = broker_dir.resolve()
    cmd = (f"{programs.hub} serve --role cloud --federation {federation} "
           f"--config {d / 'federation.yaml'} --state-dir %S/{STATE_ROOT}/cloud "
           "--credentials ${CREDENTIALS_DIRECTORY}/broker.json")
    return _unit(f"fedsa-edge cloud hub of {federation}", [BROKER_UNIT], _sandboxed(
        "cloud", cmd, [f"LoadCredential=broker.json:{d / 'credentials' / 'hub-cloud.json'}"]))


def regional_unit(programs: Programs, federation: str, region: str, broker_dir: Path,
                  intake_shards: int = 1) -> str:
    d = broker_dir.resolve()
    cmd = (f"{programs.hub} serve --role regional --region {region} "
           f"--federation {federation} --state-dir %S/{STATE_ROOT}/regional-{region} "
           "--credentials ${CREDENTIALS_DIRECTORY}/broker.json")
    if intake_shards > 1:
        cmd += f" --intake-shards {intake_shards}"
    creds = d / "credentials" / f"hub-regional-{region}.json"
    return _unit(f"fedsa-edge regional hub {region} of {federation}", [BROKER_UNIT],
                 _sandboxed(f"regional-{region}", cmd, [f"LoadCredential=broker.json:{creds}"]))


def device_unit(programs: Programs, federation: str, region: str) -> str:
    """Template: ``fedsa-edge-client-REGION@DEV.service`` runs device DEV of ``region``."""
    cmd = (f"{programs.edge_client} join --federation {federation} --region {region} "
           f"--client-id %i --state-dir %S/{STATE_ROOT}/%i --data ${{FEDSA_DATA}} "
           "--credentials ${CREDENTIALS_DIRECTORY}/broker.json")
    return _unit(f"fedsa-edge device %i of region {region} ({federation})", [], _sandboxed(
        "%i", cmd, [f"LoadCredential=broker.json:{DEVICE_CONFIG_DIR}/%i.json",
                    f"EnvironmentFile={DEVICE_CONFIG_DIR}/%i.env"]))


def units_for(programs: Programs, federation: str, broker_dir: Path, *, cloud: bool,
              regions: list[str], intake_shards: Mapping[str, int] | None = None
              ) -> dict[str, str]:
    """File name -> text of every unit for one broker directory: its broker, the cloud hub
    (``cloud``), and the regional hub and device template of each of ``regions``
    (``intake_shards``: the regions served by several intake processes, as configured)."""
    shards = intake_shards or {}
    what = "cloud" if cloud else f"site {', '.join(regions)}"
    units = {BROKER_UNIT: broker_unit(programs, broker_dir, what)}
    if cloud:
        units["fedsa-hub-cloud.service"] = cloud_unit(programs, federation, broker_dir)
    for region in regions:
        units[f"fedsa-hub-regional-{region}.service"] = regional_unit(
            programs, federation, region, broker_dir, shards.get(region, 1))
        units[f"fedsa-edge-client-{region}@.service"] = device_unit(programs, federation,
                                                                   region)
    return units
