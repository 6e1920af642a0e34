"""What a device shows while it trains a local round.

On a terminal a person is watching: one line, rewritten in place after every optimizer step
and left on screen when the round ends.  Anywhere else (a service, a scenario worker whose
stderr is a log file) the same figures go out as one structured log record per local round,
which ``fedsa_common.process.logs`` writes as a JSON line with the figures as fields.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from edge_client.memory import MiB, rss_bytes
from edge_client.training import StepInfo, TrainResult

log = logging.getLogger("fedsa.device")


class RoundProgress:
    def __init__(self, client: str, interactive: bool | None = None,
                 stream: TextIO | None = None) -> None:
        self.client = client
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.round = 0
        self._width = 0

    def start(self, round_: int) -> None:
        self.round = round_
        self._width = 0

    def step(self, info: StepInfo) -> None:
        """After each optimizer step: rewrite the terminal line (nothing otherwise)."""
        if not self.interactive:
            return
        rate = info.samples / info.seconds if info.seconds > 0 else 0.0
        line = (f"{self.client} round {self.round}: step {info.step}/{info.steps} "
                f"{bar(info.step, info.steps)} loss {info.loss:.3f}, {rate:.1f} samples/s, "
                f"micro-batch {info.micro_batch}")
        if info.peak_rss is not None:
            line += f", peak {info.peak_rss / MiB:.0f} MiB"
        self._write("\r" + line.ljust(self._width))
        self._width = len(line)

    def finish(self, result: TrainResult) -> None:
        """After the round: end the terminal line, or log one structured record."""
        rate = result.samples / result.seconds if result.seconds > 0 else 0.0
        fields = {
            "event": "local_round", "client": self.client, "round": self.round,
            "samples": result.samples, "loss": round(result.loss, 5),
            "seconds": round(result.seconds, 3), "samples_per_s": round(rate, 2),
            "micro_batch": result.micro_batch, "rss_mb": round(rss_bytes() / MiB, 1),
            "peak_rss_mb": None if result.peak_rss is None else round(result.peak_rss / MiB, 1),
        }
        if self.interactive:
            if self._width:
                self._write("\n")
            return
        log.info("%s: local round %d: %d samples in %.1fs (%.1f/s), loss %.3f, "
                 "micro-batch %d", self.client, self.round, result.samples, result.seconds,
                 rate, result.loss, result.micro_batch, extra={"fields": fields})

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def bar(done: int, total: int, width: int = 20) -> str:
    filled = round(width * done / total) if total else width
    return "[" + "#" * filled + "." * (width - filled) + "]"
