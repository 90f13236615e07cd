"""The aggregator's decisions, free of I/O: payload in, ack (and maybe a new model) out.

The daemon hands every received update here together with the node id from
its topic. This module decodes and validates it, answers a resend of an
already decided sequence number with the same verdict (so a lost ack never
causes a second application), feeds accepted deltas to the buffer and keeps
the counters. Time is passed in, never read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from fedbus.aggregator.buffer import AggregationMode, BufferedAggregator, update_coefficient
from fedbus.aggregator.counters import Counters
from fedbus.aggregator.validation import (
    Rejection,
    ValidationContext,
    decode_update,
    validate_update,
)
from fedbus.broker.codec import DEFAULT_LIMITS, DecodeLimits
from fedbus.broker.log_throttle import ThrottledLog
from fedbus.broker.messages import AckMessage, ModelMessage, RejectReason, TrainingTask
from fedbus.broker.tensors import encode_weights

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
        # Not remembered, or every id an intruder makes up would grow the table.
        RejectReason.UNKNOWN_NODE,
    }
)


@dataclass(frozen=True)
class Outcome:
    """What the daemon must publish after one update."""

    ack: AckMessage
    model_changed: bool


class AggregatorCore:
    def __init__(
        self,
        task: TrainingTask,
        aggregator: BufferedAggregator,
        *,
        known_nodes: frozenset[str] | None = None,
        limits: DecodeLimits = DEFAULT_LIMITS,
        max_update_norm: float | None = None,
    ) -> None:
        self.task = task
        self.aggregator = aggregator
        self.known_nodes = known_nodes
        self.limits = limits
        self.max_update_norm = max_update_norm
        self.counters = Counters()
        self.decisions: dict[str, AckMessage] = {}
        self.rejection_log = ThrottledLog(log, window=REJECTION_LOG_WINDOW)

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
        return Outcome(ack, stepped)

    def flush(self) -> bool:
        """Apply a partial buffer (deadline passed); True if the model moved."""
        return self.aggregator.flush()

    def _reject(self, topic_node: str, rejection: Rejection, now: float | None) -> Outcome:
        self.counters.rejected[rejection.reason.value] += 1
        message = "rejected update from %s: %s (%s)"
        args = (topic_node, rejection.reason.value, rejection.detail[:200])
        if now is None:
            log.info(message, *args)
        else:
            self.rejection_log.log(rejection.reason.value, now, message, *args)
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
