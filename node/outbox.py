"""The device's durable outbox: an update is on disk before it is sent, until it is acked.

The node puts an encoded update here *before* publishing it and removes it
only when the aggregator's ack for its seq arrives. After a crash or a power
cut the node reopens the outbox and resends whatever is still pending, so an
update is never lost between "trained" and "acknowledged".

On disk the outbox is one directory with one file per update, named by its
zero-padded seq (`update-000000000042.msg`) so that `ls` shows the send
order. Each file is written with `write_atomically` and holds a fixed header,
then the payload::

    magic b"FBOUTBX1" | seq u64 | length u32 | crc32 u32 | payload (length bytes)

little-endian; the crc32 covers seq, length and payload. Atomic writes mean a
crash leaves a whole file or none (plus a temp file, deleted on open); the
header catches what atomicity cannot: a bad sector, a file copied half-way,
a file renamed to another seq. Such an entry is renamed `*.msg.corrupt`,
counted and logged, and the node carries on: a corrupt entry must never keep
a device from starting.

When full (`max_entries`), `put` drops the *oldest* entry and counts it. The
oldest update was trained on the oldest model, so it is the one the
aggregator is most likely to refuse as too stale anyway, while the newest
carries what the device learned most recently. Refusing the new update
instead would make a device that is offline for a long time stop
contributing the moment it reconnects, and raising would push a storage
decision into the training loop. The aggregator accepts gaps in a node's
seqs (it only refuses a seq *below* one it has decided), so dropping is safe.

One thread uses one outbox; two processes must not share a directory.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from pathlib import Path

from fedbus.broker.durable_files import (
    fsync_directory,
    remove_durably,
    remove_leftover_temps,
    write_atomically,
)
from fedbus.broker.errors import FedbusError

log = logging.getLogger(__name__)

ENTRY_MAGIC = b"FBOUTBX1"
#: seq, payload length, crc32 of (seq, length, payload); after the magic.
_HEADER = struct.Struct("<QII")
HEADER_SIZE = len(ENTRY_MAGIC) + _HEADER.size
CORRUPT_SUFFIX = ".corrupt"
_NAME = re.compile(r"update-(\d{1,20})\.msg")
#: Seqs are protocol integers: non-negative and below 2**63 (see broker/codec.py).
MAX_SEQ = 2**63 - 1

DEFAULT_MAX_ENTRIES = 256
#: The broker refuses publishes above 16 MiB; leave room for larger deployments.
DEFAULT_MAX_ENTRY_BYTES = 64 * 1024 * 1024


class OutboxError(FedbusError):
    """The outbox cannot store an update (too large, disk full, unwritable directory)."""


def entry_name(seq: int) -> str:
    """The file name of the entry for `seq`."""
    return f"update-{seq:012d}.msg"


def encode_entry(seq: int, payload: bytes) -> bytes:
    """Header and payload of one entry file."""
    fields = struct.pack("<QI", seq, len(payload))
    crc = zlib.crc32(payload, zlib.crc32(fields))
    return ENTRY_MAGIC + _HEADER.pack(seq, len(payload), crc) + payload


def decode_entry(data: bytes, seq: int) -> bytes:
    """The payload of an entry file that must hold `seq`; ValueError names what is wrong."""
    if len(data) < HEADER_SIZE:
        raise ValueError(f"{len(data)} bytes, shorter than the {HEADER_SIZE}-byte header")
    if not data.startswith(ENTRY_MAGIC):
        raise ValueError("bad magic")
    stored_seq, length, crc = _HEADER.unpack_from(data, len(ENTRY_MAGIC))
    if stored_seq != seq:
        raise ValueError(f"header holds seq {stored_seq}, the file name {seq}")
    payload = data[HEADER_SIZE:]
    if len(payload) != length:
        raise ValueError(f"header announces {length} payload bytes, file holds {len(payload)}")
    fields = struct.pack("<QI", stored_seq, length)
    if zlib.crc32(payload, zlib.crc32(fields)) != crc:
        raise ValueError("checksum mismatch")
    return payload


class Outbox:
    """Updates that were (or are about to be) published and are not acked yet.

    Opening an outbox deletes temp files an interrupted write left behind
    and sets aside corrupt entries (`corrupt_entries` counts them). Every
    method that changes it is durable when it returns.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        if not 0 < max_entry_bytes < 2**32:
            raise ValueError(f"max_entry_bytes must be in 1..2**32-1, got {max_entry_bytes}")
        self.directory = Path(directory)
        self.max_entries = max_entries
        self.max_entry_bytes = max_entry_bytes
        #: Entries found damaged (on open or on a later read) and renamed *.corrupt.
        self.corrupt_entries = 0
        #: Entries dropped, oldest first, because the outbox was full.
        self.dropped_entries = 0
        #: Temp files of interrupted writes deleted on open.
        self.removed_temps = 0
        self._seqs: list[int] = []  # ascending
        try:
            if not self.directory.is_dir():
                self.directory.mkdir(parents=True)
                fsync_directory(self.directory.parent)  # keep the new directory itself
            self.removed_temps = remove_leftover_temps(self.directory)
            if self.removed_temps:
                fsync_directory(self.directory)
            found = self._scan()
        except OSError as exc:
            raise OutboxError(f"cannot open outbox {self.directory}: {exc}") from exc
        if self.removed_temps:
            log.info("outbox %s: deleted %d torn temp file(s)", self.directory, self.removed_temps)
        self._seqs = sorted(found)
        self._drop_oldest_beyond(self.max_entries)

    # ------------------------------------------------------------ queries

    def __len__(self) -> int:
        return len(self._seqs)

    def __contains__(self, seq: object) -> bool:
        return seq in self._seqs

    def seqs(self) -> list[int]:
        """The pending seqs, ascending."""
        return list(self._seqs)

    def highest_seq(self) -> int | None:
        """The largest pending seq, or None when the outbox is empty."""
        return self._seqs[-1] if self._seqs else None

    def pending(self) -> list[tuple[int, bytes]]:
        """Every pending (seq, payload), oldest first: the order to resend in.

        Payloads are read back from disk and checked again; an entry that went
        bad since it was written is set aside and left out.
        """
        entries = []
        for seq in list(self._seqs):
            payload = self._read(seq)
            if payload is not None:
                entries.append((seq, payload))
        return entries

    # ------------------------------------------------------------ changes

    def put(self, seq: int, payload: bytes) -> None:
        """Store the update `seq`; it is on disk when this returns.

        `seq` must be above every pending seq (seqs only grow). When the
        outbox is full the oldest entry is dropped after the new one is safe.
        """
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
            raise ValueError(f"seq must be an int in 0..2**63-1, got {seq!r}")
        highest = self.highest_seq()
        if highest is not None and seq <= highest:
            raise ValueError(f"seq {seq} is not above the highest pending seq {highest}")
        if len(payload) > self.max_entry_bytes:
            raise OutboxError(
                f"update {seq} has {len(payload)} bytes, the outbox takes at most "
                f"{self.max_entry_bytes}"
            )
        try:
            write_atomically(self._path(seq), encode_entry(seq, bytes(payload)))
        except OSError as exc:
            raise OutboxError(f"cannot store update {seq} in {self.directory}: {exc}") from exc
        self._seqs.append(seq)
        self._drop_oldest_beyond(self.max_entries)

    def remove(self, seq: int) -> bool:
        """Forget the update `seq` (its ack arrived); False if it was not pending."""
        if seq not in self._seqs:
            return False
        self._delete(seq)
        self._seqs.remove(seq)
        return True

    def remove_through(self, seq: int) -> list[int]:
        """Forget every pending update with a seq up to and including `seq`.

        For an ack of `seq`: the aggregator remembers only a node's latest
        decided seq and refuses anything below it, so older entries can never
        be accepted any more. Returns the seqs removed.
        """
        removed = [s for s in self._seqs if s <= seq]
        for s in removed:
            self._delete(s)
            self._seqs.remove(s)
        return removed

    # ------------------------------------------------------------ internals

    def _path(self, seq: int) -> Path:
        return self.directory / entry_name(seq)

    def _delete(self, seq: int) -> None:
        try:
            remove_durably(self._path(seq))
        except OSError as exc:
            raise OutboxError(f"cannot remove update {seq} from {self.directory}: {exc}") from exc

    def _scan(self) -> list[int]:
        """Seqs of the intact entries in the directory; corrupt ones are set aside."""
        found = []
        for path in self.directory.iterdir():
            match = _NAME.fullmatch(path.name)
            if match is None:
                continue  # temp files are gone; *.corrupt and foreign files stay as they are
            seq = int(match.group(1))
            if seq > MAX_SEQ:
                self._set_aside(path, "seq out of range")
            elif self._read(seq) is not None:
                found.append(seq)
        return found

    def _read(self, seq: int) -> bytes | None:
        """The checked payload of entry `seq`, or None after setting a bad one aside."""
        path = self._path(seq)
        try:
            size = path.stat().st_size
            if size > HEADER_SIZE + self.max_entry_bytes:
                raise ValueError(f"{size} bytes, above the limit of {self.max_entry_bytes}")
            return decode_entry(path.read_bytes(), seq)
        except (OSError, ValueError) as exc:
            self._set_aside(path, str(exc))
            if seq in self._seqs:
                self._seqs.remove(seq)
            return None

    def _set_aside(self, path: Path, why: str) -> None:
        self.corrupt_entries += 1
        log.error("outbox %s: entry %s is corrupt (%s); set aside", self.directory, path.name, why)
        try:
            os.replace(path, path.with_name(path.name + CORRUPT_SUFFIX))
            fsync_directory(self.directory)
        except OSError as exc:
            log.error("outbox %s: cannot set %s aside: %s", self.directory, path.name, exc)

    def _drop_oldest_beyond(self, limit: int) -> None:
        while len(self._seqs) > limit:
            oldest = self._seqs[0]
            self._delete(oldest)
            self._seqs.pop(0)
            self.dropped_entries += 1
            log.warning(
                "outbox %s full (%d entries): dropped the oldest update, seq %d",
                self.directory,
                limit,
                oldest,
            )
