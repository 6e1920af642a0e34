"""Comma-separated names given on the command line (``--algorithms``, ``--references``).

One parser so every list option rejects the same mistakes with the same words: an unknown
name (listing the allowed ones) and a name given twice.
"""

from __future__ import annotations

from collections.abc import Sequence


def parse_names(text: str, option: str, allowed: Sequence[str], kind: str, *,
                allow_none: bool = False) -> list[str]:
    """``a,b`` -> ``["a", "b"]``; ValueError naming ``option`` and the bad name.

    ``allow_none``: ``none`` (or nothing) means the empty list; otherwise nothing given is
    an error, since the option then selects nothing to run.
    """
    names = [n.strip() for n in text.split(",") if n.strip()]
    if allow_none and names in ([], ["none"]):
        return []
    if not names:
        raise ValueError(f"{option}: no {kind} given")
    extra = " or none" if allow_none else ""
    for name in names:
        if name not in allowed:
            raise ValueError(f"{option}: unknown {kind} {name!r}; allowed: "
                             f"{', '.join(allowed)}{extra}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{option}: {', '.join(dupes)} given more than once")
    return names
