"""The msgpack codec of protocol v1: round trips, pinned bytes, hostile input.

Every payload from the network is untrusted, so the contract tested here is
strict: `decode` returns a message or raises `CodecError` (or its subclass
`UnsupportedVersionError`), never msgpack's, numpy's or Python's own errors.
"""

from __future__ import annotations

import math
import struct
import tracemalloc
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedbus.broker.codec import (
    DEFAULT_LIMITS,
    DecodeLimits,
    count_objects,
    decode,
    encode,
    unpack_map,
)
from fedbus.broker.errors import CodecError, UnsupportedVersionError
from fedbus.broker.messages import (
    PROTOCOL_VERSION,
    AckMessage,
    AggregatorStatus,
    Message,
    ModelMessage,
    NodeState,
    NodeStatus,
    RejectReason,
    TrainingTask,
    UpdateMessage,
)
from fedbus.broker.tensors import WireTensor, encode_f32, encode_weights

TASK = TrainingTask("demo", "softmax", {"W": (2, 3), "b": (3,)}, 2, 8, 0.05)


def _weights() -> dict[str, np.ndarray]:
    return {
        "W": np.arange(6, dtype=np.float32).reshape(2, 3) / 4,
        "b": np.array([0.5, -0.25, 0.0], np.float32),
    }


def _update(**changes: Any) -> UpdateMessage:
    fields: dict[str, Any] = {
        "node": "n1",
        "seq": 1,
        "base_version": 0,
        "num_samples": 32,
        "tensors": encode_weights(_weights()),
        "train_loss": 0.5,
    }
    fields.update(changes)
    return UpdateMessage(**fields)


def _update_map() -> dict[str, Any]:
    """A valid update as a plain msgpack map, to be broken by the hostile tests."""
    return msgpack.unpackb(encode(_update()), raw=False)


def _pack(body: Any) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


# ---------------------------------------------------------------- round trips

MESSAGES: dict[str, Message] = {
    "model": ModelMessage(4, TASK, encode_weights(_weights())),
    "model_version_0": ModelMessage(0, TASK, encode_weights(_weights())),
    "update": _update(),
    "update_no_loss": _update(train_loss=None),
    "update_no_tensors": _update(tensors=()),
    "ack_accepted": AckMessage("n1", 3, True, 8),
    "ack_duplicate": AckMessage("n1", 3, True, 9, duplicate=True),
    "ack_unreadable": AckMessage("n1", None, False, 8, RejectReason.MALFORMED, "bad msgpack"),
    **{
        f"ack_{reason.value}": AckMessage("node_7-x", 12, False, 5, reason, f"because {reason}")
        for reason in RejectReason
    },
    **{f"status_{state.value}": NodeStatus("n1", state, 3) for state in NodeState},
    "status_will": NodeStatus("n1", NodeState.OFFLINE),
    "aggregator_status": AggregatorStatus(
        "running",
        12,
        "fedbuff",
        {"accepted": 3, "rejected_by_reason": {"stale": 2}, "lr": 0.5},
    ),
    "aggregator_status_bare": AggregatorStatus("offline", 0),
}


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_every_message_type_round_trips(name: str) -> None:
    message = MESSAGES[name]

    payload = encode(message)
    decoded = decode(payload, type(message))

    assert decoded == message
    assert encode(decoded) == payload
    assert next(iter(msgpack.unpackb(payload, raw=False))) == "v"


def test_model_tensors_decode_to_the_weights_that_were_sent() -> None:
    decoded = decode(encode(MESSAGES["model"]), ModelMessage)

    assert dict(decoded.task.weight_shapes) == {"W": (2, 3), "b": (3,)}
    for tensor, (name, array) in zip(decoded.tensors, _weights().items(), strict=True):
        assert tensor.name == name
        np.testing.assert_array_equal(tensor.to_array(), array)


