"""Process-wide logging: readable lines on a terminal, JSON lines otherwise (for collectors)."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)  # log.info(..., extra={"fields": {...}})
        if isinstance(fields, dict):
            body.update({k: v for k, v in fields.items() if k not in body})
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body)


def setup_logging(level: str = "INFO", json_lines: bool | None = None) -> None:
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        fmt = logging.Formatter("%(asctime)s %(levelname).1s %(name)s: %(message)s", "%H:%M:%S")
        fmt.converter = time.localtime
        handler.setFormatter(fmt)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # libraries whose INFO lines report their own internals; onnx_ir and onnxscript (the
    # ONNX exporter's graph passes) printed ~70-100 of them per `edge-client export`
    for noisy in ("transformers", "bitsandbytes", "amqtt", "paho", "urllib3", "peft",
                  "onnx_ir", "onnxscript"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
