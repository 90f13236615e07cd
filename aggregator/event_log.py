"""The aggregator's structured event log: one JSON object per line.

What happened, in order, for people and tools after the fact (`fedbus report`
draws its plots from it): every decided update with its verdict, staleness
and size, every model publication, every checkpoint, start and stop. It is
telemetry, not the journal: lines are flushed once per batch of decisions
but never fsynced, and a crash may lose the last batch's lines. The journal
(fedbus.aggregator.journal) remains what recovery trusts.

Each line holds `ts` (Unix seconds, wall clock) and `event`, then the
fields of that event (docs/OBSERVABILITY.md lists them).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any

from fedbus.broker.messages import AckMessage

EVENT_LOG_FILE = "events.jsonl"


class EventLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: IO[str] | None = self.path.open("a", encoding="utf-8")

    def write(self, event: str, **fields: Any) -> None:
        if self._handle is None:
            return
        record = {"ts": round(time.time(), 4), "event": event, **fields}
        self._handle.write(json.dumps(record, separators=(",", ":")) + "\n")

    def update(self, ack: AckMessage, staleness: int | None, size: int) -> None:
        self.write(
            "update",
            node=ack.node,
            seq=ack.seq,
            accepted=ack.accepted,
            reason=None if ack.reason is None else ack.reason.value,
            duplicate=ack.duplicate,
            staleness=staleness,
            version=ack.version,
            bytes=size,
        )

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every well-formed line of an event log; a torn last line (a crash) is skipped."""
    events = []
    with Path(path).open(encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "event" in record:
                events.append(record)
    return events
