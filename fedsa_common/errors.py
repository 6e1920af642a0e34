"""The one error type raised for anything that came over the network and does not fit.

Hubs catch exactly this type, count it under ``reason`` and keep serving; anything else
escaping a handler is a bug in our code, not hostile input.
"""


class WireError(ValueError):
    """Malformed, oversized, stale or otherwise unacceptable wire input."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)
