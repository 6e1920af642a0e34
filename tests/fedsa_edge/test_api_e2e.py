"""The library API end to end, against a real broker (Mosquitto when installed, else the
embedded one) with real hubs and devices: every way of running a piece (in this process,
as a managed child process) takes part in one federation, and a scenario run returns its
report as a dict."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

import fedsa_edge
from fedsa_common.federation.config import FederationConfig
from hub.checkpoint import load_checkpoint

pytestmark = pytest.mark.integration

TINY = Path(__file__).parents[2] / "scenarios" / "tiny.yaml"
FED = "apifed"
FINISH_S = 900.0  # process starts under load: importing torch dominates


def test_run_scenario_returns_the_report(tmp_path: Path, broker) -> None:
    lines: list[str] = []
    report = fedsa_edge.run_scenario(TINY, tmp_path / "run", broker=broker.url,
                                     overrides=["rounds=2"], echo=lines.append)
    assert report["final"]["rounds_completed"] == 2
    assert [row["round"] for row in report["rounds"]] == [1, 2]
    assert all(row["accepted"] > 0 for row in report["rounds"])
    assert report["final"]["bytes_up_total"] > 0
    # the dict is what the run wrote, and the progress went to echo, not to stdout
    written = json.loads((tmp_path / "run" / "report.json").read_text())
    assert written == json.loads(json.dumps(report))
    assert any("round 2" in line for line in lines)


def test_a_bad_override_names_the_field_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(fedsa_edge.UserError, match="roundz"):
        fedsa_edge.run_scenario(TINY, tmp_path / "run", overrides=["roundz=2"])
    with pytest.raises(fedsa_edge.OptionError) as err:
        fedsa_edge.run_scenario(TINY, tmp_path / "run", broker="http://nowhere")
    assert err.value.option == "--broker"
    assert not (tmp_path / "run").exists()


def test_hubs_and_devices_in_process_and_managed_finish_a_federation(
        tmp_path: Path, broker) -> None:
    """The cloud hub and one device run in this process (threads), the regional hub and the
    other device as managed child processes; the federation runs its 2 rounds, each with
    both devices' updates."""
    cfg = FederationConfig.model_validate({
        "federation": {"name": "ignored", "seed": 0},
        "model": {"path": "tiny-bert", "precision": "nf4", "max_length": 32, "num_labels": 2},
        "rounds": 2,
        "training": {"local_steps": 2, "batch_size": 4},
        "sampling": {"min_clients": 2, "wait_for_clients_s": 600},
        "round_policy": {"deadline_s": 600},
    })
    data = tmp_path / "notes.csv"
    data.write_text("text,label\n" + "".join(f"note {i},{'ab'[i % 2]}\n" for i in range(12)))
    codes: dict[str, Any] = {}

    def in_thread(name: str, call: Any) -> threading.Thread:
        def body() -> None:
            try:
                codes[name] = call()
            except BaseException as exc:  # surfaced by the assertion below
                codes[name] = exc
        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        return thread

    cloud = in_thread("cloud", lambda: fedsa_edge.serve_cloud(
        cfg, FED, tmp_path / "cloud", broker=broker.url))
    with (fedsa_edge.start_hub("regional", FED, tmp_path / "r1", region="r1",
                               broker=broker.url, log_path=tmp_path / "r1.log") as regional,
          fedsa_edge.start_device(FED, "r1", "dev-b", str(data), tmp_path / "dev-b",
                                  broker=broker.url, log_path=tmp_path / "dev-b.log")
          as device_b):
        device_a = in_thread("dev-a", lambda: fedsa_edge.join(
            FED, "r1", "dev-a", str(data), tmp_path / "dev-a", broker=broker.url))
        cloud.join(FINISH_S)
        device_a.join(FINISH_S)
        assert codes == {"cloud": 0, "dev-a": 0}, codes
        assert device_b.wait(FINISH_S) == 0, (tmp_path / "dev-b.log").read_text()
        assert regional.wait(FINISH_S) == 0, (tmp_path / "r1.log").read_text()
    state = load_checkpoint(tmp_path / "cloud")
    assert state is not None and state.round == 2
    applied = [set(r.get("applied") or []) for r in state.history]
    assert applied == [{"dev-a:1", "dev-b:1"}, {"dev-a:2", "dev-b:2"}]


def test_api_errors_name_the_option(tmp_path: Path) -> None:
    with pytest.raises(fedsa_edge.OptionError) as err:
        fedsa_edge.join("demo", "r/1", "dev", "x.csv", tmp_path / "d")
    assert err.value.option == "--region"
    with pytest.raises(fedsa_edge.UserError, match=r"missing\.csv"):
        fedsa_edge.join("demo", "r1", "dev", str(tmp_path / "missing.csv"), tmp_path / "d")
    with pytest.raises(fedsa_edge.UserError, match="num_labels"):
        fedsa_edge.cloud_config(None, "demo")
    scenario = yaml.safe_load(TINY.read_text())  # a scenario's body is a config, not it
    with pytest.raises(fedsa_edge.UserError, match=r"is a scenario file .* delete its scenario:"):
        fedsa_edge.cloud_config(scenario, "demo")
    del scenario["scenario"]
    assert fedsa_edge.cloud_config({**scenario, "model": {**scenario["model"], "num_labels": 3}},
                                   "demo").rounds == scenario["rounds"]
