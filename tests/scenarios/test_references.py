"""The references' pure math: majority accuracy, the federation's total samples, the
centralized reference's round boundaries and evaluation cadence, and ``--references``."""

from __future__ import annotations

import pytest

from fedsa_common.federation.config import FederationConfig
from scenarios.references import (
    curve_rounds,
    devices_per_round,
    federation_samples,
    local_samples_per_round,
    majority_accuracy,
    majority_label,
    parse_references,
    round_ends,
)


def fed(rounds: int = 12, local_steps: int = 6, batch_size: int = 16,
        clients_per_round: int | None = None) -> FederationConfig:
    return FederationConfig.model_validate({
        "rounds": rounds, "training": {"local_steps": local_steps, "batch_size": batch_size},
        "sampling": {"clients_per_round": clients_per_round}})


def test_majority_label_breaks_ties_by_smallest_id():
    assert majority_label([2, 1, 2, 0]) == 2
    assert majority_label([3, 1, 1, 3]) == 1
    assert majority_label([]) is None


def test_majority_accuracy_is_the_share_of_the_train_majority_in_test():
    # train majority is 1; test has three 1s out of five
    assert majority_accuracy([1, 1, 0, 2, 1], [1, 0, 1, 2, 1]) == pytest.approx(0.6)
    # the device's own majority, not the test split's: test is all 0
    assert majority_accuracy([1, 1, 0], [0, 0, 0]) == 0.0
    assert majority_accuracy([0], []) == 0.0  # an empty test split scores 0, like evaluate()


def test_local_samples_follow_train_steps_batches():
    import torch

    from edge_client.training import sample_batches

    training = fed(local_steps=6, batch_size=16).training
    assert local_samples_per_round(training, 300) == 6 * 16  # many texts: full batches
    # 25 texts: passes of 16 + 9, three passes in six steps
    assert local_samples_per_round(training, 25) == 75
    assert local_samples_per_round(training, 5) == 30  # every step is the whole device
    assert local_samples_per_round(training, 0) == 0
    for n in (1, 7, 16, 17, 33, 95, 96, 97):  # what train_steps really draws
        gen = sample_batches(n, 16, torch.Generator().manual_seed(0))
        drawn = sum(len(next(gen)) for _ in range(6))
        assert local_samples_per_round(training, n) == drawn, n


def test_federation_samples_is_rounds_devices_steps_batch_when_devices_are_large():
    config = fed(rounds=12, local_steps=6, batch_size=16)
    assert federation_samples(config, [300] * 10) == 12 * 10 * 6 * 16
    # small devices process fewer samples than a full batch per step
    assert federation_samples(config, [300, 25]) == 12 * (96 + 75)
    assert federation_samples(config, []) == 0


def test_federation_samples_counts_only_selected_devices():
    config = fed(rounds=10, local_steps=2, batch_size=8, clients_per_round=3)
    assert devices_per_round(config, 10) == 3
    # the expectation over who is drawn: 3 devices of the mean per-device samples
    assert federation_samples(config, [100] * 5 + [4] * 5) == round(10 * 3 * (16 + 8) / 2)
    assert devices_per_round(fed(clients_per_round=30), 10) == 10


def test_round_ends_cover_all_steps():
    assert round_ends(12, 3) == [4, 8, 12]
    assert round_ends(10, 4) == [3, 5, 8, 10]
    assert round_ends(2, 4) == [1, 1, 2, 2]  # fewer steps than rounds: shared steps


def test_curve_is_every_round_unless_evaluation_costs_more_than_half_of_training():
    assert curve_rounds(5, samples_per_round=960, test_samples=800) == [1, 2, 3, 4, 5]
    # 3000 test texts against 500 training samples a round: every 4th, and the last
    assert curve_rounds(10, samples_per_round=500, test_samples=3000) == [4, 8, 10]


def test_parse_references():
    assert parse_references("centralized,majority") == ["centralized", "majority"]
    assert parse_references("majority") == ["majority"]
    assert parse_references("none") == [] and parse_references("") == []
    with pytest.raises(ValueError, match="oracle"):
        parse_references("centralized,oracle")
    with pytest.raises(ValueError, match="majority"):
        parse_references("majority,majority")
