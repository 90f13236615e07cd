"""Chunking: topics, the split, hostile chunk payloads, bounded reassembly, the doc example."""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from fedbus.broker.chunking import (
    CHUNK_BOOKKEEPING_BYTES,
    DEFAULT_CHUNK_LIMIT,
    MAX_CHUNK_HEADER_BYTES,
    TRANSFER_BOOKKEEPING_BYTES,
    Reassembler,
    decode_chunk,
    needs_chunking,
    split_message,
    transfer_id,
)
from fedbus.broker.errors import CodecError, PayloadTooLargeError, UnsupportedVersionError
from fedbus.broker.topics import (
    PER_NODE_CHANNELS,
    Channel,
    Topics,
    chunk_filter,
    chunk_topic,
    parse_chunk_topic,
)

T = "fedbus/lab/update/n1"
FLEET = Topics("lab")
MESSAGE = bytes(range(256)) * 4  # 1024 bytes
LIMIT = 200


def _topics(chunks: list[bytes], topic: str = T) -> list[tuple[str, bytes]]:
    return [(chunk_topic(topic, i), payload) for i, payload in enumerate(chunks)]


def _body(payload: bytes) -> dict[str, Any]:
    body = msgpack.unpackb(payload, raw=False)
    assert isinstance(body, dict)
    return body


def _pack(body: Any) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def _small(**overrides: Any) -> Reassembler:
    """A reassembler with bounds small enough to hit in a test."""
    settings_: dict[str, Any] = {
        "max_message_bytes": 4096,
        "max_chunks": 64,
        "max_pending_bytes": 4096 + 64 * CHUNK_BOOKKEEPING_BYTES + TRANSFER_BOOKKEEPING_BYTES,
        "max_transfers_per_topic": 2,
        "timeout": 30.0,
        "completed_ttl": 5.0,
    }
    settings_.update(overrides)
    return Reassembler(**settings_)


# ---------------------------------------------------------------- topics


def test_chunk_topic_spells_index_in_decimal() -> None:
    assert chunk_topic(T, 0) == "fedbus/lab/update/n1/chunk/0"
    assert chunk_topic(T, 12) == "fedbus/lab/update/n1/chunk/12"


@given(
    base=st.sampled_from(
        [FLEET.model, FLEET.update("chunk"), FLEET.ack("0"), Topics("chunk").model, "a", "/"]
    ),
    index=st.integers(0, 10**10 - 1),
)
def test_parse_chunk_topic_inverts_chunk_topic(base: str, index: int) -> None:
    assert parse_chunk_topic(chunk_topic(base, index)) == (base, index)


@pytest.mark.parametrize(
    "topic",
    [
        T,
        f"{T}/chunk",
        f"{T}/chunk/",
        f"{T}/chunk/01",
        f"{T}/chunk/00",
        f"{T}/chunk/-1",
        f"{T}/chunk/+1",
        f"{T}/chunk/ 1",
        f"{T}/chunk/1 ",
        f"{T}/chunk/1.0",
        f"{T}/chunk/0x1",
        f"{T}/chunk/\u0661",  # Arabic-Indic digit one: str.isdigit() says yes
        f"{T}/chunk/12345678901",
        f"{T}/Chunk/1",
        f"{T}/chunk/1/x",
        f"{T}/chunk/1/chunk/2",
        "chunk/0",
        "/chunk/0",
        "fedbus/lab/update/+/chunk/0",
        "fedbus/#/chunk/0",
    ],
)
def test_parse_chunk_topic_refuses_anything_not_canonical(topic: str) -> None:
    assert parse_chunk_topic(topic) is None


@pytest.mark.parametrize("node", ["chunk", "0", "n1"])
def test_no_protocol_topic_is_a_chunk_topic(node: str) -> None:
    for fleet in (FLEET, Topics("chunk")):
        names = [fleet.model, fleet.aggregator_status]
        names += [fleet.for_node(channel, node) for channel in PER_NODE_CHANNELS]
        assert [parse_chunk_topic(name) for name in names] == [None] * len(names)


