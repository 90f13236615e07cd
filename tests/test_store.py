"""Journal, checkpoints and recovery of the aggregator's state, without a broker.

A "crash" here is dropping the store without `close`: whatever reached the
journal with `commit` must come back, nothing may be applied twice, and the
whole history must replay from genesis to the live model bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedbus.aggregator.buffer import AggregationConfig, BufferedAggregator
from fedbus.aggregator.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    restore,
    snapshot,
)
from fedbus.aggregator.core import AggregatorCore
from fedbus.aggregator.journal import (
    SEGMENT_MAGIC,
    JournalEntry,
    JournalError,
    JournalWriter,
    read_segment,
)
from fedbus.aggregator.store import (
    AggregatorStore,
    applied_updates,
    audit_history,
    rebuild_from_genesis,
)
from fedbus.broker.codec import encode
from fedbus.broker.messages import TrainingTask, UpdateMessage
from fedbus.broker.tensors import encode_weights

SHAPES = {"W": (4, 3), "b": (3,)}
TASK = TrainingTask("toy", "softmax", SHAPES)


def _core(config: AggregationConfig | None = None) -> AggregatorCore:
    initial = {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}
    return AggregatorCore(TASK, BufferedAggregator(config or AggregationConfig.fedbuff(3), initial))


def _update(node: str, seq: int, base: int, rng: np.random.Generator) -> bytes:
    delta = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    return encode(UpdateMessage(node, seq, base, int(rng.integers(1, 50)), encode_weights(delta)))


def _state(core: AggregatorCore) -> tuple:  # type: ignore[type-arg]
    agg = core.aggregator
    return (
        agg.version,
        b"".join(w.tobytes() for w in agg.weights.values()),
        b"".join(b.tobytes() for b in agg.buffer.values()),
        agg.buffered,
        agg.normalizer,
        agg.applied_updates,
        sorted(agg.contributors),
        sorted(core.decisions.items()),
    )


def _drive(core: AggregatorCore, store: AggregatorStore, steps: int, seed: int) -> list:  # type: ignore[type-arg]
    """Feed accepted updates (and a flush now and then) as the daemon does."""
    rng = np.random.default_rng(seed)
    seqs: dict[str, int] = {}
    acked = []
    for step in range(steps):
        node = f"n{int(rng.integers(0, 5))}"
        seqs[node] = seqs.get(node, 0) + 1
        base = max(0, core.version - int(rng.integers(0, 3)))
        payload = _update(node, seqs[node], base, rng)
        outcome = core.handle_update(node, payload)
        if outcome.ack.accepted:
            store.log_accepted(node, payload)
            acked.append((node, seqs[node]))
        if step % 7 == 6 and core.flush():
            store.log_flush()
        store.commit()
        if outcome.model_changed and core.version % 4 == 0:
            store.checkpoint(core)
    return acked


def test_journal_round_trip_and_torn_tail_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "journal-00000000.log"
    writer = JournalWriter(path)
    entries = [JournalEntry.accepted("n1", b"\x01\x02"), JournalEntry.flush()]
    for entry in entries:
        writer.append(entry)
    writer.sync()
    with open(path, "ab") as handle:  # a crash in the middle of the next append
        handle.write(b"\x40\x00\x00\x00\x12\x34")
    assert read_segment(path) == entries
    reopened = JournalWriter(path)
    assert reopened.entries == 2
    reopened.append(JournalEntry.accepted("n2", b"x" * 100))
    reopened.close()
    assert read_segment(path) == [*entries, JournalEntry.accepted("n2", b"x" * 100)]


def test_journal_reader_stops_at_a_corrupt_record(tmp_path: Path) -> None:
    path = tmp_path / "journal-00000000.log"
    writer = JournalWriter(path)
    writer.append(JournalEntry.accepted("n1", b"a" * 10))
    writer.append(JournalEntry.accepted("n2", b"b" * 10))
    writer.close()
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # flip a bit in the second record's body
    path.write_bytes(bytes(data))
    assert read_segment(path) == [JournalEntry.accepted("n1", b"a" * 10)]
    assert path.read_bytes().startswith(SEGMENT_MAGIC)


def test_checkpoint_restores_every_part_of_the_state() -> None:
    core = _core()
    rng = np.random.default_rng(1)
    for seq in range(1, 5):
        core.handle_update("n1", _update("n1", seq, core.version, rng))
    core.handle_update("n2", _update("n2", 1, 0, rng))
    assert core.aggregator.buffered  # a partial buffer must survive too
    restored = _core()
    assert restore(restored, snapshot(core, 5)) == 5
    assert _state(restored) == _state(core)
    assert restored.counters.as_dict() == core.counters.as_dict()


def test_checkpoint_refuses_other_settings() -> None:
    data = snapshot(_core(AggregationConfig.fedbuff(3)), 1)
    with pytest.raises(CheckpointError, match="buffer_size"):
        restore(_core(AggregationConfig.fedbuff(4)), data)


def test_crash_after_commit_recovers_everything_acked_exactly_once(tmp_path: Path) -> None:
    live = _core()
    store = AggregatorStore(tmp_path)
    assert store.recover(live).fresh
    acked = _drive(live, store, steps=60, seed=7)
    del store  # crash: no close, no final checkpoint

    recovered = _core()
    recovery = AggregatorStore(tmp_path).recover(recovered)
    assert not recovery.fresh and recovery.replayed > 0
    assert _state(recovered) == _state(live)
    assert recovered.counters.accepted == len(acked)

    rebuilt = _core()
    assert rebuild_from_genesis(tmp_path, rebuilt) == len(acked) + _flushes(tmp_path)
    assert _state(rebuilt) == _state(live)


def test_resend_after_recovery_is_a_duplicate_not_a_second_application(tmp_path: Path) -> None:
    live = _core()
    store = AggregatorStore(tmp_path)
    store.recover(live)
    payload = _update("n1", 1, 0, np.random.default_rng(3))
    live.handle_update("n1", payload)
    store.log_accepted("n1", payload)
    store.commit()

    recovered = _core()
    AggregatorStore(tmp_path).recover(recovered)
    again = recovered.handle_update("n1", payload)
    assert again.ack.accepted and again.ack.duplicate
    assert recovered.aggregator.buffered == 1 and recovered.counters.duplicates == 1


def test_uncommitted_tail_is_not_recovered_and_was_never_acked(tmp_path: Path) -> None:
    live = _core()
    store = AggregatorStore(tmp_path)
    store.recover(live)
    rng = np.random.default_rng(5)
    committed = _update("n1", 1, 0, rng)
    live.handle_update("n1", committed)
    store.log_accepted("n1", committed)
    store.commit()
    before_tail = _state(live)
    path = store.writer.path
    size = path.stat().st_size
    tail = _update("n2", 1, 0, rng)
    store.log_accepted("n2", tail)
    store.commit()
    with open(path, "r+b") as handle:  # the disk kept only part of the last record
        handle.truncate(size + 7)

    recovered = _core()
    AggregatorStore(tmp_path).recover(recovered)
    assert _state(recovered) == before_tail


def test_clean_close_leaves_nothing_to_replay(tmp_path: Path) -> None:
    live = _core()
    store = AggregatorStore(tmp_path)
    store.recover(live)
    _drive(live, store, steps=20, seed=11)
    store.close(live)
    recovered = _core()
    recovery = AggregatorStore(tmp_path).recover(recovered)
    assert recovery.replayed == 0 and _state(recovered) == _state(live)


def test_pruning_keeps_the_newest_recovery_points(tmp_path: Path) -> None:
    live = _core()
    store = AggregatorStore(tmp_path, keep_checkpoints=2)
    store.recover(live)
    _drive(live, store, steps=80, seed=2)
    assert len(list(tmp_path.glob("checkpoint-*.ckpt"))) == 2
    recovered = _core()
    AggregatorStore(tmp_path).recover(recovered)
    assert _state(recovered) == _state(live)


def test_unreadable_newest_checkpoint_falls_back_to_an_older_one(tmp_path: Path) -> None:
    live = _core()
    store = AggregatorStore(tmp_path)
    store.recover(live)
    _drive(live, store, steps=40, seed=4)
    newest = sorted(tmp_path.glob("checkpoint-*.ckpt"))[-1]
    newest.write_bytes(b"\x00garbage")
    recovered = _core()
    AggregatorStore(tmp_path).recover(recovered)
    assert _state(recovered) == _state(live)


def _flushes(directory: Path) -> int:
    return sum(
        entry.kind == "flush"
        for path in sorted(directory.glob("journal-*.log"))
        for entry in read_segment(path)
    )


def test_audit_of_a_cleanly_closed_history_is_consistent(tmp_path: Path) -> None:
    live = _core()
    store = AggregatorStore(tmp_path)
    store.recover(live)
    acked = _drive(live, store, steps=50, seed=9)
    store.close(live)
    report = audit_history(tmp_path, _core(), _core())
    assert report["consistent"] and report["model_matches_checkpoint"]
    assert report["updates_in_journal"] == len(acked) and report["version"] == live.version
    assert sorted(applied_updates(tmp_path)) == sorted(acked)


def test_audit_notices_a_journal_that_does_not_match_the_checkpoint(tmp_path: Path) -> None:
    live = _core()
    store = AggregatorStore(tmp_path)
    store.recover(live)
    _drive(live, store, steps=30, seed=9)
    store.close(live)
    # An entry removed from history: replay falls short of the checkpointed model.
    first = tmp_path / "journal-00000000.log"
    entries = read_segment(first)
    first.unlink()
    writer = JournalWriter(first)
    for entry in entries[1:]:
        writer.append(entry)
    writer.close()
    try:
        report = audit_history(tmp_path, _core(), _core())
    except JournalError:
        return  # replay refused an entry (versions no longer line up): detected too
    assert not report["consistent"] and not report["model_matches_checkpoint"]


def test_segment_cut_off_inside_its_header_counts_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "journal-00000003.log"
    path.write_bytes(SEGMENT_MAGIC[:3])  # crash right after creating the segment
    assert read_segment(path) == []
    writer = JournalWriter(path)
    writer.append(JournalEntry.flush())
    writer.close()
    assert read_segment(path) == [JournalEntry.flush()]


def test_state_of_another_configuration_is_refused_not_skipped(tmp_path: Path) -> None:
    live = _core(AggregationConfig.fedbuff(3))
    store = AggregatorStore(tmp_path)
    store.recover(live)
    _drive(live, store, steps=10, seed=1)
    store.close(live)
    with pytest.raises(CheckpointMismatchError, match="buffer_size"):
        AggregatorStore(tmp_path).recover(_core(AggregationConfig.fedbuff(4)))
