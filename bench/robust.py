"""Robust aggregation kernels against a plain mean of the same rows, measured in one run.

The aggregator's buffer is K update rows of d float32 values (80 MB at the
defaults, far larger than the CPU caches). For coordinate_median and
trimmed_mean (beta 0.1 and 0.2): milliseconds per call, and the ratio to
numpy's ``rows.mean(axis=0)`` and to fedbus's own ``row_mean`` (float64
sums, the same blocked loop without the sorting), both measured again right
next to each kernel because a shared machine's speed drifts. The target is
at most 5x a plain mean (numpy's). ``np.median(rows, axis=0)``, what the
kernels replace, is timed once for context. Then a sweep of the block width
B (columns per block) over the private kernels.

    python bench/robust.py [--dim D] [--rows K] [--repeats R] [--blocks 32,64,...]

Times are the median of R calls after one warm-up call (compiles, faults
pages in). Prints tables and a final JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable

import numba
import numpy as np

from fedbus.kernels import robust
from fedbus.kernels.robust import coordinate_median, row_mean, trim_count, trimmed_mean

TARGET = 5.0  # at most this many plain means


def _seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{model}; python {platform.python_version()}, numpy {np.__version__}, "
        f"numba {numba.__version__}; one thread"
    )


def kernels(rows: np.ndarray, repeats: int) -> tuple[dict[str, dict[str, object]], float]:
    k, d = rows.shape
    out = np.empty(d, dtype=np.float32)
    cases: dict[str, Callable[[], object]] = {
        "row_mean": lambda: row_mean(rows, out=out),
        "coordinate_median": lambda: coordinate_median(rows, out=out),
    }
    for beta in (0.1, 0.2):
        trim = trim_count(k, beta)
        cases[f"trimmed_mean b={beta} (trim {trim})"] = functools.partial(
            trimmed_mean, rows, trim, out=out
        )

    started = time.perf_counter()
    reference = np.median(rows, axis=0)
    median_s = time.perf_counter() - started
    if not np.array_equal(coordinate_median(rows), reference.astype(np.float32)):
        raise SystemExit("coordinate_median disagrees with np.median")  # a wrong kernel is no bench

    print(
        f"{'kernel':<28} {'ms':>8} {'np mean ms':>11} {'x np mean':>10} {'row_mean ms':>12} "
        f"{'x row_mean':>11}  target <= {TARGET:g}x np mean"
    )
    results: dict[str, dict[str, object]] = {}
    for name, kernel in cases.items():
        numpy_s = _seconds(lambda: rows.mean(axis=0), repeats)
        own_s = _seconds(lambda: row_mean(rows, out=out), repeats)
        kernel_s = _seconds(kernel, repeats)
        vs_numpy = kernel_s / numpy_s
        met = vs_numpy <= TARGET
        verdict = "(reference)" if name == "row_mean" else ("met" if met else "MISSED")
        results[name] = {
            "ms": round(kernel_s * 1e3, 3),
            "numpy_mean_ms": round(numpy_s * 1e3, 3),
            "vs_numpy_mean": round(vs_numpy, 2),
            "vs_row_mean": round(kernel_s / own_s, 2),
            "target_met": met,
        }
        print(
            f"{name:<28} {kernel_s * 1e3:>8.2f} {numpy_s * 1e3:>11.2f} {vs_numpy:>10.2f} "
            f"{own_s * 1e3:>12.2f} {kernel_s / own_s:>11.2f}  {verdict}"
        )
    numpy_s = _seconds(lambda: rows.mean(axis=0), repeats)
    print(
        f"{'np.median(axis=0), one call':<28} {median_s * 1e3:>8.1f} {numpy_s * 1e3:>11.2f} "
        f"{median_s / numpy_s:>10.1f}"
    )
    return results, round(median_s * 1e3, 1)


def block_sweep(rows: np.ndarray, blocks: list[int], repeats: int) -> dict[int, dict[str, float]]:
    """The private kernels at other block widths than the wrappers' choice."""
    k, d = rows.shape
    out = np.empty(d, dtype=np.float32)
    trim = trim_count(k, 0.1)
    median_network = robust._kernel_network(k, True)
    full_network = robust._kernel_network(k, False)
    print(
        f"\nblock width B (the public kernels use {robust._block_width(k)} for K = {k}); "
        "ratios to np mean"
    )
    print(f"{'B':>5} {'scratch KiB':>12} {'median':>8} {'trimmed b=0.1':>14}")
    sweep = {}
    for block in blocks:
        numpy_s = _seconds(lambda: rows.mean(axis=0), repeats)
        median = functools.partial(robust._median_kernel, rows, median_network, block, out)
        trimmed = functools.partial(
            robust._trimmed_mean_kernel, rows, full_network, trim, block, out
        )
        median_s = _seconds(median, repeats)
        trimmed_s = _seconds(trimmed, repeats)
        sweep[block] = {
            "median_vs_numpy_mean": round(median_s / numpy_s, 2),
            "trimmed_vs_numpy_mean": round(trimmed_s / numpy_s, 2),
        }
        print(
            f"{block:>5} {k * block * 4 / 1024:>12.1f} {median_s / numpy_s:>8.2f} "
            f"{trimmed_s / numpy_s:>14.2f}"
        )
    return sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dim", type=int, default=1_000_000, help="coordinates per row (d)")
    parser.add_argument("--rows", type=int, default=20, help="update rows (K)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument(
        "--blocks",
        default="64,128,256,512,1024,2048,4096",
        help="block widths to sweep; empty to skip",
    )
    args = parser.parse_args(argv)
    blocks = [int(b) for b in args.blocks.split(",") if b.strip()]

    rows = np.random.default_rng(0).standard_normal((args.rows, args.dim)).astype(np.float32)
    print(
        f"K = {args.rows} rows x d = {args.dim:,} float32 ({rows.nbytes / 2**20:.0f} MiB); "
        f"{_machine()}"
    )
    results, median_ms = kernels(rows, args.repeats)
    sweep = block_sweep(rows, blocks, args.repeats) if blocks else {}
    print(
        json.dumps(
            {
                "bench": "robust",
                "rows": args.rows,
                "dim": args.dim,
                "block": robust._block_width(args.rows),
                "target_vs_numpy_mean": TARGET,
                "kernels": results,
                "np_median_ms": median_ms,
                "block_sweep": sweep,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
