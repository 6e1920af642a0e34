"""README's Python examples of the library API run as written: each ```python block that
imports ``fedsa_edge`` runs in a fresh interpreter, in a scratch directory where
``scenarios/`` is the repository's, so a drifted example (a renamed call, a changed report
key) fails here.  The blocks assert on what they get; the peft example needs an exported
adapter and is checked by tests/edge_client/test_export_peft.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def api_examples() -> list[str]:
    return [code for code in BLOCK.findall((REPO / "README.md").read_text())
            if "import fedsa_edge" in code]


def test_readme_has_api_examples() -> None:
    assert len(api_examples()) >= 2


@pytest.mark.parametrize("index", range(len(api_examples())))
def test_readme_api_example_runs(index: int, tmp_path: Path) -> None:
    (tmp_path / "scenarios").symlink_to(REPO / "scenarios")
    script = tmp_path / "example.py"
    script.write_text(api_examples()[index])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
