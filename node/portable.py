"""A portable model file: weights, model spec and preprocessing statistics in one .npz.

Inference must work on a device that has numpy and nothing else (no numba,
no MQTT, no fedbus even: the format is documented in docs/EXPORT.md), and
while it is offline. So the file is numpy's own ``.npz`` (a zip of ``.npy``
arrays, loaded with ``allow_pickle=False``) holding:

- ``spec``: UTF-8 JSON in a uint8 array: format tag, learner, tensor names
  and shapes in order, feature names, the inference part of the
  preprocessing (clip bounds, scaling with the pooled statistics, the pooled
  means for missing cells), the model version and task name;
- ``w.<name>``: each tensor as float32; or, exported with ``int8=True``,
  ``q.<name>`` int8 codes and ``s.<name>`` float32 per-row scales
  (symmetric, one scale per output column of a weight matrix: about 4x
  smaller, and accurate to half a step of each column's largest weight).

This module imports only numpy and the standard library, on purpose.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FORMAT",
    "PortableModel",
    "export_portable",
    "inference_steps",
    "normalization_lists",
    "transform_rows",
]

FORMAT = "fedbus-portable-model/1"
_SCALING = ("standardize", "minmax")


def inference_steps(
    preprocess: Sequence[Mapping[str, Any]],
    features: Sequence[str],
    normalization: Mapping[str, Sequence[float]] | None,
) -> list[dict[str, Any]]:
    """The row-wise part of a training pipeline, as inference applies it.

    Row-dropping steps (duplicates, anomalies, missing rows) make no sense for
    one row to predict, and local imputation statistics stay on the device,
    so: missing cells take the pooled mean (0 without statistics), clip
    bounds apply, and scaling uses the pooled statistics.
    """
    steps: list[dict[str, Any]] = []
    if normalization is not None:
        steps.append({"step": "fill_missing", "values": list(normalization["mean"])})
    else:
        steps.append({"step": "fill_missing", "values": [0.0] * len(features)})
    for step in preprocess:
        kind = step.get("step")
        if kind == "clip":
            bounds = step.get("bounds", {})
            low = [bounds.get(name, [None, None])[0] for name in features]
            high = [bounds.get(name, [None, None])[1] for name in features]
            steps.append({"step": "clip", "low": low, "high": high})
        elif kind in _SCALING:
            if normalization is None:
                raise ValueError(f"the task scales with {kind!r} but carries no normalization yet")
            if kind == "standardize":
                centre, spread = normalization["mean"], normalization["std"]
            else:
                centre = normalization["min"]
                spread = [
                    hi - lo
                    for lo, hi in zip(normalization["min"], normalization["max"], strict=True)
                ]
            steps.append({"step": "affine", "centre": list(centre), "spread": list(spread)})
    return steps


def transform_rows(steps: Sequence[Mapping[str, Any]], X: np.ndarray) -> np.ndarray:
    """Apply `inference_steps` to raw rows (float64 copy; NaN = missing)."""
    out = np.array(X, dtype=np.float64, copy=True)
    for step in steps:
        if step["step"] == "fill_missing":
            fill = np.asarray(step["values"], dtype=np.float64)
            missing = np.isnan(out)
            out[missing] = np.broadcast_to(fill, out.shape)[missing]
        elif step["step"] == "clip":
            low = np.array([-np.inf if v is None else v for v in step["low"]], dtype=np.float64)
            high = np.array([np.inf if v is None else v for v in step["high"]], dtype=np.float64)
            out = np.clip(out, low, high)
        elif step["step"] == "affine":
            spread = np.asarray(step["spread"], dtype=np.float64)
            spread = np.where(spread == 0, 1.0, spread)
            out = (out - np.asarray(step["centre"], dtype=np.float64)) / spread
        else:
            raise ValueError(f"unknown inference step {step['step']!r}")
    return out


def _quantize_rows(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output column: codes int8, scales float32 (max|w| / 127)."""
    matrix = weight.reshape(weight.shape[0], -1) if weight.ndim > 1 else weight.reshape(-1, 1)
    scales = (np.abs(matrix).max(axis=0) / 127.0).astype(np.float32)
    safe = np.where(scales > 0, scales, 1.0)
    codes = np.clip(np.rint(matrix / safe), -127, 127).astype(np.int8)
    return codes.reshape(weight.shape), scales


