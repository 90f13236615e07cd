"""msgpack encoding and bounded, validating decoding of protocol v1 messages.

Every payload from the network is untrusted. `decode` unpacks with explicit
limits on every container and string, refuses ext types, checks the protocol
version, the message type, every field's type and every tensor header, and
raises `CodecError` (never msgpack's or numpy's exceptions) so a daemon can
count the rejection and carry on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgpack
import numpy as np

from fedbus.broker.errors import (
    CodecError,
    PayloadTooLargeError,
    ProtocolError,
    UnsupportedVersionError,
)
from fedbus.broker.messages import (
    MAX_PREPROCESS_STEPS,
    PROTOCOL_VERSION,
    AckMessage,
    AggregatorStatus,
    FeatureStatistics,
    Message,
    MessageType,
    ModelMessage,
    NodeMetrics,
    NodeState,
    NodeStatus,
    Normalization,
    RejectReason,
    TrainingTask,
    UpdateMessage,
)
from fedbus.broker.tensors import CODEC_TOPK, FLOAT32, SUPPORTED_CODECS, WireTensor


@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds applied while unpacking one untrusted payload."""

    max_payload_bytes: int = 64 * 1024 * 1024
    max_str_len: int = 4096
    max_array_len: int = 1024
    max_map_len: int = 256
    max_tensors: int = 256
    max_tensor_rank: int = 8
    max_tensor_elements: int = 64 * 1024 * 1024
    #: msgpack values in one payload (a map pair is two), counted before any is
    #: built: one byte of msgpack can become a 60-byte Python object. The largest
    #: message the limits above allow (256 tensors of rank 8) holds about 8,300.
    max_objects: int = 32_768


DEFAULT_LIMITS = DecodeLimits()


# ---------------------------------------------------------------- encoding


def tensor_to_map(tensor: WireTensor) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": tensor.name,
        "dtype": tensor.dtype,
        "shape": list(tensor.shape),
        "codec": tensor.codec,
        "data": tensor.data,
    }
    # Codec fields only where the codec has them: f32 tensors stay as in 0.1.
    if tensor.codec == CODEC_TOPK:
        body["values_codec"] = tensor.values_codec
        body["indices"] = tensor.indices
    if tensor.block:
        body["block"] = tensor.block
        body["scales"] = tensor.scales
    return body


def _f64_bytes(values: Sequence[float]) -> bytes:
    return np.asarray(values, dtype="<f8").tobytes()


def _u64_bytes(values: Sequence[int]) -> bytes:
    return np.asarray(values, dtype="<u8").tobytes()


def _normalization_map(normalization: Normalization) -> dict[str, Any]:
    return {
        "nodes": normalization.nodes,
        "count": _u64_bytes(normalization.count),
        "mean": _f64_bytes(normalization.mean),
        "std": _f64_bytes(normalization.std),
        "min": _f64_bytes(normalization.minimum),
        "max": _f64_bytes(normalization.maximum),
    }


def _task_map(task: TrainingTask) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": task.name,
        "learner": task.learner,
        "weights": [{"name": k, "shape": list(v)} for k, v in task.weight_shapes.items()],
        "local_epochs": task.local_epochs,
        "batch_size": task.batch_size,
        "learning_rate": task.learning_rate,
    }
    # The data fields only when set: a task without them encodes as in 0.1.
    if task.features:
        body["features"] = list(task.features)
    if task.preprocess:
        body["preprocess"] = [_plain(dict(step)) for step in task.preprocess]
    if task.normalization is not None:
        body["normalization"] = _normalization_map(task.normalization)
    return body


