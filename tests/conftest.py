"""Fixtures shared across the test tree (keep this small; prefer fixtures next to their tests)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from fedsa_common.federation.config import FederationConfig
from fedsa_common.net.broker import BrokerProcess, start_broker
from fedsa_common.net.transport import MqttSession
from fedsa_common.wire.chunking import Reassembler
from fedsa_common.wire.codec import get_codec
from fedsa_common.wire.envelope import Envelope, unpack

StartHubs = Callable[..., list[subprocess.Popen]]


# Topics whose messages are plain JSON, not chunked envelopes.
_RAW_JSON_TOPICS = ("/presence/", "/metrics/", "/status/", "/ack/", "/summary")


class BrokerSpy:
    """Subscribes to '#' and keeps every frame, so that a test can check what crossed the
    broker (what a hub operator or an eavesdropper with broker access sees)."""

    def __init__(self, url: str) -> None:
        self.frames: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.session = MqttSession(url, client_id=f"spy-{uuid.uuid4().hex[:8]}",
                                   clean_session=True)
        self.session.subscribe_raw("#", self._keep)

    def _keep(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.frames.append((topic, payload))

    def envelopes(self) -> list[tuple[str, Envelope]]:
        """(logical topic, envelope) for every chunked message seen so far."""
        out = []
        reasm = Reassembler(max_message_bytes=64_000_000)
        with self.lock:
            frames = list(self.frames)
        for topic, payload in frames:
            if not payload or any(part in topic for part in _RAW_JSON_TOPICS):
                continue
            logical = topic.rsplit("/", 1)[0]
            whole = reasm.add(logical, payload, time.time())
            if whole is not None:
                out.append((logical, unpack(whole, max_bytes=64_000_000)))
        return out

    @classmethod
    def record_run(cls, scenario: Any, out: Path) -> tuple[dict[str, Any], BrokerSpy]:
        """Run ``scenario`` on a fresh broker with a spy connected first, so that every
        frame of the federation is kept: (the run's report, the spy)."""
        from scenarios.runner import run_scenario

        with start_broker("auto") as running:
            spy = cls(running.url)
            spy.session.connect()
            report = run_scenario(scenario, out, running.url, echo=lambda _: None)
            time.sleep(0.5)  # the last frames in flight
            spy.session.close()
        return report, spy

    @staticmethod
    def decode_update(env: Envelope, shapes: dict[str, tuple[int, ...]]
                      ) -> dict[str, torch.Tensor]:
        """An update envelope's tensors, decoded by the codec its header names against
        ``shapes`` (the round's announced shared set): a flat codec body names no parameter
        and decodes only against exactly the shapes it was made of, so a B or head value in
        it would change its length and fail here."""
        h = env.header
        codec = get_codec(h["codec"], **h["codec_params"])
        return dict(codec.decode(env.tensors, h["codec_meta"], shapes))


@pytest.fixture(scope="session")
def broker_spy() -> type[BrokerSpy]:
    """``BrokerSpy``, for module-scoped fixtures that record a whole federation run:
    ``spy = broker_spy(url); spy.session.connect()``."""
    return BrokerSpy


@pytest.fixture
def broker() -> Iterator[BrokerProcess]:
    """A running local broker (Mosquitto if installed, else embedded amqtt), stopped after."""
    with start_broker("auto") as running:
        yield running


def _wait_for_log(log: Path, pattern: str, proc: subprocess.Popen, timeout: float = 180.0
                  ) -> re.Match[str]:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return found
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()}"
        time.sleep(0.2)
    raise AssertionError(f"no {pattern!r} within {timeout:g}s in:\n{log.read_text()}")


@pytest.fixture(scope="session")
def wait_for_log() -> Callable[..., re.Match[str]]:
    """``wait_for_log(log, pattern, proc)``: the first match of ``pattern`` in the file
    ``log`` a child process writes; fails at once if ``proc`` exits first."""
    return _wait_for_log


@pytest.fixture
def start_hubs(tmp_path: Path) -> Iterator[StartHubs]:
    """Starts the real hubs of a one-region federation as OS processes: ``hub serve --role
    cloud`` with the configuration written as YAML, and ``hub serve --role regional`` for
    ``region``, logs and state under ``tmp_path`` (``cloud_args``, ``regional_args``: more
    options of the cloud's and the regional hub's ``hub serve``; ``roles``: just one of the
    two, for a test that starts them one after the other); whatever still runs after the
    test is killed."""
    procs: list[subprocess.Popen] = []

    def start(broker_url: str, config: FederationConfig, region: str = "r1",
              cloud_args: tuple[str, ...] = (),
              roles: tuple[str, ...] = ("cloud", "regional"),
              regional_args: tuple[str, ...] = ()) -> list[subprocess.Popen]:
        fed = config.federation.name
        cfg_path = tmp_path / "fed.yaml"
        cfg_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
        commands = {
            "cloud": (["hub", "serve", "--role", "cloud", "--broker", broker_url,
                       "--federation", fed, "--state-dir", str(tmp_path / "cloud"),
                       "--config", str(cfg_path), *cloud_args], tmp_path / "cloud.log"),
            "regional": (["hub", "serve", "--role", "regional", "--region", region,
                          "--broker", broker_url, "--federation", fed, "--state-dir",
                          str(tmp_path / "regional"), *regional_args],
                         tmp_path / "regional.log"),
        }
        started = [_spawn(*commands[role]) for role in roles]
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
