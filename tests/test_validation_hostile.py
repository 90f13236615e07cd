"""Hostile updates against the aggregator's checks, one class at a time, without a broker.

`decode_update` and `validate_update` must turn every broken, lying or
poisoned payload into a `Rejection` with the reason docs/PROTOCOL.md section 8
gives it (never an exception, never a delta), and read the payload once.
Also here: the norm bound's arithmetic, the rejection log throttle, and two
two weaknesses of the core and the buffer that it found, now fixed.
"""

from __future__ import annotations

import math
import struct
import tracemalloc
from dataclasses import replace
from typing import Any

import msgpack
import numpy as np
import pytest

from fedbus.aggregator.buffer import AggregationConfig, BufferedAggregator
from fedbus.aggregator.core import AggregatorCore
from fedbus.aggregator.validation import (
    Rejection,
    ValidationContext,
    ValidUpdate,
    decode_update,
    update_norm,
    validate_update,
)
from fedbus.broker.codec import DEFAULT_LIMITS, DecodeLimits, encode
from fedbus.broker.log_throttle import OVERFLOW_KEY, Admission, LogThrottle
from fedbus.broker.messages import RejectReason, TrainingTask, UpdateMessage
from fedbus.broker.tensors import encode_weights

LAYOUT = {"W": (3, 2), "b": (2,)}
CTX = ValidationContext(
    version=5,
    layout=LAYOUT,
    max_staleness=2,
    known_nodes=frozenset({"n1", "n2"}),
    last_seq=10,
    limits=DEFAULT_LIMITS,
    max_update_norm=100.0,
)


def _delta(value: float = 0.5) -> dict[str, np.ndarray]:
    return {name: np.full(shape, value, np.float32) for name, shape in LAYOUT.items()}


def _body(**changes: Any) -> dict[str, Any]:
    """A valid update for CTX as a plain map (seq 11, base 4), changed by `changes`."""
    message = UpdateMessage("n1", 11, 4, 32, encode_weights(_delta()), 0.5)
    body: dict[str, Any] = msgpack.unpackb(encode(message), raw=False)
    body.update(changes)
    return body


def _pack(body: Any) -> bytes:
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def _with_tensor(index: int, **changes: Any) -> bytes:
    body = _body()
    body["tensors"][index].update(changes)
    return _pack(body)


def _with_values(name: str, values: np.ndarray) -> bytes:
    body = _body()
    for tensor in body["tensors"]:
        if tensor["name"] == name:
            tensor["data"] = values.astype("<f4").tobytes()
    return _pack(body)


def _verdict(
    payload: bytes, topic_node: str = "n1", ctx: ValidationContext = CTX
) -> ValidUpdate | Rejection:
    decoded = decode_update(payload, ctx.limits)
    if isinstance(decoded, Rejection):
        return decoded
    return validate_update(decoded, topic_node, ctx)


def _reason(payload: bytes, topic_node: str = "n1", ctx: ValidationContext = CTX) -> str:
    verdict = _verdict(payload, topic_node, ctx)
    return verdict.reason.value if isinstance(verdict, Rejection) else "accepted"


def test_the_base_payload_is_accepted() -> None:
    verdict = _verdict(_pack(_body()))

    assert isinstance(verdict, ValidUpdate)
    assert verdict.staleness == 1
    assert verdict.norm == pytest.approx(0.5 * math.sqrt(8))


# ---------------------------------------------------------------- the hostile classes

_NAN_W = np.array([[0, 1], [2, math.nan], [4, 5]])

