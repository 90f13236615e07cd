"""On-device prediction: latency of one row and throughput of a batch.

For each demo model (digits softmax, digits MLP 64-64-10, diabetes linear,
sensors logistic; random weights of the real shapes, since speed does not
depend on their values): the numba learner a node runs (`EdgeNode.predict`
path: transform, then the kernel), and the numpy-only portable file that an
exported model loads into, float32 and int8. The numpy path is the reference
measured in the same run.

    python bench/predict.py [--rows N] [--repeats R]

Prints a table and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedbus.broker.layouts import initial_weights, weight_shapes
from fedbus.node.learners import build_learner
from fedbus.node.portable import PortableModel, export_portable

MODELS = {
    "digits softmax": ("softmax", 64, 10, ()),
    "digits mlp 64": ("mlp", 64, 10, (64,)),
    "diabetes linear": ("linear", 10, 1, ()),
    "sensors logistic": ("logistic", 6, 1, ()),
}


def _median_seconds(call: Callable[[], object], repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(rows: int, repeats: int) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(0)
    results: dict[str, dict[str, float]] = {}
    print(f"{'model':<18} {'path':<16} {'1 row µs':>9} {'rows/s':>12} {'x numpy (batch)':>16}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (learner_name, n_in, n_out, hidden) in MODELS.items():
            shapes = weight_shapes(learner_name, n_in, n_out, hidden)
            weights = (
                initial_weights("mlp", shapes, 1)
                if learner_name == "mlp"
                else {k: rng.standard_normal(v).astype(np.float32) * 0.1 for k, v in shapes.items()}
            )
            learner = build_learner(learner_name, shapes)
            learner.set_weights(weights)
            batch = rng.standard_normal((rows, n_in)).astype(np.float32)
            one = batch[:1]
            paths: dict[str, Callable[[np.ndarray], object]] = {"numba learner": learner.predict}
            for label, int8 in (("numpy portable", False), ("numpy int8", True)):
                path = Path(tmp) / f"{learner_name}-{int8}.npz"
                features = [f"x{i}" for i in range(n_in)]
                export_portable(
                    path, learner=learner_name, weights=weights, features=features, int8=int8
                )
                paths[label] = PortableModel.load(path).predict
            numpy_predict = paths["numpy portable"]
            reference = _median_seconds(lambda p=numpy_predict, b=batch: p(b), repeats)
            for label, predict in paths.items():
                single = _median_seconds(lambda p=predict, r=one: p(r), repeats * 20)
                whole = _median_seconds(lambda p=predict, b=batch: p(b), repeats)
                results[f"{name} / {label}"] = {
                    "one_row_us": round(single * 1e6, 1),
                    "rows_per_second": round(rows / whole),
                    "batch_vs_numpy": round(reference / whole, 2),
                }
                print(
                    f"{name:<18} {label:<16} {single * 1e6:>9.1f} {rows / whole:>12,.0f} "
                    f"{reference / whole:>16.2f}"
                )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000, help="batch size")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    results = measure(args.rows, args.repeats)
    print(json.dumps({"bench": "predict", "rows": args.rows, "models": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