def test_extreme_float32_values_survive_bit_for_bit() -> None:
    bits = np.array(
        [
            0x7F7FFFFF,
            0xFF7FFFFF,
            0x00000001,
            0x80000001,
            0x00800000,
            0x80000000,
            0x7F800000,
            0xFF800000,
            0x7FC00000,
            0x7FA00001,
            0xFFFFFFFF,
            0x00000000,
        ],
        dtype=np.uint32,
    )
    values = bits.view(np.float32).reshape(3, 4)
    message = _update(tensors=(encode_f32("W", values),))

    tensor = decode(encode(message), UpdateMessage).tensors[0]

    np.testing.assert_array_equal(tensor.to_array().view(np.uint32).ravel(), bits)


_NODE_IDS = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
_UINT = st.integers(0, 2**63 - 1)
_FLOAT32 = st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True)


@st.composite
def _wire_tensors(draw: st.DrawFn) -> WireTensor:
    shape = draw(st.lists(st.integers(0, 5), min_size=0, max_size=4))
    values = draw(hnp.arrays(np.float32, tuple(shape), elements=_FLOAT32))
    name = draw(st.text(min_size=1, max_size=16))
    return encode_f32(name, values)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    node=_NODE_IDS,
    seq=_UINT,
    base_version=_UINT,
    num_samples=st.integers(-(2**63), 2**63 - 1),
    tensors=st.lists(_wire_tensors(), max_size=4).map(tuple),
    train_loss=st.none() | st.floats(allow_nan=False),
)
@example(node="a", seq=0, base_version=0, num_samples=1, tensors=(), train_loss=None)
@example(
    node="Z" * 64,
    seq=2**63 - 1,
    base_version=2**63 - 1,
    num_samples=-(2**63),
    tensors=(encode_f32("empty", np.zeros((0, 3), np.float32)),),
    train_loss=-math.inf,
)
def test_update_round_trips_for_any_shapes_and_values(
    node: str,
    seq: int,
    base_version: int,
    num_samples: int,
    tensors: tuple[WireTensor, ...],
    train_loss: float | None,
) -> None:
    message = UpdateMessage(node, seq, base_version, num_samples, tensors, train_loss)

    payload = encode(message)
    decoded = decode(payload, UpdateMessage)

    assert decoded == message
    assert encode(decoded) == payload
    for got, sent in zip(decoded.tensors, tensors, strict=True):
        assert got.to_array().shape == sent.shape
        assert got.to_array().tobytes() == sent.data


def test_receivers_accept_float32_floats_ints_for_floats_and_unknown_keys() -> None:
    body = _update_map()
    body["train_loss"] = 0.25
    body["future_field"] = {"nested": [1, 2, 3]}
    body["tensors"][0]["compressed_by"] = "nobody"
    payload = msgpack.packb(body, use_bin_type=True, use_single_float=True)
    assert b"\xca" in payload  # really a float32 on the wire

    decoded = decode(payload, UpdateMessage)

    assert decoded == _update(train_loss=0.25)
    model = msgpack.unpackb(encode(MESSAGES["model"]), raw=False)
    model["task"]["learning_rate"] = 1
    assert decode(_pack(model), ModelMessage).task.learning_rate == 1.0


def test_optional_ack_fields_may_be_absent() -> None:
    body = {"v": 1, "type": "ack", "node": "n1", "seq": 2, "accepted": True, "version": 4}

    assert decode(_pack(body), AckMessage) == AckMessage("n1", 2, True, 4)


# ---------------------------------------------------------------- pinned bytes

ACK_HEX = (
    "89a17601a474797065a361636ba46e6f6465a26e31a373657103a86163636570746564c3"
    "a776657273696f6e08a6726561736f6ec0a664657461696ca0a96475706c6963617465c2"
)
UPDATE_HEX = (
    "87a17601a474797065a6757064617465a46e6f6465a26e31a373657101ac626173655f76"
    "657273696f6e00ab6e756d5f73616d706c657304a774656e736f72739185a46e616d65a1"
    "62a56474797065a7666c6f61743332a573686170659102a5636f646563a3663332a46461"
    "7461c4080000003f000080bf"
)


