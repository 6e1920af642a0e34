"""Fixtures shared across the test tree (keep this small; prefer fixtures next to their tests)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from fedsa_common.broker import BrokerProcess, start_broker
from fedsa_common.config import FederationConfig

StartHubs = Callable[..., list[subprocess.Popen]]


@pytest.fixture
def broker() -> Iterator[BrokerProcess]:
    """A running local broker (Mosquitto if installed, else embedded amqtt), stopped after."""
    with start_broker("auto") as running:
        yield running


@pytest.fixture
def start_hubs(tmp_path: Path) -> Iterator[StartHubs]:
    """Starts the real hubs of a one-region federation as OS processes: ``hub serve --role
    cloud`` with the configuration written as YAML, and ``hub serve --role regional`` for
    ``region``, logs and state under ``tmp_path``; whatever still runs after the test is
    killed."""
    procs: list[subprocess.Popen] = []

    def start(broker_url: str, config: FederationConfig, region: str = "r1"
              ) -> list[subprocess.Popen]:
        fed = config.federation.name
        cfg_path = tmp_path / "fed.yaml"
        cfg_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
        started = [
            _spawn(["hub", "serve", "--role", "cloud", "--broker", broker_url, "--federation",
                    fed, "--state-dir", str(tmp_path / "cloud"), "--config", str(cfg_path)],
                   tmp_path / "cloud.log"),
            _spawn(["hub", "serve", "--role", "regional", "--region", region, "--broker",
                    broker_url, "--federation", fed, "--state-dir",
                    str(tmp_path / "regional")], tmp_path / "regional.log"),
        ]
        procs.extend(started)
        return started

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", *args], stdout=out,
                                stderr=subprocess.STDOUT)