HOSTILE: dict[str, tuple[bytes, str, str]] = {
    # (payload, topic node, reason)
    # ---- msgpack's own failures, each of them a CodecError
    "deep_nesting_stack_error": (b"\x81\xa1v" + b"\x91" * 2000 + b"\x01", "n1", "malformed"),
    "trailing_bytes_extra_data": (_pack(_body()) + b"\x00", "n1", "malformed"),
    "second_message_extra_data": (_pack(_body()) * 2, "n1", "malformed"),
    "reserved_byte_format_error": (b"\xc1", "n1", "malformed"),
    "truncated_out_of_data": (_pack(_body())[:-7], "n1", "malformed"),
    "empty_payload": (b"", "n1", "malformed"),
    "invalid_utf8_unicode_error": (b"\x81\xa1v\xa2\xff\xfe", "n1", "malformed"),
    "duplicate_key": (b"\x82\xa1v\x01\xa1v\x01", "n1", "malformed"),
    "int_key": (b"\x82\xa1v\x01\x07\x01", "n1", "malformed"),
    "not_a_map": (_pack([1, "update"]), "n1", "malformed"),
    # ---- length bombs: headers that claim far more than follows
    "array32_claims_4g": (b"\x81\xa1v\xdd\xff\xff\xff\xff", "n1", "malformed"),
    "map32_claims_4g": (b"\xdf\xff\xff\xff\xff", "n1", "malformed"),
    "bin32_claims_4_gib": (b"\x81\xa1v\xc6\xff\xff\xff\xff" + b"\x00" * 64, "n1", "malformed"),
    "str32_claims_4_gib": (b"\x81\xa1v\xdb\xff\xff\xff\xff" + b"\x00" * 64, "n1", "malformed"),
    "str_over_limit": (_pack(_body(node="x" * 5000)), "n1", "malformed"),
    "zero_length_ext": (_pack(_body(zz=msgpack.ExtType(3, b""))), "n1", "malformed"),
    # ---- schema and types; bool is never an int, an int is never a bool
    "bool_version": (_pack(_body(v=True)), "n1", "malformed"),
    "bool_seq": (_pack(_body(seq=True)), "n1", "malformed"),
    "bool_base_version": (_pack(_body(base_version=False)), "n1", "malformed"),
    "bool_num_samples": (_pack(_body(num_samples=True)), "n1", "malformed"),
    "bool_in_shape": (_with_tensor(1, shape=[True, 2]), "n1", "malformed"),
    "float_seq": (_pack(_body(seq=11.0)), "n1", "malformed"),
    "float_num_samples": (_pack(_body(num_samples=32.0)), "n1", "malformed"),
    "float_in_shape": (_with_tensor(1, shape=[2.0]), "n1", "malformed"),
    "seq_above_int63": (_pack(_body(seq=2**63)), "n1", "malformed"),
    "negative_seq": (_pack(_body(seq=-11)), "n1", "malformed"),
    "str_train_loss": (_pack(_body(train_loss="0.5")), "n1", "malformed"),
    "wrong_type": (_pack(_body(type="model")), "n1", "malformed"),
    "missing_tensors": (
        _pack({k: v for k, v in _body().items() if k != "tensors"}),
        "n1",
        "malformed",
    ),
    # ---- tensor headers
    "negative_dims_with_right_product": (_with_tensor(0, shape=[-3, -2]), "n1", "malformed"),
    "product_overflows_int64": (_with_tensor(0, shape=[2**32, 2**32, 2**32]), "n1", "malformed"),
    "zero_times_huge_dim": (_with_tensor(0, shape=[0, 2**40], data=b""), "n1", "malformed"),
    "uint64_dim": (_with_tensor(0, shape=[2**64 - 1]), "n1", "malformed"),
    "rank_9": (_with_tensor(0, shape=[1] * 9), "n1", "malformed"),
    "data_short": (_with_tensor(0, data=b"\x00" * 23), "n1", "malformed"),
    "data_as_str": (_with_tensor(0, data="\x00" * 24), "n1", "malformed"),
    "dtype_float64": (_with_tensor(0, dtype="float64"), "n1", "malformed"),
    "codec_q8": (_with_tensor(0, codec="q8"), "n1", "malformed"),
    # ---- protocol version
    "version_0": (_pack(_body(v=0)), "n1", "unsupported_version"),
    "version_2": (_pack(_body(v=2)), "n1", "unsupported_version"),
    "version_uint64_max": (_pack(_body(v=2**64 - 1)), "n1", "unsupported_version"),
    "version_negative": (_pack(_body(v=-1)), "n1", "unsupported_version"),
    # ---- identity and order
    "body_names_another_node": (_pack(_body(node="n2")), "n1", "node_mismatch"),
    "unknown_node": (_pack(_body(node="intruder")), "intruder", "unknown_node"),
    "replay": (_pack(_body(seq=9)), "n1", "replay"),
    "replay_seq_0": (_pack(_body(seq=0)), "n1", "replay"),
    "future_base": (_pack(_body(base_version=6)), "n1", "future_base"),
    "future_base_int63_max": (_pack(_body(base_version=2**63 - 1)), "n1", "future_base"),
    "stale": (_pack(_body(base_version=2)), "n1", "stale"),
    "stale_base_0": (_pack(_body(base_version=0)), "n1", "stale"),
    # ---- sample counts
    "zero_samples": (_pack(_body(num_samples=0)), "n1", "bad_samples"),
    "negative_samples": (_pack(_body(num_samples=-5)), "n1", "bad_samples"),
    "int64_min_samples": (_pack(_body(num_samples=-(2**63))), "n1", "bad_samples"),
    "samples_above_int63": (_pack(_body(num_samples=2**63)), "n1", "bad_samples"),
    "samples_uint64_max": (_pack(_body(num_samples=2**64 - 1)), "n1", "bad_samples"),
    # ---- layout
    "shapes_transposed": (_with_tensor(0, shape=[2, 3]), "n1", "wrong_shape"),
    "tensor_renamed": (_with_tensor(0, name="V"), "n1", "wrong_shape"),
    "tensor_missing": (_pack(_body(tensors=_body()["tensors"][:1])), "n1", "wrong_shape"),
    "tensor_twice": (_pack(_body(tensors=_body()["tensors"] * 2)), "n1", "wrong_shape"),
    # ---- values
    "nan": (_with_values("W", _NAN_W), "n1", "non_finite"),
    "inf": (_with_values("b", np.array([math.inf, 0])), "n1", "non_finite"),
    "minus_inf": (_with_values("b", np.array([0, -math.inf])), "n1", "non_finite"),
    "signalling_nan": (
        _with_tensor(0, data=struct.pack("<6I", 0, 0x7F800001, 0, 0, 0, 0)),
        "n1",
        "non_finite",
    ),
    "norm_above_bound": (_with_values("b", np.array([80, 61])), "n1", "norm_exceeded"),
    "squares_overflow_float32": (_with_values("b", np.array([3e38, 3e38])), "n1", "norm_exceeded"),
}


