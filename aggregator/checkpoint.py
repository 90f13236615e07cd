"""Snapshots of the aggregator's whole state, written atomically.

A checkpoint holds everything the core needs to carry on exactly where it
was: the model and its version, the partly filled buffer, the per-node
verdicts that make resends harmless, the counters and the aggregation
settings it was made with. With the journal segment of the same id it is a
complete recovery point; it exists so recovery need not replay the whole
history.

The file is one msgpack map, written with `write_atomically` (temp file,
fsync, rename, fsync of the directory), so it is either whole or absent.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from fedbus.aggregator.buffer import AggregationConfig, BufferedAggregator
from fedbus.aggregator.core import AggregatorCore
from fedbus.aggregator.row_buffer import RowBuffer
from fedbus.broker.codec import DecodeLimits, decode, encode
from fedbus.broker.durable_files import write_atomically
from fedbus.broker.errors import CodecError, FedbusError
from fedbus.broker.messages import AckMessage, ModelMessage
from fedbus.broker.tensors import decode_weights, encode_weights

CHECKPOINT_FORMAT = 1
#: A checkpoint is our own file, but it is read back after crashes and copies;
#: decode it with limits as generous as the largest model we accept.
_LIMITS = DecodeLimits(max_payload_bytes=2**31 - 1, max_array_len=2**20, max_map_len=2**20)


class CheckpointError(FedbusError):
    """A checkpoint is unreadable or belongs to a different configuration."""


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint made for another task or other aggregation settings."""


def checkpoint_name(checkpoint_id: int) -> str:
    return f"checkpoint-{checkpoint_id:08d}.ckpt"


def checkpoint_id(path: Path) -> int | None:
    name = path.name
    if not (name.startswith("checkpoint-") and name.endswith(".ckpt")):
        return None
    digits = name[len("checkpoint-") : -len(".ckpt")]
    return int(digits) if digits.isdigit() else None


def config_fingerprint(config: AggregationConfig) -> dict[str, Any]:
    """The aggregation settings as plain values, to refuse resuming under others."""

    def plain(value: Any) -> Any:
        return value.value if hasattr(value, "value") else value

    flat = dataclasses.asdict(config)
    nested = {part: flat.pop(part) for part in ("staleness", "optimizer")}
    # Robust and DP settings appear only when used, so state dirs written
    # before they existed still resume under the plain settings.
    robust, privacy = flat.pop("robust"), flat.pop("privacy")
    if not config.robust.is_plain:
        nested["robust"] = robust
    if privacy is not None:
        nested["privacy"] = privacy
    fingerprint = {k: plain(v) for k, v in flat.items()}
    for part, values in nested.items():
        fingerprint |= {f"{part}_{k}": plain(v) for k, v in values.items()}
    return fingerprint


def _rows_map(rows: RowBuffer) -> dict[str, Any]:
    return {
        "rows": {node: row.tobytes() for node, row in sorted(rows.rows.items())},
        "sample_weights": dict(sorted(rows.sample_weights.items())),
        "recent_norms": list(rows.recent_norms),
    }


def _restore_rows(rows: RowBuffer, raw: dict[str, Any]) -> None:
    for node, data in raw["rows"].items():
        row = np.frombuffer(data, dtype=np.float32)
        if row.shape != (rows.size,):
            raise CheckpointError(f"row of {node!r} has {row.size} values, expected {rows.size}")
        rows.rows[node] = row.copy()
    rows.sample_weights = {node: float(w) for node, w in raw["sample_weights"].items()}
    rows.recent_norms.extend(float(n) for n in raw["recent_norms"])


def _counters_map(core: AggregatorCore) -> dict[str, Any]:
    c = core.counters
    return {
        "accepted": c.accepted,
        "duplicates": c.duplicates,
        "rejected": dict(c.rejected),
        "staleness": {str(k): v for k, v in c.staleness.items()},
        "bad_topics": c.bad_topics,
        "bytes_in": c.bytes_in,
        "bytes_out": c.bytes_out,
        "models_published": c.models_published,
        "stats": [c.stats_accepted, c.stats_rejected, c.stats_ignored],
    }