@pytest.mark.parametrize(
    ("topic", "index"),
    [
        (T, -1),
        (T, True),
        (T, 1.0),
        (T, 10**10),
        ("", 0),
        ("a/+", 0),
        ("a/#", 0),
        (f"{T}/chunk/3", 0),
    ],
)
def test_chunk_topic_refuses_bad_input(topic: str, index: Any) -> None:
    with pytest.raises(ValueError):
        chunk_topic(topic, index)


def test_chunk_filter_adds_the_chunk_levels() -> None:
    assert chunk_filter(FLEET.all_nodes(Channel.UPDATE)) == "fedbus/lab/update/+/chunk/+"
    assert chunk_filter(FLEET.model) == "fedbus/lab/model/chunk/+"
    assert chunk_filter(FLEET.everything) is None
    assert chunk_filter("#") is None


@pytest.mark.parametrize("topic_filter", ["", "a/#/b", "a#"])
def test_chunk_filter_refuses_invalid_filters(topic_filter: str) -> None:
    with pytest.raises(ValueError):
        chunk_filter(topic_filter)


@pytest.mark.parametrize(
    "topic_filter",
    [FLEET.all_nodes(Channel.UPDATE), FLEET.model, FLEET.ack("n1"), FLEET.everything, "#", "+/+"],
)
def test_a_subscriber_gets_the_chunks_of_exactly_what_its_filter_matches(
    topic_filter: str,
) -> None:
    extra = chunk_filter(topic_filter)
    filters = [topic_filter] if extra is None else [topic_filter, extra]
    names = [FLEET.model, FLEET.update("n1"), FLEET.update("n2"), FLEET.ack("n1"), "x/y"]

    for name in names:
        for index in (0, 7, 130):
            got = any(topic_matches_sub(f, chunk_topic(name, index)) for f in filters)
            assert got == topic_matches_sub(topic_filter, name), (name, index)
    if extra is not None:  # and the extra filter brings no whole messages
        assert not any(topic_matches_sub(extra, name) for name in names)


# ---------------------------------------------------------------- splitting


