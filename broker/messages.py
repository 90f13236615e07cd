"""The messages of wire protocol v1 as frozen dataclasses.

These are plain values: no I/O, no msgpack. `fedbus.broker.codec` turns them
into bytes and back, and docs/PROTOCOL.md documents every field. Constructors
check the invariants a receiver relies on, so an invalid message cannot be
built locally either.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

from fedbus.broker.errors import ProtocolError
from fedbus.broker.tensors import WireTensor
from fedbus.broker.topics import validate_id

PROTOCOL_VERSION = 1


class MessageType(str, Enum):
    MODEL = "model"
    UPDATE = "update"
    ACK = "ack"
    NODE_STATUS = "node_status"
    AGGREGATOR_STATUS = "aggregator_status"


class RejectReason(str, Enum):
    """Why the aggregator refused an update; sent in the ack and counted."""

    MALFORMED = "malformed"  # not msgpack, wrong schema or types, bad tensor bytes
    UNSUPPORTED_VERSION = "unsupported_version"  # protocol version `v` not spoken
    NODE_MISMATCH = "node_mismatch"  # node id in the body differs from the topic
    UNKNOWN_NODE = "unknown_node"  # node not enrolled in this fleet
    WRONG_SHAPE = "wrong_shape"  # tensor names or shapes differ from the model
    NON_FINITE = "non_finite"  # NaN or Inf in the delta
    BAD_SAMPLES = "bad_samples"  # num_samples < 1
    FUTURE_BASE = "future_base"  # base_version newer than the aggregator's model
    STALE = "stale"  # staleness above the configured bound (or != 0 in sync mode)
    REPLAY = "replay"  # sequence number older than one already decided
    OVERSIZE = "oversize"  # payload larger than the configured limit
    NORM_EXCEEDED = "norm_exceeded"  # L2 norm of the delta above the configured bound


def _check_non_negative(name: str, value: int) -> None:
    if value < 0:
        raise ProtocolError(f"{name} must be >= 0, got {value}")


@dataclass(frozen=True)
class TrainingTask:
    """What every node must do with the model: learner, its layout and local work."""

    name: str
    learner: str
    weight_shapes: Mapping[str, tuple[int, ...]]
    local_epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 0.1

    def __post_init__(self) -> None:
        if self.local_epochs < 1 or self.batch_size < 1 or not self.learning_rate > 0:
            raise ProtocolError("task needs local_epochs >= 1, batch_size >= 1, learning_rate > 0")
        if not self.weight_shapes:
            raise ProtocolError("task needs at least one weight tensor")
        frozen = {k: tuple(int(d) for d in v) for k, v in self.weight_shapes.items()}
        object.__setattr__(self, "weight_shapes", MappingProxyType(frozen))


@dataclass(frozen=True)
class ModelMessage:
    """The global model, retained on `model` so late joiners get it at once."""

    version: int
    task: TrainingTask
    tensors: tuple[WireTensor, ...]

    def __post_init__(self) -> None:
        _check_non_negative("version", self.version)


@dataclass(frozen=True)
class UpdateMessage:
    """A node's weight delta `w_local - w_base`, computed on model `base_version`."""

    node: str
    seq: int
    base_version: int
    num_samples: int
    tensors: tuple[WireTensor, ...]
    train_loss: float | None = None

    def __post_init__(self) -> None:
        validate_id(self.node)
        _check_non_negative("seq", self.seq)
        _check_non_negative("base_version", self.base_version)


@dataclass(frozen=True)
class AckMessage:
    """The aggregator's answer to one update on `ack/<node>`.

    `seq` is None when the update was too broken to read its sequence number.
    `duplicate` marks the repeated answer to an update decided before (a
    resend after a lost ack); its `accepted` is the original decision.
    """

    node: str
    seq: int | None
    accepted: bool
    version: int
    reason: RejectReason | None = None
    detail: str = ""
    duplicate: bool = False

    def __post_init__(self) -> None:
        validate_id(self.node)
        if self.accepted == (self.reason is not None):
            raise ProtocolError("an ack has a reason exactly when it rejects")


class NodeState(str, Enum):
    ONLINE = "online"
    TRAINING = "training"
    OFFLINE = "offline"


@dataclass(frozen=True)
class NodeStatus:
    """Presence of a node, retained on `status/<node>`; also its last will."""

    node: str
    state: NodeState
    version: int | None = None

    def __post_init__(self) -> None:
        validate_id(self.node)


@dataclass(frozen=True)
class AggregatorStatus:
    """Health and counters of the aggregator, retained on `aggregator/status`."""

    state: str
    version: int
    mode: str = ""
    counters: Mapping[str, int | float | Mapping[str, int]] = field(default_factory=dict)


Message = ModelMessage | UpdateMessage | AckMessage | NodeStatus | AggregatorStatus
