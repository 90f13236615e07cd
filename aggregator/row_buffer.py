"""One row per node for the current model step: the buffer of the robust and DP modes.

A row is the node's whole delta as one flat float32 vector (tensors in
layout order), clipped, weighted by staleness and merged with the node's
earlier updates of the same step (see fedbus.aggregator.robust). At the
flush the rows, stacked in node-id order so the result does not depend on
arrival order, are combined by the configured rule. Pure state and
arithmetic: the noise generator is passed in.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping

import numpy as np

from fedbus.aggregator.robust import PrivacySettings, RobustSettings, Rule
from fedbus.broker.tensors import WireTensor
from fedbus.kernels.norms import clip_within, l2_norm
from fedbus.kernels.robust import coordinate_median, trim_count, trimmed_mean

Layout = Mapping[str, tuple[int, ...]]


class RowBuffer:
    def __init__(
        self,
        layout: Layout,
        robust: RobustSettings,
        privacy: PrivacySettings | None = None,
    ) -> None:
        self.layout = dict(layout)
        self.robust = robust
        self.privacy = privacy
        self.size = sum(math.prod(shape) for shape in self.layout.values())
        self.rows: dict[str, np.ndarray] = {}
        #: Sum of the sample weights g(n) of each node's updates in this step.
        self.sample_weights: dict[str, float] = {}
        #: L2 norms of recent updates before clipping, for the adaptive bound.
        self.recent_norms: deque[float] = deque(maxlen=robust.clip_window)

    # ------------------------------------------------------------ adding

    def flatten(self, delta: Mapping[str, np.ndarray | WireTensor]) -> np.ndarray:
        """The delta as one new float32 vector, wire tensors decoded straight into it."""
        flat = np.zeros(self.size, np.float32)
        offset = 0
        for name, shape in self.layout.items():
            count = math.prod(shape)
            target = flat[offset : offset + count]
            tensor = delta[name]
            if isinstance(tensor, WireTensor):
                tensor.accumulate_into(target, 1.0)
            else:
                target[:] = np.asarray(tensor, np.float32).reshape(-1)
            offset += count
        return flat

    def clip_bound(self) -> float | None:
        """The bound each update and each merged row is clipped to now (None: none)."""
        bounds = []
        if self.robust.clip_norm is not None:
            bounds.append(self.robust.clip_norm)
        if self.privacy is not None:
            bounds.append(self.privacy.clip)
        multiple = self.robust.adaptive_clip
        if multiple is not None and len(self.recent_norms) >= self.robust.clip_window // 2:
            bounds.append(multiple * float(np.median(np.fromiter(self.recent_norms, float))))
        positive = [b for b in bounds if b > 0]
        return min(positive) if positive else None

    def add(
        self,
        node: str,
        delta: Mapping[str, np.ndarray | WireTensor],
        staleness_weight: float,
        sample_weight: float,
    ) -> None:
        """Clip one update, weigh it by staleness and merge it into the node's row."""
        flat = self.flatten(delta)
        bound = self.clip_bound()
        norm = clip_within(flat, bound) if bound is not None else l2_norm(flat)
        self.recent_norms.append(norm)
        if staleness_weight != 1.0:
            flat *= np.float32(staleness_weight)
        previous = self.rows.get(node)
        if previous is not None:
            flat += previous
            if bound is not None:
                clip_within(flat, bound)
        self.rows[node] = flat
        self.sample_weights[node] = self.sample_weights.get(node, 0.0) + sample_weight

    # ------------------------------------------------------------ combining

    def stacked(self) -> np.ndarray:
        """The rows as a (nodes, size) float32 matrix, in node-id order."""
        if not self.rows:
            return np.zeros((0, self.size), np.float32)
        return np.stack([self.rows[node] for node in sorted(self.rows)])

    def combine(self, noise: np.random.Generator | None = None) -> np.ndarray:
        """The step's aggregate delta (flat float32) by the configured rule.

        Mean: sample-weighted, or with DP the plain sum plus Gaussian noise
        divided by the number of rows (DP needs weights that do not depend on
        what a node claims). `noise` must be given exactly when DP is on.
        """
        rows = self.stacked()
        if len(rows) == 0:
            raise ValueError("no rows to combine")
        rule = self.robust.rule
        if rule is Rule.MEDIAN:
            return coordinate_median(rows)
        if rule is Rule.TRIMMED:
            return trimmed_mean(rows, trim_count(len(rows), self.robust.trim_beta))
        if self.privacy is not None:
            if noise is None:
                raise ValueError("DP is on: a noise generator is required")
            total = rows.astype(np.float64).sum(axis=0)
            total += noise.normal(0.0, self.privacy.noise_std, self.size)
            return (total / len(rows)).astype(np.float32)
        weights = np.array([self.sample_weights[node] for node in sorted(self.rows)])
        mean = (weights[:, None] * rows.astype(np.float64)).sum(axis=0) / weights.sum()
        return mean.astype(np.float32)

    def unflatten(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        offset = 0
        for name, shape in self.layout.items():
            count = math.prod(shape)
            out[name] = flat[offset : offset + count].reshape(shape)
            offset += count
        return out

    def clear(self) -> None:
        """Start the next step; the recent norms carry over."""
        self.rows.clear()
        self.sample_weights.clear()