def _some_chunk_length_fits(message: bytes, limit: int) -> bool:
    """Naive reference: try every L; the highest index at full length is the largest chunk."""
    size, crc = len(message), zlib.crc32(message)
    for length in range(1, limit + 1):
        count = max(1, -(-size // length))
        body = {"v": 1, "xfer": bytes(8), "i": count - 1, "n": count}
        body.update({"size": size, "crc": crc, "data": bytes(length)})
        if len(_pack(body)) <= limit:
            return True
    return False


def test_needs_chunking_only_above_the_limit() -> None:
    assert not needs_chunking(b"x" * LIMIT, LIMIT)
    assert needs_chunking(b"x" * (LIMIT + 1), LIMIT)
    assert not needs_chunking(b"x" * DEFAULT_CHUNK_LIMIT)
    with pytest.raises(ValueError):
        needs_chunking(b"x", 0)


def test_split_writes_the_documented_fields_in_order() -> None:
    chunks = split_message(MESSAGE, LIMIT)
    bodies = [_body(c) for c in chunks]

    assert [list(b) for b in bodies] == [["v", "xfer", "i", "n", "size", "crc", "data"]] * len(
        chunks
    )
    assert [b["i"] for b in bodies] == list(range(len(chunks)))
    assert {(b["v"], b["xfer"], b["n"], b["size"], b["crc"]) for b in bodies} == {
        (1, hashlib.blake2b(MESSAGE).digest()[:8], len(chunks), len(MESSAGE), zlib.crc32(MESSAGE))
    }
    assert b"".join(b["data"] for b in bodies) == MESSAGE


def test_transfer_id_is_a_prefix_of_the_full_blake2b_digest() -> None:
    assert transfer_id(b"abc") == bytes.fromhex("ba80a53f981c4d0d")
    assert transfer_id(b"abc") != hashlib.blake2b(b"abc", digest_size=8).digest()


def test_split_is_deterministic_and_fills_chunks_to_the_limit() -> None:
    chunks = split_message(MESSAGE, LIMIT)

    assert chunks == split_message(bytearray(MESSAGE), LIMIT)
    assert max(len(c) for c in chunks) == LIMIT


@settings(max_examples=300, deadline=None)
@given(message=st.binary(max_size=3000), limit=st.integers(1, 4000))
def test_every_chunk_fits_the_limit_and_the_lengths_follow_the_layout(
    message: bytes, limit: int
) -> None:
    try:
        chunks = split_message(message, limit)
    except ValueError:
        assert not _some_chunk_length_fits(message, limit)
        return
    lengths = [len(_body(c)["data"]) for c in chunks]

    assert all(len(c) <= limit for c in chunks)
    assert b"".join(_body(c)["data"] for c in chunks) == message
    assert len(set(lengths[:-1])) <= 1
    assert 1 <= lengths[-1] <= lengths[0] or message == b""
    if len(chunks) > 1:  # no more chunks than needed: the largest is close to the limit
        assert max(len(c) for c in chunks) >= limit - 5


@pytest.mark.parametrize("size", [0, 1, 53, 1000, 70000])
def test_the_smallest_workable_limit_is_a_sharp_threshold(size: int) -> None:
    message = bytes(i % 251 for i in range(size))
    works = []
    for limit in range(1, 120):
        try:
            chunks = split_message(message, limit, max_chunks=10**6)
        except ValueError:
            works.append(False)
            continue
        assert all(len(c) <= limit for c in chunks)
        works.append(True)
    first = works.index(True)

    assert works == [False] * first + [True] * (len(works) - first)
    assert 40 < first + 1 <= MAX_CHUNK_HEADER_BYTES + 1


def test_the_widest_header_is_max_chunk_header_bytes() -> None:
    widest = (
        b"\x87\xa1v\x01\xa4xfer\xc4\x08"
        + bytes(8)
        + b"\xa1i\xce"
        + bytes(4)
        + b"\xa1n\xce"
        + bytes(4)
        + b"\xa4size\xcf"
        + bytes(8)
        + b"\xa3crc\xce"
        + bytes(4)
        + b"\xa4data\xc6"
        + bytes(4)
    )
    extreme = _pack(
        {
            "v": 1,
            "xfer": bytes(8),
            "i": 2**32 - 2,
            "n": 2**32 - 1,
            "size": 2**63 - 1,
            "crc": 2**32 - 1,
            "data": bytes(70000),
        }
    )

    assert len(widest) == MAX_CHUNK_HEADER_BYTES
    assert len(extreme) - 70000 == MAX_CHUNK_HEADER_BYTES


def test_split_refuses_too_many_chunks_and_non_bytes() -> None:
    with pytest.raises(ValueError, match="max_chunks"):
        split_message(MESSAGE, LIMIT, max_chunks=3)
    with pytest.raises(TypeError):
        split_message("text", LIMIT)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too small"):
        split_message(MESSAGE, 40)


# ---------------------------------------------------------------- decoding


def _good_body(index: int = 0) -> dict[str, Any]:
    return _body(split_message(MESSAGE, LIMIT)[index])


def test_decode_chunk_reads_a_chunk() -> None:
    chunks = split_message(MESSAGE, LIMIT)
    last = decode_chunk(chunks[-1])

    assert (last.index, last.count, last.size) == (len(chunks) - 1, len(chunks), len(MESSAGE))
    assert last.chunk_length == len(_body(chunks[0])["data"])
    assert last.xfer == transfer_id(MESSAGE) and last.crc == zlib.crc32(MESSAGE)


def test_decode_chunk_ignores_unknown_keys_and_accepts_wide_integers() -> None:
    body = {**_good_body(), "future": [1, 2], "type": "chunk"}
    assert _pack(body).count(b"\xa1i\x00") == 1
    wide = _pack(body).replace(b"\xa1i\x00", b"\xa1i\xcf" + bytes(8))

    assert decode_chunk(_pack(body)).data == _good_body()["data"]
    assert decode_chunk(wide).index == 0


def _without(key: str) -> dict[str, Any]:
    body = _good_body()
    del body[key]
    return body


_LAYOUT = "does not fit|do not add up"
_FULL = len(_good_body()["data"])  # L of MESSAGE at LIMIT

BAD_BODIES: dict[str, tuple[dict[str, Any], str]] = {
    "missing v": (_without("v"), "version 'v'"),
    **{
        f"missing {key}": (_without(key), f"missing field '{key}'")
        for key in ("xfer", "i", "n", "size", "crc", "data")
    },
    "v as str": ({**_good_body(), "v": "1"}, "version 'v'"),
    "v as bool": ({**_good_body(), "v": True}, "version 'v'"),
    "v as float": ({**_good_body(), "v": 1.0}, "version 'v'"),
    "xfer of 7 bytes": ({**_good_body(), "xfer": bytes(7)}, "8 bytes"),
    "xfer of 9 bytes": ({**_good_body(), "xfer": bytes(9)}, "8 bytes"),
    "xfer as str": ({**_good_body(), "xfer": "abcdefgh"}, "'xfer' must be bytes"),
    "i negative": ({**_good_body(), "i": -1}, "'i' out of range"),
    "i as bool": ({**_good_body(), "i": False}, "'i' must be int, got bool"),
    "i as float": ({**_good_body(), "i": 0.0}, "'i' must be int, got float"),
    "i equal to n": ({**_good_body(), "i": _good_body()["n"]}, "not below the chunk count"),
    "n zero": ({**_good_body(), "n": 0}, "'n' must be in 1..64"),
    "n above max_chunks": ({**_good_body(), "n": 65}, "'n' must be in 1..64"),
    "size beyond 63 bits": ({**_good_body(), "size": 2**64 - 1}, "'size' out of range"),
    "crc above uint32": ({**_good_body(), "crc": 2**32}, "uint32"),
    "crc negative": ({**_good_body(), "crc": -1}, "'crc' out of range"),
    "data as str": ({**_good_body(), "data": "text"}, "'data' must be bytes"),
    "data as array": ({**_good_body(), "data": [1, 2]}, "'data' must be bytes"),
    "non-last chunk too short": ({**_good_body(), "data": b"x"}, _LAYOUT),
    "non-last chunk too long": ({**_good_body(), "data": bytes(500)}, _LAYOUT),
    "last chunk longer than the others": ({**_good_body(-1), "data": bytes(_FULL + 1)}, _LAYOUT),
    "last chunk not a whole layout": ({**_good_body(-1), "data": bytes(3)}, _LAYOUT),
    "empty last chunk": ({**_good_body(-1), "data": b""}, _LAYOUT),
    "lone chunk not the whole message": ({**_good_body(), "n": 1}, "lone chunk"),
    "size beyond the chunks": ({**_good_body(), "size": 10**5}, _LAYOUT),
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_decode_chunk_rejects_a_broken_map_for_the_right_reason(name: str) -> None:
    body, reason = BAD_BODIES[name]

    with pytest.raises(CodecError, match=reason):
        decode_chunk(_pack(body), max_chunks=64)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",
        _pack([1, 2, 3]),
        _pack(_good_body()) + b"\x00",  # trailing bytes
        b"\x87\xa1v\x01\xa4data\xc6\xff\xff\xff\xff",  # bin header claiming 4 GiB
        b"\xdf\xff\xff\xff\xff",  # map header claiming 2^32 pairs
        b"\x82\xa1v\x01\xa1v\x01",  # repeated key
        b"\x81\x01\x01",  # integer key
        b"\x81\xa1v\xd6\x01\x00\x00\x00\x01",  # ext type
    ],
)
def test_decode_chunk_rejects_hostile_msgpack(payload: bytes) -> None:
    with pytest.raises(CodecError):
        decode_chunk(payload)


def test_decode_chunk_names_the_version_and_the_size_errors() -> None:
    with pytest.raises(UnsupportedVersionError):
        decode_chunk(_pack({**_good_body(), "v": 2}))
    with pytest.raises(PayloadTooLargeError):
        decode_chunk(split_message(MESSAGE, LIMIT)[0], max_message_bytes=1000)
    with pytest.raises(PayloadTooLargeError):
        decode_chunk(split_message(bytes(9000), 10_000)[0], max_message_bytes=1000)


def test_every_truncation_of_a_chunk_is_rejected() -> None:
    payload = split_message(MESSAGE, LIMIT)[1]
    for end in range(len(payload)):
        with pytest.raises(CodecError):
            decode_chunk(payload[:end])


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_decode_chunk_raises_only_codec_errors_on_random_bytes(payload: bytes) -> None:
    try:
        chunk = decode_chunk(payload)
    except CodecError:
        return
    assert 0 <= chunk.index < chunk.count and len(chunk.data) <= chunk.size


@settings(max_examples=300, deadline=None)
@given(position=st.integers(0, 10**6), value=st.integers(0, 255))
def test_a_flipped_byte_is_rejected_or_caught_by_the_crc(position: int, value: int) -> None:
    chunks = split_message(MESSAGE, LIMIT)
    which = position % len(chunks)
    damaged = bytearray(chunks[which])
    damaged[position % len(damaged)] = value
    reassembler = _small()
    delivered = []
    errors = 0

    for i, payload in enumerate(chunks):
        try:
            got = reassembler.add(chunk_topic(T, i), bytes(damaged) if i == which else payload, 0)
        except CodecError:
            errors += 1
            continue
        if got is not None:
            delivered.append(got)

    # A damaged chunk never turns into a wrong message: it is rejected, or the
    # byte did not change, or it only changed the id (a new, incomplete transfer).
    assert delivered in ([], [MESSAGE])
    assert delivered == [MESSAGE] or errors == 1 or reassembler.pending_transfers > 0


# ---------------------------------------------------------------- reassembly


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    message=st.binary(min_size=0, max_size=2000),
    limit=st.integers(60, 600),
    data=st.data(),
)
def test_round_trip_in_any_order_with_duplicates(message: bytes, limit: int, data: Any) -> None:
    chunks = split_message(message, limit)
    order = data.draw(st.permutations(range(len(chunks))))
    repeats = data.draw(st.lists(st.integers(0, len(chunks) - 1), max_size=10))
    arrivals = list(order)
    for index in repeats:  # a duplicate can arrive before or after the original
        arrivals.insert(data.draw(st.integers(0, len(arrivals))), index)
    reassembler = Reassembler()
    results = []

    for step, index in enumerate(arrivals):
        got = reassembler.add(chunk_topic(T, index), chunks[index], now=step * 0.01)
        results.append(got)
        held_before = set(arrivals[:step])
        if got is not None:  # exactly when the last missing chunk arrives
            assert index not in held_before
            assert held_before | {index} == set(range(len(chunks)))

    assert [r for r in results if r is not None] == [message]
    counters = reassembler.counters
    assert (counters.completed, counters.duplicates) == (1, len(repeats))
    assert (counters.bad, counters.evicted, counters.expired) == (0, 0, 0)
    assert reassembler.pending_bytes == 0 and reassembler.pending_transfers == 0