def export_portable(
    path: Path,
    *,
    learner: str,
    weights: Mapping[str, np.ndarray],
    features: Sequence[str],
    preprocess: Sequence[Mapping[str, Any]] = (),
    normalization: Mapping[str, Sequence[float]] | None = None,
    version: int = 0,
    task: str = "",
    int8: bool = False,
) -> None:
    """Write the model to `path` (.npz). `normalization` maps mean/std/min/max to lists."""
    spec = {
        "format": FORMAT,
        "learner": learner,
        "task": task,
        "version": version,
        "features": list(features),
        "tensors": [{"name": n, "shape": list(w.shape)} for n, w in weights.items()],
        "inference": inference_steps(preprocess, features, normalization),
        "quantized": "int8" if int8 else None,
    }
    arrays: dict[str, np.ndarray] = {
        "spec": np.frombuffer(json.dumps(spec).encode(), dtype=np.uint8)
    }
    for name, weight in weights.items():
        weight = np.asarray(weight, dtype=np.float32)
        if int8 and weight.ndim == 2:
            arrays[f"q.{name}"], arrays[f"s.{name}"] = _quantize_rows(weight)
        else:  # biases stay float32: they are few and sensitive
            arrays[f"w.{name}"] = weight
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]  # numpy stubs: allow_pickle
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)


@dataclass(frozen=True)
class PortableModel:
    """A loaded model file: predicts from raw feature rows with numpy alone."""

    spec: Mapping[str, Any]
    weights: Mapping[str, np.ndarray]

    @classmethod
    def load(cls, path: Path) -> PortableModel:
        with np.load(path, allow_pickle=False) as archive:
            try:
                spec = json.loads(archive["spec"].tobytes().decode())
            except (KeyError, ValueError) as exc:
                raise ValueError(f"{path}: not a fedbus model file ({exc})") from None
            if spec.get("format") != FORMAT:
                raise ValueError(f"{path}: format {spec.get('format')!r}, expected {FORMAT!r}")
            weights = {}
            for tensor in spec["tensors"]:
                name, shape = tensor["name"], tuple(tensor["shape"])
                if f"w.{name}" in archive:
                    weight = archive[f"w.{name}"].astype(np.float32)
                else:
                    codes, scales = archive[f"q.{name}"], archive[f"s.{name}"]
                    weight = (codes.astype(np.float32) * scales).astype(np.float32)
                if weight.shape != shape:
                    raise ValueError(
                        f"{path}: tensor {name!r} is {weight.shape}, spec says {shape}"
                    )
                weights[name] = weight
        return cls(spec, weights)

    @property
    def features(self) -> list[str]:
        return list(self.spec["features"])

    def prepare(self, X: np.ndarray) -> np.ndarray:
        """Raw rows (float, NaN for missing) as the model takes them."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X.reshape(1, -1)
        if X.shape[1] != len(self.features):
            raise ValueError(
                f"rows have {X.shape[1]} features, the model takes {len(self.features)}"
            )
        return transform_rows(self.spec["inference"], X)

    def decision(self, X: np.ndarray) -> np.ndarray:
        """Raw model output: regression values, P(y=1), or class probabilities."""
        h = self.prepare(X)
        learner = self.spec["learner"]
        w = self.weights
        if learner == "mlp":
            layers = len(w) // 2
            for i in range(1, layers + 1):
                h = h @ w[f"W{i}"].astype(np.float64) + w[f"b{i}"]
                if i < layers:
                    h = np.maximum(h, 0.0)
            return _softmax(h)
        z = h @ w["W"].astype(np.float64) + w["b"]
        if learner == "linear":
            return z[:, 0] if z.shape[1] == 1 else z
        if learner == "logistic":
            return _sigmoid(z[:, 0])
        if learner == "softmax":
            return _softmax(z)
        raise ValueError(f"unknown learner {learner!r}")

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions: values (linear), 0/1 (logistic), class indices (softmax, mlp)."""
        out = self.decision(X)
        learner = self.spec["learner"]
        if learner == "logistic":
            return (out >= 0.5).astype(np.int64)
        if learner in ("softmax", "mlp"):
            return np.argmax(out, axis=1).astype(np.int64)
        return out


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) without overflow, and accurate for tiny probabilities too."""
    small = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + small), small / (1.0 + small))


def _softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def normalization_lists(normalization: Any) -> dict[str, list[float]] | None:
    """A protocol Normalization (or None) as the plain lists export_portable takes."""
    if normalization is None:
        return None
    return {
        "mean": list(normalization.mean),
        "std": list(normalization.std),
        "min": list(normalization.minimum),
        "max": list(normalization.maximum),
    }
