"""Bytes per device per round and CPU time of secure aggregation, in memory (no broker).

Drives the protocol library (fedsa_common.privacy.secagg) and its wire encoders for one region and
one round with a third of the roster dropping after sharing, as docs/security.md reports.
Devices hold provisioned signing identities (the malicious-hub protocol: signed
advertisements, roster verification, the consistency round); ``--unsigned`` measures the
unauthenticated mode for comparison.  ``--vss`` measures only the verifiable secret
sharing for the larger regions the configuration allows (up to ``MAX_ROSTER``; rounds use
VSS only up to ``VSS_MAX_ROSTER``, chosen from these figures), per dealer and scaled by n,
since one round of a thousand in memory would take hours here (the message sizes of a
1,000-device round without VSS are checked in tests/fedsa_common/test_secagg_wire.py):

    python -m benchmarks.secagg_cost [--unsigned | --vss]
"""

from __future__ import annotations

import json
import random
import sys
import time

import torch

from fedsa_common.privacy.secagg import (
    RoundContext,
    SecAggClient,
    SecAggParams,
    SecAggServer,
    vss,
    wire,
)
from fedsa_common.privacy.secagg.identity import Authority
from fedsa_common.privacy.secagg.messages import to_json
from fedsa_common.privacy.secagg.shamir import combine_shares, deal, random_secret
from fedsa_common.wire.protocol import UpdateHeader, encode_message


def run(n: int, length: int, drop: int, signed: bool = True
        ) -> tuple[dict[str, int], dict[str, float]]:
    ctx = RoundContext("fed", 1, "r1", length, SecAggParams())
    names = [f"dev{i:03d}" for i in range(n)]
    authority = Authority.generate()
    clients = {c: SecAggClient(ctx, c, identity=authority.issue("fed", "r1", c)
                               if signed else None) for c in names}
    server = SecAggServer(ctx)
    first = names[0]

    def size(stage: str, msg: object) -> int:
        return len(wire.encode("fed", 1, "r1", first, stage, msg))

    sizes: dict[str, int] = {}
    for c in clients.values():
        adv = c.advertise()
        server.add_keys(adv)
    sizes["advertise (up)"] = size("advertise", adv)
    roster = server.close_keys()
    sizes["roster (down)"] = size("roster", roster)
    t0 = time.perf_counter()
    shares = {c: clients[c].share_keys(roster) for c in names}
    t_share = (time.perf_counter() - t0) / n
    for m in shares.values():
        server.add_shares(m)
    sizes["share_keys (up)"] = size("share_keys", shares[first])
    delivery = server.close_shares()
    sizes["share_delivery (down)"] = size("share_delivery", delivery[first])
    t0 = time.perf_counter()
    checks = {c: clients[c].receive_shares(d) for c, d in delivery.items()}
    t_recv = (time.perf_counter() - t0) / n
    for check in checks.values():
        server.add_check(check)
    sizes["share_check (up)"] = size("share_check", checks[first])
    masking = server.close_checks()
    sizes["masking_set (down)"] = size("masking_set", masking[first])
    for c, m in masking.items():
        clients[c].mask_with(m)
    dropped = set(random.Random(0).sample(names, drop))
    t_mask = 0.0
    masked = None
    for c in names:
        if c in dropped:
            continue
        x = torch.randn(length) * 0.01
        t0 = time.perf_counter()
        masked = clients[c].masked_input(x, 160)
        t_mask += time.perf_counter() - t0
        server.add_input(masked)
    t_mask /= n - drop
    header = UpdateHeader(federation="fed", round=1, client=first, region="r1", base_version=0,
                          codec="secagg", num_samples=1)
    sizes["masked update (up)"] = len(encode_message(header, wire.masked_tensors(masked)))
    told = server.close_inputs()
    sizes["survivors (down)"] = size("survivors", told)
    t0 = time.perf_counter()
    for c in told.survivors:
        signature = clients[c].sign_survivors(told)
        server.add_signature(signature)
    t_consistency = (time.perf_counter() - t0) / len(told.survivors)
    sizes["survivor_signature (up)"] = size("survivor_signature", signature)
    request = server.close_consistency()
    sizes["unmask_request (down)"] = size("unmask_request", request)
    t_unmask = 0.0
    for c in request.survivors:
        t0 = time.perf_counter()
        response = clients[c].unmask(request)
        t_unmask += time.perf_counter() - t0
        server.add_unmask(response)
    t_unmask /= len(request.survivors)
    sizes["unmask_response (up)"] = size("unmask_response", response)
    t0 = time.perf_counter()
    server.finish()
    t_finish = time.perf_counter() - t0
    return sizes, {"share_keys (device, incl. roster check)": t_share,
                   "receive_shares (device)": t_recv, "masked_input (device)": t_mask,
                   "sign survivors (device + hub check)": t_consistency,
                   "unmask (device, incl. signature checks)": t_unmask,
                   "finish (hub)": t_finish}


