"""Fixtures for hub tests: a real Mosquitto running a configuration written by ``hub provision``."""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedsa_common.net.broker import free_port, mosquitto_path
from fedsa_common.net.broker_auth import Credentials, load_credentials
from hub.provision import ProvisionSpec, provision


@dataclass
class ProvisionedBroker:
    out: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    def creds(self, user: str) -> Credentials:
        return load_credentials(self.creds_path(user))

    def creds_path(self, user: str) -> Path:
        return self.out / "credentials" / f"{user}.json"


@pytest.fixture(scope="module")
def provisioned_broker(tmp_path_factory) -> Iterator[Callable[..., ProvisionedBroker]]:
    """``start(federation, regions)``: provision into a temporary directory, then run
    Mosquitto with exactly the generated mosquitto.conf (stopped at the end of the module).
    Skips when Mosquitto is not installed."""
    if mosquitto_path() is None:
        pytest.skip("mosquitto not installed")
    running: list[tuple[subprocess.Popen[bytes], object]] = []

    def start(federation: str, regions: dict[str, list[str]]) -> ProvisionedBroker:
        out = tmp_path_factory.mktemp("provisioned")
        port = free_port()
        # as root, `user root` keeps Mosquitto from dropping to an account that cannot read
        # the 0600 files; otherwise the `user` line is ignored
        user = "root" if os.geteuid() == 0 else getpass.getuser()
        provision(ProvisionSpec(federation, regions, port=port, bind="127.0.0.1",
                                broker_user=user), out)
        log = open(out / "mosquitto.log", "wb")  # noqa: SIM115 - closed at teardown
        proc = subprocess.Popen([str(mosquitto_path()), "-c", str(out / "mosquitto.conf")],
                                stdout=log, stderr=subprocess.STDOUT)
        running.append((proc, log))
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, (out / "mosquitto.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return ProvisionedBroker(out, port, proc)
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not start listening"
                time.sleep(0.05)

    yield start
    for proc, log in running:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()  # type: ignore[attr-defined]
