"""Tensor layouts of the built-in learners, shared by aggregator and nodes.

The aggregator builds the initial model and checks every delta against a
layout; a node checks the model it receives against the learner it runs.
Both sides derive the layout from the same (learner, n_features, n_outputs)
triple here, so they cannot drift apart.
"""

from __future__ import annotations

from fedbus.broker.errors import ConfigError


def weight_shapes(learner: str, n_features: int, n_outputs: int) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of a built-in learner, in wire order."""
    if n_features < 1 or n_outputs < 1:
        raise ConfigError(f"n_features and n_outputs must be >= 1, got {n_features}, {n_outputs}")
    if learner in ("softmax", "linear", "logistic"):
        return {"W": (n_features, n_outputs), "b": (n_outputs,)}
    raise ConfigError(f"unknown learner {learner!r}: expected softmax, linear or logistic")