@settings(max_examples=100, deadline=None)
@given(message=st.binary(min_size=600, max_size=3000), data=st.data())
def test_a_resend_resumes_an_interrupted_transfer_and_delivers_once(
    message: bytes, data: Any
) -> None:
    chunks = split_message(message, LIMIT)
    cut = data.draw(st.integers(0, len(chunks) - 2))
    reassembler = Reassembler()

    first = [reassembler.add(t, p, 0.0) for t, p in _topics(chunks)[: cut + 1]]
    second = [reassembler.add(t, p, 10.0) for t, p in _topics(chunks)]

    assert first == [None] * (cut + 1)
    assert second == [None] * (len(chunks) - 1) + [message]
    assert reassembler.counters.completed == 1
    assert reassembler.counters.duplicates == cut + 1


def test_a_lone_chunk_completes_at_once() -> None:
    reassembler = Reassembler()
    [payload] = split_message(b"short", LIMIT)

    assert reassembler.add(chunk_topic(T, 0), payload, 0.0) == b"short"
    assert reassembler.pending_transfers == 0


def test_the_same_message_on_two_topics_is_two_transfers() -> None:
    chunks = split_message(MESSAGE, LIMIT)
    other = FLEET.update("n2")
    reassembler = Reassembler()

    pairs = zip(_topics(chunks), _topics(chunks, other), strict=True)
    got = [reassembler.add(t, p, 0.0) for pair in pairs for t, p in pair]

    assert got[-2:] == [MESSAGE, MESSAGE]
    assert reassembler.counters.completed == 2


