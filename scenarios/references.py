"""The references every bench table is read against: ``majority`` and ``centralized``.

A federated accuracy means little on its own.  ``majority`` (each device predicts its own
most frequent training label) is what a device gets without learning anything from its
texts; ``centralized`` (one model trained on the union of all devices' training splits,
processing as many samples as the whole federation) is what pooling the data would give.
With ``local`` (every device alone) they bound what federation can add: a table then reads
majority -> local -> federated -> centralized.

The math here is pure (labels, sizes and configuration in, numbers out); the centralized
training itself is ``scenarios.centralized``, run in its own process by
``run_centralized`` so that its model's memory is returned when it ends, and cached in
the bench directory per seed so an interrupted bench does not train it again.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edge_client.data import DeviceData, load_device_data
from fedsa_common.federation.config import FederationConfig, TrainingSection
from fedsa_common.process.atomic import write_json
from scenarios.cli_lists import parse_names
from scenarios.config import ScenarioConfig

REFERENCES: tuple[str, ...] = ("centralized", "majority")
# Bumped when a reference's method changes, so cached results made the old way are redone.
METHOD_VERSION = {"centralized": 1, "majority": 1}
RESULT = "result.json"
# Evaluation may cost at most this share of a round's worth of training (a test sample's
# forward pass counted as a third of a training sample's forward and backward).
EVAL_SHARE = 0.5


def parse_references(text: str) -> list[str]:
    """``centralized,majority`` -> names; ``none`` (or empty) -> none; an unknown or
    repeated name is a ValueError naming it."""
    return parse_names(text, "--references", REFERENCES, "reference", allow_none=True)


# pure math ---------------------------------------------------------------------------------
def majority_label(labels: Sequence[int]) -> int | None:
    """The most frequent label (the smallest id among ties, so it is deterministic); None
    for no labels."""
    if not labels:
        return None
    counts = Counter(labels)
    top = max(counts.values())
    return min(label for label, c in counts.items() if c == top)


def majority_accuracy(train_labels: Sequence[int], test_labels: Sequence[int]) -> float:
    """Accuracy on ``test_labels`` of always predicting the majority of ``train_labels``.

    An empty test split scores 0.0, as ``edge_client.training.evaluate`` scores it for a
    device, so the two references average over the same devices the same way."""
    guess = majority_label(train_labels)
    if not test_labels or guess is None:
        return 0.0
    return sum(int(y == guess) for y in test_labels) / len(test_labels)


def local_samples_per_round(training: TrainingSection, n_train: int) -> int:
    """Training samples one selected device processes in one round.

    ``edge_client.training.train_steps`` draws ``local_steps`` batches from shuffled passes
    over the device's ``n_train`` texts, each pass cut into ``ceil(n/batch)`` batches with a
    short last one, so a device with fewer texts than a batch processes fewer samples than
    ``local_steps x batch_size``.  This is the one place that knows how much local work a
    round is: another way of setting it (epochs over the local data) goes here.
    """
    if n_train <= 0:
        return 0
    steps, batch = training.local_steps, training.batch_size
    per_pass = math.ceil(n_train / batch)
    # within a pass every batch but the last is full, and fewer than per_pass remain
    return (steps // per_pass) * n_train + (steps % per_pass) * batch


def devices_per_round(config: FederationConfig, num_devices: int) -> int:
    """Devices selected each round: ``sampling.clients_per_round`` (at most all), else all."""
    k = config.sampling.clients_per_round
    return num_devices if k is None else min(k, num_devices)


def federation_samples(config: FederationConfig, train_sizes: Sequence[int]) -> int:
    """Training samples the whole federation processes: rounds x devices per round x one
    device's samples per round, the last averaged over devices (who is selected is drawn
    each round, so with sampling this is the expectation).  Churn, stragglers and dropped
    updates are not subtracted: it is the planned work."""
    if not train_sizes:
        return 0
    per_device = sum(local_samples_per_round(config.training, n) for n in train_sizes) \
        / len(train_sizes)
    return round(config.rounds * devices_per_round(config, len(train_sizes)) * per_device)


def round_ends(total_steps: int, rounds: int) -> list[int]:
    """Optimizer steps done when each round's worth of samples is done: round r of R ends
    after ``ceil(r x total / R)`` steps, so the last ends exactly at ``total_steps``."""
    return [math.ceil(r * total_steps / rounds) for r in range(1, rounds + 1)]


def curve_rounds(rounds: int, samples_per_round: float, test_samples: int) -> list[int]:
    """The rounds' worths after which the centralized model is evaluated: every k-th and
    the last, k the smallest that keeps evaluation within ``EVAL_SHARE`` of training."""
    budget = EVAL_SHARE * 3 * max(samples_per_round, 1.0)
    every = max(1, math.ceil(test_samples / budget))
    return [r for r in range(1, rounds + 1) if r % every == 0 or r == rounds]


# the federation's devices --------------------------------------------------------------------
def device_datas(config: ScenarioConfig) -> list[tuple[str, DeviceData]]:
    """(client id, data) of every device, exactly as the runner hands them to the devices
    (``ScenarioSection.device_data`` with the scenario's seed)."""
    sc = config.scenario
    return [(client, load_device_data(sc.device_data(i)))
            for i, (_, client) in enumerate(sc.topology.devices())]


def majority_reference(config: ScenarioConfig) -> dict[str, Any]:
    """The majority reference of one seed (no model: seconds, so never cached)."""
    started = time.time()
    acc = {client: majority_accuracy(d.train.labels, d.test.labels)
           for client, d in device_datas(config)}
    return {"reference": "majority", "method_version": METHOD_VERSION["majority"],
            "finished": True, "device_accuracy": acc, "curve": [],
            "wall_s": time.time() - started}


# the centralized reference's process -----------------------------------------------------------
def reusable_result(path: Path, digest: str) -> dict[str, Any] | None:
    """An earlier finished centralized result made from the same configuration and method."""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or not result.get("finished"):
        return None
    if result.get("digest") != digest or \
            result.get("method_version") != METHOD_VERSION["centralized"]:
        return None
    return result


def run_centralized(config: ScenarioConfig, out: Path, digest: str,
                    echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the centralized reference in a child process (``python -m
    scenarios.centralized``) and return its result, which the child writes to
    ``out/result.json`` tagged with ``digest``.  Raises RuntimeError (with the log's tail) if
    the child fails and TimeoutError past ``scenario.timeout_s``."""
    out.mkdir(parents=True, exist_ok=True)
    spec = out / "scenario.json"
    write_json(spec, config.model_dump(mode="json"))
    log_path = out / "centralized.log"
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "scenarios.centralized", "--config", str(spec),
                 "--out", str(out / RESULT), "--digest", digest],
                stdout=log, stderr=subprocess.STDOUT, timeout=config.scenario.timeout_s,
                check=False)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"centralized reference did not finish within "
                               f"{config.scenario.timeout_s:.0f}s (log: {log_path})") from None
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"centralized reference exited with {proc.returncode}:\n{tail}")
    result = reusable_result(out / RESULT, digest)
    if result is None:
        raise RuntimeError(f"centralized reference wrote no finished result in {out}")
    return result