def test_ack_bytes_are_pinned() -> None:
    message = AckMessage("n1", 3, True, 8)

    assert encode(message).hex() == ACK_HEX
    assert decode(bytes.fromhex(ACK_HEX), AckMessage) == message


def test_update_bytes_are_pinned() -> None:
    tensor = encode_f32("b", np.array([0.5, -1.0], np.float32))
    message = UpdateMessage("n1", 1, 0, 4, (tensor,))

    assert encode(message).hex() == UPDATE_HEX
    assert decode(bytes.fromhex(UPDATE_HEX), UpdateMessage) == message


# ---------------------------------------------------------------- hostile input

VALID = encode(_update())


def _without(path: tuple[str | int, ...]) -> bytes:
    body = _update_map()
    target: Any = body
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return _pack(body)


def _with(path: tuple[str | int, ...], value: Any) -> bytes:
    body = _update_map()
    target: Any = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return _pack(body)


HOSTILE: dict[str, bytes] = {
    "empty": b"",
    "truncated": VALID[:-1],
    "truncated_header_only": VALID[:1],
    "trailing_byte": VALID + b"\x00",
    "two_messages": VALID + VALID,
    "array_not_map": _pack([1, "update"]),
    "int_not_map": _pack(1),
    "str_not_map": _pack("update"),
    "nil_not_map": b"\xc0",
    "reserved_byte": b"\xc1",
    "deep_nesting": b"\x91" * 10_000 + b"\xc0",
    "deep_nesting_of_maps": b"\x81\xa1a" * 10_000 + b"\xc0",
    "bin32_claims_4_gib": b"\x81\xa1v\xc6\xff\xff\xff\xff",
    "str32_claims_4_gib": b"\x81\xa1v\xdb\xff\xff\xff\xff",
    "array32_claims_4g_entries": b"\xdd\xff\xff\xff\xff",
    "map32_claims_4g_pairs": b"\xdf\xff\xff\xff\xff",
    "array16_over_limit": b"\xdc\xff\xff" + b"\xc0" * 0xFFFF,
    "fixext": b"\xd4\x01\x00",
    "ext8": b"\xc7\x03\x05abc",
    "timestamp_ext": b"\xd6\xff\x00\x00\x00\x00",
    "ext_inside_message": _with(("train_loss",), msgpack.ExtType(7, b"x")),
    "int_key": _pack({1: 1, "v": 1}),
    "nil_key": b"\x81\xc0\x01",
    "float_key": b"\x81\xcb" + struct.pack(">d", 1.5) + b"\x01",
    "int_key_in_tensor": _with(("tensors", 0, 7), "seven"),
    "invalid_utf8_str": b"\x82\xa1v\x01\xa4type\xa2\xff\xfe",
    "v_missing": _without(("v",)),
    "v_str": _with(("v",), "1"),
    "v_float": _with(("v",), 1.0),
    "v_bool": _with(("v",), True),
    "v_nil": _with(("v",), None),
    "type_missing": _without(("type",)),
    "type_unknown": _with(("type",), "gossip"),
    "type_int": _with(("type",), 2),
    "bool_seq": _with(("seq",), True),
    "bool_base_version": _with(("base_version",), False),
    "bool_num_samples": _with(("num_samples",), True),
    "bool_shape_entry": _with(("tensors", 0, "shape"), [True, 3]),
    "float_seq": _with(("seq",), 1.0),
    "str_seq": _with(("seq",), "1"),
    "nil_seq": _with(("seq",), None),
    "negative_seq": _with(("seq",), -1),
    "seq_above_int63": _with(("seq",), 2**63),
    "negative_base_version": _with(("base_version",), -7),
    "negative_shape_entry": _with(("tensors", 0, "shape"), [-2, -3]),
    "bad_node_id": _with(("node",), "a/b"),
    "empty_node_id": _with(("node",), ""),
    "str_train_loss": _with(("train_loss",), "low"),
    "tensors_not_a_list": _with(("tensors",), {"W": b""}),
    "tensor_not_a_map": _with(("tensors", 0), [1, 2]),
    "data_is_str": _with(("tensors", 0, "data"), "abcd" * 6),
    "data_one_byte_short": _with(("tensors", 0, "data"), b"\x00" * 23),
    "data_one_byte_long": _with(("tensors", 0, "data"), b"\x00" * 25),
    "data_for_other_shape": _with(("tensors", 0, "shape"), [3, 3]),
    "shape_not_a_list": _with(("tensors", 0, "shape"), 6),
    "huge_shape": _with(("tensors", 0, "shape"), [2**20, 2**20]),
    "huge_shape_uint64": _with(("tensors", 0, "shape"), [2**64 - 1]),
    "rank_above_limit": _with(("tensors", 0, "shape"), [1] * 9),
    "unknown_codec": _with(("tensors", 0, "codec"), "q8"),
    "codec_case": _with(("tensors", 0, "codec"), "F32"),
}
for _field in ("node", "seq", "base_version", "num_samples", "tensors"):
    HOSTILE[f"missing_{_field}"] = _without((_field,))
