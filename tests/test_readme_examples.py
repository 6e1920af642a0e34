"""README's examples run as written, so a drifted one (a renamed call, a changed report key,
an error or summary line worded differently) fails here:

* each ```python block that imports ``fedsa_edge`` runs in a fresh interpreter and asserts
  on what it gets (the peft example needs an exported adapter and is checked by
  tests/edge_client/test_export_peft.py);
* each ```text transcript (lines ``$ COMMAND`` followed by what it prints) runs its
  commands as installed programs, and their output must be the lines shown; a shown line
  ending in ``...`` is cut short, and ``$ cat FILE`` writes FILE with the lines shown.

Both run in a scratch directory where ``scenarios/`` is the repository's."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.programs import PROGRAMS, program

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
TEXT_BLOCK = re.compile(r"^```text\n(.*?)^```", re.S | re.M)


def api_examples() -> list[str]:
    return [code for code in BLOCK.findall((REPO / "README.md").read_text())
            if "import fedsa_edge" in code]


def transcripts() -> list[list[tuple[str, list[str]]]]:
    """Every ```text block that starts with ``$ ``, as (command, lines it prints) steps."""
    found = []
    for block in TEXT_BLOCK.findall((REPO / "README.md").read_text()):
        if not block.startswith("$ "):
            continue
        steps: list[tuple[str, list[str]]] = []
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            else:
                steps[-1][1].append(line)
        found.append(steps)
    return found


def scratch_env(tmp_path: Path) -> dict[str, str]:
    """A scratch directory with the repository's ``scenarios/``, and an environment whose
    imports come from this checkout."""
    (tmp_path / "scenarios").symlink_to(REPO / "scenarios")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}


def shows(shown: list[str], real: list[str]) -> bool:
    """The transcript's lines are the real output (a line ending in ``...`` a prefix)."""
    return len(shown) == len(real) and all(
        r.startswith(s[:-3]) if s.endswith("...") else r == s
        for s, r in zip(shown, real, strict=True))


def test_readme_has_transcripts() -> None:
    assert any(cmd.startswith("hub config validate") for steps in transcripts()
               for cmd, _ in steps)


def test_a_truncated_line_matches_by_prefix_only() -> None:
    assert shows(["a: b, ..."], ["a: b, c, d"])
    assert not shows(["a: b, ..."], ["a: x, c"])
    assert not shows(["a"], ["a", "b"])


@pytest.mark.parametrize("index", range(len(transcripts())))
def test_readme_transcript_shows_the_real_output(index: int, tmp_path: Path) -> None:
    env = scratch_env(tmp_path)
    for command, shown in transcripts()[index]:
        argv = shlex.split(command)
        if argv[0] == "cat":  # the file that the next commands read
            (tmp_path / argv[1]).write_text("".join(f"{line}\n" for line in shown))
            continue
        assert argv[0] in PROGRAMS, f"README transcript runs {argv[0]}: not one of ours"
        done = subprocess.run([*program(argv[0]), *argv[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        real = (done.stdout + done.stderr).splitlines()
        assert shows(shown, real), f"$ {command}\nREADME shows:\n" + "\n".join(shown) + \
            "\nthe command printed:\n" + "\n".join(real)


def test_readme_has_api_examples() -> None:
    assert len(api_examples()) >= 2


@pytest.mark.parametrize("index", range(len(api_examples())))
def test_readme_api_example_runs(index: int, tmp_path: Path) -> None:
    env = scratch_env(tmp_path)
    script = tmp_path / "example.py"
    script.write_text(api_examples()[index])
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