def test_late_duplicates_of_a_completed_message_start_nothing() -> None:
    chunks = split_message(MESSAGE, LIMIT)
    reassembler = _small()
    for t, p in _topics(chunks):
        reassembler.add(t, p, 0.0)

    assert reassembler.add(chunk_topic(T, 2), chunks[2], 4.0) is None
    assert reassembler.pending_transfers == 0
    assert reassembler.counters.duplicates == 1


def test_a_resend_after_completed_ttl_is_delivered_again() -> None:
    """The lost-ack case: a node resends the same bytes; the aggregator must see them."""
    chunks = split_message(MESSAGE, LIMIT)
    reassembler = _small(completed_ttl=5.0)
    for t, p in _topics(chunks):
        reassembler.add(t, p, 0.0)

    again = [reassembler.add(t, p, 5.5) for t, p in _topics(chunks)]

    assert again[-1] == MESSAGE
    assert reassembler.counters.completed == 2


def test_a_resend_cut_by_completed_ttl_completes_with_the_next_resend() -> None:
    chunks = split_message(MESSAGE, LIMIT)
    reassembler = _small(completed_ttl=5.0)
    for t, p in _topics(chunks):
        reassembler.add(t, p, 0.0)
    half = len(chunks) // 2

    early = [reassembler.add(t, p, 4.0) for t, p in _topics(chunks)[:half]]  # remembered
    late = [reassembler.add(t, p, 6.0) for t, p in _topics(chunks)[half:]]  # not any more
    next_resend = [reassembler.add(t, p, 14.0) for t, p in _topics(chunks)]

    assert early + late == [None] * len(chunks)
    assert next_resend[half - 1] == MESSAGE and next_resend.count(MESSAGE) == 1


