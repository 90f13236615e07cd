"""The messages of wire protocol v1 as frozen dataclasses.

These are plain values: no I/O, no msgpack. `fedbus.broker.codec` turns them
into bytes and back, and docs/PROTOCOL.md documents every field. Constructors
check the invariants a receiver relies on, so an invalid message cannot be
built locally either.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any

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
    STATS = "stats"
    NODE_METRICS = "node_metrics"


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
    UNSIGNED = "unsigned"  # signatures are required and the update carries none
    BAD_SIGNATURE = "bad_signature"  # the signature does not verify with the node's key


#: Bytes of an Ed25519 signature, the `sig` field of an update.
SIGNATURE_LENGTH = 64


def _check_non_negative(name: str, value: int) -> None:
    if value < 0:
        raise ProtocolError(f"{name} must be >= 0, got {value}")


def _same_length(what: str, *vectors: tuple[Any, ...]) -> int:
    lengths = {len(v) for v in vectors}
    if len(lengths) != 1:
        raise ProtocolError(f"{what}: per-feature vectors differ in length: {sorted(lengths)}")
    return lengths.pop()


def _check_finite(what: str, *vectors: tuple[float, ...]) -> None:
    if not all(math.isfinite(x) for vector in vectors for x in vector):
        raise ProtocolError(f"{what}: values must be finite")


@dataclass(frozen=True)
class FeatureStatistics:
    """A node's sufficient statistics of its cleaned local data, on `stats/<node>`.

    Per feature: how many values (missing cells excluded), their sum and sum
    of squares, their minimum and maximum (0 where the count is 0). Enough to
    pool mean, variance and range across nodes without any row leaving one.
    """

    node: str
    count: tuple[int, ...]
    total: tuple[float, ...]
    total_sq: tuple[float, ...]
    minimum: tuple[float, ...]
    maximum: tuple[float, ...]
    #: Ed25519 signature over the statistics' digest (fedbus.broker.signing), or None.
    signature: bytes | None = None

    def __post_init__(self) -> None:
        validate_id(self.node)
        if self.signature is not None and len(self.signature) != SIGNATURE_LENGTH:
            raise ProtocolError(f"stats: sig must be {SIGNATURE_LENGTH} bytes")
        _same_length("stats", self.count, self.total, self.total_sq, self.minimum, self.maximum)
        if any(c < 0 for c in self.count):
            raise ProtocolError("stats: counts must be >= 0")
        _check_finite("stats", self.total, self.total_sq, self.minimum, self.maximum)
        if any(q < 0 for q in self.total_sq):
            raise ProtocolError("stats: sums of squares must be >= 0")
        if any(
            c and lo > hi for c, lo, hi in zip(self.count, self.minimum, self.maximum, strict=True)
        ):
            raise ProtocolError("stats: a minimum exceeds its maximum")

    @property
    def n_features(self) -> int:
        return len(self.count)


@dataclass(frozen=True)
class Normalization:
    """Global per-feature statistics pooled from the nodes' `stats`, inside the task.

    `std` is the population standard deviation; a feature no node had a value
    for has count 0, mean 0 and std 1.
    """

    nodes: int
    count: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    minimum: tuple[float, ...]
    maximum: tuple[float, ...]

    def __post_init__(self) -> None:
        _same_length("normalization", self.count, self.mean, self.std, self.minimum, self.maximum)
        if self.nodes < 1 or any(c < 0 for c in self.count):
            raise ProtocolError("normalization: needs nodes >= 1 and counts >= 0")
        _check_finite("normalization", self.mean, self.std, self.minimum, self.maximum)
        if any(s < 0 for s in self.std):
            raise ProtocolError("normalization: std must be >= 0")

    @property
    def n_features(self) -> int:
        return len(self.count)


#: Most metrics in a node_metrics evaluation map (docs/PROTOCOL.md 7.8).
MAX_EVALUATION_METRICS = 16

#: Most preprocessing steps a task may carry (docs/PROTOCOL.md 7.2).
MAX_PREPROCESS_STEPS = 32


@dataclass(frozen=True)
class TrainingTask:
    """What every node must do with the model: learner, its layout and local work.

    The optional data fields say how a node turns its raw rows into training
    data: the feature names in column order, the preprocessing steps every
    node applies (their meaning is fedbus.node.preprocess's), and the global
    normalization statistics once the aggregator has pooled them.
    """

    name: str
    learner: str
    weight_shapes: Mapping[str, tuple[int, ...]]
    local_epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 0.1
    features: tuple[str, ...] = ()
    preprocess: tuple[Mapping[str, Any], ...] = ()
    normalization: Normalization | None = None

    def __post_init__(self) -> None:
        if self.local_epochs < 1 or self.batch_size < 1 or not self.learning_rate > 0:
            raise ProtocolError("task needs local_epochs >= 1, batch_size >= 1, learning_rate > 0")
        if not self.weight_shapes:
            raise ProtocolError("task needs at least one weight tensor")
        frozen = {k: tuple(int(d) for d in v) for k, v in self.weight_shapes.items()}
        object.__setattr__(self, "weight_shapes", MappingProxyType(frozen))
        object.__setattr__(self, "features", tuple(self.features))
        if len(set(self.features)) != len(self.features):
            raise ProtocolError("task: feature names must be unique")
        if len(self.preprocess) > MAX_PREPROCESS_STEPS:
            raise ProtocolError(f"task: at most {MAX_PREPROCESS_STEPS} preprocessing steps")
        object.__setattr__(
            self, "preprocess", tuple(MappingProxyType(dict(step)) for step in self.preprocess)
        )
        normalization = self.normalization
        if (
            normalization is not None
            and self.features
            and (normalization.n_features != len(self.features))
        ):
            raise ProtocolError(
                f"task: normalization of {normalization.n_features} features "
                f"for {len(self.features)} feature names"
            )

    @property
    def needs_normalization(self) -> bool:
        """True while the steps scale by global statistics the task does not carry yet."""
        return self.normalization is None and any(
            step.get("step") in SCALING_STEPS for step in self.preprocess
        )


#: Preprocessing steps that scale by global statistics (federated normalization).
SCALING_STEPS = frozenset({"standardize", "minmax"})


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
    #: Ed25519 signature over the update's digest (fedbus.broker.signing), or None.
    signature: bytes | None = None

    def __post_init__(self) -> None:
        validate_id(self.node)
        _check_non_negative("seq", self.seq)
        _check_non_negative("base_version", self.base_version)
        if self.signature is not None and len(self.signature) != SIGNATURE_LENGTH:
            raise ProtocolError(f"update: sig must be {SIGNATURE_LENGTH} bytes")


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


@dataclass(frozen=True)
class NodeMetrics:
    """What a node's data preparation did for one local run, on `metrics/<node>`.

    Informational (QoS 0, not retained): rows before and after the
    preprocessing steps, and each step's own counts (cells filled, rows
    dropped, cells clipped, rows flagged), keyed "<position>:<step>".
    """

    node: str
    version: int
    rows_raw: int
    rows_used: int
    preprocess: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    #: The received model scored on the node's own prepared rows before it
    #: trains (metric name -> value, e.g. accuracy and loss, or r2 and mse).
    evaluation: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_id(self.node)
        if min(self.version, self.rows_raw, self.rows_used) < 0:
            raise ProtocolError("node_metrics: version and row counts must be >= 0")
        if len(self.evaluation) > MAX_EVALUATION_METRICS:
            raise ProtocolError(
                f"node_metrics: at most {MAX_EVALUATION_METRICS} evaluation metrics"
            )


Message = (
    ModelMessage
    | UpdateMessage
    | AckMessage
    | NodeStatus
    | AggregatorStatus
    | FeatureStatistics
    | NodeMetrics
)
