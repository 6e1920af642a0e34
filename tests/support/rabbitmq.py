"""RabbitMQ nodes with the MQTT plugin, started in a temporary directory and clustered.

Why: the protocol is checked on a second, independent MQTT broker that clusters (issue 17),
so the claims in docs/brokers.md about what works across nodes stay tested. Debian's
``rabbitmq-server`` package is enough: its scripts run as any user when every path (data,
logs, config, cookie) points into the work directory, so nothing under /var or /etc is used
and the system service is never touched.

Each ``RabbitCluster`` has its own Erlang port mapper (``epmd``) on a free port and its own
cookie, so it cannot meet another cluster (or a system RabbitMQ) on this machine; ``stop()``
stops its nodes and that port mapper, which the first node started.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedsa_common.net.broker import BrokerStartError, free_port, mqtt_ping

_BIN = Path("/usr/lib/rabbitmq/bin")
# One scheduler and no busy-waiting: a test node moves little traffic and must not take
# cores from the hubs and devices it serves.
_ERL_ARGS = "+S 1:1 +sbwt none +sbwtdcpu none +sbwtdio none"
_READY_S = 120.0  # a node boots in 10-20 s on an idle 2-core machine; more under load
_CTL_S = 120.0


def rabbitmq_bin() -> Path | None:
    """Where Debian's package puts ``rabbitmq-server`` and ``rabbitmqctl``; None when it is
    not installed, or without the MQTT plugin."""
    plugins = list(Path("/usr/lib/rabbitmq/lib").glob("rabbitmq_server-*/plugins/rabbitmq_mqtt-*"))
    if (_BIN / "rabbitmq-server").exists() and (_BIN / "rabbitmqctl").exists() and plugins:
        return _BIN
    return None


@dataclass
class RabbitNode:
    """One running node; ``url`` is its MQTT listener on 127.0.0.1."""

    name: str  # Erlang node name, e.g. fedsa-a-40123@localhost
    url: str
    home: Path
    env: dict[str, str] = field(repr=False)
    process: subprocess.Popen[bytes] = field(repr=False)
    log_path: Path

    def ctl(self, *args: str) -> str:
        """``rabbitmqctl -n NODE ARGS``; its output, or RuntimeError with it."""
        done = subprocess.run([str(_BIN / "rabbitmqctl"), "-n", self.name, *args],
                              env=self.env, capture_output=True, text=True, timeout=_CTL_S,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.name} failed "
                               f"({done.returncode}):\n{done.stdout}{done.stderr}")
        return done.stdout

    def wait_ready(self, timeout: float = _READY_S) -> None:
        """Until the MQTT listener answers a CONNECT; BrokerStartError with the log tail when
        the node exits or does not get there within ``timeout``."""
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if self.process.poll() is not None:
                raise BrokerStartError(f"RabbitMQ node {self.name} exited with "
                                       f"{self.process.returncode}:\n{self.log_tail()}")
            try:
                mqtt_ping(self.url, timeout=2.0)
                return
            except OSError:
                time.sleep(0.5)
        raise BrokerStartError(f"RabbitMQ node {self.name}: no MQTT listener on {self.url} "
                               f"after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, nbytes: int = 4000) -> str:
        data = self.log_path.read_bytes() if self.log_path.exists() else b"(no log)"
        return data[-nbytes:].decode("utf-8", "replace")

    def stop(self, timeout: float = 60.0) -> None:
        """``rabbitmqctl stop``, then SIGKILL to the node's process group if it lingers."""
        if self.process.poll() is None:
            try:
                self.ctl("stop")
                self.process.wait(timeout=timeout)
            except (RuntimeError, subprocess.TimeoutExpired):
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout)


class RabbitCluster:
    """Nodes that share a cookie and a port mapper under ``workdir``; ``add_node()`` starts
    one, ``join(node, seed)`` clusters it with ``seed``. Use as a context manager."""

    def __init__(self, workdir: Path) -> None:
        if rabbitmq_bin() is None:
            raise BrokerStartError("RabbitMQ is not installed (apt-get install rabbitmq-server)")
        self.workdir = workdir
        self.epmd_port = free_port()
        self.cookie = secrets.token_hex(16)
        self.nodes: list[RabbitNode] = []

    def add_nodes(self, *labels: str) -> list[RabbitNode]:
        """Start a node per label (MQTT plugin on, anonymous MQTT allowed, listeners on
        127.0.0.1 free ports), all at once since each boot takes seconds, and return them
        once every MQTT listener answers."""
        nodes = [self._spawn(label) for label in labels]
        for node in nodes:
            node.wait_ready()
        return nodes

    def _spawn(self, label: str) -> RabbitNode:
        mqtt_port, amqp_port, dist_port = free_port(), free_port(), free_port()
        name = f"fedsa-{label}-{mqtt_port}@localhost"
        home = self.workdir / label
        home.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"  # Erlang reads it from $HOME and wants mode 0400
        cookie.write_text(self.cookie)
        cookie.chmod(0o400)
        conf = home / "rabbitmq.conf"
        conf.write_text("\n".join([
            f"listeners.tcp.default = 127.0.0.1:{amqp_port}",
            f"mqtt.listeners.tcp.default = 127.0.0.1:{mqtt_port}",
            "mqtt.allow_anonymous = true",
            "log.console = true",
            "log.console.level = info",
            "log.file = false",
            "",
        ]))
        env = {
            **os.environ,
            "HOME": str(home),
            "RABBITMQ_NODENAME": name,
            "RABBITMQ_CONFIG_FILE": str(conf),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(home / "advanced.config"),  # none
            "RABBITMQ_CONF_ENV_FILE": str(home / "rabbitmq-env.conf"),  # none: not /etc's
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_PID_FILE": str(home / "node.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "RABBITMQ_ENABLED_PLUGINS": "rabbitmq_mqtt",
            "RABBITMQ_DIST_PORT": str(dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": _ERL_ARGS,
            "RABBITMQ_CTL_ERL_ARGS": "+S 1:1",
        }
        log_path = home / "node.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen([str(_BIN / "rabbitmq-server")], env=env, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        node = RabbitNode(name, f"mqtt://127.0.0.1:{mqtt_port}", home, env, proc, log_path)
        self.nodes.append(node)
        return node

    def join(self, node: RabbitNode, seed: RabbitNode) -> None:
        """Cluster ``node`` with ``seed`` (``stop_app``, ``join_cluster``, ``start_app``)
        and wait until its MQTT listener is back."""
        node.ctl("stop_app")
        node.ctl("join_cluster", seed.name)
        node.ctl("start_app")
        node.wait_ready()

    def running_nodes(self) -> list[str]:
        """The node names the first node reports as running in its cluster."""
        out = self.nodes[0].ctl("eval", "rabbit_nodes:all_running().")
        return sorted(part.strip(" []'\n") for part in out.split(",") if "@" in part)

    def stop(self) -> None:
        """Stop every node (the last started first), then this cluster's port mapper."""
        for node in reversed(self.nodes):
            node.stop()
        subprocess.run(["epmd", "-port", str(self.epmd_port), "-kill"], capture_output=True,
                       timeout=30, check=False, env={**os.environ,
                                                     "ERL_EPMD_PORT": str(self.epmd_port)})

    def __enter__(self) -> RabbitCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
