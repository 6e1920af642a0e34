"""A device's metrics report: a classifier's reads as before ``loss``/``perplexity`` existed;
a causal model's carries them, validated as strictly as the other fields."""

from __future__ import annotations

import json

import pytest

from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import Metrics, decode_json, encode_json

BASE = {"federation": "f", "client": "c1", "region": "r1", "round": 2, "accuracy": 0.5,
        "n_test": 8}


def test_a_classifiers_report_has_no_score_keys() -> None:
    sent = json.loads(encode_json(Metrics(**BASE)))
    assert "loss" not in sent and "perplexity" not in sent
    assert set(sent) == {*BASE, "train_loss", "train_s", "bytes_up", "bytes_down",
                         "global_accuracy"}


def test_a_causal_models_report_round_trips() -> None:
    metrics = Metrics(**BASE, loss=2.5, perplexity=12.18)
    assert decode_json(Metrics, encode_json(metrics)) == metrics


@pytest.mark.parametrize("bad", [{"loss": -1.0}, {"loss": float("nan")},
                                 {"perplexity": 0.5}, {"perplexity": "inf"},
                                 {"losses": 1.0}])
def test_bad_scores_are_refused(bad: dict[str, object]) -> None:
    payload = json.dumps({**BASE, **bad}).replace("NaN", "1e999")
    with pytest.raises(WireError):
        decode_json(Metrics, payload.encode())
