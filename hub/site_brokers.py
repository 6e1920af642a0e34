"""A multi-site deployment on one machine: the files ``hub provision --site`` writes, run by
one Mosquitto for the cloud and one per region (each bridged to the cloud's), exactly as
on the real machines; for the integration tests and ``benchmarks/bridge_bytes.py``.

Why here and not in the tests: the byte benchmark and the tests start the same thing, and
the brokers must be started from the generated configuration (not a hand-written one), so
that what is measured and tested is what an operator deploys.

Every broker also gets one read-only account (``observer``, may read every topic of the
federation) to the cloud broker and to each site broker, so a test can show what did *and
did not* cross a bridge: no provisioned account may read device updates at the cloud, so
without it their absence would prove nothing.
"""

from __future__ import annotations

import getpass
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from fedsa_common.net.broker import mosquitto_path
from fedsa_common.net.broker_auth import BrokerAuth, load_credentials
from fedsa_common.net.transport import MqttSession
from fedsa_common.process.atomic import write_bytes
from fedsa_common.wire.protocol import Topics
from hub.provision import ProvisionSpec, Site, mosquitto_password_line, provision, site_dir
from hub.provision_bridge import bridge_client_id, bridge_user

OBSERVER = "observer"


@dataclass
class SiteBrokers:
    """The running brokers of a provisioned multi-site deployment ("cloud" and each region)."""

    out: Path
    spec: ProvisionSpec
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, IO[bytes]] = field(default_factory=dict)
    observer_password: str | None = None
    cut: dict[str, str] = field(default_factory=dict)  # bridge account -> its passwd line

    def dir(self, region: str | None = None) -> Path:
        return self.out if region is None else site_dir(self.out, region)

    def url(self, region: str | None = None) -> str:
        return self.spec.broker_url if region is None else self.spec.sites[region].url

    def creds_path(self, user: str, region: str | None = None) -> Path:
        return self.dir(region) / "credentials" / f"{user}.json"

    def auth(self, user: str, region: str | None = None) -> BrokerAuth:
        return load_credentials(self.creds_path(user, region)).auth()

    def observer_auth(self) -> BrokerAuth:
        assert self.observer_password is not None
        return BrokerAuth(OBSERVER, self.observer_password,
                          ca_pem=(self.out / "ca.crt").read_text())

    def log(self, name: str) -> str:
        return (self.out / "logs" / f"mosquitto-{name}.log").read_text(errors="replace")

    def start(self, name: str) -> None:
        """Start (or restart) the broker ``name`` ("cloud" or a region) from its files."""
        conf = self.dir(None if name == "cloud" else name) / "mosquitto.conf"
        port = self.spec.port if name == "cloud" else self.spec.sites[name].port
        (self.out / "logs").mkdir(exist_ok=True)
        log = open(self.out / "logs" / f"mosquitto-{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen([str(mosquitto_path()), "-c", str(conf)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs[name], self.logs[name] = proc, log
        _wait_listening(proc, port, lambda: self.log(name))

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.logs.pop(name).close()

    def wait_for_bridges(self, timeout: float = 30.0) -> None:
        """Until every site's broker says its bridge is up."""
        for region in self.spec.sites:
            self.wait_for_link(region, up=True, timeout=timeout)

    def wait_for_link(self, region: str, *, up: bool, timeout: float = 30.0) -> None:
        """Until ``region``'s broker says its bridge is up (or down): the bridge's retained
        state notification (``$SYS/broker/connection/ID/state``, local to the site) is 1
        once the cloud broker accepted it and the bridge's subscriptions are in place, which
        the cloud broker's log line ("New bridge connected") comes before; 0 once it is
        gone."""
        reached = threading.Event()
        want = b"1" if up else b"0"
        session = MqttSession(self.url(region), f"wait-{uuid.uuid4().hex[:8]}",
                              clean_session=True, auth=self.observer_auth())

        def on_state(_topic: str, payload: bytes) -> None:
            if payload == want:
                reached.set()

        client_id = bridge_client_id(self.spec.federation, region)
        session.subscribe_raw(f"$SYS/broker/connection/{client_id}/state", on_state)
        try:
            session.connect(timeout=timeout)
            if not reached.wait(timeout):
                raise TimeoutError(f"the bridge of {region} was not {'up' if up else 'down'} "
                                   f"within {timeout:g}s:\n{self.log(region)[-2000:]}")
        finally:
            session.close()

    def cut_link(self, region: str) -> None:
        """Cut ``region``'s wide-area link: the cloud broker stops accepting the site's
        bridge account (its line leaves the cloud's password file, and a SIGHUP makes
        Mosquitto reload the file and drop the clients it no longer admits).

        Why at the cloud broker's door and not at the site: the bridge is dropped and every
        reconnection is refused, exactly what the site sees when the link is down, while
        both brokers keep running, so the site's devices and hub keep their sessions and
        work on (restarting the site broker without its bridge would cut them off too).
        The site broker queues what goes up meanwhile (``cleansession false``), the cloud
        broker what comes down."""
        user = bridge_user(region)
        if user in self.cut:
            return
        lines = (self.out / "passwd").read_text().splitlines(keepends=True)
        keep = [line for line in lines if not line.startswith(f"{user}:")]
        self.cut[user] = "".join(line for line in lines if line.startswith(f"{user}:"))
        _replace(self.out / "passwd", "".join(keep))
        self.procs["cloud"].send_signal(signal.SIGHUP)

    def heal_link(self, region: str) -> None:
        """Undo ``cut_link``: the account is back and the bridge reconnects at its next
        try (``RESTART_TIMEOUT``'s backoff), then the queued messages cross."""
        line = self.cut.pop(bridge_user(region), None)
        if line is None:
            return
        _replace(self.out / "passwd", (self.out / "passwd").read_text() + line)
        self.procs["cloud"].send_signal(signal.SIGHUP)

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def __enter__(self) -> SiteBrokers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_site_brokers(federation: str, regions: dict[str, list[str]], out: Path,
                       ports: dict[str, int]) -> SiteBrokers:
    """Provision ``regions`` with one site per region into ``out`` (``ports``: "cloud" and
    each region's TLS port, all on 127.0.0.1 and named ``localhost`` in the certificates),
    start every broker and wait until every bridge is up."""
    user = "root" if os.geteuid() == 0 else getpass.getuser()  # keep the 0600 files readable
    spec = ProvisionSpec(federation, regions, hosts=["localhost", "127.0.0.1"],
                         port=ports["cloud"], bind="127.0.0.1", broker_user=user,
                         sites={r: Site(["localhost", "127.0.0.1"], ports[r]) for r in regions})
    provision(spec, out)
    brokers = SiteBrokers(out, spec)
    brokers.observer_password = secrets.token_urlsafe(24)
    for where in [out, *(site_dir(out, r) for r in regions)]:
        add_observer(where, federation, brokers.observer_password)
    try:
        brokers.start("cloud")
        for region in regions:
            brokers.start(region)
        brokers.wait_for_bridges()
    except BaseException:
        brokers.close()
        raise
    return brokers


def add_observer(broker_dir: Path, federation: str, password: str) -> None:
    """Append a read-everything account to a provisioned broker's password file and ACL (a
    measurement aid; never part of a deployment)."""
    with open(broker_dir / "passwd", "a") as fh:
        fh.write(mosquitto_password_line(OBSERVER, password) + "\n")
    with open(broker_dir / "acl", "a") as fh:
        fh.write(f"\nuser {OBSERVER}\ntopic read {Topics(federation).all}\n"
                 "topic read $SYS/broker/connection/#\n")


def _replace(path: Path, text: str) -> None:
    """Write ``path`` whole (same mode), so a reloading broker never reads half a file."""
    write_bytes(path, text.encode(), mode=path.stat().st_mode & 0o777)


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log: Callable[[], str],
                    timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {proc.returncode}:\n{log()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"mosquitto did not listen on {port} within {timeout:g}s"
                                   ) from None
            time.sleep(0.05)