def test_completed_transfers_are_remembered_in_a_bounded_set() -> None:
    reassembler = _small(max_completed=3, completed_ttl=1000.0)
    messages = [bytes([k]) * 500 for k in range(4)]
    for message in messages:
        for t, p in _topics(split_message(message, LIMIT)):
            reassembler.add(t, p, 0.0)

    oldest = split_message(messages[0], LIMIT)
    newest = split_message(messages[3], LIMIT)

    assert reassembler.add(chunk_topic(T, 0), newest[0], 1.0) is None
    assert reassembler.pending_transfers == 0  # newest still remembered
    assert reassembler.add(chunk_topic(T, 0), oldest[0], 1.0) is None
    assert reassembler.pending_transfers == 1  # oldest forgotten: a new transfer


def test_a_wrong_crc_drops_the_transfer_and_counts_it() -> None:
    bodies = [_body(c) for c in split_message(MESSAGE, LIMIT)]
    forged = [_pack({**b, "crc": (b["crc"] + 1) % 2**32}) for b in bodies]
    reassembler = _small()
    for t, p in _topics(forged)[:-1]:
        reassembler.add(t, p, 0.0)

    with pytest.raises(CodecError, match="crc32"):
        reassembler.add(chunk_topic(T, len(forged) - 1), forged[-1], 0.0)
    assert reassembler.pending_transfers == 0 and reassembler.pending_bytes == 0
    assert (reassembler.counters.bad, reassembler.counters.completed) == (1, 0)


@pytest.mark.parametrize("field", ["size", "crc", "n"])
def test_a_chunk_that_disagrees_with_its_transfer_is_rejected_and_the_transfer_kept(
    field: str,
) -> None:
    chunks = split_message(MESSAGE, LIMIT)
    body = _body(chunks[1])
    changes = {
        "size": {"size": len(MESSAGE) - 1},
        "crc": {"crc": 7},
        "n": {"n": body["n"] + 2, "size": (body["n"] + 2) * len(body["data"])},
    }
    body.update(changes[field])
    assert decode_chunk(_pack(body)).index == 1  # a valid chunk on its own
    reassembler = _small()
    reassembler.add(chunk_topic(T, 0), chunks[0], 0.0)

    with pytest.raises(CodecError, match="disagrees"):
        reassembler.add(chunk_topic(T, 1), _pack(body), 0.0)
    results = [reassembler.add(t, p, 1.0) for t, p in _topics(chunks)]

    assert results[-1] == MESSAGE
    assert reassembler.counters.bad == 1


def test_a_repeated_index_with_other_data_is_rejected() -> None:
    chunks = split_message(MESSAGE, LIMIT)
    body = _body(chunks[0])
    body["data"] = bytes(len(body["data"]))
    reassembler = _small()
    reassembler.add(chunk_topic(T, 0), chunks[0], 0.0)

    with pytest.raises(CodecError, match="different data"):
        reassembler.add(chunk_topic(T, 0), _pack(body), 0.0)


