"""Every MQTT topic fedbus uses, built and parsed in this one module.

No other module holds a topic literal: the layout of the topic tree is part
of the wire protocol (docs/PROTOCOL.md section "Topics"), and keeping it here
means a change to it is a change to one file that both sides import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from fedbus.broker.errors import ProtocolError

ROOT = "fedbus"
DEFAULT_FLEET = "default"

_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Channel(str, Enum):
    """The kinds of topic under a fleet root; the value is the topic segment."""

    MODEL = "model"
    UPDATE = "update"
    ACK = "ack"
    STATUS = "status"
    STATS = "stats"
    METRICS = "metrics"
    AGGREGATOR_STATUS = "aggregator/status"


PER_NODE_CHANNELS = (Channel.UPDATE, Channel.ACK, Channel.STATUS, Channel.STATS, Channel.METRICS)


def validate_id(value: str, what: str = "node id") -> str:
    """Return `value` if it is a legal fleet or node id, else raise ProtocolError.

    Ids become topic levels, so they must not contain `/`, `+`, `#` or anything
    a small device would struggle to print; the pattern is the protocol's.
    """
    if not isinstance(value, str) or not _ID_PATTERN.fullmatch(value):
        raise ProtocolError(f"invalid {what} {value!r}: must match [A-Za-z0-9_-]{{1,64}}")
    return value


@dataclass(frozen=True)
class Topics:
    """The topic names of one fleet."""

    fleet: str = DEFAULT_FLEET

    def __post_init__(self) -> None:
        validate_id(self.fleet, "fleet id")

    @property
    def root(self) -> str:
        return f"{ROOT}/{self.fleet}"

    @property
    def model(self) -> str:
        return f"{self.root}/{Channel.MODEL.value}"

    @property
    def aggregator_status(self) -> str:
        return f"{self.root}/{Channel.AGGREGATOR_STATUS.value}"

    def for_node(self, channel: Channel, node_id: str) -> str:
        """The per-node topic of `channel` for `node_id` (e.g. update/<node>)."""
        if channel not in PER_NODE_CHANNELS:
            raise ValueError(f"{channel} is not a per-node channel")
        return f"{self.root}/{channel.value}/{validate_id(node_id)}"

    def update(self, node_id: str) -> str:
        return self.for_node(Channel.UPDATE, node_id)

    def ack(self, node_id: str) -> str:
        return self.for_node(Channel.ACK, node_id)

    def status(self, node_id: str) -> str:
        return self.for_node(Channel.STATUS, node_id)

    def stats(self, node_id: str) -> str:
        return self.for_node(Channel.STATS, node_id)

    def metrics(self, node_id: str) -> str:
        return self.for_node(Channel.METRICS, node_id)

    def all_nodes(self, channel: Channel) -> str:
        """Subscription filter matching `channel` for every node of the fleet."""
        if channel not in PER_NODE_CHANNELS:
            raise ValueError(f"{channel} is not a per-node channel")
        return f"{self.root}/{channel.value}/+"

    @property
    def everything(self) -> str:
        """Subscription filter for every topic of the fleet (recorder, status view)."""
        return f"{self.root}/#"

    def parse(self, topic: str) -> tuple[Channel, str | None]:
        """Split a received topic into its channel and node id (None for fleet-wide ones).

        Raises ProtocolError for a topic outside this fleet's tree or with an
        invalid node id, so a daemon can count it instead of crashing.
        """
        prefix = self.root + "/"
        if not topic.startswith(prefix):
            raise ProtocolError(f"topic {topic!r} is outside fleet root {self.root!r}")
        rest = topic[len(prefix) :]
        if rest == Channel.MODEL.value:
            return Channel.MODEL, None
        if rest == Channel.AGGREGATOR_STATUS.value:
            return Channel.AGGREGATOR_STATUS, None
        head, sep, node_id = rest.partition("/")
        for channel in PER_NODE_CHANNELS:
            if head == channel.value and sep:
                return channel, validate_id(node_id)
        raise ProtocolError(f"unknown topic {topic!r}")


# ---------------------------------------------------------------- chunk topics
# Chunk i of a message on topic T travels on T/chunk/<i> (docs/PROTOCOL.md 15.3).

#: The topic level between a message's topic and the chunk index.
CHUNK_LEVEL = "chunk"
_MAX_INDEX_DIGITS = 10
_CHUNK_TOPIC = re.compile(
    rf"(?P<base>[^+#]+)/{CHUNK_LEVEL}/(?P<index>0|[1-9][0-9]{{0,{_MAX_INDEX_DIGITS - 1}}})"
)


def chunk_topic(topic: str, index: int) -> str:
    """The topic that carries chunk `index` of a message of `topic`."""
    if isinstance(index, bool) or not isinstance(index, int):
        raise ValueError(f"chunk index must be an int, got {type(index).__name__}")
    if not 0 <= index < 10**_MAX_INDEX_DIGITS:
        raise ValueError(f"chunk index out of range: {index}")
    if not topic or "+" in topic or "#" in topic:
        raise ValueError(f"not a topic name: {topic!r}")
    if parse_chunk_topic(topic) is not None:
        raise ValueError(f"{topic!r} is already a chunk topic")
    return f"{topic}/{CHUNK_LEVEL}/{index}"


def parse_chunk_topic(topic: str) -> tuple[str, int] | None:
    """Split a chunk topic into (message topic, index); None for any other topic.

    Strict: the index is ASCII decimal without leading zeros or sign and at
    most ten digits, the message topic is non-empty, has no wildcard and is
    not a chunk topic itself. Never raises: a caller routes on the result.
    """
    match = _CHUNK_TOPIC.fullmatch(topic)
    if match is None:
        return None
    base = match["base"]
    if _CHUNK_TOPIC.fullmatch(base) is not None:
        return None
    return base, int(match["index"])


def chunk_filter(topic_filter: str) -> str | None:
    """The extra filter a subscriber of `topic_filter` needs for chunked messages.

    None when the filter ends with `#`, which already matches the chunk topics.
    """
    if topic_filter == "#" or topic_filter.endswith("/#"):
        return None
    if not topic_filter or "#" in topic_filter:
        raise ValueError(f"not a topic filter: {topic_filter!r}")
    return f"{topic_filter}/{CHUNK_LEVEL}/+"
