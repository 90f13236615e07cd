"""What a node remembers across restarts, besides its outbox.

- `next_seq`: the sequence number the next update gets. A seq must never be
  used twice: the aggregator answers a repeated seq with the verdict of the
  first update that carried it (a lost-ack resend is harmless that way), so a
  new update under a reused seq would be silently dropped as a duplicate.
- `residual`: the error-feedback residual of update compression, name ->
  float32 array; whatever compression left out of one update is added to the
  next. Empty until compression is switched on.
- `model_version`: the model version the node last trained on (None before
  the first), so a restarted node does not train on the same model again.

Write-ahead rule. The state that goes with an update is saved *before* the
update is published, in one atomic write: the advanced `next_seq` and the
residual that remains after compressing it. Saved later, a crash in between
would reuse the seq, or add back a residual the update already carried.
`take_seq` does the bookkeeping; the node then saves, puts the payload in the
outbox and publishes::

    seq, state = take_seq(state, outbox)
    state = replace(state, residual=new_residual, model_version=model.version)
    save_device_state(path, state)
    outbox.put(seq, payload)
    client.publish(...)

On open, `next_seq_after` also lifts the seq above every seq still in the
outbox, which keeps seqs unique even if the state file is older than the
outbox (restored from a backup, or written by a node that put first).

On disk the file is a magic, a crc32 and one msgpack map (little-endian)::

    magic b"FBDEVST1" | crc32 u32 of the body | body

    body = {"format": 1, "next_seq": int, "model_version": int | nil,
            "residual": [{name, dtype, shape, codec, data}, ...]}

with tensors in the wire layout of broker/codec.py. It is written with
`write_atomically`, so a crash leaves the old or the new file. A file that
is nevertheless unreadable (bad sector, truncated copy, edited by hand)
raises `DeviceStateError` instead of starting afresh: a fresh state would
start seqs again at 1 and the aggregator would swallow the node's next
updates as duplicates or replays. That is a problem for an operator (restore
the file, or delete it *and* retire the node id) rather than one to paper
over on a device. A missing file is a new device and gives a fresh state.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import msgpack
import numpy as np

from fedbus.broker.codec import DecodeLimits, tensor_from_map, tensor_to_map, unpack_map
from fedbus.broker.durable_files import fsync_directory, write_atomically
from fedbus.broker.errors import CodecError, FedbusError
from fedbus.broker.tensors import encode_f32

STATE_MAGIC = b"FBDEVST1"
STATE_FORMAT = 1
_CRC = struct.Struct("<I")
HEADER_SIZE = len(STATE_MAGIC) + _CRC.size
#: Seqs and versions are protocol integers (see broker/codec.py).
_MAX_INT = 2**63 - 1
#: The residual is model-sized; allow the largest model the protocol carries.
LIMITS = DecodeLimits(
    max_payload_bytes=1024 * 1024 * 1024,
    max_str_len=4096,
    max_array_len=4096,
    max_map_len=16,
    max_tensors=4096,
)


class DeviceStateError(FedbusError):
    """The device state file exists but cannot be trusted; the message says why."""


def _protocol_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what} must be an int, got {type(value).__name__}")
    if not 0 <= int(value) <= _MAX_INT:
        raise ValueError(f"{what} must be in 0..2**63-1, got {value}")
    return int(value)


@dataclass(frozen=True, eq=False)
class DeviceState:
    """A node's memory across restarts; see the module docstring.

    The residual arrays are copied and made read-only on construction, so a
    state never changes after it was saved. `eq=False`: arrays do not compare
    with `==`; compare the fields.
    """

    next_seq: int = 1
    residual: Mapping[str, np.ndarray] = field(default_factory=dict)
    model_version: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "next_seq", _protocol_int(self.next_seq, "next_seq"))
        if self.model_version is not None:
            version = _protocol_int(self.model_version, "model_version")
            object.__setattr__(self, "model_version", version)
        frozen: dict[str, np.ndarray] = {}
        for name, array in self.residual.items():
            if not isinstance(name, str):
                raise ValueError(f"residual names must be strings, got {name!r}")
            if not isinstance(array, np.ndarray):
                kind = type(array).__name__
                raise ValueError(f"residual {name!r} must be a float32 array, got {kind}")
            if array.dtype != np.float32:
                raise ValueError(f"residual {name!r} must be a float32 array, got {array.dtype}")
            copy = np.array(array, dtype=np.float32, copy=True)
            copy.setflags(write=False)
            frozen[name] = copy
        object.__setattr__(self, "residual", frozen)


class _PendingSeqs(Protocol):
    def highest_seq(self) -> int | None: ...


def next_seq_after(state: DeviceState, outbox: _PendingSeqs) -> int:
    """The first seq safe to use: `state.next_seq`, raised above any seq in the outbox."""
    highest = outbox.highest_seq()
    return state.next_seq if highest is None else max(state.next_seq, highest + 1)


def take_seq(state: DeviceState, outbox: _PendingSeqs) -> tuple[int, DeviceState]:
    """The seq for the next update and the state to save before publishing it."""
    seq = next_seq_after(state, outbox)
    if seq >= _MAX_INT:
        raise DeviceStateError("sequence numbers exhausted")
    return seq, replace(state, next_seq=seq + 1)


# ---------------------------------------------------------------- file format


def encode_device_state(state: DeviceState) -> bytes:
    """The bytes of a device state file."""
    body = msgpack.packb(
        {
            "format": STATE_FORMAT,
            "next_seq": state.next_seq,
            "model_version": state.model_version,
            "residual": [tensor_to_map(encode_f32(n, a)) for n, a in state.residual.items()],
        },
        use_bin_type=True,
    )
    return STATE_MAGIC + _CRC.pack(zlib.crc32(body)) + body


def decode_device_state(data: bytes, where: str = "device state") -> DeviceState:
    """Check and decode the bytes of a device state file; DeviceStateError if bad."""
    if len(data) < HEADER_SIZE or not data.startswith(STATE_MAGIC):
        raise DeviceStateError(f"{where}: not a device state file (bad magic or too short)")
    (crc,) = _CRC.unpack_from(data, len(STATE_MAGIC))
    body = data[HEADER_SIZE:]
    if zlib.crc32(body) != crc:
        raise DeviceStateError(f"{where}: checksum mismatch, the file is damaged")
    try:
        raw = unpack_map(body, LIMITS)
        return _state_from_map(raw)
    except (CodecError, ValueError) as exc:
        raise DeviceStateError(f"{where}: {exc}") from None


def _state_from_map(raw: dict[str, Any]) -> DeviceState:
    if raw.get("format") != STATE_FORMAT:
        raise ValueError(f"unsupported format {raw.get('format')!r}, expected {STATE_FORMAT}")
    for key in ("next_seq", "model_version", "residual"):
        if key not in raw:
            raise ValueError(f"missing field {key!r}")
    tensors = raw["residual"]
    if not isinstance(tensors, list) or len(tensors) > LIMITS.max_tensors:
        raise ValueError("field 'residual' must be a list of tensors")
    residual: dict[str, np.ndarray] = {}
    for entry in tensors:
        tensor = tensor_from_map(entry, LIMITS)  # checks dtype, shape and byte length
        if tensor.name in residual:
            raise ValueError(f"residual {tensor.name!r} stored twice")
        residual[tensor.name] = tensor.to_array()
    version = raw["model_version"]
    return DeviceState(
        next_seq=_protocol_int(raw["next_seq"], "field 'next_seq'"),
        residual=residual,
        model_version=None if version is None else _protocol_int(version, "field 'model_version'"),
    )


def load_device_state(path: Path) -> DeviceState:
    """The state saved at `path`; a fresh one if there is no file.

    Raises DeviceStateError if the file exists but is damaged or unreadable
    (see the module docstring for why this does not fall back).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > HEADER_SIZE + LIMITS.max_payload_bytes:
            raise DeviceStateError(f"{path}: {size} bytes, too large for a device state")
        data = path.read_bytes()
    except FileNotFoundError:
        return DeviceState()
    except OSError as exc:
        raise DeviceStateError(f"{path}: cannot read: {exc}") from exc
    return decode_device_state(data, str(path))


def save_device_state(path: Path, state: DeviceState) -> None:
    """Write `state` to `path` atomically and durably (old or new file after a crash)."""
    path = Path(path)
    try:
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True)
            fsync_directory(path.parent.parent)
        write_atomically(path, encode_device_state(state))
    except OSError as exc:
        raise DeviceStateError(f"{path}: cannot write: {exc}") from exc