def test_the_topic_index_must_match_the_payload_index() -> None:
    chunks = split_message(MESSAGE, LIMIT)
    reassembler = _small()

    with pytest.raises(CodecError, match="topic"):
        reassembler.add(chunk_topic(T, 1), chunks[0], 0.0)
    assert reassembler.counters.bad == 1


def test_add_refuses_a_topic_that_is_not_a_chunk_topic() -> None:
    with pytest.raises(ValueError):
        _small().add(T, split_message(MESSAGE, LIMIT)[0], 0.0)


def test_an_empty_payload_deletes_a_retained_chunk_and_is_ignored() -> None:
    reassembler = _small()

    assert reassembler.add(chunk_topic(T, 3), b"", 0.0) is None
    assert reassembler.counters == type(reassembler.counters)()


def test_add_rejects_and_counts_oversize_claims() -> None:
    reassembler = _small(max_message_bytes=1000, max_pending_bytes=100_000)

    with pytest.raises(PayloadTooLargeError):
        reassembler.add(chunk_topic(T, 0), split_message(MESSAGE, LIMIT)[0], 0.0)
    assert reassembler.counters.bad == 1


def test_the_topic_bound_evicts_its_least_recently_active_transfer() -> None:
    messages = [bytes([k]) * 1000 for k in range(3)]
    split = [split_message(m, LIMIT) for m in messages]
    reassembler = _small(max_transfers_per_topic=2)
    reassembler.add(chunk_topic(T, 0), split[0][0], 0.0)
    reassembler.add(chunk_topic(T, 0), split[1][0], 1.0)
    reassembler.add(chunk_topic(T, 1), split[0][1], 2.0)  # message 0 is active again

    reassembler.add(chunk_topic(T, 0), split[2][0], 3.0)  # third on T: message 1 goes
    other = reassembler.add(chunk_topic(FLEET.model, 0), split[1][0], 3.0)

    assert other is None and reassembler.pending_transfers == 3
    assert reassembler.counters.evicted == 1
    rest0 = [reassembler.add(t, p, 4.0) for t, p in _topics(split[0])[2:]]
    rest1 = [reassembler.add(t, p, 4.0) for t, p in _topics(split[1])[1:]]
    assert rest0[-1] == messages[0]  # kept its first chunks
    assert rest1 == [None] * len(rest1)  # lost chunk 0: cannot complete


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_pending_bytes_never_exceed_the_bound(data: Any) -> None:
    bound = 4096 + 64 * CHUNK_BOOKKEEPING_BYTES + TRANSFER_BOOKKEEPING_BYTES
    reassembler = _small(max_pending_bytes=bound, max_transfers_per_topic=8)
    topics = [FLEET.update(f"n{k}") for k in range(4)]
    messages = data.draw(
        st.lists(st.binary(min_size=300, max_size=4096), min_size=1, max_size=6, unique=True)
    )
    splits = [split_message(m, data.draw(st.integers(150, 900))) for m in messages]
    pool = [
        (topic, i, payload)
        for topic in topics
        for chunks in splits
        for i, payload in enumerate(chunks)
    ]
    arrivals = data.draw(st.lists(st.sampled_from(pool), max_size=120))

    for step, (topic, index, payload) in enumerate(arrivals):
        reassembler.add(chunk_topic(topic, index), payload, step * 0.1)
        assert 0 <= reassembler.pending_bytes <= bound

    assert reassembler.counters.bad == 0


def test_memory_pressure_evicts_the_least_recently_active_other_transfer() -> None:
    messages = [bytes([k]) * 3000 for k in range(3)]
    a, b, c = (split_message(m, 1100) for m in messages)  # 3 chunks each
    reassembler = Reassembler(
        max_message_bytes=3000, max_chunks=3, max_pending_bytes=6000, max_transfers_per_topic=4
    )
    reassembler.add(chunk_topic(T, 0), a[0], 0.0)
    reassembler.add(chunk_topic(FLEET.model, 0), b[0], 1.0)
    reassembler.add(chunk_topic(T, 1), a[1], 2.0)  # a is now more recent than b
    held = reassembler.pending_bytes

    reassembler.add(chunk_topic(FLEET.ack("n1"), 0), c[0], 3.0)  # no room for c: b goes

    assert held + TRANSFER_BOOKKEEPING_BYTES + CHUNK_BOOKKEEPING_BYTES + 1000 > 6000
    assert reassembler.counters.evicted == 1 and reassembler.pending_transfers == 2
    assert reassembler.add(chunk_topic(T, 2), a[2], 4.0) == messages[0]
    rest_of_b = [reassembler.add(chunk_topic(FLEET.model, i), b[i], 5.0) for i in (1, 2)]
    assert rest_of_b == [None, None]  # b lost chunk 0 and cannot complete


