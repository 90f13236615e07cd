"""Numbered chunks for messages larger than a broker's payload limit.

Cloud brokers cap one PUBLISH payload (AWS IoT Core at 128 KiB), and
Mosquitto 2.0 silently drops an oversize QoS 1 publish from an MQTT 3.1.1
client. A message of topic T longer than the sender's `limit` therefore
travels as chunk payloads on T/chunk/0 .. T/chunk/<n-1>, each one msgpack map
no longer than `limit`, and the receiver's `Reassembler` puts it back
together under bounds on memory and time (docs/PROTOCOL.md, "Chunking").

This module is pure: no MQTT and no clock. Receive time is passed in as
`now`, in seconds of a monotonic clock.

The transfer id is derived from the message bytes, so a byte-identical
resend of the same message merges with whatever part of an earlier attempt
is still pending: an interrupted transfer resumes with the chunks it missed.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import msgpack

from fedbus.broker.codec import (
    DEFAULT_LIMITS,
    DecodeLimits,
    non_negative_field,
    required_field,
    unpack_map,
)
from fedbus.broker.errors import CodecError, PayloadTooLargeError, UnsupportedVersionError
from fedbus.broker.messages import PROTOCOL_VERSION
from fedbus.broker.topics import parse_chunk_topic

DEFAULT_CHUNK_LIMIT = 128 * 1024  # AWS IoT Core's payload limit
DEFAULT_MAX_MESSAGE_BYTES = DEFAULT_LIMITS.max_payload_bytes  # the codec's own bound, 64 MiB
DEFAULT_MAX_CHUNKS = 16384
DEFAULT_MAX_PENDING_BYTES = 128 * 1024 * 1024  # a largest message with bookkeeping, and more
DEFAULT_MAX_TRANSFERS_PER_TOPIC = 4
DEFAULT_TIMEOUT = 120.0
DEFAULT_COMPLETED_TTL = 10.0
DEFAULT_MAX_COMPLETED = 1024

#: Length of the transfer id `xfer`.
XFER_BYTES = 8
#: Largest chunk header (everything but the data bytes) any conforming sender
#: writes: every integer in its widest format, `data` as bin32. A sender may
#: always use `limit - MAX_CHUNK_HEADER_BYTES` data bytes per chunk.
MAX_CHUNK_HEADER_BYTES = 66
#: Memory charged for each stored chunk and each pending transfer on top of the
#: data bytes, so that many tiny chunks cannot hide real memory from the bound.
CHUNK_BOOKKEEPING_BYTES = 128
TRANSFER_BOOKKEEPING_BYTES = 1024

_UINT32_MAX = 2**32 - 1
#: Room for the header and for keys a newer sender may add, beyond the data.
_PAYLOAD_SLACK = 4096


# ---------------------------------------------------------------- splitting


def transfer_id(message: bytes) -> bytes:
    """The first 8 bytes of the 64-byte BLAKE2b digest of the whole message."""
    return hashlib.blake2b(message).digest()[:XFER_BYTES]


def needs_chunking(message: bytes, limit: int = DEFAULT_CHUNK_LIMIT) -> bool:
    """True when `message` is longer than `limit` bytes and must go as chunks."""
    _check_limit(limit)
    return len(message) > limit


def split_message(
    message: bytes, limit: int = DEFAULT_CHUNK_LIMIT, *, max_chunks: int = DEFAULT_MAX_CHUNKS
) -> list[bytes]:
    """Encode `message` as chunk payloads of at most `limit` bytes each, index order.

    Always chunks (a message that fits becomes one chunk); `needs_chunking`
    decides whether to call this at all. Deterministic: the same message and
    limit give the same bytes, which is what lets a resend resume. Raises
    ValueError when `limit` cannot carry a header and one data byte, or when
    more than `max_chunks` chunks would be needed.
    """
    if not isinstance(message, (bytes, bytearray)):
        raise TypeError(f"message must be bytes, got {type(message).__name__}")
    _check_limit(limit)
    message = bytes(message)
    size = len(message)
    crc = zlib.crc32(message)
    length, count = _layout(size, crc, limit)
    if count > max_chunks:
        raise ValueError(
            f"{size} bytes at limit {limit} need {count} chunks, more than max_chunks={max_chunks}"
        )
    xfer = transfer_id(message)
    return [
        _pack(xfer, i, count, size, crc, message[i * length : (i + 1) * length])
        for i in range(count)
    ]


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive int, got {limit!r}")


def _pack(xfer: bytes, index: int, count: int, size: int, crc: int, data: bytes) -> bytes:
    body = {"v": PROTOCOL_VERSION, "xfer": xfer, "i": index, "n": count}
    body.update({"size": size, "crc": crc, "data": data})
    return msgpack.packb(body, use_bin_type=True)


def _bin_header_bytes(length: int) -> int:
    return 2 if length < 2**8 else 3 if length < 2**16 else 5


def _chunk_bytes(index: int, count: int, size: int, crc: int, data_len: int) -> int:
    """Exact payload length of a chunk, without building its data."""
    empty = len(_pack(bytes(XFER_BYTES), index, count, size, crc, b""))
    return empty - _bin_header_bytes(0) + _bin_header_bytes(data_len) + data_len


def _count(size: int, length: int) -> int:
    return max(1, -(-size // length))


def _layout(size: int, crc: int, limit: int) -> tuple[int, int]:
    """(chunk length L, chunk count n) with every payload <= limit and L as large as fits.

    A full-length chunk with the highest index is the largest payload; header
    widths depend on n and L, so step L down by the excess until it fits,
    then up while the next length still fits (bin and int widths jump).
    """

    def largest(length: int) -> int:
        count = _count(size, length)
        return _chunk_bytes(count - 1, count, size, crc, length)

    length = limit
    while (excess := largest(length) - limit) > 0:
        length -= excess
        if length < 1:
            raise ValueError(f"limit {limit} is too small to carry a chunk header and data")
    while largest(length + 1) <= limit:
        length += 1
    return length, _count(size, length)


# ---------------------------------------------------------------- decoding


@dataclass(frozen=True)
class Chunk:
    """One decoded, self-consistent chunk payload."""

    xfer: bytes
    index: int
    count: int
    size: int
    crc: int
    data: bytes
    #: L: the data length of every chunk of this transfer but the last.
    chunk_length: int


def decode_chunk(
    payload: bytes,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_chunks: int = DEFAULT_MAX_CHUNKS,
) -> Chunk:
    """Decode one untrusted chunk payload; raise CodecError (or a subclass) if it is bad."""
    return _decode(payload, _unpack_limits(max_message_bytes), max_message_bytes, max_chunks)


def _unpack_limits(max_message_bytes: int) -> DecodeLimits:
    return DecodeLimits(
        max_payload_bytes=max_message_bytes + _PAYLOAD_SLACK,
        max_str_len=256,
        max_array_len=16,
        max_map_len=16,
    )


def _decode(payload: bytes, limits: DecodeLimits, max_message_bytes: int, max_chunks: int) -> Chunk:
    body = unpack_map(payload, limits)
    version = body.get("v")
    if isinstance(version, bool) or not isinstance(version, int):
        raise CodecError("chunk: missing or non-integer protocol version 'v'")
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersionError(
            f"chunk: protocol version {version} not supported (this build speaks "
            f"{PROTOCOL_VERSION})"
        )
    xfer = required_field(body, "xfer", bytes, "chunk")
    if len(xfer) != XFER_BYTES:
        raise CodecError(f"chunk: 'xfer' must be {XFER_BYTES} bytes, got {len(xfer)}")
    index = non_negative_field(body, "i", "chunk")
    count = non_negative_field(body, "n", "chunk")
    size = non_negative_field(body, "size", "chunk")
    crc = non_negative_field(body, "crc", "chunk")
    data = required_field(body, "data", bytes, "chunk")
    if not 1 <= count <= max_chunks:
        raise CodecError(f"chunk: 'n' must be in 1..{max_chunks}, got {count}")
    if index >= count:
        raise CodecError(f"chunk: index {index} is not below the chunk count {count}")
    if size > max_message_bytes:
        raise PayloadTooLargeError(f"chunk: message of {size} bytes exceeds {max_message_bytes}")
    if crc > _UINT32_MAX:
        raise CodecError(f"chunk: 'crc' must be a uint32, got {crc}")
    length = _implied_length(index, count, size, len(data))
    return Chunk(xfer, index, count, size, crc, data, length)


def _implied_length(index: int, count: int, size: int, data_len: int) -> int:
    """The transfer's chunk length L implied by one chunk, or CodecError.

    Chunk i < n-1 carries exactly L bytes and the last carries
    size - (n-1)L, between 1 and L; a single chunk carries the whole message.
    """
    if count == 1:
        if data_len != size:
            raise CodecError(f"chunk: a lone chunk must carry all {size} bytes, has {data_len}")
        return size
    if index < count - 1:
        length = data_len
    elif data_len == 0 or (size - data_len) % (count - 1):
        raise CodecError(f"chunk: last chunk of {data_len} bytes does not fit {count} x {size}")
    else:
        length = (size - data_len) // (count - 1)
    if not 0 < (count - 1) * length < size <= count * length:
        raise CodecError(
            f"chunk: {data_len} data bytes in chunk {index} of {count} do not add up to {size}"
        )
    return length


# ---------------------------------------------------------------- reassembly


@dataclass
class ReassemblyCounters:
    """What a Reassembler did, for metrics. Transfers, except `duplicates` and `bad`."""

    completed: int = 0
    duplicates: int = 0  # chunks already held, or of a recently completed transfer
    evicted: int = 0  # pending transfers dropped to respect a memory or per-topic bound
    expired: int = 0  # pending transfers dropped after `timeout` without a new chunk
    bad: int = 0  # chunks rejected with CodecError (including a failed crc check)


@dataclass(frozen=True)
class _Layout:
    count: int
    size: int
    crc: int
    chunk_length: int


@dataclass
class _Transfer:
    layout: _Layout
    last_seen: float
    cost: int = TRANSFER_BOOKKEEPING_BYTES
    chunks: dict[int, bytes] = field(default_factory=dict)


_Key = tuple[str, bytes]  # (message topic, xfer)


class Reassembler:
    """Collects chunks per (message topic, transfer id) until a message is complete.

    Bounded: the data held plus a fixed bookkeeping charge per chunk and per
    transfer never exceeds `max_pending_bytes` (the least recently active
    transfers are evicted first), a topic holds at most
    `max_transfers_per_topic` transfers, and a transfer without a new chunk
    for longer than `timeout` seconds expires. A completed transfer is
    remembered for `completed_ttl` seconds (at most `max_completed` of them)
    so late duplicate chunks are dropped; after that a byte-identical resend
    is delivered again, which the protocol's seq and version rules absorb.
    Not thread-safe: feed it from one thread.
    """

    def __init__(
        self,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        max_transfers_per_topic: int = DEFAULT_MAX_TRANSFERS_PER_TOPIC,
        timeout: float = DEFAULT_TIMEOUT,
        max_chunks: int = DEFAULT_MAX_CHUNKS,
        completed_ttl: float = DEFAULT_COMPLETED_TTL,
        max_completed: int = DEFAULT_MAX_COMPLETED,
    ) -> None:
        for name, value in (
            ("max_message_bytes", max_message_bytes),
            ("max_transfers_per_topic", max_transfers_per_topic),
            ("max_chunks", max_chunks),
            ("max_completed", max_completed),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not timeout > 0 or not completed_ttl >= 0:
            raise ValueError("timeout must be > 0 and completed_ttl >= 0")
        largest = (
            max_message_bytes + max_chunks * CHUNK_BOOKKEEPING_BYTES + TRANSFER_BOOKKEEPING_BYTES
        )
        if max_pending_bytes < largest:
            raise ValueError(
                f"max_pending_bytes={max_pending_bytes} cannot hold one message of "
                f"max_message_bytes={max_message_bytes} in max_chunks={max_chunks} chunks "
                f"({largest} bytes with bookkeeping)"
            )
        self._max_message_bytes = max_message_bytes
        self._max_pending_bytes = max_pending_bytes
        self._max_transfers_per_topic = max_transfers_per_topic
        self._timeout = timeout
        self._max_chunks = max_chunks
        self._completed_ttl = completed_ttl
        self._max_completed = max_completed
        self._limits = _unpack_limits(max_message_bytes)
        # Both in least recently active order: the first entry goes first.
        self._transfers: OrderedDict[_Key, _Transfer] = OrderedDict()
        self._by_topic: dict[str, OrderedDict[bytes, None]] = {}
        self._completed: OrderedDict[_Key, tuple[_Layout, float]] = OrderedDict()
        self._pending_bytes = 0
        self._counters = ReassemblyCounters()

    @property
    def counters(self) -> ReassemblyCounters:
        """A copy of the counters."""
        return replace(self._counters)

    @property
    def pending_bytes(self) -> int:
        """Data held plus bookkeeping charges; never above max_pending_bytes."""
        return self._pending_bytes

    @property
    def pending_transfers(self) -> int:
        return len(self._transfers)

    @property
    def pending_chunks(self) -> int:
        """Chunks held for transfers not yet complete."""
        return sum(len(transfer.chunks) for transfer in self._transfers.values())

    def add(self, topic: str, payload: bytes, now: float) -> bytes | None:
        """Take one chunk received on chunk topic `topic` (T/chunk/<i>).

        Returns the whole message (size and crc32 verified) when this chunk
        was the last one missing, else None. A zero-length payload (a deleted
        retained chunk) is ignored. Raises CodecError for a bad chunk, one
        that disagrees with its transfer, or a completed message whose crc32
        is wrong (that transfer is dropped); ValueError if `topic` is not a
        chunk topic. Expires idle transfers first.
        """
        parsed = parse_chunk_topic(topic)
        if parsed is None:
            raise ValueError(f"{topic!r} is not a chunk topic")
        self.expire(now)
        if not payload:
            return None
        try:
            return self._add(parsed[0], parsed[1], payload, now)
        except CodecError:
            self._counters.bad += 1
            raise

    def expire(self, now: float) -> int:
        """Drop transfers idle for longer than `timeout`; return how many were dropped."""
        expired = 0
        while self._transfers:
            key, transfer = next(iter(self._transfers.items()))
            if now - transfer.last_seen <= self._timeout:
                break
            self._drop(key)
            expired += 1
        self._counters.expired += expired
        while self._completed:
            key, (_, completed_at) = next(iter(self._completed.items()))
            if now - completed_at <= self._completed_ttl:
                break
            del self._completed[key]
        return expired

    # ------------------------------------------------------------ internals

    def _add(self, topic: str, index: int, payload: bytes, now: float) -> bytes | None:
        chunk = _decode(payload, self._limits, self._max_message_bytes, self._max_chunks)
        if chunk.index != index:
            raise CodecError(f"chunk: index {chunk.index} in the payload, {index} in the topic")
        key = (topic, chunk.xfer)
        layout = _Layout(chunk.count, chunk.size, chunk.crc, chunk.chunk_length)
        remembered = self._completed.get(key)
        if remembered is not None:
            _check_same(remembered[0], layout)
            self._counters.duplicates += 1
            return None
        if chunk.count == 1:
            return self._finish(key, layout, chunk.data, now)

        transfer = self._transfers.get(key)
        if transfer is not None:
            _check_same(transfer.layout, layout)
            held = transfer.chunks.get(index)
            if held is not None:
                if held != chunk.data:
                    raise CodecError(f"chunk: chunk {index} repeated with different data")
                self._counters.duplicates += 1
                self._touch(key, transfer, now)
                return None
        cost = len(chunk.data) + CHUNK_BOOKKEEPING_BYTES
        if transfer is None:
            transfer = self._start(key, layout, cost, now)
        else:
            self._touch(key, transfer, now)
            self._make_room(cost, keep=key)
        transfer.chunks[index] = chunk.data
        transfer.cost += cost
        self._pending_bytes += cost
        if len(transfer.chunks) < layout.count:
            return None
        self._drop(key)
        message = b"".join(transfer.chunks[i] for i in range(layout.count))
        return self._finish(key, layout, message, now)

    def _start(self, key: _Key, layout: _Layout, cost: int, now: float) -> _Transfer:
        topic, xfer = key
        in_topic = self._by_topic.get(topic)
        while in_topic and len(in_topic) >= self._max_transfers_per_topic:
            self._drop((topic, next(iter(in_topic))))
            self._counters.evicted += 1
        self._make_room(TRANSFER_BOOKKEEPING_BYTES + cost, keep=None)
        transfer = _Transfer(layout, now)
        self._transfers[key] = transfer
        self._by_topic.setdefault(topic, OrderedDict())[xfer] = None
        self._pending_bytes += transfer.cost
        return transfer

    def _make_room(self, cost: int, keep: _Key | None) -> None:
        while self._pending_bytes + cost > self._max_pending_bytes:
            victim = next(key for key in self._transfers if key != keep)
            self._drop(victim)
            self._counters.evicted += 1

    def _touch(self, key: _Key, transfer: _Transfer, now: float) -> None:
        transfer.last_seen = now
        self._transfers.move_to_end(key)
        self._by_topic[key[0]].move_to_end(key[1])

    def _drop(self, key: _Key) -> None:
        transfer = self._transfers.pop(key)
        self._pending_bytes -= transfer.cost
        in_topic = self._by_topic[key[0]]
        del in_topic[key[1]]
        if not in_topic:
            del self._by_topic[key[0]]

    def _finish(self, key: _Key, layout: _Layout, message: bytes, now: float) -> bytes:
        if len(message) != layout.size or zlib.crc32(message) != layout.crc:
            raise CodecError(f"chunk: reassembled message fails its crc32 check ({key[0]!r})")
        self._completed[key] = (layout, now)
        self._completed.move_to_end(key)
        while len(self._completed) > self._max_completed:
            self._completed.popitem(last=False)
        self._counters.completed += 1
        return message


def _check_same(expected: _Layout, got: _Layout) -> None:
    if got != expected:
        raise CodecError(
            "chunk: disagrees with its transfer (n, size, crc, chunk length): "
            f"({got.count}, {got.size}, {got.crc}, {got.chunk_length}) != "
            f"({expected.count}, {expected.size}, {expected.crc}, {expected.chunk_length})"
        )