def _with_raw_extra(raw_value: bytes) -> bytes:
    """The base payload with one more key, `zz`, holding raw msgpack bytes."""
    valid = _pack(_body())
    assert 0x80 <= valid[0] < 0x8F  # a fixmap with room for one more pair
    return bytes([valid[0] + 1]) + valid[1:] + b"\xa2zz" + raw_value


# Under a key the receiver would ignore: maps nested past msgpack's stack, and
# a million tiny values (each byte would become a Python list).
HOSTILE["deep_maps_under_unknown_key"] = (
    _with_raw_extra(b"\x81\xa1k" * 1500 + b"\x01"),
    "n1",
    "malformed",
)
HOSTILE["value_bomb_under_unknown_key"] = (
    _with_raw_extra(b"\xdc\x04\x00" + (b"\xdc\x04\x00" + b"\x90" * 1024) * 1024),
    "n1",
    "malformed",
)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_each_hostile_class_is_refused_for_its_reason(name: str) -> None:
    payload, topic_node, reason = HOSTILE[name]

    assert _reason(payload, topic_node) == reason


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("deep_nesting_stack_error", msgpack.StackError),
        ("trailing_bytes_extra_data", msgpack.ExtraData),
        ("reserved_byte_format_error", msgpack.FormatError),
        ("truncated_out_of_data", ValueError),
        ("invalid_utf8_unicode_error", UnicodeDecodeError),
        ("array32_claims_4g", ValueError),
    ],
)
def test_the_catalogue_really_provokes_msgpacks_own_exceptions(name: str, error: type) -> None:
    with pytest.raises(error):
        msgpack.unpackb(
            HOSTILE[name][0],
            raw=False,
            strict_map_key=True,
            max_array_len=1024,
            max_map_len=256,
            max_str_len=4096,
        )


