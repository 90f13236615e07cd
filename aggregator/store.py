"""The aggregator's state directory: checkpoints plus the journal after each.

Layout of `<state dir>`:

    checkpoint-00000000.ckpt   genesis: the initial model, before any update
    journal-00000000.log       entries applied after checkpoint 0
    checkpoint-00000007.ckpt   state after everything in journals 0..6
    journal-00000007.log       entries after checkpoint 7 (the one being written)

Invariant: checkpoint k plus journal k (then k+1, ...) reproduce the live
state. A new checkpoint k+1 is written only after journal k is fsynced, and
journal k is never appended to again once checkpoint k+1 exists, so a crash
between any two steps leaves a consistent pair.

Recovery loads the newest readable checkpoint and replays every later
journal through the same `AggregatorCore` the live daemon uses, so recovery
and live operation cannot diverge. With every segment kept, the whole
history replays from genesis (`rebuild_from_genesis`), which is how tests
and operators can check the model against the log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedbus.aggregator.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    checkpoint_id,
    read_checkpoint,
    write_checkpoint,
)
from fedbus.aggregator.core import AggregatorCore
from fedbus.aggregator.journal import (
    KIND_ACCEPTED,
    KIND_FLUSH,
    KIND_STATS,
    JournalEntry,
    JournalError,
    JournalWriter,
    read_segment,
    segment_name,
    segments,
)
from fedbus.broker.codec import decode
from fedbus.broker.durable_files import remove_leftover_temps
from fedbus.broker.messages import UpdateMessage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recovery:
    """What start-up found in the state directory."""

    checkpoint_id: int
    replayed: int
    fresh: bool


def apply_entry(core: AggregatorCore, entry: JournalEntry) -> bool:
    """Feed one journal entry back through the core; True if the model moved.

    A journaled update was accepted once from exactly this state, so it must
    be accepted again; anything else means the log and checkpoint disagree.
    """
    if entry.kind == KIND_FLUSH:
        return core.flush()
    if entry.kind == KIND_STATS:
        if not core.handle_stats(entry.node, entry.payload, replaying=True).pooled:
            raise JournalError(
                f"journaled statistics from {entry.node} were not pooled on replay: "
                "checkpoint and journal disagree"
            )
        return False
    if entry.kind != KIND_ACCEPTED:
        raise JournalError(f"unknown journal entry kind {entry.kind!r}")
    outcome = core.handle_update(entry.node, entry.payload, replaying=True)
    if not outcome.ack.accepted or outcome.ack.duplicate:
        raise JournalError(
            f"journaled update from {entry.node} seq {outcome.ack.seq} was not accepted "
            f"on replay ({outcome.ack.reason}): checkpoint and journal disagree"
        )
    return outcome.model_changed


def _checkpoints(directory: Path) -> list[tuple[int, Path]]:
    found = [(checkpoint_id(p), p) for p in directory.iterdir()]
    return sorted((i, p) for i, p in found if i is not None)


class AggregatorStore:
    """Owns the state directory of one aggregator; see the module docstring."""

    def __init__(self, directory: Path, *, keep_checkpoints: int | None = None) -> None:
        """`keep_checkpoints`: prune all but the newest N recovery points (None: keep all)."""
        self.directory = directory
        self.keep_checkpoints = keep_checkpoints
        self.checkpoint_id = 0
        self._writer: JournalWriter | None = None

    # ------------------------------------------------------------ start-up

    def recover(self, core: AggregatorCore) -> Recovery:
        """Bring `core` (freshly built) to the last durable state, ready to append."""
        self.directory.mkdir(parents=True, exist_ok=True)
        remove_leftover_temps(self.directory)
        loaded = self._load_newest_checkpoint(core)
        if loaded is None:
            write_checkpoint(self.directory, core, 0)
            self._open_segment(0)
            return Recovery(0, 0, fresh=True)
        replayed = 0
        for seg_id, path in segments(self.directory):
            if seg_id < loaded:
                continue
            for entry in read_segment(path):
                apply_entry(core, entry)
                replayed += 1
        self.checkpoint_id = max([loaded] + [i for i, _ in segments(self.directory)])
        if replayed:
            self.checkpoint(core)  # start from a clean recovery point
        else:
            self._open_segment(self.checkpoint_id)
        log.info(
            "recovered aggregator state: checkpoint %d, %d journal entries replayed, version %d",
            loaded,
            replayed,
            core.version,
        )
        return Recovery(loaded, replayed, fresh=False)

    def _load_newest_checkpoint(self, core: AggregatorCore) -> int | None:
        for found_id, path in reversed(_checkpoints(self.directory)):
            try:
                read_checkpoint(core, path)
                return found_id
            except CheckpointMismatchError:
                raise  # readable, but another run's: falling back would hide that
            except CheckpointError as exc:
                log.error("skipping unreadable checkpoint %s: %s", path.name, exc)
        return None

    # ------------------------------------------------------------ running

    @property
    def writer(self) -> JournalWriter:
        if self._writer is None:
            raise JournalError("the store is not open: call recover() first")
        return self._writer

    def log_accepted(self, node: str, payload: bytes) -> None:
        self.writer.append(JournalEntry.accepted(node, payload))

    def log_flush(self) -> None:
        self.writer.append(JournalEntry.flush())

    def log_stats(self, node: str, payload: bytes) -> None:
        self.writer.append(JournalEntry.stats(node, payload))

    def commit(self) -> None:
        """fsync what was logged; only then may acks for it go out."""
        self.writer.sync()

    @property
    def uncommitted(self) -> int:
        return 0 if self._writer is None else self._writer.unsynced

    def checkpoint(self, core: AggregatorCore) -> None:
        """Write the next recovery point and start its journal segment."""
        if self._writer is not None:
            self._writer.sync()
        next_id = self.checkpoint_id + 1
        write_checkpoint(self.directory, core, next_id)
        if self._writer is not None:
            self._writer.close()
        self._open_segment(next_id)
        self._prune()

    def close(self, core: AggregatorCore) -> None:
        """Checkpoint on a clean shutdown, so the next start replays nothing."""
        if self._writer is None:
            return
        if self._writer.entries:
            self.checkpoint(core)
        self.writer.close()
        self._writer = None

    def _open_segment(self, seg_id: int) -> None:
        self.checkpoint_id = seg_id
        self._writer = JournalWriter(self.directory / segment_name(seg_id))

    def _prune(self) -> None:
        if self.keep_checkpoints is None:
            return
        points = _checkpoints(self.directory)
        for old_id, path in points[: -self.keep_checkpoints]:
            path.unlink(missing_ok=True)
            (self.directory / segment_name(old_id)).unlink(missing_ok=True)


def rebuild_from_genesis(directory: Path, core: AggregatorCore, until: int | None = None) -> int:
    """Replay the whole history into a fresh `core`; returns the entries applied.

    Needs checkpoint 0 and every journal segment (the default: nothing is
    pruned). `until`: stop before the segment of that checkpoint id.
    """
    genesis = directory / "checkpoint-00000000.ckpt"
    if not genesis.exists():
        raise JournalError(f"{directory}: no genesis checkpoint (history was pruned)")
    read_checkpoint(core, genesis)
    applied = 0
    for seg_id, path in segments(directory):
        if until is not None and seg_id >= until:
            break
        for entry in read_segment(path):
            apply_entry(core, entry)
            applied += 1
    return applied


def applied_updates(directory: Path) -> list[tuple[str, int]]:
    """(node, seq) of every journaled update, in journal order."""
    found = []
    for _, path in segments(directory):
        for entry in read_segment(path):
            if entry.kind == KIND_ACCEPTED:
                update = decode(entry.payload, UpdateMessage)
                found.append((entry.node, update.seq))
    return found


def audit_history(
    directory: Path, replay_core: AggregatorCore, checkpoint_core: AggregatorCore
) -> dict[str, Any]:
    """Check the journal against the newest checkpoint; both cores start fresh.

    Replays everything from genesis into `replay_core`, loads the newest
    checkpoint into `checkpoint_core`, and compares model bits, version and
    buffer. Only the entries up to that checkpoint can be compared with it,
    so this is meant for a cleanly stopped aggregator (its last act is a
    checkpoint) or one whose newest checkpoint closes the history.
    """
    newest_id, newest = _checkpoints(directory)[-1]
    read_checkpoint(checkpoint_core, newest)
    entries = rebuild_from_genesis(directory, replay_core, until=newest_id)
    applied = applied_updates(directory)
    duplicates = len(applied) - len(set(applied))

    def bits(core: AggregatorCore) -> tuple[int, bytes, bytes]:
        agg = core.aggregator
        return (
            agg.version,
            b"".join(w.tobytes() for w in agg.weights.values()),
            b"".join(w.tobytes() for w in agg.buffer.values()),
        )

    same = bits(replay_core) == bits(checkpoint_core)
    return {
        "checkpoint": newest_id,
        "version": checkpoint_core.version,
        "entries_replayed": entries,
        "updates_in_journal": len(applied),
        "duplicate_updates": duplicates,
        "model_matches_checkpoint": same,
        "consistent": same and duplicates == 0,
    }
