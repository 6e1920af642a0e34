"""The install extras: a device joining imports none of their packages (issue 18.4), and a
missing extra is reported in one line naming it."""

import subprocess
import sys

import pytest

from fedsa_common.wire.errors import MissingExtra, UserError, require_extra

EXTRA_PACKAGES = ("optuna", "onnx", "onnxscript", "onnxruntime", "opacus")


def test_join_import_graph_has_no_extra_package() -> None:
    code = ("import sys, edge_client.cli, edge_client.api, edge_client.device; "
            f"print(sorted(m for m in {EXTRA_PACKAGES!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]", out


def test_missing_extra_names_the_pip_command() -> None:
    with pytest.raises(MissingExtra) as err:
        require_extra("no_such_module_fedsa", "tune", "scenarios tune")
    assert isinstance(err.value, UserError)
    assert "pip install 'fedsa-edge[tune]'" in str(err.value)
    require_extra("json", "tune", "scenarios tune")  # present: no error


def test_a_federation_with_dp_needs_the_dp_extra_from_the_start(monkeypatch) -> None:
    from fedsa_common.federation.config import FederationConfig
    from fedsa_common.privacy.dp import dp_plan

    config = FederationConfig.model_validate(
        {"rounds": 4, "fedsa_lora": {"privacy": {"differential_privacy": {
            "enable": True, "noise_multiplier": 1.0}}}})
    monkeypatch.setitem(sys.modules, "opacus", None)  # as if not installed
    assert dp_plan(FederationConfig()) is None  # without DP nothing is needed
    with pytest.raises(MissingExtra, match=r"fedsa-edge\[dp\]"):
        dp_plan(config)  # a configured multiplier is not calibrated: checked all the same


def test_predict_without_onnxruntime_names_the_predict_extra(monkeypatch, tmp_path) -> None:
    from edge_client.predict import OnnxClassifier

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtra, match=r"fedsa-edge\[predict\]"):
        OnnxClassifier(tmp_path / "model.onnx")
