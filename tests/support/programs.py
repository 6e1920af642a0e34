"""The kit's command-line programs as a user runs them, for tests that must go through the
real command (its entry point, argument parsing, exit status and output streams)."""

from __future__ import annotations

import sys
from pathlib import Path

# program name -> the package ``python -m`` runs for it
PROGRAMS = {"hub": "hub", "edge-client": "edge_client", "scenarios": "scenarios"}


def program(name: str) -> list[str]:
    """The installed console script (``pip install -e .`` puts it beside the interpreter),
    else the same app through ``python -m``."""
    script = Path(sys.executable).with_name(name)
    return [str(script)] if script.exists() else [sys.executable, "-m", PROGRAMS[name]]
