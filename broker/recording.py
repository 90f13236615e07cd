"""The `.fbrec` recording format: MQTT traffic of a fleet, message by message.

A recording is a magic number, a format version, one header frame and any
number of record frames, all appended in that order:

    file   = magic(8) version(u16 BE) frame(header) frame(record)*
    frame  = length(u32 BE) crc32(u32 BE) body(length bytes)
    header = msgpack map {"fleet": str, "started_at": float, "filters": [str],
                          "meta": {str: str}, ...}
    record = msgpack map {"t": uint ns, "topic": str, "qos": 0..2,
                          "retain": bool, "payload": bin, ...}

`t` is the time since the recording started on a monotonic clock, so a
wall-clock jump during a recording does not reorder or stretch it. The CRC
is zlib's CRC-32 of the body. Bodies follow the payload rules of the wire
protocol: one msgpack map with str keys, no ext types, no trailing bytes,
and unknown keys are ignored (a later writer may add fields).

Frames are only ever appended, so a recorder that dies leaves a prefix of a
valid file: the reader yields every whole record and then reports the
partial one at the end as a truncation rather than an error. A whole frame
whose checksum or body is wrong is corruption and raises.

A recording is untrusted input like a network payload: every length is
checked against `RecordingLimits` before anything is allocated, and bodies
are unpacked with the codec's bounded `unpack_map`.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO

import msgpack

from fedbus.broker.codec import DEFAULT_LIMITS, DecodeLimits, unpack_map
from fedbus.broker.errors import CodecError

MAGIC = b"\x89FBREC\r\n"
FORMAT_VERSION = 1
#: Suggested file name extension.
SUFFIX = ".fbrec"

_PREFIX = struct.Struct(">8sH")
_FRAME = struct.Struct(">II")
#: Room in a record body for everything but the payload and the topic: the
#: keys, the integers and fields a later writer may add.
_RECORD_OVERHEAD = 1024
#: Reads of a claimed length happen in steps of this size, so a hostile
#: length costs no more memory than the file really holds.
_READ_CHUNK = 1 << 20


class RecordingError(CodecError):
    """A file is not a readable recording: wrong magic, bad header, corrupt record."""


class UnsupportedRecordingVersionError(RecordingError):
    """A recording written in a format version this build cannot read."""


@dataclass(frozen=True)
class RecordingLimits:
    """Bounds applied while reading an untrusted recording.

    `decode` bounds each record's payload (`max_payload_bytes`) and topic
    (`max_str_len`), with the same limits a receiver applies to the wire.
    """

    decode: DecodeLimits = DEFAULT_LIMITS
    max_header_bytes: int = 1 << 20

    @property
    def max_record_bytes(self) -> int:
        return self.decode.max_payload_bytes + self.decode.max_str_len + _RECORD_OVERHEAD


DEFAULT_RECORDING_LIMITS = RecordingLimits()


@dataclass(frozen=True)
class RecordingHeader:
    """What a recording is of: the fleet, when it started, how it was made."""

    fleet: str
    #: Wall-clock Unix time (seconds) at t = 0.
    started_at: float
    #: The subscription filters the recorder used.
    filters: tuple[str, ...] = ()
    #: Free-form KEY=VALUE notes, e.g. the aggregator's arguments.
    meta: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.fleet, str) or not self.fleet:
            raise RecordingError("header: fleet must be a non-empty str")
        if not math.isfinite(self.started_at):
            raise RecordingError("header: started_at must be a finite number")
        if not all(isinstance(f, str) for f in self.filters):
            raise RecordingError("header: filters must be strings")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.meta.items()):
            raise RecordingError("header: meta must map str to str")
        object.__setattr__(self, "filters", tuple(self.filters))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))


@dataclass(frozen=True)
class RecordedMessage:
    """One message as the recorder received it."""

    #: Nanoseconds since the recording started (monotonic clock).
    t_ns: int
    topic: str
    qos: int
    #: The retain flag as delivered to the recorder: true for a retained message
    #: sent because the recorder subscribed, false for a message forwarded live.
    retain: bool
    payload: bytes

    def __post_init__(self) -> None:
        if isinstance(self.t_ns, bool) or not isinstance(self.t_ns, int) or self.t_ns < 0:
            raise RecordingError(f"record: t must be a non-negative int, got {self.t_ns!r}")
        if self.t_ns >= 2**63:
            raise RecordingError(f"record: t out of range: {self.t_ns}")
        if not isinstance(self.topic, str) or not self.topic:
            raise RecordingError("record: topic must be a non-empty str")
        if self.qos not in (0, 1, 2) or isinstance(self.qos, bool):
            raise RecordingError(f"record: qos must be 0, 1 or 2, got {self.qos!r}")
        if not isinstance(self.retain, bool):
            raise RecordingError(f"record: retain must be a bool, got {self.retain!r}")
        if not isinstance(self.payload, bytes):
            raise RecordingError("record: payload must be bytes")

    @property
    def seconds(self) -> float:
        return self.t_ns / 1e9


# ---------------------------------------------------------------- encoding


def frame(body: bytes) -> bytes:
    """Length and CRC-32 of `body`, then `body`."""
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


def encode_header(header: RecordingHeader) -> bytes:
    """The start of a recording: magic, format version and the header frame."""
    body = msgpack.packb(
        {
            "fleet": header.fleet,
            "started_at": float(header.started_at),
            "filters": list(header.filters),
            "meta": dict(header.meta),
        },
        use_bin_type=True,
    )
    return _PREFIX.pack(MAGIC, FORMAT_VERSION) + frame(body)


def encode_record(message: RecordedMessage) -> bytes:
    """One record frame."""
    body = msgpack.packb(
        {
            "t": message.t_ns,
            "topic": message.topic,
            "qos": message.qos,
            "retain": message.retain,
            "payload": message.payload,
        },
        use_bin_type=True,
    )
    return frame(body)


class RecordingWriter:
    """Appends records to a binary stream; the header is written at once.

    Each record goes out in one `write` followed by a flush, so a process
    that dies loses at most the record being written, and a reader sees a
    clean truncation. `fsync` is left to the caller (`close(sync=True)`).
    """

    def __init__(self, stream: BinaryIO, header: RecordingHeader) -> None:
        self.stream = stream
        self.header = header
        self.records = 0
        self.payload_bytes = 0
        self.bytes_written = self._put(encode_header(header))

    def write(self, message: RecordedMessage) -> None:
        self.bytes_written += self._put(encode_record(message))
        self.records += 1
        self.payload_bytes += len(message.payload)

    def _put(self, data: bytes) -> int:
        self.stream.write(data)
        self.stream.flush()
        return len(data)


# ---------------------------------------------------------------- decoding


def _field(body: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in body:
        raise RecordingError(f"{where}: missing field {key!r}")
    value = body[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise RecordingError(f"{where}: field {key!r} has type {type(value).__name__}")
    return value


def decode_header(
    body: bytes, limits: RecordingLimits = DEFAULT_RECORDING_LIMITS
) -> RecordingHeader:
    """The header from the body of the first frame."""
    try:
        raw = unpack_map(body, dataclasses.replace(limits.decode, max_payload_bytes=len(body)))
    except CodecError as exc:
        raise RecordingError(f"header: {exc}") from None
    filters = _field(raw, "filters", list, "header") if "filters" in raw else []
    meta = _field(raw, "meta", dict, "header") if "meta" in raw else {}
    return RecordingHeader(
        fleet=_field(raw, "fleet", str, "header"),
        started_at=float(_field(raw, "started_at", (float, int), "header")),
        filters=tuple(filters),
        meta=meta,
    )


def decode_record(
    body: bytes, limits: RecordingLimits = DEFAULT_RECORDING_LIMITS
) -> RecordedMessage:
    """One record from the body of a record frame."""
    try:
        raw = unpack_map(body, dataclasses.replace(limits.decode, max_payload_bytes=len(body)))
    except CodecError as exc:
        raise RecordingError(f"record: {exc}") from None
    payload = _field(raw, "payload", bytes, "record")
    if len(payload) > limits.decode.max_payload_bytes:
        raise RecordingError(
            f"record: payload of {len(payload)} bytes exceeds {limits.decode.max_payload_bytes}"
        )
    return RecordedMessage(
        t_ns=_field(raw, "t", int, "record"),
        topic=_field(raw, "topic", str, "record"),
        qos=_field(raw, "qos", int, "record"),
        retain=_field(raw, "retain", bool, "record"),
        payload=payload,
    )


class _TruncatedError(Exception):
    """Internal: the stream ended inside a frame."""


class RecordingReader:
    """Reads a recording from a binary stream: `header` at once, records by iteration.

    Iteration stops at the end of the stream. A partial frame at the end (a
    recorder that died mid-write) ends it too, with `truncated` set and
    `trailing_bytes` counting what was skipped; a whole frame that fails its
    checksum or does not decode raises `RecordingError` naming its offset.
    """

    def __init__(
        self, stream: BinaryIO, limits: RecordingLimits = DEFAULT_RECORDING_LIMITS
    ) -> None:
        self.stream = stream
        self.limits = limits
        self.offset = 0
        self.records = 0
        self.truncated = False
        self.trailing_bytes = 0
        self.header = self._read_start()

    def _read_start(self) -> RecordingHeader:
        prefix = self._read_exactly(_PREFIX.size)
        if prefix[: len(MAGIC)] != MAGIC[: len(prefix)]:
            raise RecordingError("not a fedbus recording (bad magic bytes)")
        if len(prefix) < _PREFIX.size:
            raise RecordingError("truncated recording: the file ends inside its header")
        _, version = _PREFIX.unpack(prefix)
        if version != FORMAT_VERSION:
            raise UnsupportedRecordingVersionError(
                f"recording format version {version} not supported (this build reads "
                f"{FORMAT_VERSION})"
            )
        try:
            body = self._read_frame(self.limits.max_header_bytes, "header")
        except _TruncatedError:
            raise RecordingError("truncated recording: the file ends inside its header") from None
        if body is None:
            raise RecordingError("truncated recording: no header")
        return decode_header(body, self.limits)

    def __iter__(self) -> Iterator[RecordedMessage]:
        while True:
            start = self.offset
            try:
                body = self._read_frame(self.limits.max_record_bytes, "record")
            except _TruncatedError:
                self.truncated = True
                self.trailing_bytes = self.offset - start
                return
            if body is None:
                return
            try:
                message = decode_record(body, self.limits)
            except RecordingError as exc:
                raise RecordingError(f"record {self.records} at byte {start}: {exc}") from None
            self.records += 1
            yield message

    def _read_frame(self, limit: int, what: str) -> bytes | None:
        """The next frame's checked body; None at a clean end of the stream."""
        start = self.offset
        head = self._read_exactly(_FRAME.size)
        if not head:
            return None
        if len(head) < _FRAME.size:
            raise _TruncatedError
        length, crc = _FRAME.unpack(head)
        if length == 0 or length > limit:
            raise RecordingError(
                f"{what} at byte {start}: frame length {length} outside 1..{limit}"
            )
        body = self._read_exactly(length)
        if len(body) < length:
            raise _TruncatedError
        if zlib.crc32(body) != crc:
            raise RecordingError(f"{what} {self.records} at byte {start}: checksum mismatch")
        return body

    def _read_exactly(self, size: int) -> bytes:
        """Up to `size` bytes (fewer only at the end), never more memory than read."""
        chunks = bytearray()
        while len(chunks) < size:
            chunk = self.stream.read(min(_READ_CHUNK, size - len(chunks)))
            if not chunk:
                break
            chunks += chunk
        self.offset += len(chunks)
        return bytes(chunks)


def read_recording(
    path: Path, limits: RecordingLimits = DEFAULT_RECORDING_LIMITS
) -> tuple[RecordingHeader, list[RecordedMessage]]:
    """Header and every whole record of the file at `path` (a small recording)."""
    with Path(path).open("rb") as stream:
        reader = RecordingReader(stream, limits)
        return reader.header, list(reader)
