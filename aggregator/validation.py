"""Turning an untrusted update payload into a delta the buffer may use.

Checks run cheapest first and stop at the first failure, so a hostile
payload costs little: size, msgpack and schema (bounded, the payload is
unpacked once), protocol version, node id in the body against the topic,
enrolment, sequence number, base version and staleness, sample count,
tensor layout, a scan for NaN or Inf and finally the L2 norm bound. The
scan and the norm are one float64 pass over the payload's own bytes for
`f32` values. The delta stays encoded: the buffer decodes it into itself.
Nothing here touches the model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedbus.broker.codec import DecodeLimits, decode_map, unpack_map
from fedbus.broker.errors import (
    CodecError,
    KernelInputError,
    PayloadTooLargeError,
    ShapeMismatchError,
    UnsupportedVersionError,
)
from fedbus.broker.messages import RejectReason, UpdateMessage
from fedbus.broker.signing import verify_update
from fedbus.broker.tensors import WireTensor, match_layout
from fedbus.kernels.norms import sum_of_squares


@dataclass(frozen=True)
class Rejection:
    reason: RejectReason
    detail: str
    seq: int | None = None


@dataclass(frozen=True)
class ValidUpdate:
    message: UpdateMessage
    #: Still in its wire encoding; the buffer's fused kernels decode it.
    delta: dict[str, WireTensor]
    staleness: int
    #: L2 norm of the whole delta (float64 accumulation), for bounds and metrics.
    norm: float


@dataclass(frozen=True)
class ValidationContext:
    """What the checks need to know about the aggregator, as plain values."""

    version: int
    layout: Mapping[str, tuple[int, ...]]
    max_staleness: int
    known_nodes: frozenset[str] | None  # None: any well-formed node id may join
    last_seq: int | None  # highest sequence number already decided for this node
    limits: DecodeLimits
    #: Largest L2 norm of a whole delta (all tensors) accepted; None: no bound.
    max_update_norm: float | None = None
    #: Largest `num_samples` accepted. The default is the uint range of the
    #: protocol; a fleet that knows its nodes' data sizes should set its own,
    #: since the sample count weighs an update and a node may lie about it.
    max_num_samples: int = 2**63 - 1

    def __post_init__(self) -> None:
        bound = self.max_update_norm
        if bound is not None and (isinstance(bound, bool) or not bound > 0):
            raise ValueError(f"max_update_norm must be > 0 or None, got {bound!r}")
        if self.max_num_samples < 1:
            raise ValueError(f"max_num_samples must be >= 1, got {self.max_num_samples}")


def update_norm(delta: Mapping[str, np.ndarray | WireTensor]) -> float:
    """L2 norm over all tensors, accumulated in float64; NaN or inf if an element is.

    Wire tensors are read in place (f32 values, or q8/q4 scales and codes);
    float32 arrays go through the same float64-lanes kernel.
    """
    return math.sqrt(
        sum(
            t.sum_of_squares()
            if isinstance(t, WireTensor)
            else sum_of_squares(np.ascontiguousarray(t, dtype=np.float32).reshape(-1))
            for t in delta.values()
        )
    )


def decode_update(payload: bytes, limits: DecodeLimits) -> UpdateMessage | Rejection:
    """Unpack (once) and decode an update, or say why it cannot be used."""
    try:
        body = unpack_map(payload, limits)
    except PayloadTooLargeError as exc:
        return Rejection(RejectReason.OVERSIZE, str(exc))
    except CodecError as exc:
        return Rejection(RejectReason.MALFORMED, str(exc))
    try:
        return decode_map(body, UpdateMessage, limits)
    except UnsupportedVersionError as exc:
        return Rejection(RejectReason.UNSUPPORTED_VERSION, str(exc), _readable_seq(body))
    except CodecError as exc:
        return Rejection(RejectReason.MALFORMED, str(exc), _readable_seq(body))


def _readable_seq(body: Mapping[str, object]) -> int | None:
    """The `seq` of an otherwise unusable update, if it is a uint.

    Echoing it in the rejecting ack lets the sender match the verdict to its
    pending update instead of resending the same broken bytes forever.
    """
    seq = body.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq < 2**63 else None


def check_signature(
    message: UpdateMessage, topic_node: str, fleet: str, verify_keys: Mapping[str, bytes]
) -> Rejection | None:
    """None when the update is signed by the key enrolled for the node of its topic.

    The key is looked up by the topic's node, the one the broker's ACL
    authenticated: an update of node A re-signed by node B, or a body that
    names A on B's topic, fails here or at the node check that follows.
    """
    key = verify_keys.get(topic_node)
    if key is None:
        return Rejection(
            RejectReason.UNKNOWN_NODE, f"no signing key is enrolled for {topic_node!r}", None
        )
    if message.signature is None:
        return Rejection(RejectReason.UNSIGNED, "signatures are required; the update has none")
    if not verify_update(key, fleet, message):
        return Rejection(
            RejectReason.BAD_SIGNATURE, f"signature does not verify with {topic_node!r}'s key"
        )
    return None


def validate_update(
    message: UpdateMessage, topic_node: str, ctx: ValidationContext
) -> ValidUpdate | Rejection:
    """All protocol and numeric checks of a decoded update."""
    seq = message.seq
    if message.node != topic_node:
        return Rejection(
            RejectReason.NODE_MISMATCH,
            f"body says node {message.node!r}, topic says {topic_node!r}",
            seq,
        )
    if ctx.known_nodes is not None and topic_node not in ctx.known_nodes:
        return Rejection(RejectReason.UNKNOWN_NODE, f"node {topic_node!r} is not enrolled", seq)
    if ctx.last_seq is not None and seq < ctx.last_seq:
        return Rejection(
            RejectReason.REPLAY, f"seq {seq} is older than decided seq {ctx.last_seq}", seq
        )
    if message.base_version > ctx.version:
        return Rejection(
            RejectReason.FUTURE_BASE,
            f"base_version {message.base_version} is ahead of model version {ctx.version}",
            seq,
        )
    staleness = ctx.version - message.base_version
    if staleness > ctx.max_staleness:
        return Rejection(
            RejectReason.STALE, f"staleness {staleness} exceeds bound {ctx.max_staleness}", seq
        )
    if not 1 <= message.num_samples <= ctx.max_num_samples:
        return Rejection(
            RejectReason.BAD_SAMPLES,
            f"num_samples must be in 1..{ctx.max_num_samples}, got {message.num_samples}",
            seq,
        )
    try:
        delta = match_layout(message.tensors, ctx.layout)
        total = 0.0
        for name, tensor in delta.items():
            squares = tensor.sum_of_squares()
            if not math.isfinite(squares):
                return Rejection(RejectReason.NON_FINITE, f"tensor {name!r} holds NaN or Inf", seq)
            total += squares
    except ShapeMismatchError as exc:
        return Rejection(RejectReason.WRONG_SHAPE, str(exc), seq)
    except (CodecError, KernelInputError) as exc:  # a kernel refused codes or indices
        return Rejection(RejectReason.MALFORMED, str(exc), seq)
    norm = math.sqrt(total)
    if ctx.max_update_norm is not None and norm > ctx.max_update_norm:
        return Rejection(
            RejectReason.NORM_EXCEEDED,
            f"update L2 norm {norm:.6g} exceeds bound {ctx.max_update_norm:g}",
            seq,
        )
    return ValidUpdate(message, delta, staleness, norm)
