"""Free ports for the hubs' Prometheus endpoints during a scenario, and where they are noted.

The runner gives every hub its own ``--metrics-port`` and writes ``OUT/metrics_ports.json``
(``{"cloud": 40123, "regional-north": 40124, ...}``) so that a person or a test can scrape a
running scenario without guessing.  A port is found by binding port 0 and releasing it;
another process could take it in between, which on a test machine's loopback is rare
enough that the hub's own clear bind error is the right answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from fedsa_common.net.broker import free_port

FILE_NAME = "metrics_ports.json"


def allocate(names: Iterable[str], out: Path | None = None) -> dict[str, int]:
    """A distinct free port per process name, written to ``out/metrics_ports.json``."""
    ports: dict[str, int] = {}
    for name in names:
        port = free_port()
        while port in ports.values():
            port = free_port()
        ports[name] = port
    if out is not None:
        (out / FILE_NAME).write_text(json.dumps(ports, indent=2))
    return ports

