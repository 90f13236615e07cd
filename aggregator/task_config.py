"""The training task an aggregator publishes, from its command line and files.

The preprocessing pipeline lives in a file (JSON, or TOML with one
``[[step]]`` table per step) because a list of steps with bounds per feature
does not fit flags. Only the shape is checked here; the steps' meaning is
checked by fedbus.node.preprocess, which every node runs, so the aggregator
refuses a pipeline a node would refuse before it publishes anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tomllib

from fedbus.broker.errors import ConfigError, ProtocolError
from fedbus.broker.layouts import weight_shapes
from fedbus.broker.messages import TrainingTask

__all__ = ["load_pipeline", "parse_hidden", "training_task"]


def load_pipeline(path: Path) -> list[dict[str, Any]]:
    """The steps in `path`: a JSON list of maps, or TOML ``[[step]]`` tables."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"--pipeline: cannot read {path}: {exc.strerror}") from None
    toml = path.suffix == ".toml"
    try:
        steps = tomllib.loads(text).get("step", []) if toml else json.loads(text)
    except ValueError as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        kind = "TOML" if toml else "JSON"
        raise ConfigError(f"--pipeline: {path} is not valid {kind}: {exc}") from None
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise ConfigError(f"--pipeline: {path} must hold a list of steps (maps)")
    return steps


def parse_hidden(text: str | None) -> tuple[int, ...]:
    """'64' or '64,32' -> (64,) or (64, 32); None or '' -> ()."""
    if not text:
        return ()
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--hidden: expected widths like 64 or 64,32, got {text!r}") from None
    if any(w < 1 for w in widths):
        raise ConfigError(f"--hidden: widths must be >= 1, got {text!r}")
    return widths


def training_task(
    *,
    name: str,
    learner: str,
    n_features: int,
    n_outputs: int,
    hidden: Sequence[int] = (),
    local_epochs: int = 1,
    batch_size: int = 16,
    learning_rate: float = 0.1,
    features: Sequence[str] = (),
    preprocess: Sequence[dict[str, Any]] = (),
) -> TrainingTask:
    """A checked task: layout from fedbus.broker.layouts, pipeline checked as nodes will."""
    if features and len(features) != n_features:
        raise ConfigError(f"{len(features)} feature names for {n_features} features")
    shapes = weight_shapes(learner, n_features, n_outputs, hidden)
    if preprocess:
        from fedbus.node.preprocess import Pipeline  # the nodes' own rules, not a copy

        names = tuple(features) or tuple(f"x{i}" for i in range(n_features))
        Pipeline.from_spec(list(preprocess), names)
    try:
        return TrainingTask(
            name,
            learner,
            shapes,
            local_epochs,
            batch_size,
            learning_rate,
            features=tuple(features),
            preprocess=tuple(preprocess),
        )
    except ProtocolError as exc:
        raise ConfigError(str(exc)) from None
