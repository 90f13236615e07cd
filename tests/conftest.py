"""Shared fixtures: real mosquitto brokers started from the repo's config.

Tests that use them must be marked ``@pytest.mark.broker``. A missing
mosquitto fails these tests instead of skipping them: CI installs it, so its
absence means a broken environment, and a skip would hide every broker test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from fedbus.broker.errors import BrokerError
from fedbus.broker.launcher import ManagedBroker, find_mosquitto

#: The config `fedbus broker` ships; tests run against the same limits.
REPO_CONFIG = Path(__file__).resolve().parents[1] / "mosquitto.conf"

BrokerFactory = Callable[..., ManagedBroker]


def _require_mosquitto() -> None:
    try:
        find_mosquitto()
    except BrokerError as exc:
        pytest.fail(
            f"{exc}. Tests marked 'broker' need a real mosquitto; CI installs it, "
            "so a missing broker is an error, not a skip.",
            pytrace=False,
        )


@pytest.fixture
def broker_factory() -> Iterator[BrokerFactory]:
    """Start extra brokers (own port, own temp data dir); all stopped after the test.

    Takes ManagedBroker's keyword arguments, e.g. ``extra_lines=[...]``.
    """
    _require_mosquitto()
    started: list[ManagedBroker] = []

    def start(
        config_path: Path = REPO_CONFIG, *, extra_lines: Sequence[str] = (), **kwargs: object
    ) -> ManagedBroker:
        broker = ManagedBroker(config_path, extra_lines=extra_lines, **kwargs)  # type: ignore[arg-type]
        started.append(broker)
        return broker.start()

    yield start
    for broker in reversed(started):
        broker.stop()


@pytest.fixture
def mosquitto_broker() -> Iterator[ManagedBroker]:
    """A running broker on a free port from the repo's mosquitto.conf, stopped after."""
    _require_mosquitto()
    broker = ManagedBroker(REPO_CONFIG)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """Undo `setup_logging` by commands run in-process (`cli.main([...])`).

    It points the root logger at the sys.stderr of that moment, which pytest
    closes after the test, and later tests' log calls would then fail with
    "I/O operation on closed file" noise.
    """
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
