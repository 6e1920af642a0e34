"""What a device's host may inject into its rounds (no I/O here).

A real device sends the update it trained and waits only as long as its work and its link
really take.  A scenario worker also hosts *simulated* devices: malicious ones that replace
the update they send, slow ones whose compute or link takes longer, ones whose link goes
down or lags (their session seen through a ``SimulatedLink``).  Those are objects that
follow ``RoundHooks`` (edge_client/simulation.py builds them from the worker spec file),
handed to the device when it is built, so that the device has no branch for any of it; a
real device gets ``NO_HOOKS``.
"""

from __future__ import annotations

from typing import Literal, Protocol

from fedsa_common.net.transport import MqttSession
from fedsa_common.wire.tensors import Tensors

DelayKind = Literal["download", "compute", "upload"]


class RoundHooks(Protocol):
    def after_update(self, round_: int, delta: Tensors, samples: int
                     ) -> tuple[Tensors, int]:
        """The delta and sample count the device sends instead of the ones it trained
        (after DP, before the codec)."""
        ...

    def delay(self, kind: DelayKind, amount: float) -> float:
        """Extra seconds the device waits: ``download``/``upload`` of ``amount`` payload
        bytes, ``compute`` after ``amount`` seconds of real training."""
        ...

    def over_link(self, session: MqttSession) -> MqttSession:
        """The session the device uses: its own, or that session seen through a simulated
        link (called once per session, before it connects)."""
        ...


class NoHooks:
    """A real device: its own update, no added delay."""

    def after_update(self, round_: int, delta: Tensors, samples: int
                     ) -> tuple[Tensors, int]:
        return delta, samples

    def delay(self, kind: DelayKind, amount: float) -> float:
        return 0.0

    def over_link(self, session: MqttSession) -> MqttSession:
        return session


NO_HOOKS = NoHooks()
