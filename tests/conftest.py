"""Shared fixtures: real brokers started by the test suite on free loopback ports."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from hypothesis import settings

from gridsim.transport.broker import BrokerAddress, BrokerProcess

# Property tests draw the same examples on every machine and every run (fixed
# seeds): a failure is reproducible, never a fluke of one CI run.
settings.register_profile("gridsim", derandomize=True, print_blob=True)
settings.load_profile("gridsim")


def _require_mosquitto() -> None:
    if shutil.which("mosquitto") is None:
        pytest.fail(
            "mosquitto is not installed; run scripts/install.sh (apt-get install mosquitto)"
        )


@pytest.fixture
def mosquitto() -> Iterator[BrokerAddress]:
    """A private Mosquitto with the project's config, on a free port, for one test."""
    _require_mosquitto()
    broker = BrokerProcess("mosquitto")
    try:
        yield broker.start()
    finally:
        broker.stop()


@pytest.fixture
def mosquitto_process() -> Iterator[BrokerProcess]:
    """Like ``mosquitto`` but the test controls the process (stop, restart on the same port)."""
    _require_mosquitto()
    broker = BrokerProcess("mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
