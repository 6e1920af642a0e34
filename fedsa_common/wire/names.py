"""What a federation, region or client name may be: one MQTT topic level of safe characters.

A leaf (no torch, no pydantic), so that the command lines can check names before anything
heavy loads, and so that ``protocol`` and ``broker_auth`` share one pattern.
"""

from __future__ import annotations

import re

NAME_RE = r"^[A-Za-z0-9_.-]{1,64}$"
_NAME = re.compile(NAME_RE)


def check_name(kind: str, value: str) -> str:
    """Names become topic levels, so they may not contain '/', '+', '#' or spaces."""
    if not _NAME.match(value):
        raise ValueError(f"{kind} {value!r} must match {NAME_RE}")
    return value