for _field in ("name", "dtype", "shape", "codec", "data"):
    HOSTILE[f"missing_tensor_{_field}"] = _without(("tensors", 0, _field))


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_update_payload_raises_codec_error(name: str) -> None:
    with pytest.raises(CodecError):
        decode(HOSTILE[name])


@pytest.mark.parametrize("version", [0, 2, -1, 255, 2**64 - 1])
def test_other_protocol_version_raises_unsupported_version(version: int) -> None:
    with pytest.raises(UnsupportedVersionError):
        decode(_with(("v",), version))


@pytest.mark.parametrize("name", ["v_missing", "v_str", "v_float", "v_bool", "v_nil"])
def test_non_integer_version_is_malformed_not_unsupported(name: str) -> None:
    with pytest.raises(CodecError) as caught:
        decode(HOSTILE[name])

    assert type(caught.value) is CodecError


def _ack_map(**changes: Any) -> bytes:
    body = msgpack.unpackb(encode(AckMessage("n1", 3, True, 8)), raw=False)
    body.update(changes)
    return _pack(body)


def _model_map(path: tuple[str, ...], value: Any = ...) -> bytes:
    body = msgpack.unpackb(encode(MESSAGES["model"]), raw=False)
    target = body
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return _pack(body)


HOSTILE_OTHERS: dict[str, bytes] = {
    "ack_reason_when_accepted": _ack_map(reason="stale"),
    "ack_no_reason_when_rejected": _ack_map(accepted=False),
    "ack_unknown_reason": _ack_map(accepted=False, reason="bored"),
    "ack_int_accepted": _ack_map(accepted=1),
    "ack_bool_version": _ack_map(version=True),
    "ack_negative_version": _ack_map(version=-1),
    "ack_missing_accepted": _pack({"v": 1, "type": "ack", "node": "n1", "seq": 3, "version": 8}),
    "status_unknown_state": _pack({"v": 1, "type": "node_status", "node": "n", "state": "zzz"}),
    "status_missing_node": _pack({"v": 1, "type": "node_status", "state": "online"}),
    "aggregator_status_counters_list": _pack(
        {"v": 1, "type": "aggregator_status", "state": "running", "version": 1, "counters": [1]}
    ),
    "model_missing_task": _model_map(("task",)),
    "model_task_not_a_map": _model_map(("task",), [1]),
    "model_task_missing_weights": _model_map(("task", "weights")),
    "model_task_no_weights": _model_map(("task", "weights"), []),
    "model_task_zero_epochs": _model_map(("task", "local_epochs"), 0),
    "model_task_bool_batch_size": _model_map(("task", "batch_size"), True),
    "model_task_negative_learning_rate": _model_map(("task", "learning_rate"), -0.1),
    "model_task_nan_learning_rate": _model_map(("task", "learning_rate"), math.nan),
    "model_negative_version": _model_map(("version",), -1),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_OTHERS))
