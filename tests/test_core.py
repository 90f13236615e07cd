"""AggregatorCore: every verdict on an update payload, without a broker."""

from __future__ import annotations

import numpy as np
import pytest

from fedbus.aggregator.buffer import AggregationConfig, BufferedAggregator
from fedbus.aggregator.core import AggregatorCore
from fedbus.broker.codec import encode
from fedbus.broker.messages import RejectReason, TrainingTask, UpdateMessage
from fedbus.broker.tensors import WireTensor, encode_weights

SHAPES = {"W": (3, 2), "b": (2,)}


def _core(config: AggregationConfig | None = None, **kw) -> AggregatorCore:  # type: ignore[no-untyped-def]
    task = TrainingTask("toy", "softmax", SHAPES)
    initial = {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}
    return AggregatorCore(
        task, BufferedAggregator(config or AggregationConfig.fedbuff(2), initial), **kw
    )


def _delta(value: float = 1.0) -> dict[str, np.ndarray]:
    return {name: np.full(shape, value, np.float32) for name, shape in SHAPES.items()}


def _update(node: str = "n1", seq: int = 1, base: int = 0, samples: int = 5, **kw) -> bytes:  # type: ignore[no-untyped-def]
    tensors = kw.pop("tensors", None) or encode_weights(_delta(kw.pop("value", 1.0)))
    return encode(UpdateMessage(node, seq, base, samples, tensors, **kw))


def _model_bytes(core: AggregatorCore) -> bytes:
    return b"".join(w.tobytes() for w in core.aggregator.weights.values())


def test_valid_updates_are_accepted_and_step_the_model_at_k() -> None:
    core = _core()
    first = core.handle_update("n1", _update("n1", value=1.0))
    assert first.ack.accepted and first.ack.seq == 1 and not first.model_changed
    second = core.handle_update("n2", _update("n2", value=3.0))
    assert second.model_changed and core.version == 1
    np.testing.assert_allclose(core.aggregator.weights["W"], 2.0)
    assert core.counters.accepted == 2 and core.counters.staleness[0] == 2


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xc1garbage", RejectReason.MALFORMED),
        (
            encode(
                UpdateMessage(
                    "n1",
                    1,
                    0,
                    5,
                    encode_weights(
                        {"W": np.zeros((2, 3), np.float32), "b": np.zeros(2, np.float32)}
                    ),
                )
            ),
            RejectReason.WRONG_SHAPE,
        ),
        (_update(value=float("nan")), RejectReason.NON_FINITE),
        (_update(value=float("inf")), RejectReason.NON_FINITE),
        (_update(node="someone-else"), RejectReason.NODE_MISMATCH),
        (_update(base=7), RejectReason.FUTURE_BASE),
        (_update(samples=0), RejectReason.BAD_SAMPLES),
        (
            _update(tensors=(WireTensor("W", "float32", (3, 2), "f32", b"\0" * 24),)),
            RejectReason.WRONG_SHAPE,
        ),
    ],
)
def test_bad_updates_are_rejected_with_reason_and_leave_the_model_alone(
    payload: bytes, reason: RejectReason
) -> None:
    core = _core(AggregationConfig.fedasync(alpha=0.5))
    before = _model_bytes(core)
    outcome = core.handle_update("n1", payload)
    assert not outcome.ack.accepted and outcome.ack.reason is reason
    assert not outcome.model_changed and _model_bytes(core) == before and core.version == 0
    assert core.counters.rejected[reason.value] == 1 and core.counters.accepted == 0


def test_malformed_payload_ack_has_no_seq() -> None:
    outcome = _core().handle_update("n1", b"\x93\x01\x02")
    assert outcome.ack.seq is None and outcome.ack.reason is RejectReason.MALFORMED


def test_unsupported_protocol_version_is_its_own_reason() -> None:
    payload = bytearray(_update())
    assert payload[1:3] == b"\xa1v" and payload[3] == 1
    payload[3] = 2
    outcome = _core().handle_update("n1", bytes(payload))
    assert outcome.ack.reason is RejectReason.UNSUPPORTED_VERSION


def test_unknown_node_is_rejected_when_enrolment_is_on() -> None:
    core = _core(known_nodes=frozenset({"n1"}))
    assert core.handle_update("n1", _update("n1")).ack.accepted
    assert core.handle_update("n9", _update("n9")).ack.reason is RejectReason.UNKNOWN_NODE


def test_staleness_above_bound_is_rejected() -> None:
    core = _core(AggregationConfig.fedasync(alpha=0.5, max_staleness=1))
    for seq in (1, 2):
        assert core.handle_update("n1", _update(seq=seq, base=seq - 1)).model_changed
    outcome = core.handle_update("n2", _update("n2", base=0))
    assert outcome.ack.reason is RejectReason.STALE


def test_resent_update_is_acked_again_but_applied_once() -> None:
    core = _core(AggregationConfig.fedasync(alpha=1.0))
    payload = _update(value=2.0)
    first = core.handle_update("n1", payload)
    weights_after_first = _model_bytes(core)
    again = core.handle_update("n1", payload)
    assert again.ack.accepted and again.ack.duplicate and again.ack.seq == 1
    assert not again.model_changed and _model_bytes(core) == weights_after_first
    assert core.counters.duplicates == 1 and core.counters.accepted == 1
    assert first.ack.version == 1


def test_older_sequence_number_is_a_replay() -> None:
    core = _core(AggregationConfig.fedasync(alpha=1.0))
    core.handle_update("n1", _update(seq=5))
    before = _model_bytes(core)
    outcome = core.handle_update("n1", _update(seq=4, base=1))
    assert outcome.ack.reason is RejectReason.REPLAY and _model_bytes(core) == before


def test_sync_mode_accepts_one_update_per_node_per_round_and_only_fresh_ones() -> None:
    core = _core(AggregationConfig.sync(cohort_size=2))
    assert core.handle_update("n1", _update("n1", seq=1)).ack.accepted
    second = core.handle_update("n1", _update("n1", seq=2))
    assert second.ack.reason is RejectReason.STALE
    assert core.handle_update("n2", _update("n2", seq=1)).model_changed
    late = core.handle_update("n3", _update("n3", seq=1, base=0))
    assert late.ack.reason is RejectReason.STALE and core.version == 1


def test_oversize_payload_is_its_own_reason() -> None:
    from fedbus.broker.codec import DecodeLimits

    core = _core(limits=DecodeLimits(max_payload_bytes=64))
    outcome = core.handle_update("n1", _update())
    assert outcome.ack.reason is RejectReason.OVERSIZE and outcome.ack.seq is None


def test_rejecting_ack_echoes_a_readable_seq_of_a_broken_update() -> None:
    broken = encode(UpdateMessage("n1", 7, 0, 5, encode_weights(_delta())))
    broken = broken.replace(b"\xa7float32", b"\xa7float64")
    outcome = _core().handle_update("n1", broken)
    assert outcome.ack.reason is RejectReason.MALFORMED and outcome.ack.seq == 7


def test_a_stray_message_cannot_overwrite_the_verdict_a_resend_must_get() -> None:
    core = _core(AggregationConfig.fedasync(alpha=1.0))
    genuine = _update("n1", seq=3)
    assert core.handle_update("n1", genuine).ack.accepted
    # Someone publishes on update/n1 with n1's seq but another node in the body.
    stray = core.handle_update("n1", _update("n2", seq=3))
    assert stray.ack.reason is RejectReason.NODE_MISMATCH
    resend = core.handle_update("n1", genuine)
    assert resend.ack.accepted and resend.ack.duplicate and core.counters.accepted == 1
