"""Turning an untrusted update payload into a delta the buffer may use.

Checks run cheapest first and stop at the first failure, so a hostile
payload costs little: size, msgpack and schema (bounded), protocol version,
node id in the body against the topic, enrolment, sequence number, base
version and staleness, tensor layout, sample count, a scan for NaN or Inf
and finally the L2 norm bound. Nothing here touches the model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedbus.broker.codec import DecodeLimits, decode, unpack_map
from fedbus.broker.errors import (
    CodecError,
    PayloadTooLargeError,
    ShapeMismatchError,
    UnsupportedVersionError,
)
from fedbus.broker.messages import RejectReason, UpdateMessage
from fedbus.broker.tensors import decode_weights


@dataclass(frozen=True)
class Rejection:
    reason: RejectReason
    detail: str
    seq: int | None = None


@dataclass(frozen=True)
class ValidUpdate:
    message: UpdateMessage
    delta: dict[str, np.ndarray]
    staleness: int


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


def update_norm(delta: Mapping[str, np.ndarray]) -> float:
    """L2 norm over all tensors, accumulated in float64.

    float32 accumulation would overflow to inf for finite deltas of large
    magnitude (squares above 3.4e38) and lose digits on large models.
    """
    total = 0.0
    for values in delta.values():
        flat = values.reshape(-1)
        total += float(np.einsum("i,i->", flat, flat, dtype=np.float64))
    return math.sqrt(total)


def decode_update(payload: bytes, limits: DecodeLimits) -> UpdateMessage | Rejection:
    try:
        return decode(payload, UpdateMessage, limits)
    except UnsupportedVersionError as exc:
        return Rejection(RejectReason.UNSUPPORTED_VERSION, str(exc), _readable_seq(payload, limits))
    except PayloadTooLargeError as exc:
        return Rejection(RejectReason.OVERSIZE, str(exc))
    except CodecError as exc:
        return Rejection(RejectReason.MALFORMED, str(exc), _readable_seq(payload, limits))


def _readable_seq(payload: bytes, limits: DecodeLimits) -> int | None:
    """The `seq` of an otherwise unusable update, if it can be read at all.

    Echoing it in the rejecting ack lets the sender match the verdict to its
    pending update instead of resending the same broken bytes forever.
    """
    try:
        seq = unpack_map(payload, limits).get("seq")
    except CodecError:
        return None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq < 2**63 else None


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
    if message.num_samples < 1:
        return Rejection(
            RejectReason.BAD_SAMPLES, f"num_samples must be >= 1, got {message.num_samples}", seq
        )
    try:
        delta = decode_weights(message.tensors, ctx.layout)
    except ShapeMismatchError as exc:
        return Rejection(RejectReason.WRONG_SHAPE, str(exc), seq)
    except CodecError as exc:
        return Rejection(RejectReason.MALFORMED, str(exc), seq)
    for name, values in delta.items():
        if not np.isfinite(values).all():
            return Rejection(RejectReason.NON_FINITE, f"tensor {name!r} holds NaN or Inf", seq)
    if ctx.max_update_norm is not None:
        norm = update_norm(delta)
        if norm > ctx.max_update_norm:
            return Rejection(
                RejectReason.NORM_EXCEEDED,
                f"update L2 norm {norm:.6g} exceeds bound {ctx.max_update_norm:g}",
                seq,
            )
    return ValidUpdate(message, delta, staleness)