def test_expire_drops_idle_transfers_after_the_timeout() -> None:
    chunks = split_message(MESSAGE, LIMIT)
    reassembler = _small(timeout=30.0)
    reassembler.add(chunk_topic(T, 0), chunks[0], 0.0)
    reassembler.add(chunk_topic(FLEET.model, 0), chunks[0], 20.0)

    assert reassembler.expire(30.0) == 0  # idle exactly `timeout`: kept
    assert reassembler.expire(30.5) == 1
    assert reassembler.pending_transfers == 1
    assert reassembler.add(chunk_topic(T, 1), chunks[1], 51.0) is None  # add expires too
    assert reassembler.counters.expired == 2
    assert reassembler.pending_transfers == 1  # only the new transfer on T
    assert reassembler.pending_bytes == (
        TRANSFER_BOOKKEEPING_BYTES + CHUNK_BOOKKEEPING_BYTES + len(_body(chunks[1])["data"])
    )


def test_a_duplicate_keeps_a_transfer_alive() -> None:
    chunks = split_message(MESSAGE, LIMIT)
    reassembler = _small(timeout=30.0)
    reassembler.add(chunk_topic(T, 0), chunks[0], 0.0)
    reassembler.add(chunk_topic(T, 0), chunks[0], 25.0)

    assert reassembler.expire(50.0) == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"max_message_bytes": 0},
        {"max_transfers_per_topic": 0},
        {"max_chunks": True},
        {"timeout": 0},
        {"completed_ttl": -1},
        {"max_pending_bytes": 4096},  # cannot hold one message of 4096 bytes with bookkeeping
    ],
)
def test_reassembler_refuses_impossible_bounds(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        _small(**bad)


# ---------------------------------------------------------------- the doc example

DOC = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"
_BLOCK = re.compile(
    r"^```(?P<kind>json|hex)[ \t]+chunk-example=(?P<name>\w+)(?P<attrs>[^\n]*)\n"
    r"(?P<body>.*?)^```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


def _doc_blocks() -> list[re.Match[str]]:
    found = list(_BLOCK.finditer(DOC.read_text(encoding="utf-8")))
    if not found:
        pytest.fail("no chunk-example blocks in docs/PROTOCOL.md section 15")
    return found


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        return {key: _from_json(item) for key, item in value.items()}
    return value


def test_the_doc_example_chunks_are_the_reference_bytes() -> None:
    blocks = _doc_blocks()
    hexes = {
        m["name"]: bytes.fromhex("".join(m["body"].split())) for m in blocks if m["kind"] == "hex"
    }
    message = hexes.pop("message")
    chunk_blocks = [m for m in blocks if m["kind"] == "hex" and m["name"] != "message"]
    reassembler = Reassembler()
    delivered = []

    assert len(chunk_blocks) >= 1
    for block in chunk_blocks:
        attrs = dict(re.findall(r"(\w+)=(\d+)", block["attrs"]))
        limit, index = int(attrs["limit"]), int(attrs["index"])
        payload = hexes[block["name"]]
        assert payload == split_message(message, limit)[index]
        assert decode_chunk(payload).index == index
        delivered.append(reassembler.add(chunk_topic(FLEET.status("n1"), index), payload, 0.0))

    assert delivered[-1] == message  # the doc shows every chunk


def test_the_doc_example_json_matches_its_hex() -> None:
    blocks = _doc_blocks()
    hexes = {m["name"]: m["body"] for m in blocks if m["kind"] == "hex"}
    twins = [m for m in blocks if m["kind"] == "json"]

    assert twins
    for twin in twins:
        unpacked = _body(bytes.fromhex("".join(hexes[twin["name"]].split())))
        want = _from_json(json.loads(twin["body"]))
        assert list(unpacked) == list(want)
        assert unpacked == want
