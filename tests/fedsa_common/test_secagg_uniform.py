"""What the hub sees of one device: a masked vector whose words are uniform mod 2^32 and
whose distribution does not depend on the input.  Chi-square tests over 256 buckets of the
32-bit words (top and bottom byte), with an unmasked control showing the test can fail."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch

from fedsa_common.privacy.secagg import RoundContext, SecAggClient, SecAggParams, SecAggServer
from fedsa_common.privacy.secagg.fixed_point import MOD, sub_mod
from tests.support.secagg import deliver_and_check

LENGTH = 256 * 200  # 200 expected per bucket
BINS = 256
PARAMS = SecAggParams(clip=1.0, max_weight=1000)


def _critical(df: int, z: float = 4.75) -> float:
    """Chi-square quantile (Wilson-Hilferty) at about p = 1e-6: a correct mask fails it
    once in a million runs."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def _chi2_uniform(words: torch.Tensor, shift: int) -> float:
    counts = torch.bincount(((words >> shift) & 0xFF), minlength=BINS).double()
    expected = words.numel() / BINS
    return float(((counts - expected) ** 2 / expected).sum())


def _chi2_same(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample chi-square homogeneity statistic of the words' top bytes."""
    ca = torch.bincount(a >> 24, minlength=BINS).double()
    cb = torch.bincount(b >> 24, minlength=BINS).double()
    total = ca + cb
    ea, eb = total * a.numel() / (a.numel() + b.numel()), total * b.numel() / (
        a.numel() + b.numel())
    return float(((ca - ea) ** 2 / ea).sum() + ((cb - eb) ** 2 / eb).sum())


def _view(values: torch.Tensor, weight: int, randbytes_for: Callable[[str], Callable]
          ) -> torch.Tensor:
    """The masked vector dev00 sends in a round of four devices (the smallest roster)."""
    ctx = RoundContext("fed", 2, "r1", LENGTH, PARAMS)
    clients = {c: SecAggClient(ctx, c, randbytes_for(c))
               for c in ("dev00", "dev01", "dev02", "dev03")}
    server = SecAggServer(ctx)
    for c in clients.values():
        server.add_keys(c.advertise())
    roster = server.close_keys()
    for c in clients.values():
        server.add_shares(c.share_keys(roster))
    deliver_and_check(server, clients)
    return clients["dev00"].masked_input(values, weight).y


def _seeded(seed: int) -> Callable[[str], Callable]:
    return lambda c: random.Random(f"{seed}:{c}").randbytes


def test_masked_vector_is_uniform_for_very_different_inputs():
    zeros = torch.zeros(LENGTH)
    extreme = torch.where(torch.arange(LENGTH) % 2 == 0, 1.0, -1.0)  # +-clip, max weight
    crit = _critical(BINS - 1)
    for values, weight, seed in ((zeros, 1, 1), (extreme, 1000, 2)):
        y = _view(values, weight, _seeded(seed))
        assert int(y.min()) >= 0 and int(y.max()) < MOD
        assert _chi2_uniform(y, 24) < crit
        assert _chi2_uniform(y, 0) < crit
    # control: the same inputs unmasked are nowhere near uniform
    fp = PARAMS.fixed_point(4)
    plain = fp.encode(extreme, 1000)
    assert _chi2_uniform(plain, 24) > 100 * crit


def test_inputs_are_indistinguishable_under_the_same_keys_with_other_self_masks():
    """Same X25519 keys for every device (so identical pairwise masks), only dev00's
    self-mask seed differs: y(x) and y(x') have the same distribution, and their
    difference is uniform too (the self mask alone hides x - x')."""
    def randbytes_for(run: str) -> Callable[[str], Callable]:
        def per_client(c: str) -> Callable[[int], bytes]:
            keys = random.Random(f"keys:{c}")  # the same keys in both runs
            rest = random.Random(f"{run}:{c}")  # dev00's seed b (and nonces) differ
            calls = [0]

            def randbytes(k: int) -> bytes:
                calls[0] += 1
                return keys.randbytes(k) if calls[0] <= 2 else rest.randbytes(k)
            return randbytes
        return per_client

    g = torch.Generator().manual_seed(0)
    x = torch.rand(LENGTH, generator=g) * 0.01
    x_other = -torch.ones(LENGTH)
    y = _view(x, 5, randbytes_for("a"))
    y_other = _view(x_other, 900, randbytes_for("b"))
    crit = _critical(BINS - 1)
    assert _chi2_same(y, y_other) < crit
    assert _chi2_uniform(sub_mod(y, y_other), 24) < crit
    # control: with the self mask also equal, the difference is the plain difference
    y_same_b = _view(x_other, 900, randbytes_for("a"))
    fp = PARAMS.fixed_point(4)
    assert torch.equal(sub_mod(y, y_same_b), sub_mod(fp.encode(x, 5), fp.encode(x_other, 900)))
