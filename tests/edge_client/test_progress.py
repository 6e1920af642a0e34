"""Per-round progress: a rewritten line on a terminal, one JSON record otherwise."""

from __future__ import annotations

import io
import json
import logging

from edge_client.progress import RoundProgress
from edge_client.training import StepInfo, TrainResult
from fedsa_common.process.logs import JsonFormatter


def steps(n: int) -> list[StepInfo]:
    return [StepInfo(step=i, steps=n, loss=1.0 / i, samples=16 * i, micro_batch=8,
                     seconds=0.5 * i, peak_rss=300 * 2**20) for i in range(1, n + 1)]


def test_interactive_progress_rewrites_one_line_per_round(caplog):
    out = io.StringIO()
    progress = RoundProgress("dev-1", interactive=True, stream=out)
    progress.start(3)
    for info in steps(4):
        progress.step(info)
    with caplog.at_level(logging.INFO, logger="fedsa.device"):
        progress.finish(TrainResult(loss=0.5, samples=64, seconds=2.0, micro_batch=8))
    text = out.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n") and text.count("\n") == 1
    last = text.rstrip("\n").split("\r")[-1]
    assert "dev-1 round 3: step 4/4" in last and "micro-batch 8" in last
    assert "peak 300 MiB" in last and "32.0 samples/s" in last
    assert not caplog.records  # the terminal line is the report


def test_non_interactive_progress_logs_one_structured_record(caplog):
    out = io.StringIO()
    progress = RoundProgress("dev-2", interactive=False, stream=out)
    progress.start(7)
    with caplog.at_level(logging.INFO, logger="fedsa.device"):
        for info in steps(3):
            progress.step(info)
        progress.finish(TrainResult(loss=0.25, samples=48, seconds=1.5, micro_batch=16,
                                    peak_rss=None))
    assert out.getvalue() == ""
    [record] = caplog.records
    body = json.loads(JsonFormatter().format(record))
    assert body["event"] == "local_round" and body["round"] == 7 and body["client"] == "dev-2"
    assert body["samples"] == 48 and body["micro_batch"] == 16 and body["samples_per_s"] == 32
    assert body["peak_rss_mb"] is None and body["rss_mb"] > 0
    assert body["msg"].startswith("dev-2: local round 7: 48 samples")


def test_json_formatter_keeps_its_own_keys():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    record.fields = {"msg": "spoofed", "level": "nope", "extra": 1}
    body = json.loads(JsonFormatter().format(record))
    assert body["msg"] == "hello" and body["level"] == "info" and body["extra"] == 1
