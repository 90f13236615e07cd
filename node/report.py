"""Run folder output of the demo: scores as CSV and an accuracy-over-time plot."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from fedbus.node.observer import VersionScore


def write_scores_csv(scores: Sequence[VersionScore], path: Path, metric: str = "accuracy") -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["version", "seconds", metric, "loss"])
        for s in scores:
            writer.writerow([s.version, f"{s.seconds:.4f}", f"{s.score:.6f}", f"{s.loss:.6f}"])


def plot_accuracy(
    curves: dict[str, Sequence[VersionScore]],
    path: Path,
    *,
    target: float | None,
    title: str,
    metric: str = "accuracy",
) -> None:
    """The test metric (accuracy, or R² for regression) against wall time, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for label, scores in curves.items():
        ax.step([s.seconds for s in scores], [s.score for s in scores], where="post", label=label)
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.2f}")
    ax.set_xlabel("seconds since first model publication")
    ax.set_ylabel("test accuracy" if metric == "accuracy" else "test R²")
    ax.set_ylim(0.0 if metric == "accuracy" else -0.5, 1.0)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
