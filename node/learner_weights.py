"""Weight bookkeeping every learner shares: the spec, strict checks, defensive copies.

A learner's weights are the tensors that travel on the wire, so every learner
must accept exactly its own layout and nothing else: a model with a wrong
name, shape or dtype means the sender and this node disagree on the task, and
silently casting or reshaping it would train on garbage. These helpers keep
that rule (and its error messages) in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np

__all__ = [
    "TaskKind",
    "WeightSpec",
    "check_epochs",
    "checked_copies",
    "float32_spec",
]

#: Tensor name -> (shape, dtype name), in wire order.
WeightSpec = dict[str, tuple[tuple[int, ...], str]]

#: What a learner predicts, so callers know which metrics to show.
TaskKind = Literal["classification", "regression"]


def float32_spec(shapes: Mapping[str, tuple[int, ...]]) -> WeightSpec:
    """The spec of float32 tensors with these shapes, in the mapping's order."""
    return {name: (tuple(shape), "float32") for name, shape in shapes.items()}


def checked_copies(weights: Mapping[str, np.ndarray], spec: WeightSpec) -> dict[str, np.ndarray]:
    """C-contiguous copies of ``weights``, after checking them against ``spec`` exactly.

    Raises ValueError, before copying anything, if the names differ from the
    spec's or any tensor is not a numpy array of the spec's shape and dtype.
    Callers assign the result only after this returns, so a bad model leaves
    the learner as it was. The copies are writeable even when the inputs are
    read-only (e.g. views of a received payload), and later changes to the
    inputs do not reach the learner.
    """
    if set(weights) != set(spec):
        raise ValueError(f"weights must be named {sorted(spec)}, got {sorted(weights)}")
    for name, (shape, dtype) in spec.items():
        value = weights[name]
        if not isinstance(value, np.ndarray):
            raise ValueError(f"weight {name!r} must be a numpy array")
        if value.shape != shape or value.dtype != np.dtype(dtype):
            raise ValueError(
                f"weight {name!r} must be {dtype} {shape}, got {value.dtype} {value.shape}"
            )
    return {name: np.array(weights[name], order="C", copy=True) for name in spec}


def check_epochs(epochs: int) -> None:
    """Raise ValueError unless at least one epoch is asked for.

    Zero epochs would return no loss to report and send an all-zero delta
    that looks like a real update, so it is a caller's mistake, not a no-op.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
