"""What central differential privacy costs on the reference task: accuracy against epsilon.

digits-20 (BENCH-TASK.md), Dirichlet(0.5) split, FedBuff K = 10, in virtual
time (fedbus.node.virtual_fleet: the real learners, codec and aggregator
core with its DP buffer, exact and repeatable). Every node's row per step is
clipped to C and Gaussian noise of std z * C is added to each step's sum;
epsilon at delta = 1e-5 is what the aggregator's accountant reports after
the run's steps (worst case over nodes, no subsampling claimed). The
reference, in the same run, is the same fleet without DP (plain mean, no
clipping), and with clipping alone (z = 0 is not DP, it shows what the clip
costs by itself).

    python bench/privacy.py [--updates 800] [--clip 0.5]

Prints a table and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from fedbus.aggregator.buffer import AggregationConfig
from fedbus.aggregator.privacy import gaussian_epsilon
from fedbus.aggregator.robust import PrivacySettings, RobustSettings
from fedbus.node.datasets import load_digits_task
from fedbus.node.partition import dirichlet_partition
from fedbus.node.virtual_fleet import digits_task, simulate

NOISE_MULTIPLIERS = (0.1, 0.3, 1.0, 3.0)
DELTA = 1e-5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=800)
    parser.add_argument("--clip", type=float, default=0.5, help="per-node L2 bound per step")
    args = parser.parse_args()
    data = load_digits_task()
    split = dirichlet_partition(data.y_train, 20, 0.5, seed=0)
    parts = [(np.ascontiguousarray(data.X_train[i]), data.y_train[i]) for i in split]
    test = (data.X_test, data.y_test)

    def run(config: AggregationConfig) -> tuple[float, int]:
        result = simulate(digits_task(), parts, test, config, max_updates=args.updates)
        return result.final_accuracy, result.scores[-1].version

    rows = []
    accuracy, steps = run(AggregationConfig.fedbuff(10))
    rows.append(
        {
            "setting": "no DP (reference)",
            "z": None,
            "accuracy": accuracy,
            "steps": steps,
            "epsilon": None,
        }
    )
    clip_only = AggregationConfig.fedbuff(10, robust=RobustSettings(clip_norm=args.clip))
    accuracy, steps = run(clip_only)
    rows.append(
        {
            "setting": f"clip {args.clip:g} only",
            "z": 0.0,
            "accuracy": accuracy,
            "steps": steps,
            "epsilon": math.inf,
        }
    )
    for z in NOISE_MULTIPLIERS:
        config = AggregationConfig.fedbuff(10, privacy=PrivacySettings(args.clip, z, DELTA))
        accuracy, steps = run(config)
        epsilon = gaussian_epsilon(DELTA, math.sqrt(steps) / z)
        rows.append(
            {
                "setting": f"DP clip {args.clip:g}",
                "z": z,
                "accuracy": accuracy,
                "steps": steps,
                "epsilon": epsilon,
            }
        )
    reference = rows[0]["accuracy"]
    print(f"digits-20 Dirichlet(0.5), FedBuff K=10, {args.updates} updates, delta {DELTA:g}")
    print(f"{'setting':<20}{'z':>6}{'steps':>7}{'epsilon':>11}{'accuracy':>10}{'vs ref':>9}")
    for row in rows:
        z = "-" if row["z"] is None else f"{row['z']:g}"
        eps = "-" if row["epsilon"] is None else f"{row['epsilon']:.1f}"
        loss = 100 * (row["accuracy"] - reference)
        print(
            f"{row['setting']:<20}{z:>6}{row['steps']:>7}{eps:>11}"
            f"{row['accuracy']:>10.4f}{loss:>+8.1f}p"
        )
    print(
        json.dumps(
            {
                "bench": "privacy",
                "updates": args.updates,
                "clip": args.clip,
                "delta": DELTA,
                "rows": rows,
            },
            default=str,
        )
    )


if __name__ == "__main__":
    main()
