"""``scenarios bench --compression``: the codec settings a bench sweeps (pure, no I/O).

A sweep item is ``METHOD[:RATIO][:VALUES][:OPTION...]`` with options ``bN`` (one scale per
N sent values) and ``zstd``:

* ``topk:0.1:int8``, ``randk:0.05:int4:b64:zstd``: the configurable codecs (values
  default to int8);
* ``topk_int8:0.1``: the original codec;
* ``dense`` or ``dense:fp32``: lossless; ``dense:fp16`` / ``dense:int8`` / ``dense:int4``
  send every coordinate quantized (top-k with ratio 1, so no index travels).

Each item becomes one run label (``ALGORITHM ITEM``) of the bench.  The frontier needs a
reference point, so the sweep always includes FedIT with dense fp32 (A and B shared,
nothing compressed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedsa_common.federation.config import CompressionSection, ConfigError, validate_model

REFERENCE_ALGORITHM = "fedit"
REFERENCE_COMPRESSION = "dense:fp32"
_VALUES = ("fp32", "fp16", "int8", "int4")


@dataclass(frozen=True)
class CompressionChoice:
    """One swept codec setting: its label, a name-safe slug, and the config section."""

    label: str
    settings: dict[str, Any] = field(hash=False, compare=False)

    @property
    def slug(self) -> str:
        """The label as a federation-name / directory part (``topk-0.1-int8``)."""
        return self.label.replace(":", "-")


def parse_compression(item: str) -> CompressionChoice:
    """One sweep item -> its normalised label and ``fedsa_lora.compression`` settings;
    a ValueError names the item and what is wrong with it."""
    parts = [p.strip() for p in item.strip().split(":")]
    method, rest = parts[0], parts[1:]
    if method == "dense":
        values = rest[0] if rest else "fp32"
        if values not in _VALUES:
            raise ValueError(f"--compression {item!r}: dense takes fp32, fp16, int8 or int4")
        if values == "fp32":
            if rest[1:]:
                raise ValueError(f"--compression {item!r}: dense:fp32 takes no options")
            return _checked(item, "dense:fp32", {"method": "dense"})
        return _sparse(item, "topk", 1.0, values, rest[1:], label_method="dense")
    if method not in ("topk", "randk", "topk_int8"):
        raise ValueError(f"--compression {item!r}: method must be topk, randk, topk_int8 "
                         "or dense")
    if not rest:
        raise ValueError(f"--compression {item!r}: give a ratio, e.g. {method}:0.1")
    try:
        ratio = float(rest[0])
    except ValueError:
        raise ValueError(f"--compression {item!r}: ratio {rest[0]!r} is not a number") from None
    if method == "topk_int8":
        if rest[1:]:
            raise ValueError(f"--compression {item!r}: topk_int8 takes only a ratio")
        return _checked(item, f"topk_int8:{ratio:g}", {"method": "topk_int8", "ratio": ratio})
    values = rest[1] if len(rest) > 1 else "int8"
    return _sparse(item, method, ratio, values, rest[2:])


def _sparse(item: str, method: str, ratio: float, values: str, options: list[str],
            label_method: str | None = None) -> CompressionChoice:
    if values not in _VALUES:
        raise ValueError(f"--compression {item!r}: values {values!r} not in {', '.join(_VALUES)}")
    settings: dict[str, Any] = {"method": method, "ratio": ratio, "values": values}
    label = [label_method or method] + ([] if label_method else [f"{ratio:g}"]) + [values]
    for opt in options:
        if opt == "zstd" and "zstd" not in settings:
            settings["zstd"] = True
        elif opt.startswith("b") and opt[1:].isdigit() and "block_size" not in settings:
            settings["block_size"] = int(opt[1:])
        else:
            raise ValueError(f"--compression {item!r}: unknown or repeated option {opt!r} "
                             "(bN for blocks of N values, zstd)")
    if "block_size" in settings:
        label.append(f"b{settings['block_size']}")
    if settings.get("zstd"):
        label.append("zstd")
    return _checked(item, ":".join(label), settings)


def _checked(item: str, label: str, settings: dict[str, Any]) -> CompressionChoice:
    try:
        validate_model(CompressionSection, {"enable": True, **settings})
    except ConfigError as err:
        raise ValueError(f"--compression {item!r}: {err}") from None
    return CompressionChoice(label, {"enable": True, **settings})


def parse_compressions(text: str) -> list[CompressionChoice]:
    """``topk:0.1:int8,dense:fp32`` -> choices; an empty list or a repeat is an error."""
    items = [i for i in text.split(",") if i.strip()]
    if not items:
        raise ValueError("--compression: no codec given")
    choices = [parse_compression(i) for i in items]
    labels = [c.label for c in choices]
    dupes = sorted({lb for lb in labels if labels.count(lb) > 1})
    if dupes:
        raise ValueError(f"--compression: {', '.join(dupes)} given more than once")
    return choices


def sweep_pairs(algorithms: list[str], choices: list[CompressionChoice]
                ) -> list[tuple[str, CompressionChoice]]:
    """Every (algorithm, choice), algorithm-major, plus the FedIT dense fp32 reference when
    the sweep does not already contain it (always last)."""
    pairs = [(alg, c) for alg in algorithms for c in choices]
    if not any(alg == REFERENCE_ALGORITHM and c.label == REFERENCE_COMPRESSION
               for alg, c in pairs):
        pairs.append((REFERENCE_ALGORITHM, parse_compression(REFERENCE_COMPRESSION)))
    return pairs


def reference_label() -> str:
    return f"{REFERENCE_ALGORITHM} {REFERENCE_COMPRESSION}"