def vss_cost(n: int) -> dict[str, float]:
    """The verifiable secret sharing's share of a round of ``n`` (threshold 2/3): bytes
    of commitments per device (up: its own ``2t`` points; down: every dealer's, in the
    delivery's JSON) and CPU, measured on one dealer and scaled: a dealer commits to two
    polynomials (2t base-point multiplications), a member checks n dealers (2t point
    validations at the hub, two Horner evaluations of t multiplications at each member),
    the hub checks each rebuilt secret against its ``C_0`` at unmasking (reconstruction
    included; n secrets)."""
    t = SecAggParams().threshold(n)
    polys = [deal(random_secret(), t, n) for _ in range(2)]
    t0 = time.perf_counter()
    points = vss.commit(polys[0].coefficients) + vss.commit(polys[1].coefficients)
    t_commit = time.perf_counter() - t0
    t0 = time.perf_counter()
    vss.check_points(points, "vss")
    t_hub_points = (time.perf_counter() - t0) * n
    t0 = time.perf_counter()
    assert vss.verify_share(points[:t], n, polys[0].shares[n - 1])
    assert vss.verify_share(points[t:], n, polys[1].shares[n - 1])
    t_member = (time.perf_counter() - t0) * n
    shares = {x: polys[1].shares[x - 1] for x in range(1, t + 1)}
    t0 = time.perf_counter()
    combine_shares(shares, t)  # the Lagrange coefficients, once per set of answers
    t_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert vss.opens(points[t:], combine_shares(shares, t))
    t_hub = t_cold + (time.perf_counter() - t0) * n
    point_json = len(json.dumps(to_json(list(points)), separators=(",", ":")))
    return {"t": t, "up bytes": point_json, "down bytes": point_json * n,
            "dealer commit s": t_commit, "member check s": t_member,
            "hub point checks s": t_hub_points, "hub rebuild+check s": t_hub}


def main() -> None:
    torch.set_num_threads(1)
    if "--vss" in sys.argv[1:]:
        for n in (12, 30, 100, 300, 1000):
            cost = vss_cost(n)
            print(f"n={n}: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else
                                         f"{k}={v}" for k, v in cost.items()))
        return
    signed = "--unsigned" not in sys.argv[1:]
    for n, length in ((5, 3687), (12, 3687), (30, 3687), (12, 36864)):
        drop = n // 3
        sizes, times = run(n, length, drop, signed)
        protocol = sum(v for k, v in sizes.items() if "masked" not in k)
        print(f"n={n} L={length} drop={drop}: "
              + ", ".join(f"{k}={v}" for k, v in sizes.items()))
        print(f"   protocol bytes/device excl. update={protocol}, "
              f"masked update={sizes['masked update (up)']}")
        print("   times ms: " + ", ".join(f"{k}={1e3 * v:.1f}" for k, v in times.items()))


if __name__ == "__main__":
    main()
