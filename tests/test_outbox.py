"""The node's durable outbox and device state, on a real directory, without a broker.

A "crash" here is dropping the objects without any closing step and opening
the directory again, possibly after damaging files the way a power cut or a
bad sector would.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import msgpack
import numpy as np
import pytest

from fedbus.broker import durable_files
from fedbus.node.device_state import (
    STATE_MAGIC,
    DeviceState,
    DeviceStateError,
    load_device_state,
    next_seq_after,
    save_device_state,
    take_seq,
)
from fedbus.node.outbox import (
    ENTRY_MAGIC,
    HEADER_SIZE,
    Outbox,
    OutboxError,
    encode_entry,
    entry_name,
)

# ---------------------------------------------------------------- outbox


def test_entry_bytes_are_pinned() -> None:
    data = encode_entry(42, b"abc")
    crc = zlib.crc32(b"abc", zlib.crc32(struct.pack("<QI", 42, 3)))
    assert data == ENTRY_MAGIC + struct.pack("<QII", 42, 3, crc) + b"abc"
    assert entry_name(42) == "update-000000000042.msg"


def test_put_then_pending_round_trips_in_seq_order(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox")
    for seq in (3, 7, 12):
        outbox.put(seq, f"update {seq}".encode())

    assert outbox.pending() == [(3, b"update 3"), (7, b"update 7"), (12, b"update 12")]
    assert len(outbox) == 3
    assert outbox.highest_seq() == 12
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == [
        "update-000000000003.msg",
        "update-000000000007.msg",
        "update-000000000012.msg",
    ]


def test_empty_outbox(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    assert outbox.pending() == []
    assert len(outbox) == 0
    assert outbox.highest_seq() is None
    assert outbox.remove(1) is False


def test_pending_survives_reopen_and_removal_is_durable(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    outbox.put(1, b"one")
    outbox.put(2, b"")
    outbox.put(3, bytes(range(256)) * 100)
    assert outbox.remove(2) is True
    assert outbox.remove(2) is False
    del outbox  # crash: nothing closed

    reopened = Outbox(tmp_path)
    assert reopened.pending() == [(1, b"one"), (3, bytes(range(256)) * 100)]
    assert reopened.corrupt_entries == 0


def test_remove_through_forgets_everything_up_to_the_acked_seq(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    for seq in (1, 2, 4, 5):
        outbox.put(seq, b"x")
    assert outbox.remove_through(4) == [1, 2, 4]
    assert Outbox(tmp_path).seqs() == [5]


def test_seqs_must_grow(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    outbox.put(5, b"a")
    with pytest.raises(ValueError, match="not above"):
        outbox.put(5, b"b")
    with pytest.raises(ValueError, match="not above"):
        outbox.put(4, b"b")
    with pytest.raises(ValueError, match="seq must be"):
        outbox.put(-1, b"b")
    assert outbox.pending() == [(5, b"a")]


def test_full_outbox_drops_the_oldest_and_counts_it(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path, max_entries=2)
    outbox.put(1, b"one")
    outbox.put(2, b"two")
    outbox.put(3, b"three")

    assert outbox.pending() == [(2, b"two"), (3, b"three")]
    assert outbox.dropped_entries == 1
    assert Outbox(tmp_path, max_entries=2).seqs() == [2, 3]


def test_reopening_with_a_smaller_limit_trims_oldest(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    for seq in range(1, 6):
        outbox.put(seq, b"x")
    smaller = Outbox(tmp_path, max_entries=2)
    assert smaller.seqs() == [4, 5]
    assert smaller.dropped_entries == 3


def test_oversized_payload_is_refused_clearly(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path, max_entry_bytes=10)
    with pytest.raises(OutboxError, match="at most 10"):
        outbox.put(1, b"x" * 11)
    assert len(outbox) == 0 and list(tmp_path.iterdir()) == []


def test_crash_mid_write_leaves_old_entries_and_a_temp_that_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = Outbox(tmp_path)
    outbox.put(1, b"safe")

    def power_cut(src: object, dst: object) -> None:
        raise OSError("power cut before rename")

    monkeypatch.setattr(durable_files.os, "replace", power_cut)
    with pytest.raises(OutboxError, match="cannot store update 2"):
        outbox.put(2, b"lost")
    monkeypatch.undo()
    assert (tmp_path / (entry_name(2) + durable_files.TEMP_SUFFIX)).exists()
    # A half-written temp from another crash, with garbage in it.
    (tmp_path / (entry_name(3) + durable_files.TEMP_SUFFIX)).write_bytes(b"FBOUT")

    reopened = Outbox(tmp_path)
    assert reopened.pending() == [(1, b"safe")]
    assert reopened.removed_temps == 2
    assert reopened.corrupt_entries == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [entry_name(1)]


def _damage_flip_payload_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _damage_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: HEADER_SIZE - 3])


def _damage_cut_payload(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-2])


def _damage_magic(path: Path) -> None:
    path.write_bytes(b"X" + path.read_bytes()[1:])


def _damage_empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize(
    "damage",
    [
        _damage_flip_payload_byte,
        _damage_truncate,
        _damage_cut_payload,
        _damage_magic,
        _damage_empty,
    ],
)
def test_corrupt_entry_is_set_aside_and_counted(tmp_path: Path, damage) -> None:  # type: ignore[no-untyped-def]
    outbox = Outbox(tmp_path)
    outbox.put(1, b"first update")
    outbox.put(2, b"second update")
    damage(tmp_path / entry_name(1))

    reopened = Outbox(tmp_path)
    assert reopened.pending() == [(2, b"second update")]
    assert reopened.corrupt_entries == 1
    assert (tmp_path / (entry_name(1) + ".corrupt")).exists()
    assert not (tmp_path / entry_name(1)).exists()
    # Set aside once, not again on the next open.
    assert Outbox(tmp_path).corrupt_entries == 0


def test_entry_renamed_to_another_seq_is_detected(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    outbox.put(7, b"seven")
    os.replace(tmp_path / entry_name(7), tmp_path / entry_name(8))

    reopened = Outbox(tmp_path)
    assert reopened.pending() == []
    assert reopened.corrupt_entries == 1


def test_entry_damaged_after_open_is_left_out_of_pending(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    outbox.put(1, b"one")
    outbox.put(2, b"two")
    _damage_flip_payload_byte(tmp_path / entry_name(2))

    assert outbox.pending() == [(1, b"one")]
    assert outbox.corrupt_entries == 1
    assert outbox.seqs() == [1]


def test_foreign_files_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("not an update")
    (tmp_path / "update-abc.msg").write_bytes(b"junk")
    outbox = Outbox(tmp_path)
    assert outbox.pending() == [] and outbox.corrupt_entries == 0
    assert (tmp_path / "README").exists() and (tmp_path / "update-abc.msg").exists()


# ---------------------------------------------------------------- device state


def test_absent_state_file_is_a_fresh_device(tmp_path: Path) -> None:
    state = load_device_state(tmp_path / "missing" / "device.state")
    assert state.next_seq == 1
    assert state.model_version is None
    assert dict(state.residual) == {}


def test_state_round_trips_with_residual_bit_for_bit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weird = np.array([np.nan, -0.0, np.inf, -np.inf, 1e-45, 3.4e38], np.float32)
    residual = {
        "W": rng.standard_normal((5, 3)).astype(np.float32),
        "b": weird,
        "scalar": np.array(2.5, np.float32),
        "empty": np.zeros((0, 4), np.float32),
        "strided": rng.standard_normal((4, 6)).astype(np.float32)[:, ::2],
    }
    path = tmp_path / "device.state"
    save_device_state(path, DeviceState(next_seq=17, residual=residual, model_version=9))

    loaded = load_device_state(path)
    assert loaded.next_seq == 17 and loaded.model_version == 9
    assert list(loaded.residual) == list(residual)
    for name, array in residual.items():
        got = loaded.residual[name]
        assert got.dtype == np.float32 and got.shape == array.shape
        assert got.tobytes() == np.ascontiguousarray(array).tobytes()


def test_state_is_immutable_and_copies_its_residual() -> None:
    source = np.ones(3, np.float32)
    state = DeviceState(residual={"b": source})
    source[0] = 5.0
    assert state.residual["b"][0] == 1.0
    with pytest.raises(ValueError):
        state.residual["b"][0] = 2.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"next_seq": -1}, "next_seq"),
        ({"next_seq": True}, "next_seq"),
        ({"model_version": 2**63}, "model_version"),
        ({"residual": {"W": np.ones(2, np.float64)}}, "float32"),
        ({"residual": {"W": [1.0, 2.0]}}, "float32"),
    ],
)
def test_invalid_state_is_refused(kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=message):
        DeviceState(**kwargs)


def _state_file(body: dict) -> bytes:  # type: ignore[type-arg]
    packed = msgpack.packb(body, use_bin_type=True)
    return STATE_MAGIC + struct.pack("<I", zlib.crc32(packed)) + packed


def _good_body() -> dict:  # type: ignore[type-arg]
    tensor = {"name": "W", "dtype": "float32", "shape": [2], "codec": "f32", "data": b"\0" * 8}
    return {"format": 1, "next_seq": 4, "model_version": None, "residual": [tensor]}


def test_hand_built_state_file_decodes(tmp_path: Path) -> None:
    path = tmp_path / "device.state"
    path.write_bytes(_state_file(_good_body()))
    state = load_device_state(path)
    assert state.next_seq == 4 and state.residual["W"].tolist() == [0.0, 0.0]


def _with(**changes: object) -> dict:  # type: ignore[type-arg]
    return {**_good_body(), **changes}


def _with_tensor(**changes: object) -> dict:  # type: ignore[type-arg]
    body = _good_body()
    body["residual"] = [{**body["residual"][0], **changes}]
    return body


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a device state file"),
        (b"garbage that is long enough", "not a device state file"),
        (_state_file(_good_body())[:-1], "checksum mismatch"),
        (_state_file(_good_body())[:-1] + b"\x01", "checksum mismatch"),
        (_state_file(_with(format=2)), "unsupported format"),
        (_state_file({"format": 1, "next_seq": 1}), "missing field"),
        (_state_file(_with(next_seq=-3)), "next_seq"),
        (_state_file(_with(next_seq="4")), "next_seq"),
        (_state_file(_with(model_version=1.5)), "model_version"),
        (_state_file(_with_tensor(shape=[3])), "data bytes"),
        (_state_file(_with_tensor(shape=[-2])), "shape"),
        (_state_file(_with_tensor(dtype="float64")), "dtype"),
        (_state_file(_with(residual=[_good_body()["residual"][0]] * 2)), "stored twice"),
        (STATE_MAGIC + struct.pack("<I", zlib.crc32(b"\xc1")) + b"\xc1", "msgpack"),
    ],
)
def test_bad_state_files_give_clear_errors(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "device.state"
    path.write_bytes(data)
    with pytest.raises(DeviceStateError, match=message) as caught:
        load_device_state(path)
    assert str(path) in str(caught.value)


def test_next_seq_is_lifted_above_the_outbox(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    assert next_seq_after(DeviceState(next_seq=5), outbox) == 5
    outbox.put(9, b"x")
    assert next_seq_after(DeviceState(next_seq=5), outbox) == 10
    assert next_seq_after(DeviceState(next_seq=12), outbox) == 12


def _send_one(state_path: Path, outbox: Outbox, payload: bytes) -> int:
    """What the node does per update: reserve the seq durably, then store and publish."""
    seq, state = take_seq(load_device_state(state_path), outbox)
    save_device_state(state_path, replace(state, model_version=seq * 10))
    outbox.put(seq, payload)
    return seq


def test_seq_is_never_reused_across_crashes(tmp_path: Path) -> None:
    state_path, outbox_dir = tmp_path / "node" / "device.state", tmp_path / "node" / "outbox"
    used = []
    outbox = Outbox(outbox_dir)
    used.append(_send_one(state_path, outbox, b"a"))
    used.append(_send_one(state_path, outbox, b"b"))
    outbox.remove(used[0])
    outbox.remove(used[1])  # both acked: nothing on disk holds these seqs but the state
    del outbox  # crash

    outbox = Outbox(outbox_dir)
    used.append(_send_one(state_path, outbox, b"c"))
    del outbox  # crash with seq c still pending

    outbox = Outbox(outbox_dir)
    assert [seq for seq, _ in outbox.pending()] == [used[2]]
    used.append(_send_one(state_path, outbox, b"d"))

    assert used == [1, 2, 3, 4]
    assert load_device_state(state_path).model_version == 40


def test_seq_stays_unique_when_the_state_file_is_behind_the_outbox(tmp_path: Path) -> None:
    state_path = tmp_path / "device.state"
    save_device_state(state_path, DeviceState(next_seq=3))
    outbox = Outbox(tmp_path / "outbox")
    outbox.put(3, b"put before the state was saved")  # crash before the save
    outbox.put(4, b"and another")

    seq, state = take_seq(load_device_state(state_path), Outbox(tmp_path / "outbox"))
    assert seq == 5 and state.next_seq == 6
