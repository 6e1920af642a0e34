"""The error types shared by every package: hostile or malformed network input, and a
user's mistake that a command line reports in one line.
"""


class WireError(ValueError):
    """Malformed, oversized, stale or otherwise unacceptable wire input.

    Hubs catch exactly this type, count it under ``reason`` and keep serving; anything else
    escaping a handler is a bug in our code, not hostile input.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class UserError(Exception):
    """Mixed into the error types that mean "the user has to fix something" (a bad file, a
    bad option value, an unreachable broker) rather than "our code is wrong".

    The CLIs print such an error as one line naming ``option`` (the option, argument or file
    at fault; ``None`` when the message names it) and exit 2, with the traceback only at
    ``--log-level DEBUG``; any other exception is treated as a bug and keeps its traceback.
    A mixin rather than a base class so that each type keeps its built-in base
    (``ValueError``, ``ConnectionError``) for callers that catch those.
    """

    option: str | None = None


class OptionError(ValueError, UserError):
    """A bad argument given to a library call (``hub.api``, ``edge_client.api``,
    ``scenarios.api``); ``option`` is the matching command-line option, so that the CLIs,
    which are thin layers over those calls, report it like any other user error."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class MissingExtra(ImportError, UserError):
    """A feature's package is not installed because it lives in an install extra (the base
    install is what a device needs to join plus the quickstart; pyproject.toml)."""


def require_extra(module: str, extra: str, feature: str) -> None:
    """Fail in one line naming the extra that provides ``module`` when it is missing, so a
    slim device install reports ``pip install 'fedsa-edge[EXTRA]'`` instead of a traceback."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingExtra(f"{feature} needs {module}, which is not installed: "
                           f"pip install 'fedsa-edge[{extra}]'")
