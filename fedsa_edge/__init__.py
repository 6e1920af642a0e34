"""fedsa-edge as a library: the calls the three commands are thin layers over, in one place.

    import fedsa_edge

    report = fedsa_edge.run_scenario("scenarios/tiny.yaml", "runs/tiny")
    print(report["final"]["rounds_completed"], report["final"]["accuracy"])

Hubs and devices run in this process (``serve_cloud``, ``serve_regional``, ``join``: they
block until the federation finishes and return the exit status) or as managed child
processes (``start_hub``, ``start_device``: ``stop()``, ``wait()``, usable with ``with``);
``load_devices`` and ``start_load_devices`` run many light devices (a load generator);
``start_broker`` starts Mosquitto (or the embedded broker) on a free local port.  Each call
lives on the floor of what it wraps (``hub.api``, ``edge_client.api``, ``scenarios.api``);
this package only gathers them and is imported by nothing inside fedsa-edge.  A mistake
raises a ``UserError`` (``fedsa_common.wire.errors``) whose message names the field to fix.
"""

from __future__ import annotations

from edge_client.api import join, load_devices, start_device, start_load_devices
from fedsa_common.net.broker import start_broker
from fedsa_common.wire.errors import OptionError, UserError
from hub.api import cloud_config, serve_cloud, serve_regional, start_hub, tune_process
from scenarios.api import load as load_scenario
from scenarios.api import run as run_scenario

__all__ = [
    "OptionError",
    "UserError",
    "cloud_config",
    "join",
    "load_devices",
    "load_scenario",
    "run_scenario",
    "serve_cloud",
    "serve_regional",
    "start_broker",
    "start_device",
    "start_hub",
    "start_load_devices",
    "tune_process",
]
