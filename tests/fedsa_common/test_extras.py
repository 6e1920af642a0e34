"""The install extras: a device joining imports none of their packages (issue 18.4), and a
missing extra is reported in one line naming it."""

import subprocess
import sys

import pytest

from fedsa_common.wire.errors import MissingExtra, UserError, require_extra

EXTRA_PACKAGES = ("optuna", "onnx", "onnxscript")


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
