"""Time to 0.93 test accuracy on the reference task, sync FedAvg against async, on the bus.

Every cell is a real `fedbus demo` run (Mosquitto, the aggregator process,
20 fleet threads with one MQTT connection each, the observer scoring every
model version) on digits-20 (BENCH-TASK.md), stopped at the target or after
--max-seconds. The algorithms, with the same seeds:

- sync        synchronous FedAvg, all 20 nodes per round (`--mode sync`): the reference;
- sync+dl     the same with a deadline S (`--mode sync --deadline S`);
- fedasync    FedAsync, default alpha 0.6 (`--mode fedasync`);
- fedbuff-5   FedBuff K = 5 (`--mode async -K 5`);
- fedbuff-10  FedBuff K = 10 (`--mode async -K 10`).

Conditions: `straggler` is BENCH-TASK's model (mean delay 0.05 s, lognormal
sigma 1); `harsh` raises the mean delay to 0.2 s, makes 10% of the nodes 10x
slower and loses 5% of the finished updates with their device (which then
stays silent 2 s). Sync without a deadline cannot finish with dropouts (a
round waits for all; the demo refuses it), so that cell is reported as such
and the deadline variant is the sync reference there.

Reference for what async can gain, from the same draws the fleet makes
(fedbus.node.conditions.run_conditions, nodes 0..19, runs 1..30): the ideal
speedup E[max of a round's 20 delays] / E[one delay]. The deadline S is the
median over those rounds of (slowest - fastest delay): the aggregator's
deadline clock starts at the first update in the buffer, so a deadline round
lasts about as long as the median round without one, and only rounds with a
worse straggler than the median are cut.

    python bench/time_to_accuracy.py [--conditions straggler,harsh]
        [--partitions dirichlet,iid] [--algorithms sync,sync+dl,fedasync,fedbuff-5,fedbuff-10]
        [--seeds 0,1,2] [--max-seconds 120] [--keep-runs DIR]

Each row is the median run over the seeds by seconds to the target (its
updates and versions are that run's). Writes
docs/img/time_to_accuracy_<condition>_<partition>.png (accuracy against wall
time of those median runs). Prints a table and a final JSON line. The
defaults (3 seeds x 18 runs: 2 conditions, 2 partitions) take about 9
minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedbus.node.conditions import Heterogeneity, run_conditions, slow_nodes

TARGET_ACCURACY = 0.93
TARGET_SPEEDUP = 3.0
NODES = 20
IDEAL_RUNS = 30
IMG_DIR = Path(__file__).resolve().parent.parent / "docs" / "img"


@dataclass(frozen=True)
class Condition:
    name: str
    label: str
    straggler_scale: float
    slow_fraction: float = 0.0
    dropout: float = 0.0

    def heterogeneity(self) -> Heterogeneity:
        """The fleet's conditions exactly as `fedbus demo` builds them from its flags."""
        return Heterogeneity(
            straggler_scale=self.straggler_scale,
            slow_fraction=self.slow_fraction,
            dropout=self.dropout,
        )

    def flags(self) -> list[str]:
        return [
            "--straggler-scale",
            str(self.straggler_scale),
            "--slow-fraction",
            str(self.slow_fraction),
            "--dropout",
            str(self.dropout),
        ]


CONDITIONS = {
    "straggler": Condition("straggler", "BENCH-TASK stragglers, mean 0.05 s", 0.05),
    "harsh": Condition(
        "harsh", "mean 0.2 s, 10% 10x slower, 5% dropout", 0.2, slow_fraction=0.1, dropout=0.05
    ),
}
ALGORITHMS = ("sync", "sync+dl", "fedasync", "fedbuff-5", "fedbuff-10")
ASYNC = ("fedasync", "fedbuff-5", "fedbuff-10")
PARTITIONS = ("dirichlet", "iid")


def algorithm_flags(algorithm: str, deadline: float) -> list[str]:
    return {
        "sync": ["--mode", "sync"],
        "sync+dl": ["--mode", "sync", "--deadline", f"{deadline:.2f}"],
        "fedasync": ["--mode", "fedasync"],
        "fedbuff-5": ["--mode", "async", "-K", "5"],
        "fedbuff-10": ["--mode", "async", "-K", "10"],
    }[algorithm]


# ------------------------------------------------------------------ the ideal


def run_delays(condition: Condition, seed: int) -> np.ndarray:
    """Delays (runs x nodes) the demo's fleet draws after local runs 1..IDEAL_RUNS."""
    h = condition.heterogeneity()
    slow = slow_nodes(NODES, h.slow_fraction, seed)
    return np.array(
        [
            [run_conditions(h, seed, node, run, node in slow).delay for node in range(NODES)]
            for run in range(1, IDEAL_RUNS + 1)
        ]
    )