def test_hostile_payloads_of_other_types_raise_codec_error(name: str) -> None:
    with pytest.raises(CodecError):
        decode(HOSTILE_OTHERS[name])


def test_payload_above_max_payload_bytes_is_refused_before_unpacking() -> None:
    small = DecodeLimits(max_payload_bytes=len(VALID) - 1)

    with pytest.raises(CodecError, match="exceeds"):
        decode(VALID, limits=small)
    with pytest.raises(CodecError, match="exceeds"):
        unpack_map(b"\x00" * (DEFAULT_LIMITS.max_payload_bytes + 1))
    assert decode(VALID, limits=DecodeLimits(max_payload_bytes=len(VALID))) == _update()


def test_tensor_count_and_element_limits_apply() -> None:
    three = _update(tensors=tuple(encode_f32(f"t{i}", np.zeros(2, np.float32)) for i in range(3)))

    with pytest.raises(CodecError, match="tensors"):
        decode(encode(three), limits=DecodeLimits(max_tensors=2))
    with pytest.raises(CodecError, match="elements"):
        decode(VALID, limits=DecodeLimits(max_tensor_elements=5))


def test_expected_type_is_enforced() -> None:
    with pytest.raises(CodecError, match="expected a UpdateMessage"):
        decode(encode(MESSAGES["ack_accepted"]), UpdateMessage)


def test_zero_element_shape_with_a_huge_dimension_is_refused() -> None:
    payload = _with(
        ("tensors", 0),
        {
            "name": "W",
            "dtype": "float32",
            "shape": [0, 2**64 - 1],
            "codec": "f32",
            "data": b"",
        },
    )

    with pytest.raises(CodecError):
        decode(payload)


def test_tensor_dtype_other_than_float32_is_refused_at_decode() -> None:
    with pytest.raises(CodecError):
        decode(_with(("tensors", 0, "dtype"), "float64"))


# ---------------------------------------------------------------- fuzzing


def _decode_or_codec_error(payload: bytes) -> None:
    """The contract under fuzzing: a Message, or CodecError; nothing else escapes."""
    try:
        message = decode(payload)
    except CodecError:
        return
    assert isinstance(
        message, ModelMessage | UpdateMessage | AckMessage | NodeStatus | AggregatorStatus
    )
    assert message == decode(encode(message)) or _holds_nan(message)


