"""The .fbrec recording format and the record/replay commands' pure parts; no broker.

A recording is untrusted input like a payload from the network: reading it
returns records or raises `RecordingError` (a `CodecError`), never
msgpack's or Python's own errors, and never allocates more than a limit or
than the file holds.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import tracemalloc
import zlib
from pathlib import Path

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedbus.broker import cli
from fedbus.broker.codec import DecodeLimits, decode
from fedbus.broker.errors import CodecError, ConfigError
from fedbus.broker.messages import AckMessage, UpdateMessage
from fedbus.broker.record_cli import channel_filters, parse_channels, parse_meta
from fedbus.broker.recording import (
    FORMAT_VERSION,
    MAGIC,
    RecordedMessage,
    RecordingError,
    RecordingHeader,
    RecordingLimits,
    RecordingReader,
    RecordingWriter,
    UnsupportedRecordingVersionError,
    encode_header,
    encode_record,
    frame,
    read_recording,
)
from fedbus.broker.topics import Channel, Topics

DATA = Path(__file__).resolve().parent / "data"
HEADER = RecordingHeader("f", 1.5, ("fedbus/f/#",), {"k": "v"})
RECORDS = [
    RecordedMessage(0, "fedbus/f/status/n1", 1, True, b"\x85retained"),
    RecordedMessage(1_500, "fedbus/f/update/n1", 1, False, b"\x01\x02"),
    RecordedMessage(2_000_000_000, "fedbus/f/metrics/n2", 0, False, b""),
    RecordedMessage(2_000_000_001, "fedbus/f/model", 2, False, bytes(range(256)) * 40),
]


def _recording(header: RecordingHeader = HEADER, records: list[RecordedMessage] = RECORDS) -> bytes:
    stream = io.BytesIO()
    writer = RecordingWriter(stream, header)
    for record in records:
        writer.write(record)
    assert writer.records == len(records) and writer.bytes_written == len(stream.getvalue())
    return stream.getvalue()


def _read(data: bytes, limits: RecordingLimits | None = None) -> tuple[RecordingReader, list]:  # type: ignore[type-arg]
    reader = RecordingReader(io.BytesIO(data), *(() if limits is None else (limits,)))
    return reader, list(reader)


def _prefix(version: int = FORMAT_VERSION) -> bytes:
    return MAGIC + struct.pack(">H", version)


# ---------------------------------------------------------------- round trip and exact bytes


def test_round_trip_keeps_header_and_every_record_exactly() -> None:
    reader, records = _read(_recording())

    assert reader.header == HEADER and dict(reader.header.meta) == {"k": "v"}
    assert records == RECORDS
    assert not reader.truncated and reader.records == len(RECORDS)


def test_read_recording_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "r.fbrec"
    path.write_bytes(_recording())

    assert read_recording(path) == (HEADER, RECORDS)


def test_header_bytes_are_pinned() -> None:
    assert encode_header(HEADER) == bytes.fromhex(
        "89 46 42 52 45 43 0d 0a 00 01"  # magic, format version 1
        "00 00 00 3b f1 58 f8 43"  # body length 59, CRC-32
        "84 a5 66 6c 65 65 74 a1 66 aa 73 74 61 72 74 65 64 5f 61 74 cb 3f f8 00 00 00 00 00"
        "00 a7 66 69 6c 74 65 72 73 91 aa 66 65 64 62 75 73 2f 66 2f 23 a4 6d 65 74 61 81 a1"
        "6b a1 76"
    )


def test_record_bytes_are_pinned() -> None:
    assert encode_record(RECORDS[1]) == bytes.fromhex(
        "00 00 00 38 84 17 47 c9"  # body length 56, CRC-32
        "85 a1 74 cd 05 dc a5 74 6f 70 69 63 b2 66 65 64 62 75 73 2f 66 2f 75 70 64 61 74 65"
        "2f 6e 31 a3 71 6f 73 01 a6 72 65 74 61 69 6e c2 a7 70 61 79 6c 6f 61 64 c4 02 01 02"
    )


@given(
    st.lists(
        st.builds(
            RecordedMessage,
            t_ns=st.integers(0, 2**63 - 1),
            topic=st.text(min_size=1, max_size=200),
            qos=st.integers(0, 2),
            retain=st.booleans(),
            payload=st.binary(max_size=300),
        ),
        max_size=20,
    ),
    st.dictionaries(st.text(max_size=20), st.text(max_size=50), max_size=5),
)
def test_any_records_and_meta_round_trip(records: list[RecordedMessage], meta: dict) -> None:  # type: ignore[type-arg]
    header = RecordingHeader("fleet-1", 1_700_000_000.25, ("a/#", "b"), meta)
    reader, read_back = _read(_recording(header, records))
    assert reader.header == header and read_back == records


def test_unknown_keys_from_a_later_writer_are_ignored() -> None:
    body = msgpack.packb(
        {"t": 5, "topic": "x", "qos": 0, "retain": False, "payload": b"p", "later": [1, 2]},
        use_bin_type=True,
    )
    _, records = _read(encode_header(HEADER) + frame(body))
    assert records == [RecordedMessage(5, "x", 0, False, b"p")]


# ---------------------------------------------------------------- a recorder that died


def test_every_cut_inside_the_last_record_keeps_all_whole_records() -> None:
    whole = _recording(records=RECORDS[:3])
    data = _recording()
    for cut in range(len(whole) + 1, len(data)):
        reader, records = _read(data[:cut])
        assert records == RECORDS[:3], cut
        assert reader.truncated and reader.trailing_bytes == cut - len(whole)


def test_a_cut_at_a_record_boundary_is_not_a_truncation() -> None:
    reader, records = _read(_recording(records=RECORDS[:2]))
    assert records == RECORDS[:2] and not reader.truncated and reader.trailing_bytes == 0


def test_a_file_cut_inside_its_header_is_an_error() -> None:
    data = encode_header(HEADER)
    for cut in range(len(data)):
        with pytest.raises(RecordingError, match="truncated"):
            RecordingReader(io.BytesIO(data[:cut]))


def test_records_stream_as_they_are_read_from_a_growing_file(tmp_path: Path) -> None:
    path = tmp_path / "live.fbrec"
    with path.open("wb") as out:
        writer = RecordingWriter(out, HEADER)
        writer.write(RECORDS[0])
        # Flushed per record: another process sees it before the writer closes.
        assert read_recording(path) == (HEADER, RECORDS[:1])


# ---------------------------------------------------------------- corruption


def test_a_flipped_payload_byte_is_a_checksum_error_after_the_good_records() -> None:
    data = bytearray(_recording())
    data[-10] ^= 0x01
    reader = RecordingReader(io.BytesIO(bytes(data)))
    good = []
    with pytest.raises(RecordingError, match="record 3 at byte .*: checksum mismatch"):
        for record in reader:
            good.append(record)
    assert good == RECORDS[:3]


def test_a_damaged_length_is_an_error_not_an_allocation() -> None:
    data = bytearray(_recording(records=RECORDS[:1]))
    header_end = len(encode_header(HEADER))
    data[header_end : header_end + 4] = struct.pack(">I", 0xFFFF_FFFF)
    with pytest.raises(RecordingError, match="frame length 4294967295 outside"):
        _read(bytes(data))


def test_a_zero_length_frame_is_corrupt() -> None:
    with pytest.raises(RecordingError, match="frame length 0"):
        _read(encode_header(HEADER) + struct.pack(">II", 0, 0))


@pytest.mark.parametrize(
    "body",
    [
        b"\x93\x01\x02\x03",  # an array, not a map
        b"\x81\x01\x02",  # an int key
        b"\x80",  # no fields at all
        b"\x85\xa1t\x01",  # declares five pairs, holds one
        msgpack.packb({"t": -1, "topic": "x", "qos": 0, "retain": False, "payload": b""}),
        msgpack.packb({"t": 1, "topic": "x", "qos": 3, "retain": False, "payload": b""}),
        msgpack.packb({"t": 1, "topic": "x", "qos": True, "retain": False, "payload": b""}),
        msgpack.packb({"t": 1, "topic": "x", "qos": 1, "retain": 1, "payload": b""}),
        msgpack.packb({"t": 1, "topic": "", "qos": 1, "retain": False, "payload": b""}),
        msgpack.packb({"t": 1.5, "topic": "x", "qos": 1, "retain": False, "payload": b""}),
        # payload as str instead of bin
        msgpack.packb({"t": 1, "topic": "x", "qos": 1, "retain": False, "payload": "p"}),
        msgpack.packb({"t": 2**64 - 1, "topic": "x", "qos": 1, "retain": False, "payload": b""}),
        msgpack.packb({"t": 1, "topic": "x", "qos": 1, "retain": False, "payload": b""}) + b"\x00",
        b"\x81\xa1t\xd4\x01\x00",  # an ext type
    ],
)
def test_a_well_framed_but_invalid_record_is_an_error(body: bytes) -> None:
    with pytest.raises(RecordingError, match="record 0 at byte"):
        _read(encode_header(HEADER) + frame(body))


def test_recording_errors_are_codec_errors() -> None:
    assert issubclass(RecordingError, CodecError)
    assert issubclass(UnsupportedRecordingVersionError, RecordingError)


# ---------------------------------------------------------------- hostile headers


def test_a_file_that_is_not_a_recording_is_refused() -> None:
    with pytest.raises(RecordingError, match="bad magic"):
        RecordingReader(io.BytesIO(b"\x85\xa1v\x01" + bytes(100)))
    with pytest.raises(RecordingError, match="bad magic"):
        RecordingReader(io.BytesIO(b"PK\x03"))


def test_another_format_version_is_refused_by_name() -> None:
    data = _prefix(2) + encode_header(HEADER)[len(_prefix()) :]
    with pytest.raises(UnsupportedRecordingVersionError, match="version 2"):
        RecordingReader(io.BytesIO(data))


def test_a_header_frame_above_the_limit_is_refused_before_reading() -> None:
    limits = RecordingLimits(max_header_bytes=1000)
    data = _prefix() + frame(msgpack.packb({"fleet": "f", "started_at": 0.0, "pad": "x" * 1000}))
    with pytest.raises(RecordingError, match="header at byte 10: frame length .* outside 1..1000"):
        RecordingReader(io.BytesIO(data), limits)


def test_a_huge_claimed_length_costs_only_what_the_file_holds() -> None:
    # A record frame claiming 60 MiB (within the default limit) in a 1 KiB file.
    data = encode_header(HEADER) + struct.pack(">II", 60 << 20, 0) + bytes(1000)
    tracemalloc.start()
    try:
        reader, records = _read(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert records == [] and reader.truncated
    assert peak < 4 << 20


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ({"started_at": 0.0}, "missing field 'fleet'"),
        ({"fleet": "f"}, "missing field 'started_at'"),
        ({"fleet": 1, "started_at": 0.0}, "'fleet' has type int"),
        ({"fleet": "", "started_at": 0.0}, "non-empty"),
        ({"fleet": "f", "started_at": float("nan")}, "finite"),
        ({"fleet": "f", "started_at": 0.0, "meta": {"k": 1}}, "meta must map str to str"),
        ({"fleet": "f", "started_at": 0.0, "meta": [1]}, "'meta' has type list"),
        ({"fleet": "f", "started_at": 0.0, "filters": [b"x"]}, "filters must be strings"),
        ({"fleet": "f", "started_at": 0.0, "filters": ["x"] * 2000}, "array"),
        ({"fleet": "f", "started_at": 0.0, "meta": {str(i): "" for i in range(300)}}, "map"),
        ({"fleet": "f" * 5000, "started_at": 0.0}, "str"),
    ],
)
def test_a_hostile_header_map_is_an_error(header: dict, match: str) -> None:  # type: ignore[type-arg]
    data = _prefix() + frame(msgpack.packb(header, use_bin_type=True))
    with pytest.raises(RecordingError, match=match):
        RecordingReader(io.BytesIO(data))


def test_a_header_claiming_a_vast_array_is_refused() -> None:
    # fixmap(2) "fleet" "f" "filters" array32 with 2^32 - 1 entries, then nothing.
    body = b"\x82\xa5fleet\xa1f\xa7filters\xdd\xff\xff\xff\xff"
    with pytest.raises(RecordingError, match="header"):
        RecordingReader(io.BytesIO(_prefix() + frame(body)))


def test_a_payload_above_the_decode_limit_is_refused() -> None:
    limits = RecordingLimits(decode=DecodeLimits(max_payload_bytes=100))
    big = RecordedMessage(0, "t", 1, False, bytes(101))
    with pytest.raises(RecordingError, match="record 0"):
        _read(_recording(records=[big]), limits)
    _, records = _read(_recording(records=[RecordedMessage(0, "t", 1, False, bytes(100))]), limits)
    assert len(records) == 1


# ---------------------------------------------------------------- values


@pytest.mark.parametrize(
    "fields",
    [
        {"t_ns": -1},
        {"t_ns": 2**63},
        {"t_ns": True},
        {"qos": 3},
        {"qos": False},
        {"retain": 1},
        {"topic": ""},
        {"payload": bytearray(b"x")},
    ],
)
def test_a_record_checks_its_fields(fields: dict) -> None:  # type: ignore[type-arg]
    values = {"t_ns": 0, "topic": "t", "qos": 1, "retain": False, "payload": b""} | fields
    with pytest.raises(RecordingError):
        RecordedMessage(**values)


def test_header_meta_is_read_only() -> None:
    with pytest.raises(TypeError):
        HEADER.meta["k"] = "w"  # type: ignore[index]


# ---------------------------------------------------------------- the checked-in recordings


@pytest.mark.parametrize("path", sorted(DATA.glob("*.fbrec")), ids=lambda p: p.stem)
def test_the_aggregator_decided_updates_in_the_order_the_recorder_saw_them(path: Path) -> None:
    """What the replay test relies on: one broker fans each message out to all
    subscribers in the order it read them, so the recorder's order of updates is
    the aggregator's order of decisions (acks, duplicates included)."""
    header, records = read_recording(path)
    topics = Topics(header.fleet)
    updates, acks = [], []
    for record in records:
        channel, node = topics.parse(record.topic)
        if channel is Channel.UPDATE:
            updates.append((node, decode(record.payload, UpdateMessage).seq))
        elif channel is Channel.ACK:
            acks.append((node, decode(record.payload, AckMessage).seq))
    assert updates and updates == acks
    assert "aggregator.args" in header.meta


