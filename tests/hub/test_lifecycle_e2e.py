"""The federation lifecycle commands against a real broker, with the real processes:

* a finished federation extended by one round (``hub federation extend --state-dir``) runs
  that round from its checkpoint when its cloud, regional hub and device start again, and the
  device keeps its local B and head;
* a running cloud takes a new total (``extend --federation``) and stops early (``stop
  --now``), announcing the end;
* a fresh cloud refuses to start over a name's retained 'finished' announcement, and starts
  once ``hub federation reset`` cleared it.

Marked slow: every start of a hub or device imports torch (a minute and more on a busy
2-core machine)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from fedsa_common.net.transport import MqttSession
from fedsa_common.process.atomic import read_tensors
from fedsa_common.wire.protocol import Presence, Topics, encode_json
from hub.checkpoint import load_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START_S = 600.0  # a process start under load: importing torch dominates
CONFIG = {"model": {"path": "tiny-bert", "precision": "nf4", "max_length": 32,
                    "num_labels": 2},
          "training": {"local_steps": 2, "batch_size": 4, "lr": 0.001},
          "sampling": {"min_clients": 1}}


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """``spawn(name, *args)``: ``python -m ARGS`` with its log in ``tmp_path/NAME.log``;
    whatever still runs after the test is killed."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str) -> subprocess.Popen[bytes]:
        with (tmp_path / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", *args], stdout=out,
                                    stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hub", "federation", *args],
                          capture_output=True, text=True, timeout=START_S)


def write_config(path: Path, name: str, **over: object) -> Path:
    path.write_text(yaml.safe_dump({"federation": {"name": name}, **CONFIG, **over}))
    return path


def retained_announce_status(url: str, federation: str) -> str | None:
    """The status ('running'/'finished') of the retained announcement, None without one."""
    from hub.lifecycle import collect_retained

    with MqttSession(url, client_id=f"t-{uuid.uuid4().hex[:8]}", clean_session=True,
                     max_message_bytes=64_000_000) as session:
        session.connect(timeout=10)
        found = collect_retained(session, Topics(federation), max_bytes=64_000_000,
                                 timeout_s=5)
    return None if found.announce is None else found.announce.status


def test_extend_a_finished_federation_keeps_device_state(tmp_path: Path, broker, spawn,
                                                        wait_for_log) -> None:
    fed = "life-ext"
    cfg = write_config(tmp_path / "fed.yaml", fed, rounds=1, round_policy={"deadline_s": 60})
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"note {i} about {'ab'[i % 2]},{'ab'[i % 2]}\n"
                                              for i in range(20)))
    cloud_args = ["hub", "serve", "--role", "cloud", "--federation", fed, "--broker",
                  broker.url, "--state-dir", str(tmp_path / "cloud"), "--config", str(cfg)]
    regional_args = ["hub", "serve", "--role", "regional", "--region", "r1", "--federation",
                     fed, "--broker", broker.url, "--state-dir", str(tmp_path / "regional")]
    device_args = ["edge_client", "join", "--federation", fed, "--region", "r1",
                   "--client-id", "dev-0", "--data", str(data), "--state-dir",
                   str(tmp_path / "dev-0"), "--broker", broker.url]

    procs = [spawn("cloud", *cloud_args), spawn("regional", *regional_args),
             spawn("device", *device_args)]
    for proc in procs:
        assert proc.wait(timeout=2 * START_S) == 0, (tmp_path / "cloud.log").read_text()
    first = json.loads((tmp_path / "dev-0" / "device.json").read_text())
    local_1 = read_tensors(tmp_path / "dev-0" / "local.safetensors")
    assert first["last_round"] == 1 and retained_announce_status(broker.url, fed) == "finished"

    extended = run_cli("extend", "--state-dir", str(tmp_path / "cloud"), "--by", "1")
    assert extended.returncode == 0, extended.stderr
    assert "total 1 -> 2" in extended.stdout

    # the cloud first: it replaces the retained 'finished', on which the others would exit
    cloud = spawn("cloud", *cloud_args)
    wait_for_log(tmp_path / "cloud.log", r"clearing the retained announcement", cloud,
                 timeout=START_S)
    procs = [cloud, spawn("regional", *regional_args), spawn("device", *device_args)]
    for proc in procs:
        assert proc.wait(timeout=2 * START_S) == 0, (tmp_path / "device.log").read_text()

    state = load_checkpoint(tmp_path / "cloud")
    assert state is not None and state.round == 2 and state.version == 2
    assert [r["applied"] for r in state.history] == [["dev-0:1"], ["dev-0:2"]]
    second = json.loads((tmp_path / "dev-0" / "device.json").read_text())
    assert second["last_round"] == 2
    assert second["config_hash"] != first["config_hash"]  # rounds changed ...
    assert second["state_hash"] == first["state_hash"]  # ... nothing local state depends on
    device_log = (tmp_path / "device.log").read_text()
    assert "resetting local state" not in device_log
    assert "federation finished at round 2" in device_log
    local_2 = read_tensors(tmp_path / "dev-0" / "local.safetensors")
    assert sorted(local_2) == sorted(local_1)  # its own B and head, trained on
    assert "Traceback" not in (tmp_path / "cloud.log").read_text()