def test_the_last_valid_float32_values_are_judged_by_the_bound_not_by_overflow() -> None:
    big = np.array([np.finfo(np.float32).max, -np.finfo(np.float32).max], np.float32)
    unbounded = replace(CTX, max_update_norm=None)

    assert _reason(_with_values("b", big)) == "norm_exceeded"
    verdict = _verdict(_with_values("b", big), ctx=unbounded)
    assert isinstance(verdict, ValidUpdate)
    assert verdict.norm == pytest.approx(float(np.finfo(np.float32).max) * math.sqrt(2))


def test_an_int_where_a_float_is_expected_is_accepted() -> None:
    verdict = _verdict(_pack(_body(train_loss=1)))

    assert isinstance(verdict, ValidUpdate) and verdict.message.train_loss == 1.0


def test_a_body_naming_another_node_is_reported_on_the_topic_node() -> None:
    verdict = _verdict(_pack(_body(node="n2")), topic_node="n1")

    assert isinstance(verdict, Rejection) and verdict.seq == 11
    assert "'n2'" in verdict.detail and "'n1'" in verdict.detail


# ---------------------------------------------------------------- seq in the verdict


@pytest.mark.parametrize(
    ("payload", "seq"),
    [
        (_pack(_body(v=2)), 11),  # unsupported version: the seq is still readable
        (_pack(_body(type="model")), 11),
        (_with_tensor(0, codec="q8"), 11),
        (_pack(_body(seq=True)), None),  # a bool is not a seq
        (_pack(_body(seq=2**63)), None),
        (_pack(_body(seq=-1)), None),
        (_pack(_body())[:-1], None),  # not a map at all
    ],
)
def test_refused_unreadable_updates_carry_their_seq_only_when_it_is_a_uint(
    payload: bytes, seq: int | None
) -> None:
    verdict = decode_update(payload, DEFAULT_LIMITS)

    assert isinstance(verdict, Rejection) and verdict.seq == seq


def test_an_oversize_payload_is_refused_unread() -> None:
    payload = _pack(_body())
    verdict = decode_update(payload, DecodeLimits(max_payload_bytes=len(payload) - 1))

    assert isinstance(verdict, Rejection)
    assert (verdict.reason, verdict.seq) == (RejectReason.OVERSIZE, None)


@pytest.mark.parametrize(
    "payload",
    [_pack(_body()), _pack(_body(v=2)), _pack(_body(type="ack")), _with_tensor(1, data=b"")],
)
def test_a_payload_is_unpacked_once_even_when_refused(
    payload: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    unpackb = msgpack.unpackb

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return unpackb(*args, **kwargs)

    monkeypatch.setattr(msgpack, "unpackb", counting)
    decode_update(payload, DEFAULT_LIMITS)

    assert len(calls) == 1


# ---------------------------------------------------------------- sample count bound


def test_a_configured_sample_bound_is_inclusive() -> None:
    ctx = replace(CTX, max_num_samples=1000)

    assert _reason(_pack(_body(num_samples=1000)), ctx=ctx) == "accepted"
    assert _reason(_pack(_body(num_samples=1001)), ctx=ctx) == "bad_samples"


def test_the_default_sample_bound_is_the_largest_uint() -> None:
    assert CTX.max_num_samples == 2**63 - 1
    assert _reason(_pack(_body(num_samples=2**63 - 1))) == "accepted"


# ---------------------------------------------------------------- the norm bound


def test_update_norm_matches_a_float64_reference() -> None:
    rng = np.random.default_rng(7)
    delta = {
        "W": rng.standard_normal((300, 70)).astype(np.float32) * 1e3,
        "b": rng.standard_normal(70).astype(np.float32),
        "empty": np.zeros((0, 4), np.float32),
        "scalar": np.array(-2.5, np.float32),
    }
    reference = math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in delta.values()))

    assert update_norm(delta) == pytest.approx(reference, rel=1e-12)


