"""The shared parameters laid end to end as one flat vector (pure, no I/O).

A hub decodes every update of every device; done tensor by tensor, the cost is a dozen small
operations per tensor and per update, whatever the sizes.  Laying the tensors end to end in
one canonical order (sorted names, so both ends agree without sending the order) lets a
decoder validate, dequantize and scatter a whole update in a fixed number of operations,
and lets a running sum fold it in with one addition.  Tensors handed back are views into
the flat vector, so splitting costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class Layout:
    """Where each named tensor lives in the flat vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    numels: tuple[int, ...]
    offsets: tuple[int, ...]
    total: int

    @staticmethod
    def of(shapes: Mapping[str, tuple[int, ...]]) -> Layout:
        """The layout of ``shapes`` (memoised: a hub asks for the same one every update)."""
        return _layout(tuple(sorted((n, tuple(int(d) for d in s)) for n, s in shapes.items())))

    def shape_map(self) -> dict[str, tuple[int, ...]]:
        return dict(zip(self.names, self.shapes, strict=True))

    def flatten(self, tensors: Mapping[str, Tensor], dtype: torch.dtype = torch.float32
                ) -> Tensor:
        """One contiguous vector of ``tensors`` in layout order (names must match exactly)."""
        if len(tensors) != len(self.names):
            raise ValueError(f"{len(tensors)} tensors for a layout of {len(self.names)}")
        if not self.names:
            return torch.zeros(0, dtype=dtype)
        return torch.cat([tensors[n].reshape(-1) for n in self.names]).to(dtype)

    def split(self, flat: Tensor) -> dict[str, Tensor]:
        """Views of ``flat`` per name, in their shapes."""
        if flat.numel() != self.total:
            raise ValueError(f"flat vector of {flat.numel()} elements, layout has {self.total}")
        # one split (a C loop) instead of a slice per name: a hub splits every update
        parts = flat.split_with_sizes(self.numels) if self.names else ()
        return {n: p.view(s) for n, s, p in zip(self.names, self.shapes, parts, strict=True)}

    def views(self, flat: Tensor) -> FlatViews:
        """``split``, keeping ``flat`` and this layout with the views (what decoders return:
        whoever reads a whole update can then take one operation instead of one per name)."""
        return FlatViews(self, flat, self.split(flat))

    def zeros(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.zeros(self.total, dtype=dtype)


class FlatViews(dict[str, Tensor]):
    """Named views of one flat vector, which it keeps (``flat``) with its ``layout``.

    Why: a hub takes a bound, a norm and a running-sum addition of every update it decodes;
    on the flat vector each is one tensor operation, per name it is a dozen.  It is a plain
    dict for everyone else.  Replacing or removing an entry drops ``flat`` (None), so a
    changed mapping never passes for its old vector; writing into a view in place changes
    ``flat`` too, as views do."""

    def __init__(self, layout: Layout, flat: Tensor, views: Mapping[str, Tensor]) -> None:
        super().__init__(views)
        self.layout: Layout = layout
        self.flat: Tensor | None = flat

    def _changed(self) -> None:
        self.flat = None

    def __setitem__(self, key: str, value: Tensor) -> None:
        self._changed()
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._changed()
        super().__delitem__(key)

    def __ior__(self, other: Any) -> FlatViews:  # type: ignore[override,misc]
        self._changed()
        return super().__ior__(other)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._changed()
        super().update(*args, **kwargs)

    def pop(self, *args: Any) -> Any:
        self._changed()
        return super().pop(*args)

    def popitem(self) -> tuple[str, Tensor]:
        self._changed()
        return super().popitem()

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._changed()
        return super().setdefault(key, default)

    def clear(self) -> None:
        self._changed()
        super().clear()


def flat_of(tensors: Mapping[str, Tensor], layout: Layout | None = None) -> Tensor | None:
    """The flat vector behind ``tensors`` when they are a decoder's unchanged ``FlatViews``
    (of ``layout`` when given), else None: the caller then goes name by name."""
    if not isinstance(tensors, FlatViews) or tensors.flat is None:
        return None
    if layout is not None and tensors.layout is not layout and tensors.layout != layout:
        return None
    return tensors.flat


@lru_cache(maxsize=64)
def _layout(items: tuple[tuple[str, tuple[int, ...]], ...]) -> Layout:
    numels = tuple(math.prod(s) for _, s in items)
    offsets, at = [], 0
    for k in numels:
        offsets.append(at)
        at += k
    return Layout(tuple(n for n, _ in items), tuple(s for _, s in items), numels,
                  tuple(offsets), at)


def segment_ids(counts: Tensor) -> Tensor:
    """For segments of ``counts`` elements laid end to end, the segment of each element."""
    return torch.repeat_interleave(torch.arange(counts.numel()), counts)


def segment_starts(counts: Tensor) -> Tensor:
    """Start of each segment of ``counts`` elements laid end to end (int64)."""
    return torch.cumsum(counts, 0) - counts
