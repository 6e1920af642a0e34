"""Check a device's ``--data`` before anything slow happens.

A missing file, a CSV without its label column or in another encoding used to surface only
after the device had connected, loaded its model (30-45 s) and been selected for a round.
Loading the share up front costs what the first round would have paid anyway (the pool is
cached per process, see ``pool``), and turns every such mistake into one line at start.
"""

from __future__ import annotations

from pydantic import ValidationError

from .dataset import DataError, DeviceData
from .pool import load_device_data
from .spec import DataSpec, parse_data_spec


def spec_error_message(err: ValidationError) -> str:
    """One line naming each bad data-spec option, e.g. ``option 'shard': must be < ...``."""
    parts = []
    for e in err.errors():
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"unknown option; known: {', '.join(DataSpec.model_fields)}"
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"option {loc!r}: {msg}" if loc else msg)
    return "data spec: " + "; ".join(parts)


def check_device_data(text: str) -> tuple[DataSpec, DeviceData]:
    """Parse ``SOURCE?key=value...`` and load this device's train/test share now.

    Raises ``DataError`` with one line that names the option, or the file, line and column,
    at fault: unknown or invalid options, a missing or unreadable file, missing columns, no
    rows, text that is not in the given ``encoding``, or a share too small to have both a
    training and a test row.
    """
    try:
        spec = parse_data_spec(text)
    except ValidationError as err:
        raise DataError(spec_error_message(err)) from None
    except ValueError as err:  # syntax: key=value pairs
        raise DataError(str(err)) from None
    return spec, load_device_data(spec)