def ghost_online(url: str, federation: str) -> None:
    """A retained presence of a device that never reports, and a retained status of its
    regional hub saying it serves (the cloud selects devices of served regions only): the
    cloud selects it, and its round waits for the deadline unless stopped."""
    topics = Topics(federation)
    with MqttSession(url, client_id=f"t-{uuid.uuid4().hex[:8]}", clean_session=True) as s:
        s.connect(timeout=10)
        s.publish_raw(topics.status("regional", "r1"), json.dumps({"online": True}).encode(),
                      retain=True)
        s.publish_raw(topics.presence("r1", "ghost"),
                      encode_json(Presence(client="ghost", region="r1", online=True)),
                      retain=True)


def test_stop_extend_a_running_cloud_then_reset_the_name(tmp_path: Path, broker, spawn,
                                                        wait_for_log) -> None:
    fed = "life-stop"
    cfg = write_config(tmp_path / "fed.yaml", fed, rounds=3,
                       round_policy={"deadline_s": 600})
    ghost_online(broker.url, fed)
    serve = ["hub", "serve", "--role", "cloud", "--federation", fed, "--broker", broker.url,
             "--config", str(cfg), "--state-dir"]
    cloud = spawn("cloud", *serve, str(tmp_path / "cloud"))
    wait_for_log(tmp_path / "cloud.log", r"round 1/3 announced", cloud, timeout=START_S)

    extended = run_cli("extend", "--federation", fed, "--broker", broker.url, "--by", "2")
    assert extended.returncode == 0, extended.stderr
    assert "5 rounds in all (was 3)" in extended.stdout

    stopped = run_cli("stop", "--federation", fed, "--broker", broker.url, "--now")
    assert stopped.returncode == 0, stopped.stderr
    assert cloud.wait(timeout=120) == 0, (tmp_path / "cloud.log").read_text()
    state = load_checkpoint(tmp_path / "cloud")
    assert state is not None and state.round == 1 and state.config["rounds"] == 1
    assert not state.history[0]["applied_step"]  # closed with no update: nothing applied
    assert retained_announce_status(broker.url, fed) == "finished"

    again = run_cli("stop", "--federation", fed, "--broker", broker.url)
    assert again.returncode == 2 and "finished at round 1" in again.stderr

    fresh = spawn("fresh", *serve, str(tmp_path / "fresh"))
    assert fresh.wait(timeout=START_S) == 2
    assert "hub federation reset" in " ".join((tmp_path / "fresh.log").read_text().split())

    reset = run_cli("reset", "--federation", fed, "--broker", broker.url)
    assert reset.returncode == 0, reset.stderr
    assert "cleared" in reset.stdout
    assert retained_announce_status(broker.url, fed) is None

    fresh = spawn("fresh-2", *serve, str(tmp_path / "fresh-2"))
    wait_for_log(tmp_path / "fresh-2.log", r"round 1/3 announced", fresh, timeout=START_S)
    refused = run_cli("reset", "--federation", fed, "--broker", broker.url)
    assert refused.returncode == 2 and "--force" in refused.stderr  # a cloud serves