def _plain(value: Any) -> Any:
    """A copy with every mapping a dict and every sequence a list, as msgpack wants."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _body(message: Message) -> dict[str, Any]:
    if isinstance(message, ModelMessage):
        return {
            "type": MessageType.MODEL.value,
            "version": message.version,
            "task": _task_map(message.task),
            "tensors": [tensor_to_map(t) for t in message.tensors],
        }
    if isinstance(message, UpdateMessage):
        body: dict[str, Any] = {
            "type": MessageType.UPDATE.value,
            "node": message.node,
            "seq": message.seq,
            "base_version": message.base_version,
            "num_samples": message.num_samples,
            "tensors": [tensor_to_map(t) for t in message.tensors],
        }
        if message.train_loss is not None:
            body["train_loss"] = float(message.train_loss)
        if message.signature is not None:
            body["sig"] = message.signature
        return body
    if isinstance(message, AckMessage):
        return {
            "type": MessageType.ACK.value,
            "node": message.node,
            "seq": message.seq,
            "accepted": message.accepted,
            "version": message.version,
            "reason": None if message.reason is None else message.reason.value,
            "detail": message.detail,
            "duplicate": message.duplicate,
        }
    if isinstance(message, NodeStatus):
        return {
            "type": MessageType.NODE_STATUS.value,
            "node": message.node,
            "state": message.state.value,
            "version": message.version,
        }
    if isinstance(message, FeatureStatistics):
        return {
            "type": MessageType.STATS.value,
            "node": message.node,
            "count": _u64_bytes(message.count),
            "sum": _f64_bytes(message.total),
            "sum_sq": _f64_bytes(message.total_sq),
            "min": _f64_bytes(message.minimum),
            "max": _f64_bytes(message.maximum),
            **({} if message.signature is None else {"sig": message.signature}),
        }
    if isinstance(message, NodeMetrics):
        return {
            "type": MessageType.NODE_METRICS.value,
            "node": message.node,
            "version": message.version,
            "rows_raw": message.rows_raw,
            "rows_used": message.rows_used,
            "preprocess": {step: dict(counts) for step, counts in message.preprocess.items()},
            **({"evaluation": dict(message.evaluation)} if message.evaluation else {}),
        }
    if isinstance(message, AggregatorStatus):
        return {
            "type": MessageType.AGGREGATOR_STATUS.value,
            "state": message.state,
            "version": message.version,
            "mode": message.mode,
            "counters": dict(message.counters),
        }
    raise TypeError(f"not a protocol message: {type(message).__name__}")


def encode(message: Message) -> bytes:
    """Encode a message as one msgpack map with the protocol version `v` first."""
    return msgpack.packb({"v": PROTOCOL_VERSION, **_body(message)}, use_bin_type=True)


# ---------------------------------------------------------------- decoding

T = TypeVar("T")


def required_field(
    body: Mapping[str, Any], key: str, kind: type[T] | tuple[type, ...], where: str
) -> T:
    """Fetch a required field and check its msgpack type (bool is not an int)."""
    if key not in body:
        raise CodecError(f"{where}: missing field {key!r}")
    value = body[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise CodecError(f"{where}: field {key!r} must be {_names(kinds)}, got bool")
    if not isinstance(value, kinds):
        raise CodecError(f"{where}: field {key!r} must be {_names(kinds)}, got {_kind(value)}")
    return value  # type: ignore[return-value]


def _optional(body: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if body.get(key) is None:
        return None
    return required_field(body, key, kind, where)


def _names(kinds: tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in kinds)


def _kind(value: object) -> str:
    return type(value).__name__


def non_negative_field(body: Mapping[str, Any], key: str, where: str) -> int:
    value = required_field(body, key, int, where)
    if value < 0 or value >= 2**63:
        raise CodecError(f"{where}: field {key!r} out of range: {value}")
    return value


def _optional_non_negative(body: Mapping[str, Any], key: str, where: str) -> int | None:
    return None if body.get(key) is None else non_negative_field(body, key, where)


def _shape(raw: Any, where: str, limits: DecodeLimits) -> tuple[int, ...]:
    if not isinstance(raw, list) or len(raw) > limits.max_tensor_rank:
        raise CodecError(f"{where}: shape must be a list of at most {limits.max_tensor_rank} ints")
    if any(
        isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= limits.max_tensor_elements
        for d in raw
    ):
        raise CodecError(f"{where}: shape entries must be non-negative ints, got {raw}")
    if math.prod(raw) > limits.max_tensor_elements:
        raise CodecError(f"{where}: shape {raw} exceeds {limits.max_tensor_elements} elements")
    return tuple(raw)


def tensor_from_map(raw: Any, limits: DecodeLimits) -> WireTensor:
    if not isinstance(raw, dict):
        raise CodecError(f"tensor must be a map, got {_kind(raw)}")
    name = required_field(raw, "name", str, "tensor")
    where = f"tensor {name!r}"
    codec = required_field(raw, "codec", str, where)
    if codec not in SUPPORTED_CODECS:
        raise CodecError(f"{where}: unsupported codec {codec!r}")
    dtype = required_field(raw, "dtype", str, where)
    if dtype != FLOAT32:
        raise CodecError(f"{where}: unsupported dtype {dtype!r}")
    block = _optional_non_negative(raw, "block", where)
    tensor = WireTensor(
        name=name,
        dtype=dtype,
        shape=_shape(raw.get("shape"), where, limits),
        codec=codec,
        data=required_field(raw, "data", bytes, where),
        block=0 if block is None else block,
        scales=_optional(raw, "scales", bytes, where) or b"",
        indices=_optional(raw, "indices", bytes, where) or b"",
        values_codec=_optional(raw, "values_codec", str, where) or "",
    )
    tensor.check_layout()
    return tensor


def _tensors(body: Mapping[str, Any], limits: DecodeLimits, where: str) -> tuple[WireTensor, ...]:
    raw = required_field(body, "tensors", list, where)
    if len(raw) > limits.max_tensors:
        raise CodecError(f"{where}: {len(raw)} tensors, limit {limits.max_tensors}")
    return tuple(tensor_from_map(t, limits) for t in raw)


def _task(raw: Any, limits: DecodeLimits) -> TrainingTask:
    if not isinstance(raw, dict):
        raise CodecError("task must be a map")
    shapes: dict[str, tuple[int, ...]] = {}
    for entry in required_field(raw, "weights", list, "task"):
        if not isinstance(entry, dict):
            raise CodecError("task: weights entries must be maps")
        name = required_field(entry, "name", str, "task weight")
        if name in shapes:
            raise CodecError(f"task: weight {name!r} listed twice")
        shapes[name] = _shape(entry.get("shape"), f"task weight {name!r}", limits)
    features = _optional(raw, "features", list, "task") or []
    if not all(isinstance(name, str) for name in features):
        raise CodecError("task: features must be strings")
    steps = _optional(raw, "preprocess", list, "task") or []
    if len(steps) > MAX_PREPROCESS_STEPS:
        raise CodecError(f"task: {len(steps)} preprocessing steps, limit {MAX_PREPROCESS_STEPS}")
    for step in steps:
        _check_step(step)
    normalization = _optional(raw, "normalization", dict, "task")
    return TrainingTask(
        name=required_field(raw, "name", str, "task"),
        learner=required_field(raw, "learner", str, "task"),
        weight_shapes=shapes,
        local_epochs=required_field(raw, "local_epochs", int, "task"),
        batch_size=required_field(raw, "batch_size", int, "task"),
        learning_rate=float(required_field(raw, "learning_rate", (float, int), "task")),
        features=tuple(features),
        preprocess=tuple(steps),
        normalization=None if normalization is None else _normalization(normalization),
    )


def _check_step(step: Any) -> None:
    """A preprocessing step is a map with a string `step` and plain values (depth <= 3).

    Only the shape is checked here; what the keys mean is the node's business
    (fedbus.node.preprocess), which refuses what it does not know.
    """
    if not isinstance(step, dict) or not isinstance(step.get("step"), str):
        raise CodecError("task: each preprocessing step must be a map with a string 'step'")

    def plain(value: Any, depth: int) -> bool:
        if value is None or isinstance(value, (bool, int, float, str)):
            return not (isinstance(value, float) and not math.isfinite(value))
        if depth >= 3:
            return False
        if isinstance(value, list):
            return all(plain(item, depth + 1) for item in value)
        if isinstance(value, dict):
            return all(plain(item, depth + 1) for item in value.values())
        return False

    if not plain(step, 0):
        raise CodecError(f"task: preprocessing step {step['step']!r} holds a value of another kind")


def _vector(raw: Mapping[str, Any], key: str, dtype: str, n: int | None, where: str) -> np.ndarray:
    """A per-feature vector sent as little-endian float64 (or uint64) bytes."""
    data = required_field(raw, key, bytes, where)
    if len(data) % 8 or (n is not None and len(data) != 8 * n):
        expected = "a multiple of 8" if n is None else str(8 * n)
        raise CodecError(f"{where}: {key!r} has {len(data)} bytes, expected {expected}")
    return np.frombuffer(data, dtype=dtype)


def _normalization(raw: Mapping[str, Any]) -> Normalization:
    where = "task normalization"
    count = _vector(raw, "count", "<u8", None, where)
    n = count.size
    try:
        return Normalization(
            nodes=non_negative_field(raw, "nodes", where),
            count=tuple(int(c) for c in count),
            mean=tuple(_vector(raw, "mean", "<f8", n, where).tolist()),
            std=tuple(_vector(raw, "std", "<f8", n, where).tolist()),
            minimum=tuple(_vector(raw, "min", "<f8", n, where).tolist()),
            maximum=tuple(_vector(raw, "max", "<f8", n, where).tolist()),
        )
    except ProtocolError as exc:
        raise CodecError(str(exc)) from None


def _stats(body: Mapping[str, Any], limits: DecodeLimits) -> FeatureStatistics:
    count = _vector(body, "count", "<u8", None, "stats")
    n = count.size
    if n > limits.max_tensor_elements:
        raise CodecError(f"stats: {n} features, limit {limits.max_tensor_elements}")
    if count.size and int(count.max()) >= 2**63:
        raise CodecError("stats: a count is out of range")
    return FeatureStatistics(
        node=required_field(body, "node", str, "stats"),
        count=tuple(int(c) for c in count),
        total=tuple(_vector(body, "sum", "<f8", n, "stats").tolist()),
        total_sq=tuple(_vector(body, "sum_sq", "<f8", n, "stats").tolist()),
        minimum=tuple(_vector(body, "min", "<f8", n, "stats").tolist()),
        maximum=tuple(_vector(body, "max", "<f8", n, "stats").tolist()),
        signature=_optional(body, "sig", bytes, "stats"),
    )


def _model(body: Mapping[str, Any], limits: DecodeLimits) -> ModelMessage:
    return ModelMessage(
        version=non_negative_field(body, "version", "model"),
        task=_task(body.get("task"), limits),
        tensors=_tensors(body, limits, "model"),
    )


def _update(body: Mapping[str, Any], limits: DecodeLimits) -> UpdateMessage:
    loss = _optional(body, "train_loss", (float, int), "update")
    return UpdateMessage(
        node=required_field(body, "node", str, "update"),
        seq=non_negative_field(body, "seq", "update"),
        base_version=non_negative_field(body, "base_version", "update"),
        num_samples=required_field(body, "num_samples", int, "update"),
        tensors=_tensors(body, limits, "update"),
        train_loss=None if loss is None else float(loss),
        signature=_optional(body, "sig", bytes, "update"),
    )


def _ack(body: Mapping[str, Any], limits: DecodeLimits) -> AckMessage:
    reason = _optional(body, "reason", str, "ack")
    try:
        parsed_reason = None if reason is None else RejectReason(reason)
    except ValueError:
        raise CodecError(f"ack: unknown reason {reason!r}") from None
    return AckMessage(
        node=required_field(body, "node", str, "ack"),
        seq=_optional_non_negative(body, "seq", "ack"),
        accepted=required_field(body, "accepted", bool, "ack"),
        version=non_negative_field(body, "version", "ack"),
        reason=parsed_reason,
        detail=_optional(body, "detail", str, "ack") or "",
        duplicate=bool(_optional(body, "duplicate", bool, "ack")),
    )


def _node_status(body: Mapping[str, Any], limits: DecodeLimits) -> NodeStatus:
    state = required_field(body, "state", str, "node_status")
    try:
        parsed_state = NodeState(state)
    except ValueError:
        raise CodecError(f"node_status: unknown state {state!r}") from None
    return NodeStatus(
        node=required_field(body, "node", str, "node_status"),
        state=parsed_state,
        version=_optional_non_negative(body, "version", "node_status"),
    )


def _counters(raw: dict[str, Any]) -> dict[str, Any]:
    """Counters are numbers or maps of numbers (histograms, per-reason counts)."""
    for key, value in raw.items():
        if isinstance(value, dict):
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
                raise CodecError(f"aggregator_status: counter map {key!r} must hold integers")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CodecError(f"aggregator_status: counter {key!r} must be a number or a map")
    return raw


def _aggregator_status(body: Mapping[str, Any], limits: DecodeLimits) -> AggregatorStatus:
    return AggregatorStatus(
        state=required_field(body, "state", str, "aggregator_status"),
        version=non_negative_field(body, "version", "aggregator_status"),
        mode=_optional(body, "mode", str, "aggregator_status") or "",
        counters=_counters(_optional(body, "counters", dict, "aggregator_status") or {}),
    )


def _node_metrics(body: Mapping[str, Any], limits: DecodeLimits) -> NodeMetrics:
    steps = _optional(body, "preprocess", dict, "node_metrics") or {}
    for step, counts in steps.items():
        if not isinstance(counts, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in counts.values()
        ):
            raise CodecError(f"node_metrics: step {step!r} must map counter names to integers")
    evaluation = _optional(body, "evaluation", dict, "node_metrics") or {}
    if not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in evaluation.values()
    ):
        raise CodecError("node_metrics: evaluation must map metric names to numbers")
    return NodeMetrics(
        node=required_field(body, "node", str, "node_metrics"),
        version=non_negative_field(body, "version", "node_metrics"),
        rows_raw=non_negative_field(body, "rows_raw", "node_metrics"),
        rows_used=non_negative_field(body, "rows_used", "node_metrics"),
        preprocess=steps,
        evaluation={name: float(value) for name, value in evaluation.items()},
    )


_DECODERS = {
    MessageType.MODEL.value: _model,
    MessageType.UPDATE.value: _update,
    MessageType.ACK.value: _ack,
    MessageType.NODE_STATUS.value: _node_status,
    MessageType.AGGREGATOR_STATUS.value: _aggregator_status,
    MessageType.STATS.value: _stats,
    MessageType.NODE_METRICS.value: _node_metrics,
}


def _string_keyed_map(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    """Map hook for the unpacker: keys must be strings and must not repeat."""
    body = dict(pairs)
    if len(body) != len(pairs) or not all(isinstance(key, str) for key, _ in pairs):
        raise ValueError("map keys must be distinct strings")
    return body


# Head bytes of msgpack's fixed-size values (nil, bools, numbers) -> bytes after the head.
_FIXED_TAIL = {
    0xC0: 0, 0xC2: 0, 0xC3: 0,  # nil, false, true
    0xCA: 4, 0xCB: 8,  # float32, float64
    0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,  # uint8..uint64
    0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8,  # int8..int64
}  # fmt: skip
# bin8/16/32 and str8/16/32 -> width of their big-endian length.
_LENGTH_WIDTH = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}
# array16/32 and map16/32 -> (width of the entry count, values per entry).
_CONTAINER = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}
_EXT = frozenset({0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8})


def count_objects(payload: bytes, limit: int) -> int:
    """Count the msgpack values of the first object in `payload` without building any.

    Walks the headers only (str and bin bodies are skipped by their length),
    so the cost is one step per value and nothing is allocated per value.
    Raises CodecError as soon as the count passes `limit`, on an ext type
    (forbidden by the protocol, even empty: msgpack's `max_ext_len=0` lets a
    zero-length ext through), on the reserved byte 0xc1 and on truncation.
    Bytes after the first object are not looked at.
    """
    end = len(payload)
    pos = 0
    count = 0
    to_read = 1  # values still to read in the innermost open container
    outer: list[int] = []  # the same for each enclosing container
    while True:
        if to_read == 0:
            if not outer:
                if pos > end:  # the last value's tail or length is cut off
                    raise CodecError(f"truncated msgpack: {pos - end} bytes missing at the end")
                return count
            to_read = outer.pop()
            continue
        if pos >= end:
            raise CodecError(f"truncated msgpack: a value is missing at byte {pos}")
        count += 1
        if count > limit:
            raise CodecError(f"payload holds more than {limit} msgpack values")
        to_read -= 1
        head = payload[pos]
        pos += 1
        if head <= 0x7F or head >= 0xE0:  # positive and negative fixint
            continue
        if head <= 0x9F:  # fixmap, fixarray
            entries = (head & 0x0F) * (2 if head <= 0x8F else 1)
        elif head <= 0xBF:  # fixstr
            pos += head & 0x1F
            continue
        elif head in _FIXED_TAIL:
            pos += _FIXED_TAIL[head]
            continue
        elif head in _LENGTH_WIDTH:
            width = _LENGTH_WIDTH[head]
            pos += width + int.from_bytes(payload[pos : pos + width], "big")
            continue
        elif head in _CONTAINER:
            width, per_entry = _CONTAINER[head]
            entries = int.from_bytes(payload[pos : pos + width], "big") * per_entry
            pos += width
        elif head in _EXT:
            raise CodecError(f"ext types are not allowed (byte {pos - 1})")
        else:
            raise CodecError(f"reserved msgpack byte 0x{head:02x} at byte {pos - 1}")
        if entries:
            outer.append(to_read)
            to_read = entries


def unpack_map(payload: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Unpack one payload into a map under explicit limits; no ext types, no trailing bytes.

    The values are counted (`count_objects`) before msgpack builds any of them.
    """
    if len(payload) > limits.max_payload_bytes:
        raise PayloadTooLargeError(
            f"payload of {len(payload)} bytes exceeds {limits.max_payload_bytes}"
        )
    count_objects(payload, limits.max_objects)
    try:
        body = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            object_pairs_hook=_string_keyed_map,
            use_list=True,
            max_bin_len=limits.max_payload_bytes,
            max_str_len=limits.max_str_len,
            max_array_len=limits.max_array_len,
            max_map_len=limits.max_map_len,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises ValueError subclasses, TypeError, ...
        raise CodecError(f"not a valid msgpack payload: {type(exc).__name__}: {exc}") from None
    if not isinstance(body, dict):
        raise CodecError(f"payload must be a msgpack map, got {_kind(body)}")
    return body


