"""The journal's record bytes: written without copying the payload, read as before."""

from __future__ import annotations

import zlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbus.aggregator.journal import (
    _RECORD_HEADER,
    KIND_ACCEPTED,
    KIND_STATS,
    JournalEntry,
    _encode_entry,
)


def _plain_record(entry: JournalEntry) -> bytes:
    """The record as one msgpack map behind length and CRC (how it was always written)."""
    body: dict[str, object] = {"k": entry.kind}
    if entry.kind in (KIND_ACCEPTED, KIND_STATS):
        body |= {"node": entry.node, "p": entry.payload}
    packed = msgpack.packb(body, use_bin_type=True)
    return _RECORD_HEADER.pack(len(packed), zlib.crc32(packed)) + packed


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from([KIND_ACCEPTED, KIND_STATS]),
    node=st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    payload=st.binary(max_size=70_000),
)
def test_zero_copy_record_equals_the_plain_msgpack_record(
    kind: str, node: str, payload: bytes
) -> None:
    entry = JournalEntry(kind, node, payload)
    head, tail = _encode_entry(entry)
    assert head + tail == _plain_record(entry)
    assert tail is payload  # not copied


@pytest.mark.parametrize("size", [0, 31, 255, 65_535, 65_536])
def test_bin_header_boundaries(size: int) -> None:
    entry = JournalEntry(
        KIND_ACCEPTED, "n1", bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    )
    head, tail = _encode_entry(entry)
    assert head + tail == _plain_record(entry)


def test_flush_entry_has_no_payload() -> None:
    head, tail = _encode_entry(JournalEntry.flush())
    assert tail == b"" and head == _plain_record(JournalEntry.flush())
