"""The aggregator's write-ahead log of everything that changed its state.

An update is acknowledged only after its entry is here and fsynced, so an
acknowledged update survives any crash: on start the daemon loads the last
checkpoint and feeds the entries written after it back through the same
deterministic core. Three kinds of entry exist:

- `accepted`: the topic's node id and the raw update payload, exactly as
  received. Replaying the payload (rather than a decoded delta) keeps one
  code path for live and recovered updates and keeps entries small.
- `flush`: a time-triggered step of a partial buffer. Time is not part of
  the message stream, so the decision itself must be logged for a replay to
  take the same steps.
- `stats`: a node's feature statistics that went into the normalization
  pool (node id and raw payload, like `accepted`), so a replay pools the
  same normalization into the task.

On disk a segment is `journal-<checkpoint id>.log`: a magic header, then
records of `u32 length | u32 crc32 | msgpack body`, little-endian. A crash
mid-append leaves a torn last record; readers stop at the first record
that is short or fails its checksum, and the writer cuts it off before
appending again.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import msgpack

from fedbus.broker.durable_files import fsync_directory
from fedbus.broker.errors import FedbusError

SEGMENT_MAGIC = b"FBJOURN1"
_RECORD_HEADER = struct.Struct("<II")
#: Entries larger than this are refused on write and treated as corrupt on read.
MAX_ENTRY_BYTES = 256 * 1024 * 1024

KIND_ACCEPTED = "accepted"
KIND_FLUSH = "flush"
KIND_STATS = "stats"
_WITH_PAYLOAD = (KIND_ACCEPTED, KIND_STATS)


class JournalError(FedbusError):
    """The journal cannot be read or written as the daemon needs."""


@dataclass(frozen=True)
class JournalEntry:
    kind: str
    node: str = ""
    payload: bytes = b""

    @classmethod
    def accepted(cls, node: str, payload: bytes) -> JournalEntry:
        return cls(KIND_ACCEPTED, node, payload)

    @classmethod
    def flush(cls) -> JournalEntry:
        return cls(KIND_FLUSH)

    @classmethod
    def stats(cls, node: str, payload: bytes) -> JournalEntry:
        return cls(KIND_STATS, node, payload)


def segment_name(checkpoint_id: int) -> str:
    return f"journal-{checkpoint_id:08d}.log"


def segment_id(path: Path) -> int | None:
    """The checkpoint id a segment file belongs to, or None if it is not one."""
    stem = path.name
    if not (stem.startswith("journal-") and stem.endswith(".log")):
        return None
    digits = stem[len("journal-") : -len(".log")]
    return int(digits) if digits.isdigit() else None


def _bin_header(length: int) -> bytes:
    """The msgpack bin 8/16/32 header for `length` bytes.

    msgpack-python's Packer writes no bare bin header, and packing the payload
    itself would copy it; tests/test_journal_format.py holds the result to
    msgpack's own encoding of the whole map.
    """
    if length < 1 << 8:
        return struct.pack(">BB", 0xC4, length)
    if length < 1 << 16:
        return struct.pack(">BH", 0xC5, length)
    return struct.pack(">BI", 0xC6, length)


def _encode_entry(entry: JournalEntry) -> tuple[bytes, bytes]:
    """(record header and entry head, payload): the record is their concatenation.

    The bytes are those of the msgpack map {"k": kind, "node": node, "p":
    payload} behind the length and CRC header, but the payload is never
    copied: the CRC runs over the head and then the payload in place, and
    the writer writes the two parts one after the other.
    """
    packer = msgpack.Packer(use_bin_type=True)
    if entry.kind not in _WITH_PAYLOAD:
        head, payload = packer.pack({"k": entry.kind}), b""
    else:
        payload = entry.payload
        head = b"".join(
            (
                packer.pack_map_header(3),
                packer.pack("k"),
                packer.pack(entry.kind),
                packer.pack("node"),
                packer.pack(entry.node),
                packer.pack("p"),
                _bin_header(len(payload)),
            )
        )
    length = len(head) + len(payload)
    if length > MAX_ENTRY_BYTES:
        raise JournalError(f"journal entry of {length} bytes exceeds {MAX_ENTRY_BYTES}")
    crc = zlib.crc32(payload, zlib.crc32(head))
    return _RECORD_HEADER.pack(length, crc) + head, payload


def _decode_entry(body: bytes) -> JournalEntry:
    try:
        raw = msgpack.unpackb(body, raw=False, strict_map_key=True, max_bin_len=MAX_ENTRY_BYTES)
        kind = raw["k"]
        if kind in _WITH_PAYLOAD:
            node, payload = raw["node"], raw["p"]
            if isinstance(node, str) and isinstance(payload, bytes):
                return JournalEntry(kind, node, payload)
        elif kind == KIND_FLUSH:
            return JournalEntry.flush()
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise JournalError(f"unreadable journal entry: {exc}") from exc
    raise JournalError(f"unknown journal entry {str(raw)[:80]}")


def _scan(handle: BinaryIO) -> Iterator[tuple[int, JournalEntry]]:
    """(end offset, entry) for each whole record; stops at a torn or corrupt tail."""
    magic = handle.read(len(SEGMENT_MAGIC))
    if magic != SEGMENT_MAGIC:
        if SEGMENT_MAGIC.startswith(magic):
            return  # created, then a crash before its header reached the disk: empty
        raise JournalError(f"{getattr(handle, 'name', 'journal')}: not a journal segment")
    while True:
        header = handle.read(_RECORD_HEADER.size)
        if len(header) < _RECORD_HEADER.size:
            return
        length, crc = _RECORD_HEADER.unpack(header)
        if length > MAX_ENTRY_BYTES:
            return
        body = handle.read(length)
        if len(body) < length or zlib.crc32(body) != crc:
            return
        yield handle.tell(), _decode_entry(body)


def read_segment(path: Path) -> list[JournalEntry]:
    """Every whole entry of a segment, in order (a torn tail is left out)."""
    with open(path, "rb") as handle:
        return [entry for _, entry in _scan(handle)]


def segments(directory: Path) -> list[tuple[int, Path]]:
    """The journal segments in `directory`, by checkpoint id."""
    found = [(segment_id(p), p) for p in directory.iterdir()]
    return sorted((i, p) for i, p in found if i is not None)


class JournalWriter:
    """Appends to one segment; `sync` makes everything appended so far durable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries = 0
        self.unsynced = 0
        self._new_file = not path.exists() or path.stat().st_size < len(SEGMENT_MAGIC)
        if not self._new_file:
            with open(path, "rb") as handle:
                valid_end = len(SEGMENT_MAGIC)
                for end, _ in _scan(handle):
                    valid_end = end
                    self.entries += 1
            # The writer keeps its segment open for its whole life: no `with`.
            self._handle = open(path, "r+b")  # noqa: SIM115
            self._handle.truncate(valid_end)  # cut a torn tail before appending
            self._handle.seek(valid_end)
        else:
            self._handle = open(path, "w+b")  # noqa: SIM115
            self._handle.write(SEGMENT_MAGIC)
            self.unsynced = 1  # the header itself must reach the disk too

    def append(self, entry: JournalEntry) -> None:
        """Buffer one entry; it is durable only after the next `sync`."""
        head, payload = _encode_entry(entry)
        self._handle.write(head)
        if payload:
            self._handle.write(payload)
        self.entries += 1
        self.unsynced += 1

    def sync(self) -> None:
        if not self.unsynced:
            return
        self._handle.flush()
        os.fsync(self._handle.fileno())
        if self._new_file:  # the segment's directory entry must be durable too
            fsync_directory(self.path.parent)
            self._new_file = False
        self.unsynced = 0

    def close(self) -> None:
        self.sync()
        self._handle.close()
