"""Norm bound, paced rejection logging, and policy checks skipped on journal replay."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest

from fedbus.aggregator.buffer import AggregationConfig, BufferedAggregator
from fedbus.aggregator.core import AggregatorCore
from fedbus.aggregator.store import AggregatorStore
from fedbus.aggregator.validation import update_norm
from fedbus.broker.codec import encode
from fedbus.broker.log_throttle import ThrottledLog
from fedbus.broker.messages import RejectReason, TrainingTask, UpdateMessage
from fedbus.broker.tensors import encode_weights

SHAPES = {"W": (3, 2), "b": (2,)}


def _core(**kw) -> AggregatorCore:  # type: ignore[no-untyped-def]
    task = TrainingTask("toy", "softmax", SHAPES)
    initial = {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}
    return AggregatorCore(task, BufferedAggregator(AggregationConfig.fedbuff(5), initial), **kw)


def _update(node: str, seq: int, value: float) -> bytes:
    delta = {name: np.full(shape, value, np.float32) for name, shape in SHAPES.items()}
    return encode(UpdateMessage(node, seq, 0, 5, encode_weights(delta)))


def test_norm_is_exact_for_values_whose_squares_overflow_float32() -> None:
    big = np.full(4, 3e30, np.float32)  # finite, but 9e60 overflows float32
    assert not math.isinf(update_norm({"x": big}))
    assert update_norm({"x": big}) == pytest.approx(float(np.float32(3e30)) * 2, rel=1e-12)
    assert update_norm({"a": np.array([3.0], np.float32), "b": np.array([4.0], np.float32)}) == 5.0
    assert update_norm({"e": np.zeros((0, 3), np.float32)}) == 0.0


def test_update_over_the_norm_bound_is_rejected_and_leaves_the_model() -> None:
    core = _core(max_update_norm=10.0)
    # 8 elements of 3.0: norm sqrt(72) = 8.49 is inside; 4.0: sqrt(128) = 11.3 is not.
    assert core.handle_update("n1", _update("n1", 1, 3.0)).ack.accepted
    outcome = core.handle_update("n2", _update("n2", 1, 4.0))
    assert not outcome.ack.accepted and outcome.ack.reason is RejectReason.NORM_EXCEEDED
    assert core.aggregator.buffered == 1 and core.counters.rejected["norm_exceeded"] == 1


def test_throttled_log_writes_once_per_window_and_counts_the_rest(caplog) -> None:  # type: ignore[no-untyped-def]
    throttle = ThrottledLog(logging.getLogger("test.throttle"), window=10.0)
    with caplog.at_level(logging.INFO, logger="test.throttle"):
        written = [throttle.log("malformed", t, "bad %d", t) for t in range(25)]
        assert throttle.log("stale", 3.0, "other key")  # keys are paced separately
    assert written == [t in (0, 10, 20) for t in range(25)]
    lines = [r.getMessage() for r in caplog.records if r.name == "test.throttle"]
    assert lines == [
        "bad 0",
        "bad 10 (and 9 more like it in the last 10 s)",
        "bad 20 (and 9 more like it in the last 10 s)",
        "other key",
    ]
    assert throttle.suppressed("malformed") == 4


def test_rejection_flood_logs_a_line_per_window(caplog) -> None:  # type: ignore[no-untyped-def]
    core = _core()
    with caplog.at_level(logging.INFO, logger="fedbus.aggregator.core"):
        for i in range(1000):
            core.handle_update("n1", b"\xc1" + bytes([i % 256]), now=i * 0.001)
    assert core.counters.rejected["malformed"] == 1000
    assert len([r for r in caplog.records if "rejected update" in r.getMessage()]) == 1


def test_journal_replay_is_not_refused_by_a_tightened_policy(tmp_path: Path) -> None:
    live = _core()
    store = AggregatorStore(tmp_path)
    store.recover(live)
    payload = _update("n1", 1, 4.0)
    assert live.handle_update("n1", payload).ack.accepted
    store.log_accepted("n1", payload)
    store.commit()

    # Restarted with a norm bound and an enrolment list that would refuse it now.
    stricter = _core(max_update_norm=1.0, known_nodes=frozenset({"n2"}))
    AggregatorStore(tmp_path).recover(stricter)
    assert stricter.aggregator.buffered == 1
    assert stricter.handle_update("n1", _update("n1", 2, 4.0)).ack.reason is (
        RejectReason.UNKNOWN_NODE
    )


def test_throttled_log_without_a_clock_logs_every_line(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from fedbus.broker.log_throttle import ThrottledLog

    throttled = ThrottledLog(logging.getLogger("fedbus.test.throttle"), window=10.0)
    with caplog.at_level(logging.INFO, logger="fedbus.test.throttle"):
        assert all(throttled.log("same", None, "line %d", i) for i in range(3))
    assert [r.getMessage() for r in caplog.records] == ["line 0", "line 1", "line 2"]
