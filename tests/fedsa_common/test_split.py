"""Which parameters each algorithm shares, trains and keeps local."""

import pytest

from fedsa_common.federation.split import local_names, role, shared_names, trainable_names

NAMES = [
    "bert.encoder.layer.0.attention.self.query.lora_A.weight",
    "bert.encoder.layer.0.attention.self.query.lora_B.weight",
    "bert.encoder.layer.0.attention.self.value.lora_A.weight",
    "bert.encoder.layer.0.attention.self.value.lora_B.weight",
    "classifier.weight",
    "classifier.bias",
]
A = sorted(n for n in NAMES if "lora_A" in n)
B = sorted(n for n in NAMES if "lora_B" in n)
HEAD = sorted(["classifier.weight", "classifier.bias"])


@pytest.mark.parametrize(
    ("algorithm", "shared", "trainable"),
    [
        ("fedsa", A, sorted(NAMES)),
        ("fedit", sorted(A + B), sorted(NAMES)),
        ("ffa", B, sorted(B + HEAD)),
        ("local", [], sorted(NAMES)),
    ],
)
def test_each_algorithm_shares_exactly_its_set(algorithm, shared, trainable):
    assert shared_names(NAMES, algorithm) == shared
    assert trainable_names(NAMES, algorithm) == trainable
    assert sorted(local_names(NAMES, algorithm) + shared) == sorted(NAMES)


@pytest.mark.parametrize("algorithm", ["fedsa", "fedit", "ffa", "local"])
def test_head_never_shared(algorithm):
    assert not set(HEAD) & set(shared_names(NAMES, algorithm))


def test_roles():
    assert role(A[0]) == "lora_A" and role(B[0]) == "lora_B" and role("classifier.bias") == "head"


def test_unknown_algorithm_is_named():
    with pytest.raises(ValueError, match="fedavg"):
        shared_names(NAMES, "fedavg")
