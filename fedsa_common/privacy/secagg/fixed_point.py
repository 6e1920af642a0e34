"""Fixed-point encoding of float updates into the ring Z/2^32 that secure aggregation masks.

Masks are uniform words modulo 2^32, so the values they hide must live in the same ring.
A device sends ``round(w * clip(x) * 2^f) mod 2^32`` per coordinate, where ``w`` is its
integer weight (sample count, at most ``max_weight``) and ``clip(x)`` bounds every value to
``[-clip, clip]``.  The hub only ever sees (and unmasks) the sum over at most ``n`` devices,
and ``f`` is chosen so that this sum cannot wrap::

    n * (max_weight * clip * 2^f + 1/2) <= 2^31 - 1

so the sum modulo 2^32, read as a two's-complement 32-bit integer, *is* the integer sum,
and dividing by ``2^f`` gives ``sum_u w_u x_u`` to within ``n / 2^(f+1)`` (each term is off
by at most half a unit in the last place).  The weight itself travels as one extra integer
coordinate (scale 1), so ``sum_u w_u`` comes out exact.

Why weights are folded in rather than sent in the clear: the hub must learn only the sums,
not how much data any one device has.  The price is precision: a device with weight ``w``
sees its values resolved to ``2^-f / w``; with the defaults (``clip`` 1, ``max_weight``
4096) and a region of 12 devices, ``f`` = 15, i.e. about 3e-5 / w.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

MOD = 1 << 32
HALF = 1 << 31
MASK32 = MOD - 1
#: Fewer fractional bits than this would resolve values more coarsely than 1/256; a
#: configuration that needs it (huge ``clip`` * ``max_weight`` * devices) is refused.
MIN_FRAC_BITS = 8
MAX_FRAC_BITS = 40  # beyond float64's exact range for realistic values; never useful


@dataclass(frozen=True)
class FixedPoint:
    """How one round's values map into Z/2^32; both ends derive it from the same inputs
    (roster size, ``clip``, ``max_weight``), so it never travels."""

    frac_bits: int
    clip: float
    max_weight: int
    n_max: int

    @classmethod
    def for_sum(cls, n_max: int, clip: float, max_weight: int = 1) -> FixedPoint:
        """The largest ``frac_bits`` for which a sum of ``n_max`` encodings cannot wrap.

        Raises ``ValueError`` when fewer than ``MIN_FRAC_BITS`` remain.
        """
        if n_max < 1 or max_weight < 1:
            raise ValueError(f"n_max and max_weight must be >= 1, got {n_max}, {max_weight}")
        if not (math.isfinite(clip) and clip > 0):
            raise ValueError(f"clip must be positive and finite, got {clip}")
        bound = n_max * max_weight * clip
        f = min(MAX_FRAC_BITS, math.floor(math.log2((HALF - 1) / bound)) if bound < HALF else -1)
        while f >= 0 and not _fits(n_max, max_weight, clip, f):
            f -= 1
        if f < MIN_FRAC_BITS:
            raise ValueError(
                f"fixed point: {n_max} devices x max_weight {max_weight} x clip {clip} leave "
                f"{max(f, 0)} fractional bits (< {MIN_FRAC_BITS}); lower clip or max_weight"
            )
        return cls(frac_bits=f, clip=float(clip), max_weight=int(max_weight), n_max=int(n_max))

    @property
    def scale(self) -> float:
        return float(2**self.frac_bits)

    def check_weight(self, weight: int) -> int:
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise ValueError(f"weight must be an int, got {type(weight).__name__}")
        if not 1 <= weight <= self.max_weight:
            raise ValueError(f"weight {weight} outside [1, {self.max_weight}]")
        return weight

    def quantize(self, values: Tensor, weight: int) -> Tensor:
        """int64 ``round(w * clip(x) * 2^f)`` (signed, before reduction mod 2^32)."""
        w = self.check_weight(weight)
        x = values.detach().to("cpu", torch.float64).reshape(-1)
        if not bool(torch.isfinite(x).all()):
            raise ValueError("values to encode are not finite")
        return torch.round(x.clamp(-self.clip, self.clip) * (w * self.scale)).to(torch.int64)

    def encode(self, values: Tensor, weight: int) -> Tensor:
        """Values and weight -> int64 words in ``[0, 2^32)``, the weight as the last word."""
        q = self.quantize(values, weight)
        words = torch.cat([q, torch.tensor([weight], dtype=torch.int64)])
        return torch.remainder(words, MOD)

    def sent(self, values: Tensor, weight: int) -> Tensor:
        """float64 values this device effectively contributes (what the sum will hold for
        it divided by its weight): the device adds ``x - sent`` to its error feedback."""
        return self.quantize(values, weight).to(torch.float64) / (weight * self.scale)

    def decode_sum(self, words: Tensor, count: int) -> tuple[Tensor, int]:
        """The unmasked sum of ``count`` encodings -> (float64 ``sum w x``, ``sum w``).

        Raises ``ValueError`` when the sum is impossible for ``count`` honest encodings: a
        weight outside ``[count, count * max_weight]``, or a value beyond what that weight
        allows, ``|sum_u q_u| <= floor(W * clip * 2^f) + count`` with ``W = sum_u w_u``
        (each honest ``|q_u| <= floor(w_u * clip * 2^f) + 1``).  The second check is what
        stops a device that cannot be seen under its masks from crafting its encoding
        (a negative weight word that shrinks ``W``, value words beyond its weight, a sum
        made to wrap): whatever it sends, the mean ``sum / W`` that gets through lies in
        ``[-clip - count / (W * 2^f), clip + count / (W * 2^f)]``, like an honest one.  A
        wrong unmasking (a garbage sum) fails these checks too, almost surely.
        """
        signed = to_signed(words)
        total_weight = int(signed[-1])
        if not count <= total_weight <= count * self.max_weight:
            raise ValueError(f"unmasked weight {total_weight} impossible for {count} devices "
                             f"(max_weight {self.max_weight})")
        values = signed[:-1]
        bound = math.floor(total_weight * self.clip * self.scale) + count
        if values.numel() and int(values.abs().max()) > bound:
            worst = int(values.abs().argmax())
            raise ValueError(f"unmasked value {int(values[worst])} at {worst} exceeds "
                             f"{bound}, the most a total weight of {total_weight} allows")
        return values.to(torch.float64) / self.scale, total_weight


def _fits(n: int, max_weight: int, clip: float, f: int) -> bool:
    """Whether n terms cannot wrap: each |round(w x 2^f)| is at most
    floor(max_weight * clip * 2^f) + 1 (the +1 covers rounding up and float error)."""
    per_term = math.floor(max_weight * clip * 2.0**f) + 1
    return n * max(per_term, max_weight) <= HALF - 1


def to_signed(words: Tensor) -> Tensor:
    """int64 words in ``[0, 2^32)`` -> their two's-complement value in ``[-2^31, 2^31)``."""
    w = words.to(torch.int64)
    return torch.where(w >= HALF, w - MOD, w)


def add_mod(a: Tensor, b: Tensor) -> Tensor:
    return torch.bitwise_and(a + b, MASK32)


def sub_mod(a: Tensor, b: Tensor) -> Tensor:
    return torch.bitwise_and(a - b, MASK32)


def to_wire(words: Tensor) -> Tensor:
    """int64 words in ``[0, 2^32)`` -> int32 with the same bits (4 bytes a word on the wire)."""
    return to_signed(words).to(torch.int32)


def from_wire(words: Tensor) -> Tensor:
    """int32 wire words -> int64 in ``[0, 2^32)``."""
    return torch.bitwise_and(words.to(torch.int64), MASK32)
