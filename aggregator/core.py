"""The aggregator's decisions, free of I/O: payload in, ack (and maybe a new model) out.

The daemon hands every received update here together with the node id from
its topic. This module decodes and validates it, answers a resend of an
already decided sequence number with the same verdict (so a lost ack never
causes a second application), feeds accepted deltas to the buffer and keeps
the counters. Time is passed in, never read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

from fedbus.aggregator.buffer import AggregationMode, BufferedAggregator, update_coefficient
from fedbus.aggregator.counters import Counters
from fedbus.aggregator.normalization import StatsPool
from fedbus.aggregator.validation import (
    Rejection,
    ValidationContext,
    check_signature,
    decode_update,
    validate_update,
)
from fedbus.broker.codec import DEFAULT_LIMITS, DecodeLimits, decode
from fedbus.broker.errors import CodecError, ProtocolError
from fedbus.broker.log_throttle import ThrottledLog
from fedbus.broker.messages import (
    AckMessage,
    FeatureStatistics,
    ModelMessage,
    RejectReason,
    TrainingTask,
)
from fedbus.broker.signing import verify_stats
from fedbus.broker.tensors import encode_weights
from fedbus.broker.topics import DEFAULT_FLEET

log = logging.getLogger(__name__)

#: An update whose norm times its buffer weight reaches this is refused even
#: without a configured norm bound: float32 ends at 3.4e38, and a buffer of
#: such updates (or one update times a lying sample count) must stay finite.
ACCUMULATION_GUARD = 1e30

#: Each reject reason is logged at most once per this many seconds.
REJECTION_LOG_WINDOW = 10.0


_NOT_A_VERDICT = frozenset(
    {
        RejectReason.MALFORMED,
        RejectReason.UNSUPPORTED_VERSION,
        RejectReason.OVERSIZE,
        RejectReason.NODE_MISMATCH,
        RejectReason.REPLAY,
        # A forger must not be able to burn a genuine node's next seq.
        RejectReason.UNSIGNED,
        RejectReason.BAD_SIGNATURE,
        # Not remembered, or every id an intruder makes up would grow the table.
        RejectReason.UNKNOWN_NODE,
    }
)


@dataclass(frozen=True)
class Outcome:
    """What the daemon must publish after one update."""

    ack: AckMessage
    model_changed: bool
    #: Versions behind the model when accepted (None for a rejection or a duplicate).
    staleness: int | None = None


@dataclass(frozen=True)
class StatsOutcome:
    """What one `stats` message did: joined the pool, and completed it."""

    pooled: bool
    complete: bool


class AggregatorCore:
    def __init__(
        self,
        task: TrainingTask,
        aggregator: BufferedAggregator,
        *,
        known_nodes: frozenset[str] | None = None,
        limits: DecodeLimits = DEFAULT_LIMITS,
        max_update_norm: float | None = None,
        stats_quorum: int = 1,
        verify_keys: Mapping[str, bytes] | None = None,
        fleet: str = DEFAULT_FLEET,
    ) -> None:
        self.task = task
        self.aggregator = aggregator
        if verify_keys is not None and known_nodes is None:
            known_nodes = frozenset(verify_keys)
        self.known_nodes = known_nodes
        #: Node id -> Ed25519 public key; None: updates need no signature.
        self.verify_keys = None if verify_keys is None else dict(verify_keys)
        self.fleet = fleet
        self.limits = limits
        self.max_update_norm = max_update_norm
        self.counters = Counters()
        self.decisions: dict[str, AckMessage] = {}
        self.rejection_log = ThrottledLog(log, window=REJECTION_LOG_WINDOW)
        self.stats_pool = StatsPool(task_feature_count(task), stats_quorum)

    def enrol(self, verify_keys: Mapping[str, bytes]) -> None:
        """Replace the enrolled nodes and their keys (the accounts file changed)."""
        self.verify_keys = dict(verify_keys)
        self.known_nodes = frozenset(verify_keys)

    def handle_stats(
        self,
        topic_node: str,
        payload: bytes,
        now: float | None = None,
        *,
        replaying: bool = False,
    ) -> StatsOutcome:
        """Take one node's feature statistics from `stats/<topic_node>`.

        Pooled statistics must be journaled (a replay pools the same
        normalization). When they complete the quorum the task carries the
        pooled normalization, and the caller must make that durable and
        publish the model. Statistics are ignored (and counted) when the task
        needs none or already has its normalization; they never move weights,
        and a bad payload is counted, logged and dropped. `replaying` skips
        the enrolment check, as for updates.
        """
        self.counters.bytes_in += len(payload)
        if not self.task.needs_normalization:
            self.counters.stats_ignored += 1
            return StatsOutcome(pooled=False, complete=False)
        try:
            stats = decode(payload, FeatureStatistics, self.limits)
            if stats.node != topic_node:
                raise ProtocolError(f"stats of node {stats.node!r} on the topic of {topic_node!r}")
            enrolled = self.known_nodes is None or topic_node in self.known_nodes
            if not (enrolled or replaying):
                raise ProtocolError(f"node {topic_node!r} is not enrolled")
            if self.verify_keys is not None and not replaying:
                key = self.verify_keys.get(topic_node)
                if key is None or not verify_stats(key, self.fleet, stats):
                    raise ProtocolError(f"statistics of {topic_node!r} are not signed by its key")
            complete = self.stats_pool.add(stats)
        except (CodecError, ProtocolError) as exc:
            self.counters.stats_rejected += 1
            self.rejection_log.log(
                "bad_stats", now, "refused statistics from %s: %s", topic_node, exc
            )
            return StatsOutcome(pooled=False, complete=False)
        self.counters.stats_accepted += 1
        if complete:
            pooled = self.stats_pool.pooled()
            self.task = replace(self.task, normalization=pooled)
            log.info("normalization pooled from %d nodes' statistics", pooled.nodes)
        return StatsOutcome(pooled=True, complete=complete)

    @property
    def version(self) -> int:
        return self.aggregator.version

    def model_message(self) -> ModelMessage:
        return ModelMessage(self.version, self.task, encode_weights(self.aggregator.weights))

    def handle_update(
        self, topic_node: str, payload: bytes, now: float | None = None, *, replaying: bool = False
    ) -> Outcome:
        """Decide on one update payload received on `update/<topic_node>`.

        `now` (monotonic seconds) paces the rejection log; None logs every one.
        `replaying`: the update comes from the journal, so it was accepted
        under the policy of its day; the policy checks (enrolment, norm bound)
        are not run again, or a changed setting would make recovery refuse
        history. Every check that decides how the model moves still runs.
        """
        self.counters.bytes_in += len(payload)
        decoded = decode_update(payload, self.limits)
        if isinstance(decoded, Rejection):
            return self._reject(topic_node, decoded, now)
        if self.verify_keys is not None and not replaying:
            unverified = check_signature(decoded, topic_node, self.fleet, self.verify_keys)
            if unverified is not None:
                return self._reject(topic_node, replace(unverified, seq=decoded.seq), now)
        previous = self.decisions.get(topic_node)
        if previous is not None and previous.seq == decoded.seq and decoded.node == topic_node:
            self.counters.duplicates += 1
            return Outcome(replace(previous, version=self.version, duplicate=True), False)
        ctx = ValidationContext(
            version=self.version,
            layout=self.task.weight_shapes,
            max_staleness=self.aggregator.config.max_staleness,
            known_nodes=None if replaying else self.known_nodes,
            last_seq=None if previous is None else previous.seq,
            limits=self.limits,
            max_update_norm=None if replaying else self.max_update_norm,
        )
        checked = validate_update(decoded, topic_node, ctx)
        if isinstance(checked, Rejection):
            return self._reject(topic_node, checked, now)
        if (
            self.aggregator.config.mode is AggregationMode.SYNC
            and topic_node in self.aggregator.contributors
        ):
            return self._reject(
                topic_node,
                Rejection(
                    RejectReason.STALE, "node already contributed to this round", decoded.seq
                ),
                now,
            )
        message = checked.message
        weight, _ = update_coefficient(
            self.aggregator.config, checked.staleness, message.num_samples
        )
        if not checked.norm * weight < ACCUMULATION_GUARD:
            return self._reject(
                topic_node,
                Rejection(
                    RejectReason.NORM_EXCEEDED,
                    f"weighted norm {checked.norm * weight:.3g} would overflow the float32 buffer",
                    decoded.seq,
                ),
                now,
            )
        stepped = self.aggregator.add(
            topic_node, checked.delta, message.base_version, message.num_samples
        )
        self.counters.accepted += 1
        self.counters.staleness[checked.staleness] += 1
        ack = AckMessage(topic_node, message.seq, True, self.version)
        self.decisions[topic_node] = ack
        return Outcome(ack, stepped, checked.staleness)

    def flush(self) -> bool:
        """Apply a partial buffer (deadline passed); True if the model moved."""
        return self.aggregator.flush()

    def _reject(self, topic_node: str, rejection: Rejection, now: float | None) -> Outcome:
        self.counters.rejected[rejection.reason.value] += 1
        self.rejection_log.log(
            rejection.reason.value,
            now,
            "rejected update from %s: %s (%s)",
            topic_node,
            rejection.reason.value,
            rejection.detail[:200],
        )
        ack = AckMessage(
            topic_node,
            rejection.seq,
            False,
            self.version,
            reason=rejection.reason,
            detail=rejection.detail[:200],
        )
        if self._is_own_decision(topic_node, rejection):
            self.decisions[topic_node] = ack
        return Outcome(ack, False)

    def _is_own_decision(self, topic_node: str, rejection: Rejection) -> bool:
        """Remember a rejection as the node's verdict for its seq only when it is one.

        An unreadable payload, a body naming another node or a replay says
        nothing about the node's own update with that seq; remembering it would
        let a stray message overwrite the verdict a genuine resend must get.
        """
        if rejection.seq is None or rejection.reason in _NOT_A_VERDICT:
            return False
        previous = self.decisions.get(topic_node)
        return previous is None or previous.seq is None or rejection.seq > previous.seq


def task_feature_count(task: TrainingTask) -> int:
    """How many input features the task's model takes (rows of W or W1)."""
    first = task.weight_shapes.get("W", task.weight_shapes.get("W1"))
    if first is None or len(first) != 2:
        return len(task.features)
    return first[0]