def test_update_norm_does_not_overflow_where_float32_squares_would() -> None:
    huge = np.full(2**16, 3e38, np.float32)
    with np.errstate(over="ignore"):
        assert math.isinf(float(np.dot(huge, huge)))  # what float32 accumulation gives

    assert update_norm({"x": huge}) == pytest.approx(float(huge[0]) * 2**8, rel=1e-12)


def test_update_norm_of_a_non_finite_delta_is_not_finite() -> None:
    assert math.isnan(update_norm({"x": np.array([1.0, math.nan], np.float32)}))
    assert math.isinf(update_norm({"x": np.array([-math.inf, 1.0], np.float32)}))


def test_a_norm_exactly_at_the_bound_is_accepted() -> None:
    at_bound = _with_values("b", np.array([60, 80]))  # W: 6 * 0.25, so the norm is sqrt(10001.5)
    ctx = replace(CTX, max_update_norm=math.sqrt(10_001.5))

    assert _reason(at_bound, ctx=ctx) == "accepted"
    assert _reason(at_bound, ctx=replace(ctx, max_update_norm=100.0)) == "norm_exceeded"


def test_without_a_bound_any_finite_delta_passes() -> None:
    payload = _with_values("b", np.array([3e38, -3e38]))

    assert _reason(payload, ctx=replace(CTX, max_update_norm=None)) == "accepted"


def test_non_finite_values_are_named_before_the_norm_is_judged() -> None:
    verdict = _verdict(_with_values("b", np.array([1e30, math.nan])))

    assert isinstance(verdict, Rejection)
    assert verdict.reason is RejectReason.NON_FINITE and "'b'" in verdict.detail


def test_norm_rejection_names_the_norm_and_the_bound() -> None:
    verdict = _verdict(_with_values("b", np.array([80, 61])))

    assert isinstance(verdict, Rejection) and verdict.seq == 11
    assert "norm 100.61" in verdict.detail and "bound 100" in verdict.detail


@pytest.mark.parametrize("bound", [math.nan, 0.0, -1.0, -math.inf])
def test_a_bound_that_is_not_a_positive_number_is_refused(bound: float) -> None:
    with pytest.raises(ValueError, match="max_update_norm"):
        replace(CTX, max_update_norm=bound)


def test_a_sample_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_num_samples"):
        replace(CTX, max_num_samples=0)


def test_checking_values_makes_no_copy_of_the_delta() -> None:
    """The scan for NaN/Inf and the norm read the payload's bytes in place."""
    layout = {"W": (1024, 1024)}
    delta = np.ones(layout["W"], np.float32)
    message = UpdateMessage("n1", 11, 4, 1, encode_weights({"W": delta}))
    ctx = replace(CTX, layout=layout, max_update_norm=1e9)
    tracemalloc.start()
    try:
        verdict = validate_update(message, "n1", ctx)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert isinstance(verdict, ValidUpdate) and verdict.norm == 1024.0
    assert peak < delta.nbytes // 16, peak  # a float32 or bool copy would be 4 or 1 MiB


# ---------------------------------------------------------------- the rejection log throttle


def test_throttle_logs_the_first_event_then_holds_back_within_the_window() -> None:
    throttle = LogThrottle(window=10.0)

    assert throttle.admit("stale", 100.0) == Admission(True)
    assert throttle.admit("stale", 100.5) == Admission(False)
    assert throttle.admit("stale", 109.9) == Admission(False)
    assert throttle.held_back("stale") == 2
    assert throttle.admit("stale", 110.0) == Admission(True, held_back=2)
    assert throttle.admit("stale", 110.1) == Admission(False)
    assert throttle.admit("stale", 125.0) == Admission(True, held_back=1)
    assert throttle.admit("stale", 140.0) == Admission(True, held_back=0)