def decode(
    payload: bytes, expected: type[T] | None = None, limits: DecodeLimits = DEFAULT_LIMITS
) -> T:
    """Decode and validate one payload; `expected` restricts the message class.

    Raises UnsupportedVersionError for another protocol version and CodecError
    for anything else that is wrong, with a message that names the field.
    """
    return decode_map(unpack_map(payload, limits), expected, limits)


def decode_map(
    body: Mapping[str, Any], expected: type[T] | None = None, limits: DecodeLimits = DEFAULT_LIMITS
) -> T:
    """`decode` for a payload already unpacked by `unpack_map`.

    For a receiver that reads a field of a broken message (the `seq` of an
    update to refuse) without unpacking the payload a second time.
    """
    version = body.get("v")
    if isinstance(version, bool) or not isinstance(version, int):
        raise CodecError("missing or non-integer protocol version 'v'")
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersionError(
            f"protocol version {version} not supported (this build speaks {PROTOCOL_VERSION})"
        )
    kind = body.get("type")
    decoder = _DECODERS.get(kind) if isinstance(kind, str) else None
    if decoder is None:
        raise CodecError(f"unknown message type {kind!r}")
    try:
        message = decoder(body, limits)
    except ProtocolError as exc:  # a constructor's invariant, hit by network input
        raise CodecError(str(exc)) from None
    if expected is not None and not isinstance(message, expected):
        raise CodecError(f"expected a {expected.__name__}, got a {type(message).__name__}")
    return message  # type: ignore[return-value]