def ideal(condition: Condition, seeds: list[int]) -> dict[str, float]:
    """E[max over a round], E[one run], their ratio, and the sync deadline S, in seconds."""
    delays = np.concatenate([run_delays(condition, seed) for seed in seeds])
    e_max = float(delays.max(axis=1).mean())
    e_mean = float(delays.mean())
    spread = float(np.median(delays.max(axis=1) - delays.min(axis=1)))
    return {
        "e_max": round(e_max, 4),
        "e_mean": round(e_mean, 4),
        "ideal_speedup": round(e_max / e_mean, 2),
        "deadline": math.ceil(spread * 100) / 100,
    }


# ------------------------------------------------------------------ bus runs


@dataclass
class Cell:
    """One algorithm under one condition and partition, over the seeds."""

    seconds: list[float | None] = field(default_factory=list)
    updates: list[int | None] = field(default_factory=list)
    versions: list[int | None] = field(default_factory=list)
    best: list[float] = field(default_factory=list)
    curves: list[list[tuple[float, float]]] = field(default_factory=list)
    note: str = ""

    @property
    def reached(self) -> bool:
        return bool(self.seconds) and self.median_seconds is not None

    def _median_run(self) -> int:
        """Index of the median run by seconds (the lower one for an even count), a run
        that missed the target counting as infinitely slow."""
        keys = [math.inf if s is None else s for s in self.seconds]
        order = sorted(range(len(keys)), key=keys.__getitem__)
        return order[(len(order) - 1) // 2]

    @property
    def median_seconds(self) -> float | None:
        """Seconds to the target of the median run; None when it missed the target."""
        return self.seconds[self._median_run()] if self.seconds else None

    def median_of(self, values: list[int | None]) -> float | None:
        """The median run's value (updates, versions), so that a row is one real run."""
        return values[self._median_run()] if self.reached else None

    @property
    def best_accuracy(self) -> float | None:
        """The median run's best accuracy (what a row that missed the target reports)."""
        return self.best[self._median_run()] if self.best else None

    @property
    def curve(self) -> list[tuple[float, float]]:
        """The median run's accuracy against seconds, for the plot."""
        return self.curves[self._median_run()] if self.curves else []

    def summary(self) -> dict[str, Any]:
        return {
            "seconds_to_target": self.median_seconds,
            "updates_to_target": self.median_of(self.updates),
            "versions_to_target": self.median_of(self.versions),
            "best_accuracy": self.best_accuracy,
            "per_seed_seconds": self.seconds,
            "per_seed_updates": self.updates,
            "note": self.note or None,
        }


def run_cell(
    condition: Condition,
    partition: str,
    algorithm: str,
    deadline: float,
    seed: int,
    max_seconds: float,
    run_dir: Path,
) -> dict[str, Any]:
    """One `fedbus demo` run; returns its summary.json plus its accuracy curve."""
    command = [
        sys.executable,
        "-m",
        "fedbus.broker.cli",
        "demo",
        "--json",
        "--no-progress",
        "--seed",
        str(seed),
        "--partition",
        partition,
        "--target-accuracy",
        str(TARGET_ACCURACY),
        "--max-seconds",
        str(max_seconds),
        "--run-dir",
        str(run_dir),
        *condition.flags(),
        *algorithm_flags(algorithm, deadline),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=max_seconds + 120)
    if done.returncode not in (0, 3):
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"demo exited with {done.returncode}: {' | '.join(tail)}")
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    with (run_dir / "scores.csv").open(newline="") as handle:
        summary["curve"] = [
            (float(row["seconds"]), float(row["accuracy"])) for row in csv.DictReader(handle)
        ]
    return summary


def run_grid(
    conditions: list[str],
    partitions: list[str],
    algorithms: list[str],
    seeds: list[int],
    deadlines: dict[str, float],
    max_seconds: float,
    runs_root: Path,
) -> dict[tuple[str, str, str], Cell]:
    cells: dict[tuple[str, str, str], Cell] = {}
    for name in conditions:
        condition = CONDITIONS[name]
        for partition in partitions:
            for seed in seeds:
                for algorithm in algorithms:
                    cell = cells.setdefault((name, partition, algorithm), Cell())
                    if algorithm == "sync" and condition.dropout > 0:
                        cell.note = "cannot finish: a round waits for every node, dropouts"
                        continue
                    run_dir = runs_root / f"{name}-{partition}-{algorithm}-seed{seed}"
                    started = time.monotonic()
                    try:
                        summary = run_cell(
                            condition,
                            partition,
                            algorithm,
                            deadlines[name],
                            seed,
                            max_seconds,
                            run_dir,
                        )
                    except (RuntimeError, subprocess.TimeoutExpired) as exc:
                        cell.note = f"failed: {exc}"
                        print(f"  {name} {partition} {algorithm}: {exc}", file=sys.stderr)
                        continue
                    cell.seconds.append(summary["seconds_to_target"])
                    cell.updates.append(summary["updates_to_target"])
                    cell.versions.append(summary["version_at_target"])
                    cell.best.append(summary["best_accuracy"])
                    cell.curves.append(summary["curve"])
                    print(
                        f"  {name} {partition} {algorithm} seed {seed}: "
                        f"{summary['seconds_to_target']} s, {summary['updates_to_target']} "
                        f"updates, best {summary['best_accuracy']} "
                        f"({time.monotonic() - started:.0f} s wall)",
                        file=sys.stderr,
                        flush=True,
                    )
    return cells