def _holds_nan(message: Message) -> bool:
    loss = getattr(message, "train_loss", None)
    return isinstance(loss, float) and math.isnan(loss)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_decode_or_raise_codec_error(payload: bytes) -> None:
    _decode_or_codec_error(payload)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(VALID) * 8 - 1)), min_size=1, max_size=8),
    st.integers(0, len(VALID)),
    st.binary(max_size=8),
)
def test_mutated_update_decodes_or_raises_codec_error(
    flips: list[tuple[int]], cut: int, tail: bytes
) -> None:
    mutated = bytearray(VALID)
    for (bit,) in flips:
        mutated[bit // 8] ^= 1 << (bit % 8)

    _decode_or_codec_error(bytes(mutated))
    _decode_or_codec_error(bytes(mutated[:cut]))
    _decode_or_codec_error(bytes(mutated[:cut]) + tail)
    _decode_or_codec_error(VALID[:cut])


def test_protocol_version_constant_is_one() -> None:
    assert PROTOCOL_VERSION == 1


# ---------------------------------------------------------------- value budget, ext types


def _tiny_containers(count: int) -> bytes:
    """`count` empty msgpack arrays nested in arrays of at most 1024: ~1 byte each."""
    groups, rest = divmod(count, 1024)
    full = b"\xdc\x04\x00" + b"\x90" * 1024
    last = b"\xdc" + struct.pack(">H", rest) + b"\x90" * rest
    return b"\xdc" + struct.pack(">H", groups + 1) + full * groups + last


def _with_unknown_key(raw_value: bytes) -> bytes:
    """VALID with one extra key `zz` whose value is the given raw msgpack bytes."""
    header = VALID[0]
    assert 0x80 <= header < 0x8F  # a fixmap with room for one more pair
    return bytes([header + 1]) + VALID[1:] + b"\xa2zz" + raw_value


def test_an_unknown_key_may_hold_a_moderate_value() -> None:
    assert decode(_with_unknown_key(_tiny_containers(1000))) == _update()


def test_many_tiny_values_are_refused_before_any_is_built() -> None:
    # 1 MiB of empty arrays under an unknown key: msgpack alone builds a list
    # object for each byte, about 60 MiB, before the key is found unknown.
    payload = _with_unknown_key(_tiny_containers(2**20))
    tracemalloc.start()
    try:
        with pytest.raises(CodecError, match="values"):
            decode(payload)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert peak < 2**20, peak


def test_value_budget_is_a_limit_of_its_own() -> None:
    values_in_valid = count_objects(VALID, DEFAULT_LIMITS.max_objects)

    assert decode(VALID, limits=DecodeLimits(max_objects=values_in_valid)) == _update()
    with pytest.raises(CodecError, match="values"):
        decode(VALID, limits=DecodeLimits(max_objects=values_in_valid - 1))


def test_the_largest_model_the_other_limits_allow_fits_the_value_budget() -> None:
    shape = (1,) * DEFAULT_LIMITS.max_tensor_rank
    names = [f"t{i}" for i in range(DEFAULT_LIMITS.max_tensors)]
    task = TrainingTask("big", "softmax", {name: shape for name in names})
    tensors = tuple(encode_f32(name, np.zeros(shape, np.float32)) for name in names)
    payload = encode(ModelMessage(3, task, tensors))

    assert count_objects(payload, DEFAULT_LIMITS.max_objects) * 3 <= DEFAULT_LIMITS.max_objects
    assert decode(payload, ModelMessage).tensors == tensors


@pytest.mark.parametrize(
    "ext",
    [
        b"\xc7\x00\x05",  # ext8 of length 0: within max_ext_len=0, so msgpack lets it through
        b"\xc8\x00\x00\x05",  # ext16 of length 0
        b"\xc9\x00\x00\x00\x00\x05",  # ext32 of length 0
        b"\xd4\x05\x00",  # fixext1
    ],
)
def test_an_ext_value_is_refused_even_empty_and_under_an_unknown_key(ext: bytes) -> None:
    with pytest.raises(CodecError, match="ext"):
        decode(_with_unknown_key(ext))


_MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(width=32)
    | st.text(max_size=40)
    | st.binary(max_size=300),
    lambda inner: (
        st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=8), inner, max_size=10)
    ),
    max_leaves=40,
)


def _naive_count(value: Any) -> int:
    if isinstance(value, list):
        return 1 + sum(_naive_count(item) for item in value)
    if isinstance(value, dict):
        return 1 + sum(1 + _naive_count(item) for item in value.values())
    return 1


@settings(max_examples=200, deadline=None)
@given(_MSGPACK_VALUES, st.booleans(), st.binary(max_size=4))
def test_count_objects_agrees_with_what_msgpack_builds(
    value: Any, single_float: bool, tail: bytes
) -> None:
    payload = msgpack.packb(value, use_bin_type=True, use_single_float=single_float)

    assert count_objects(payload + tail, 10**6) == _naive_count(value)
    with pytest.raises(CodecError, match="values"):
        count_objects(payload, _naive_count(value) - 1)


@settings(max_examples=100, deadline=None)
@given(_MSGPACK_VALUES)
def test_count_objects_refuses_every_truncation(value: Any) -> None:
    payload = msgpack.packb(value, use_bin_type=True)

    for cut in range(len(payload)):
        with pytest.raises(CodecError):
            count_objects(payload[:cut], 10**6)
