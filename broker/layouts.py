"""Tensor layouts and initial weights of the built-in learners, shared by aggregator and nodes.

The aggregator builds the initial model and checks every delta against a
layout; a node checks the model it receives against the learner it runs.
Both sides derive the layout from the same (learner, n_features, n_outputs,
hidden) description here, so they cannot drift apart. A node needs no
description of its own: the task's tensor shapes determine the network
(``layer_sizes``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedbus.broker.errors import ConfigError

__all__ = ["LEARNERS", "initial_weights", "layer_sizes", "weight_shapes"]

LEARNERS = ("softmax", "linear", "logistic", "mlp")
"""Built-in learners: softmax regression, linear regression (MSE), binary
logistic regression (one output) and a ReLU MLP with a softmax output."""

#: Hidden layers an MLP may have: edge models stay small.
MAX_HIDDEN_LAYERS = 4


def weight_shapes(
    learner: str, n_features: int, n_outputs: int, hidden: Sequence[int] = ()
) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of a built-in learner, in wire order.

    ``softmax``/``linear``: ``W`` (n_features, n_outputs) and ``b``;
    ``logistic``: the same with n_outputs = 1; ``mlp``: ``W1``, ``b1``, ...,
    ``WL``, ``bL`` for ``L = len(hidden) + 1`` layers, ``Wi`` (n_in, n_out).
    """
    if n_features < 1 or n_outputs < 1:
        raise ConfigError(f"n_features and n_outputs must be >= 1, got {n_features}, {n_outputs}")
    hidden = tuple(int(h) for h in hidden)
    if learner == "mlp":
        if not 1 <= len(hidden) <= MAX_HIDDEN_LAYERS or min(hidden) < 1:
            raise ConfigError(
                f"an mlp needs 1 to {MAX_HIDDEN_LAYERS} hidden layers of width >= 1, got {hidden}"
            )
        if n_outputs < 2:
            raise ConfigError(f"an mlp classifies into >= 2 classes, got {n_outputs}")
        widths = (n_features, *hidden, n_outputs)
        shapes: dict[str, tuple[int, ...]] = {}
        for i in range(1, len(widths)):
            shapes[f"W{i}"] = (widths[i - 1], widths[i])
            shapes[f"b{i}"] = (widths[i],)
        return shapes
    if hidden:
        raise ConfigError(f"hidden layers are for the mlp learner, not {learner!r}")
    if learner == "logistic" and n_outputs != 1:
        raise ConfigError(f"logistic regression has one output, got {n_outputs}")
    if learner in ("softmax", "linear", "logistic"):
        return {"W": (n_features, n_outputs), "b": (n_outputs,)}
    raise ConfigError(f"unknown learner {learner!r}: expected one of {', '.join(LEARNERS)}")


def layer_sizes(shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    """``(n_features, hidden..., n_outputs)`` of an mlp layout, checked to chain.

    Raises ConfigError for anything that is not ``W1, b1, ..., WL, bL`` with
    each layer's input width equal to the previous layer's output width.
    """
    layers = len(shapes) // 2
    expected = [name for i in range(1, layers + 1) for name in (f"W{i}", f"b{i}")]
    if layers < 2 or list(shapes) != expected:
        raise ConfigError(f"an mlp layout is W1, b1, ..., WL, bL (L >= 2), got {list(shapes)}")
    if len(shapes["W1"]) != 2:
        raise ConfigError(f"mlp layer 1: W1 must be 2-D, got {shapes['W1']}")
    sizes = [shapes["W1"][0]]
    for i in range(1, layers + 1):
        w, b = shapes[f"W{i}"], shapes[f"b{i}"]
        if len(w) != 2 or w[0] != sizes[-1] or b != (w[1],):
            raise ConfigError(f"mlp layer {i}: W{i} {w} and b{i} {b} do not chain")
        sizes.append(w[1])
    return tuple(sizes)


def initial_weights(
    learner: str, shapes: Mapping[str, tuple[int, ...]], seed: int = 0
) -> dict[str, np.ndarray]:
    """The model every run starts from, as float32 arrays.

    Linear models start at zero (a convex loss needs no symmetry breaking,
    and zero needs no seed to agree on). An mlp's weights are drawn He-normal
    (std sqrt(2 / fan_in), He et al. 2015, suited to ReLU) from
    ``default_rng([seed, layer])``, biases zero: all-zero hidden units would
    stay identical forever.
    """
    if learner != "mlp":
        return {name: np.zeros(shape, dtype=np.float32) for name, shape in shapes.items()}
    weights = {}
    for index, (name, shape) in enumerate(shapes.items()):
        if name.startswith("W"):
            rng = np.random.default_rng([seed, index])
            std = np.sqrt(2.0 / shape[0])
            weights[name] = (rng.standard_normal(shape) * std).astype(np.float32)
        else:
            weights[name] = np.zeros(shape, dtype=np.float32)
    return weights