# ---------------------------------------------------------------- command-line parts


def test_channels_parse_from_names_or_all() -> None:
    assert parse_channels("all") is None
    assert parse_channels("update, status") == {Channel.UPDATE, Channel.STATUS}
    assert parse_channels("aggregator/status,model") == {Channel.AGGREGATOR_STATUS, Channel.MODEL}
    for bad in ("", "updates", "update,all"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_channels(bad)


def test_channel_filters_come_from_the_topics_module() -> None:
    topics = Topics("f")
    assert channel_filters(topics, None) == [topics.everything]
    assert channel_filters(
        topics, frozenset({Channel.AGGREGATOR_STATUS, Channel.UPDATE, Channel.MODEL})
    ) == [topics.model, topics.all_nodes(Channel.UPDATE), topics.aggregator_status]


def test_meta_pairs() -> None:
    assert parse_meta(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    for bad in (["novalue"], ["=v"], ["a=1", "a=2"]):
        with pytest.raises(ConfigError):
            parse_meta(bad)


@pytest.mark.parametrize("command", ["record", "replay"])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: fedbus {command}" in capsys.readouterr().out


def test_record_refuses_a_bad_meta_and_an_existing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = tmp_path / "old.fbrec"
    existing.write_bytes(b"keep me")
    for argv, field in (
        ([str(tmp_path / "new.fbrec"), "--meta", "novalue"], "--meta"),
        ([str(existing)], "exists"),
        ([str(tmp_path / "new.fbrec"), "--count", "0"], "--count"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["record", *argv, "--port", "1"])
        assert exit_info.value.code == 2 and field in capsys.readouterr().err
    assert existing.read_bytes() == b"keep me" and not (tmp_path / "new.fbrec").exists()


def test_replay_dry_run_summarises_a_checked_in_recording(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = DATA / "fedbuff-k3.fbrec"
    header, records = read_recording(path)
    node_sent = [r for r in records if "/update/" in r.topic or "/status/" in r.topic]

    code = cli.main(["replay", str(path), "--dry-run", "--fleet", "elsewhere", "--port", "1"])

    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert summary["fleet"] == header.fleet and summary["target_fleet"] == "elsewhere"
    assert summary["records"] == len(records) and summary["selected"] == len(node_sent)
    assert summary["meta"]["aggregator.args"].startswith("--mode fedbuff -K 3")
    assert sum(summary["records_by_channel"].values()) == len(records)


def test_replay_refuses_a_corrupt_recording_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bytearray(_recording())
    data[-10] ^= 0x01
    path = tmp_path / "bad.fbrec"
    path.write_bytes(bytes(data))
    # Port 1: were it to connect, it would fail with status 1, not 2.
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["replay", str(path), "--fast", "--port", "1", "--channels", "all"])
    assert exit_info.value.code == 2 and "checksum mismatch" in capsys.readouterr().err


def test_frames_carry_the_crc32_of_their_body() -> None:
    body = b"\x80"
    assert frame(body) == struct.pack(">II", 1, zlib.crc32(body)) + body
