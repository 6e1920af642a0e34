"""Fixtures shared across the test tree (keep this small; prefer fixtures next to their tests)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fedsa_common.broker import BrokerProcess, start_broker


@pytest.fixture
def broker() -> Iterator[BrokerProcess]:
    """A running local broker (Mosquitto if installed, else embedded amqtt), stopped after."""
    with start_broker("auto") as running:
        yield running
