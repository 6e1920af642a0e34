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
        return {n: flat[o:o + k].view(s) for n, s, k, o in
                zip(self.names, self.shapes, self.numels, self.offsets, strict=True)}

    def zeros(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.zeros(self.total, dtype=dtype)


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