def snapshot(core: AggregatorCore, checkpoint_id: int) -> bytes:
    """The core's complete state as checkpoint bytes."""
    agg = core.aggregator
    buffer = ModelMessage(agg.version, core.task, encode_weights(agg.buffer))
    return msgpack.packb(
        {
            "format": CHECKPOINT_FORMAT,
            "id": checkpoint_id,
            "config": config_fingerprint(agg.config),
            "model": encode(core.model_message()),
            "buffer": encode(buffer),
            "buffered": agg.buffered,
            "normalizer": agg.normalizer,
            "applied_updates": agg.applied_updates,
            "contributors": sorted(agg.contributors),
            "optimizer_step": agg.optimizer_state.step,
            "optimizer_slots": {
                slot: encode(ModelMessage(agg.version, core.task, encode_weights(tensors)))
                for slot, tensors in agg.optimizer_state.slots.items()
            },
            "decisions": [encode(ack) for _, ack in sorted(core.decisions.items())],
            "counters": _counters_map(core),
            "row_buffer": None if agg.rows is None else _rows_map(agg.rows),
        },
        use_bin_type=True,
    )


def write_checkpoint(directory: Path, core: AggregatorCore, checkpoint_id: int) -> Path:
    path = directory / checkpoint_name(checkpoint_id)
    write_atomically(path, snapshot(core, checkpoint_id))
    return path


def restore(core: AggregatorCore, data: bytes) -> int:
    """Load checkpoint bytes into a freshly built core; returns the checkpoint id.

    The core must have been built with the same task and aggregation settings
    as the checkpoint; anything else would silently change what the journal
    after it means, so it is refused.
    """
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True)
        if raw.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"unsupported checkpoint format {raw.get('format')!r}")
        model = decode(raw["model"], ModelMessage, _LIMITS)
        buffer_msg = decode(raw["buffer"], ModelMessage, _LIMITS)
        decisions = [decode(a, AckMessage, _LIMITS) for a in raw["decisions"]]
        counters = raw["counters"]
        config = raw["config"]
    except (CodecError, KeyError, TypeError, ValueError, msgpack.UnpackException) as exc:
        raise CheckpointError(f"unreadable checkpoint: {exc}") from exc
    # The normalization is not a setting: the daemon pooled it from the nodes'
    # statistics while running, so the checkpoint's is adopted.
    if replace(model.task, normalization=None) != replace(core.task, normalization=None):
        raise CheckpointMismatchError(
            f"checkpoint is for task {model.task.name!r} ({model.task}), "
            f"this aggregator runs {core.task}"
        )
    wanted = config_fingerprint(core.aggregator.config)
    if config != wanted:
        changed = sorted(k for k in wanted.keys() | config.keys() if config.get(k) != wanted.get(k))
        raise CheckpointMismatchError(
            f"checkpoint was made with other aggregation settings: {changed}"
        )
    shapes = core.task.weight_shapes
    agg = BufferedAggregator(core.aggregator.config, decode_weights(model.tensors, shapes))
    agg.version = model.version
    agg.noise_seed = core.aggregator.noise_seed  # a secret of this run, not of the checkpoint
    if agg.rows is not None:
        try:
            _restore_rows(agg.rows, raw["row_buffer"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"unreadable row buffer: {exc}") from exc
    agg.buffer = {
        k: np.array(v, dtype=np.float32)
        for k, v in decode_weights(buffer_msg.tensors, shapes).items()
    }
    agg.buffered = int(raw["buffered"])
    agg.normalizer = float(raw["normalizer"])
    agg.applied_updates = int(raw["applied_updates"])
    agg.contributors = set(raw["contributors"])
    try:
        agg.optimizer_state.step = int(raw["optimizer_step"])
        for slot, encoded in raw["optimizer_slots"].items():
            tensors = decode(encoded, ModelMessage, _LIMITS).tensors
            agg.optimizer_state.slots[slot] = {
                k: np.array(v, dtype=np.float32) for k, v in decode_weights(tensors, shapes).items()
            }
    except (CodecError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"unreadable optimizer state: {exc}") from exc
    core.aggregator = agg
    core.task = model.task
    core.decisions = {ack.node: ack for ack in decisions}
    c = core.counters
    c.accepted = counters["accepted"]
    c.duplicates = counters["duplicates"]
    c.rejected = Counter(counters["rejected"])
    c.staleness = Counter({int(k): v for k, v in counters["staleness"].items()})
    c.bad_topics = counters["bad_topics"]
    c.bytes_in = counters["bytes_in"]
    c.bytes_out = counters["bytes_out"]
    c.models_published = counters["models_published"]
    c.stats_accepted, c.stats_rejected, c.stats_ignored = counters.get("stats", (0, 0, 0))
    return int(raw["id"])


def read_checkpoint(core: AggregatorCore, path: Path) -> int:
    return restore(core, path.read_bytes())