def warm_up(runs_root: Path) -> None:
    """One short demo so that imports, numba caches and the page cache are warm."""
    run_cell(CONDITIONS["straggler"], "dirichlet", "fedbuff-10", 0.0, 0, 5.0, runs_root / "warm")


# ------------------------------------------------------------------ report


def _fmt(value: float | None, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def print_table(
    cells: dict[tuple[str, str, str], Cell], ideals: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """The table of cells, then one verdict line per condition and partition."""
    header = (
        f"{'condition':<10} {'partition':<10} {'algorithm':<11} {'s to 0.93':>10} "
        f"{'updates':>8} {'versions':>9} {'updates/s':>10} {'best acc':>9} {'vs ref':>7}"
    )
    print("vs ref: seconds of the reference (sync FedAvg; sync+dl where sync cannot finish)")
    print("over the row's; updates/s = updates applied up to the target / seconds; each row")
    print("is the median run over the seeds by seconds, updates and versions are that run's")
    print(header)
    print("-" * len(header))
    verdicts: dict[str, Any] = {}
    groups = sorted({(c, p) for c, p, _ in cells}, key=lambda g: (list(CONDITIONS).index(g[0]), g))
    for condition, partition in groups:
        row = {a: cells[(c, p, a)] for c, p, a in cells if (c, p) == (condition, partition)}
        sync = row.get("sync")
        reference_name = "sync" if sync is not None and sync.reached else "sync+dl"
        reference = row.get(reference_name)
        ref_seconds = reference.median_seconds if reference is not None else None
        for algorithm, cell in row.items():
            seconds = cell.median_seconds
            updates = cell.median_of(cell.updates)
            rate = updates / seconds if seconds and updates else None
            ratio = ref_seconds / seconds if ref_seconds and seconds else None
            if cell.note.startswith("cannot"):
                shown = "cannot finish"
            elif cell.note:
                shown = "failed"
            elif seconds is None:
                shown = "not reached"
            else:
                shown = f"{seconds:.2f}"
            best = cell.best_accuracy
            print(
                f"{condition:<10} {partition:<10} {algorithm:<11} {shown:>10} "
                f"{_fmt(updates, '.0f'):>8} {_fmt(cell.median_of(cell.versions), '.0f'):>9} "
                f"{_fmt(rate, '.0f'):>10} {_fmt(best, '.4f'):>9} {_fmt(ratio, '.2f'):>7}"
            )
        verdicts[f"{condition}/{partition}"] = _verdict(row, reference_name, ideals[condition])
    print()
    for key, v in verdicts.items():
        if v["speedup"] is None:
            print(f"{key}: no async/sync pair reached {TARGET_ACCURACY}")
            continue
        met = "met" if v["met"] else "MISSED"
        print(
            f"{key}: best async {v['best_async']} {v['speedup']:.2f}x sooner than "
            f"{v['reference']} (target {TARGET_SPEEDUP:g}x: {met}); ideal E[max]/E[mean] "
            f"{v['ideal_speedup']:.2f}x"
        )
        if v.get("rate_ratio") is not None:
            print(
                f"    = {v['rate_ratio']:.2f}x applied updates/s (ideal {v['ideal_speedup']:.2f}) "
                f"x {v['update_ratio']:.2f} (sync updates / async updates to target)"
            )
        if v.get("round_seconds") is not None:
            print(
                f"    sync round {v['round_seconds']:.3f} s against E[max delay] "
                f"{v['e_max']:.3f} s: {v['overhead_seconds']:.3f} s per round "
                f"is local compute, messaging and aggregation; with that per run the ideal "
                f"is {v['ideal_with_overhead']:.2f}x"
            )
    return verdicts


def _verdict(
    row: dict[str, Cell], reference_name: str, ideal_figures: dict[str, float]
) -> dict[str, Any]:
    reference = row.get(reference_name)
    reached = {a: row[a].median_seconds for a in ASYNC if a in row and row[a].reached}
    out: dict[str, Any] = {
        "reference": reference_name,
        "ideal_speedup": ideal_figures["ideal_speedup"],
        "e_max": ideal_figures["e_max"],
        "best_async": None,
        "speedup": None,
        "met": None,
    }
    if reference is None or not reference.reached or not reached:
        return out
    best = min(reached, key=lambda a: reached[a] or math.inf)
    ref_seconds, best_seconds = reference.median_seconds, reached[best]
    assert ref_seconds is not None and best_seconds is not None
    speedup = ref_seconds / best_seconds
    out.update(best_async=best, speedup=round(speedup, 2))
    out["met"] = speedup >= TARGET_SPEEDUP
    ref_updates = reference.median_of(reference.updates)
    best_updates = row[best].median_of(row[best].updates)
    if ref_updates and best_updates:
        out["rate_ratio"] = round((best_updates / best_seconds) / (ref_updates / ref_seconds), 2)
        out["update_ratio"] = round(ref_updates / best_updates, 2)
    versions = reference.median_of(reference.versions)
    if reference_name == "sync" and versions:
        round_seconds = ref_seconds / versions
        overhead = max(0.0, round_seconds - ideal_figures["e_max"])
        out["round_seconds"] = round(round_seconds, 4)
        out["overhead_seconds"] = round(overhead, 4)
        out["ideal_with_overhead"] = round(
            (overhead + ideal_figures["e_max"]) / (overhead + ideal_figures["e_mean"]), 2
        )
    return out


def plot(cells: dict[tuple[str, str, str], Cell], ideals: dict[str, dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG_DIR.mkdir(parents=True, exist_ok=True)
    for condition, partition in sorted({(c, p) for c, p, _ in cells}):
        fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
        for (c, p, algorithm), cell in cells.items():
            if (c, p) != (condition, partition) or not cell.curve:
                continue
            times = [max(s, 1e-2) for s, _ in cell.curve]
            ax.step(times, [a for _, a in cell.curve], where="post", label=algorithm)
        ax.axhline(TARGET_ACCURACY, color="grey", linestyle="--", linewidth=1, label="target")
        ax.set_xscale("log")
        ax.set_xlabel("seconds since first model publication (log)")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3, which="both")
        i = ideals[condition]
        ax.set_title(
            f"digits-20, {partition}, {CONDITIONS[condition].label}\n"
            f"ideal speedup {i['ideal_speedup']:.1f}x, sync deadline S = {i['deadline']:.2f} s",
            fontsize=10,
        )
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(IMG_DIR / f"time_to_accuracy_{condition}_{partition}.png")
        plt.close(fig)


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"


def _choices(text: str, allowed: tuple[str, ...] | list[str], flag: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise SystemExit(f"{flag}: choose from {', '.join(allowed)} (got {text!r})")
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--partitions", default=",".join(PARTITIONS))
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument(
        "--seeds", default="0,1,2", help="comma list; a row is the median run by seconds"
    )
    parser.add_argument("--max-seconds", type=float, default=120.0, help="per run")
    parser.add_argument("--deadline", type=float, default=None, help="override S (seconds)")
    parser.add_argument("--keep-runs", type=Path, default=None, help="keep run folders here")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    conditions = _choices(args.conditions, list(CONDITIONS), "--conditions")
    partitions = _choices(args.partitions, PARTITIONS, "--partitions")
    algorithms = _choices(args.algorithms, ALGORITHMS, "--algorithms")
    seeds = [int(s) for s in args.seeds.split(",")]

    ideals = {name: ideal(CONDITIONS[name], seeds) for name in conditions}
    if args.deadline is not None:
        for figures in ideals.values():
            figures["deadline"] = args.deadline
    print(f"machine: {_machine()}; seeds {seeds}; max {args.max_seconds:g} s per run")
    print(f"{'condition':<10} {'E[max of 20]':>13} {'E[one run]':>11} {'ideal':>7} {'S':>6}")
    for name, i in ideals.items():
        print(
            f"{name:<10} {i['e_max']:>12.3f}s {i['e_mean']:>10.3f}s "
            f"{i['ideal_speedup']:>6.2f}x {i['deadline']:>5.2f}s"
        )
    print()

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fedbus-tta-") as tmp:
        root = args.keep_runs or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        warm_up(root)
        deadlines = {name: i["deadline"] for name, i in ideals.items()}
        cells = run_grid(
            conditions, partitions, algorithms, seeds, deadlines, args.max_seconds, root
        )
    verdicts = print_table(cells, ideals)
    if not args.no_plots:
        plot(cells, ideals)
    print(
        json.dumps(
            {
                "bench": "time_to_accuracy",
                "machine": _machine(),
                "seeds": seeds,
                "target_accuracy": TARGET_ACCURACY,
                "max_seconds": args.max_seconds,
                "ideal": ideals,
                "cells": {"/".join(k): cell.summary() for k, cell in cells.items()},
                "verdicts": verdicts,
                "wall_seconds": round(time.monotonic() - started, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
