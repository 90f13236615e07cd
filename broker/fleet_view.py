"""What a fleet is doing, pieced together from its MQTT traffic alone.

`fedbus status` subscribes to the fleet's topics and feeds every message
here. No access to the aggregator's files is needed: the retained
`aggregator/status` and `status/<node>` messages give the current state at
once, and updates, acks and node metrics fill in each node's activity as
they pass. Pure: messages and times in, a snapshot out; nothing here opens
a socket or reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedbus.broker.codec import decode
from fedbus.broker.errors import CodecError, ProtocolError
from fedbus.broker.messages import (
    AckMessage,
    AggregatorStatus,
    NodeMetrics,
    NodeStatus,
    UpdateMessage,
)
from fedbus.broker.topics import Channel, Topics


@dataclass
class NodeView:
    node: str
    state: str = "unknown"
    #: Model version the node last said it holds or trains on.
    version: int | None = None
    updates: int = 0
    last_update_at: float | None = None
    last_seq: int | None = None
    #: Model versions behind when its last update was seen (by the latest known version).
    staleness: int | None = None
    accepted: int = 0
    rejected: int = 0
    last_verdict: str | None = None
    #: The fleet's model scored on the node's own rows (node_metrics evaluation).
    evaluation: dict[str, float] = field(default_factory=dict)
    train_loss: float | None = None


@dataclass
class FleetView:
    topics: Topics
    aggregator: AggregatorStatus | None = None
    aggregator_seen_at: float | None = None
    nodes: dict[str, NodeView] = field(default_factory=dict)
    bad_messages: int = 0

    def _node(self, node: str) -> NodeView:
        view = self.nodes.get(node)
        if view is None:
            view = self.nodes[node] = NodeView(node)
        return view

    @property
    def version(self) -> int | None:
        return None if self.aggregator is None else self.aggregator.version

    def apply(self, topic: str, payload: bytes, now: float) -> None:
        """Take one message; a message that does not decode is counted, never raised."""
        try:
            channel, node = self.topics.parse(topic)
            if not payload:
                return  # a cleared retained message
            if channel is Channel.AGGREGATOR_STATUS:
                self.aggregator = decode(payload, AggregatorStatus)
                self.aggregator_seen_at = now
            elif node is None:
                return  # the model itself: its version comes with the aggregator status
            elif channel is Channel.STATUS:
                status = decode(payload, NodeStatus)
                view = self._node(node)
                view.state, view.version = status.state.value, status.version
            elif channel is Channel.UPDATE:
                self._take_update(self._node(node), decode(payload, UpdateMessage), now)
            elif channel is Channel.ACK:
                self._take_ack(self._node(node), decode(payload, AckMessage))
            elif channel is Channel.METRICS:
                metrics = decode(payload, NodeMetrics)
                self._node(node).evaluation = dict(metrics.evaluation)
        except (CodecError, ProtocolError):
            self.bad_messages += 1

    def _take_update(self, view: NodeView, update: UpdateMessage, now: float) -> None:
        view.updates += 1
        view.last_update_at = now
        view.last_seq = update.seq
        view.train_loss = update.train_loss
        if self.version is not None:
            view.staleness = max(0, self.version - update.base_version)

    @staticmethod
    def _take_ack(view: NodeView, ack: AckMessage) -> None:
        if ack.duplicate:
            return
        if ack.accepted:
            view.accepted += 1
            view.last_verdict = "accepted"
        else:
            view.rejected += 1
            view.last_verdict = ack.reason.value if ack.reason else "rejected"

    def snapshot(self, now: float) -> dict[str, Any]:
        """Plain values for JSON output and the terminal view."""
        agg = self.aggregator
        states = [v.state for v in self.nodes.values()]
        return {
            "fleet": self.topics.fleet,
            "aggregator": None
            if agg is None
            else {
                "state": agg.state,
                "version": agg.version,
                "mode": agg.mode,
                "counters": dict(agg.counters),
                "seen_seconds_ago": None
                if self.aggregator_seen_at is None
                else round(now - self.aggregator_seen_at, 1),
            },
            "nodes_online": sum(s in ("online", "training") for s in states),
            "nodes_training": states.count("training"),
            "nodes_offline": states.count("offline"),
            "bad_messages": self.bad_messages,
            "nodes": [
                {
                    "node": v.node,
                    "state": v.state,
                    "version": v.version,
                    "updates": v.updates,
                    "last_update_seconds_ago": None
                    if v.last_update_at is None
                    else round(now - v.last_update_at, 1),
                    "last_seq": v.last_seq,
                    "staleness": v.staleness,
                    "accepted": v.accepted,
                    "rejected": v.rejected,
                    "last_verdict": v.last_verdict,
                    "evaluation": v.evaluation,
                    "train_loss": v.train_loss,
                }
                for v in sorted(self.nodes.values(), key=lambda v: v.node)
            ],
        }
