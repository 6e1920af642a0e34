"""What a device's update header carries besides the update: under local DP nothing that
depends on its data (train_loss, train_s), since the noised update is all it may reveal."""

from __future__ import annotations

import pytest

from edge_client.update_build import header_train_stats
from fedsa_common.federation.config import FederationConfig
from fedsa_common.wire.protocol import UpdateHeader


def config(**dp) -> FederationConfig:
    return FederationConfig.model_validate(
        {"fedsa_lora": {"privacy": {"differential_privacy": dp}}} if dp else {})


def header(cfg: FederationConfig) -> UpdateHeader:
    return UpdateHeader(federation="f", round=1, client="d1", region="eu", base_version=0,
                        codec="topk_int8", codec_params={"ratio": 1.0}, codec_meta={},
                        num_samples=12, **header_train_stats(cfg, 0.73, 4.5))


def test_local_dp_header_carries_no_training_statistics():
    h = header(config(enable=True, mode="local", noise_multiplier=2.0))
    assert h.train_loss is None and h.train_s is None
    dumped = h.model_dump(mode="json")
    assert dumped["train_loss"] is None and dumped["train_s"] is None


@pytest.mark.parametrize("dp", [{}, {"enable": True, "mode": "central",
                                     "noise_multiplier": 1.0}])
def test_other_headers_keep_them(dp):
    h = header(config(**dp))
    assert (h.train_loss, h.train_s) == (0.73, 4.5)
