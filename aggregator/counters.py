"""What the aggregator has seen, for its status topic and its logs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

#: Staleness values at or above this share one histogram key, "<this>+", so the
#: status map stays far below the decoders' 256-entry map limit.
STALENESS_OPEN_BUCKET = 128


def staleness_histogram(counts: Counter[int]) -> dict[str, int]:
    """Accepted updates per staleness: exact keys below 128, then one "128+" key."""
    out: dict[str, int] = {}
    for staleness, n in sorted(counts.items()):
        key = str(staleness) if staleness < STALENESS_OPEN_BUCKET else f"{STALENESS_OPEN_BUCKET}+"
        out[key] = out.get(key, 0) + n
    return out


@dataclass
class Counters:
    accepted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    staleness: Counter[int] = field(default_factory=Counter)
    bad_topics: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    models_published: int = 0
    #: Feature statistics for federated normalization (stats/<node>).
    stats_accepted: int = 0
    stats_rejected: int = 0
    stats_ignored: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def as_dict(self) -> dict[str, int | dict[str, int]]:
        """Plain msgpack-friendly form (string keys) for `aggregator/status`."""
        return {
            "accepted": self.accepted,
            "rejected": self.rejected_total,
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "duplicates": self.duplicates,
            "staleness_histogram": staleness_histogram(self.staleness),
            "bad_topics": self.bad_topics,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "models_published": self.models_published,
            "stats_accepted": self.stats_accepted,
            "stats_rejected": self.stats_rejected,
            "stats_ignored": self.stats_ignored,
        }