def test_throttle_keys_have_windows_of_their_own() -> None:
    throttle = LogThrottle(window=10.0)

    assert throttle.admit("stale", 0.0).log
    assert throttle.admit("replay", 1.0).log
    assert not throttle.admit("stale", 2.0).log
    assert not throttle.admit("replay", 10.5).log
    assert throttle.admit("stale", 10.5) == Admission(True, held_back=1)


def test_throttle_flush_reports_the_tail_of_a_burst_once() -> None:
    throttle = LogThrottle(window=10.0)
    throttle.admit("malformed", 0.0)
    for t in range(1, 6):
        throttle.admit("malformed", float(t))
    throttle.admit("stale", 3.0)

    assert throttle.flush(9.0) == []  # window not over yet
    assert throttle.flush(10.0) == [("malformed", 5)]
    assert throttle.flush(30.0) == []
    # The summary counts as the key's line: the next event within the window waits.
    assert throttle.admit("malformed", 15.0) == Admission(False)


def test_throttle_with_a_zero_window_logs_everything() -> None:
    throttle = LogThrottle(window=0.0)

    assert all(throttle.admit("x", 1.0) == Admission(True) for _ in range(3))


def test_throttle_survives_a_clock_that_goes_back() -> None:
    throttle = LogThrottle(window=10.0)
    throttle.admit("x", 1000.0)

    assert throttle.admit("x", 5.0) == Admission(True)
    assert not throttle.admit("x", 6.0).log


def test_throttle_memory_is_bounded_by_max_keys() -> None:
    throttle = LogThrottle(window=10.0, max_keys=3)
    for key in ("a", "b", "c"):
        assert throttle.admit(key, 0.0).log
        throttle.admit(key, 1.0)  # each key now holds one event back

    assert throttle.admit("d", 2.0) == Admission(False)  # no idle key to drop
    assert throttle.admit("e", 3.0) == Admission(False)
    assert throttle.held_back(OVERFLOW_KEY) == 2
    assert sorted(throttle.flush(20.0)) == [(OVERFLOW_KEY, 2), ("a", 1), ("b", 1), ("c", 1)]
    # Past the window with nothing held back, keys are idle and make room.
    assert throttle.admit("f", 40.0).log
    assert len(throttle._keys) <= 4


@pytest.mark.parametrize(
    ("window", "max_keys"), [(-1.0, 8), (math.nan, 8), (math.inf, 8), (1.0, 0)]
)
def test_throttle_refuses_a_bad_configuration(window: float, max_keys: int) -> None:
    with pytest.raises(ValueError):
        LogThrottle(window, max_keys)


# ---------------------------------------------------------------- known weaknesses elsewhere


def _core(buffer_size: int = 1, **kw: Any) -> AggregatorCore:
    task = TrainingTask("toy", "softmax", LAYOUT)
    initial = {name: np.zeros(shape, np.float32) for name, shape in LAYOUT.items()}
    return AggregatorCore(
        task, BufferedAggregator(AggregationConfig.fedbuff(buffer_size), initial), **kw
    )


def test_refusing_unknown_nodes_does_not_grow_the_decision_table() -> None:
    core = _core(known_nodes=frozenset({"n1"}))
    for i in range(2000):
        node = f"intruder{i}"
        message = UpdateMessage(node, 1, 0, 1, encode_weights(_delta()))
        assert core.handle_update(node, encode(message)).ack.reason is RejectReason.UNKNOWN_NODE

    assert len(core.decisions) == 0


def test_accepted_finite_deltas_never_make_the_model_non_finite() -> None:
    core = _core(buffer_size=2)
    big = {name: np.full(shape, 3e38, np.float32) for name, shape in LAYOUT.items()}
    with np.errstate(over="ignore"):
        for node in ("n1", "n2"):
            core.handle_update(node, encode(UpdateMessage(node, 1, 0, 10, encode_weights(big))))

    assert all(np.isfinite(w).all() for w in core.aggregator.weights.values())
