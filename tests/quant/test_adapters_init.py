"""``model.lora.init``: the starting values every party computes from the federation seed
(pure tensors; ``initial_global`` builds tiny BERT's shapes on the meta device only)."""

from __future__ import annotations

import math

import pytest
import torch

from fedsa_common.federation.config import ConfigError, FederationConfig
from fedsa_common.federation.split import role
from hub.cloud import initial_global
from quant.adapters import init_adapter_values

SHAPES = {
    "l0.query.lora_A.weight": (8, 32),
    "l0.query.lora_B.weight": (48, 8),
    "classifier.weight": (3, 32),
    "classifier.bias": (3,),
}
A, B = "l0.query.lora_A.weight", "l0.query.lora_B.weight"


def test_a_random_is_peft_init_and_b_random_swaps_which_matrix_is_zero():
    std = init_adapter_values(SHAPES, 7)
    swapped = init_adapter_values(SHAPES, 7, "b_random")
    assert std[A].abs().sum() > 0 and torch.count_nonzero(std[B]) == 0
    assert torch.count_nonzero(swapped[A]) == 0 and swapped[B].abs().sum() > 0
    # B's bound is the one peft gives A, with B's rows as the width
    assert swapped[B].abs().max() <= 1 / math.sqrt(48)
    assert swapped[B].std() > 0.5 / math.sqrt(3 * 48)  # spread over the bound, not tiny
    # the head starts alike under both
    for name in ("classifier.weight", "classifier.bias"):
        assert torch.equal(std[name], swapped[name])


def test_b_random_is_the_same_on_every_party_with_the_seed():
    one = init_adapter_values(SHAPES, 7, "b_random")
    assert torch.equal(one[B], init_adapter_values(SHAPES, 7, "b_random")[B])
    assert not torch.equal(one[B], init_adapter_values(SHAPES, 8, "b_random")[B])


def test_init_dumps_only_when_set_so_the_default_digest_stays():
    assert "init" not in FederationConfig().model_dump()["model"]["lora"]
    swapped = FederationConfig.model_validate({"model": {"lora": {"init": "b_random"}}})
    assert swapped.model_dump()["model"]["lora"]["init"] == "b_random"
    assert swapped.digest() != FederationConfig().digest()


def test_b_random_with_ffa_is_refused_naming_the_field():
    with pytest.raises((ConfigError, ValueError), match=r"model\.lora\.init"):
        FederationConfig.model_validate(
            {"model": {"lora": {"init": "b_random"}}, "fedsa_lora": {"algorithm": "ffa"}})


def test_the_cloud_starts_the_shared_a_at_zero_under_b_random():
    """The fedsa default, set here explicitly."""
    config = FederationConfig.model_validate({
        "federation": {"seed": 3},
        "model": {"path": "tiny-bert", "num_labels": 3, "lora": {"init": "b_random"}}})
    start = initial_global(config)
    a_names = [n for n in start if role(n) == "lora_A"]
    assert a_names and all(torch.count_nonzero(start[n]) == 0 for n in a_names)
    standard = initial_global(config.model_copy(update={"model": config.model.model_copy(
        update={"lora": config.model.lora.model_copy(update={"init": "a_random"})})}))
    assert all(standard[n].abs().sum() > 0 for n in a_names)


@pytest.mark.parametrize("algorithm, expected", [
    ("fedsa", "b_random"), ("fedit", "a_random"), ("ffa", "a_random"), ("local", "a_random")])
def test_unset_init_is_b_random_under_fedsa_only(algorithm, expected):
    config = FederationConfig.model_validate({"fedsa_lora": {"algorithm": algorithm}})
    assert config.model.lora.init is None and config.lora_init == expected
    if algorithm != "ffa":
        chosen = FederationConfig.model_validate({"fedsa_lora": {"algorithm": algorithm},
                                                  "model": {"lora": {"init": "a_random"}}})
        assert chosen.lora_init == "a_random"
