"""Kernel bandwidth against np.copyto and the numpy reference, measured in one run.

For each elementwise kernel: GB/s over float32 arrays far larger than the CPU
caches (bytes of float32 input read per second), next to `np.copyto` on a
buffer of the same size (the memory-bandwidth yardstick) and next to the
plain numpy expression the kernel replaces. Then the first-call latency of
each kernel in a fresh process, with a cold numba cache (an empty
NUMBA_CACHE_DIR) and with a warm one (the same dir again).

    python bench/kernels.py [--elements N] [--repeats R]

Prints a table and a final JSON line with the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

from fedbus.kernels.norms import clip_by_norm, l2_norm
from fedbus.kernels.quantize import accumulate, dequantize_accumulate, quantize
from fedbus.kernels.sparsify import scatter_accumulate

BLOCK = 256


def _seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up (compiles, faults pages in)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _numpy_quantize(values: np.ndarray, bits: int, rng: np.random.Generator | None) -> tuple:  # type: ignore[type-arg]
    """The numpy expression quantize replaces: scales, codes (stochastic with
    ``rng``, to nearest without), packed bytes."""
    qmax = 127 if bits == 8 else 7
    blocks = values.reshape(-1, BLOCK)
    scales = (np.abs(blocks).max(axis=1) / qmax).astype(np.float32)
    safe = np.where(scales > 0, scales, 1)[:, None]
    quotients = blocks / safe
    rounded = np.rint(quotients) if rng is None else np.floor(quotients + rng.random(blocks.shape))
    codes = np.clip(rounded, -qmax, qmax)
    codes = codes.astype(np.int8).reshape(-1)
    if bits == 8:
        return scales, codes.view(np.uint8)
    nibbles = (codes + 8).astype(np.uint8)
    return scales, nibbles[0::2] | (nibbles[1::2] << 4)


def _numpy_decode(scales: np.ndarray, codes: np.ndarray, bits: int) -> np.ndarray:
    """float32(c) * s with numpy: unpack (4 bits), then one broadcast multiply."""
    if bits == 8:
        integers = codes.view(np.int8).astype(np.float32)
    else:
        integers = np.empty(2 * codes.size, np.float32)
        integers[0::2] = (codes & 0x0F).astype(np.float32) - 8
        integers[1::2] = (codes >> 4).astype(np.float32) - 8
    return (integers.reshape(-1, BLOCK) * scales[:, None]).reshape(-1)


def bandwidth(n: int, repeats: int) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(0)
    values = rng.standard_normal(n).astype(np.float32)
    acc = np.zeros(n, np.float32)
    target = np.empty_like(values)
    gigabytes = values.nbytes / 1e9
    copy_s = _seconds(lambda: np.copyto(target, values), repeats)
    q8 = quantize(values, 8, BLOCK, 1)
    q4 = quantize(values, 4, BLOCK, 1)
    k = n // 100
    idx = np.sort(rng.choice(n, k, replace=False)).astype(np.uint32)
    kept = values[:k].copy()
    cases: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "quantize q8": (
            lambda: quantize(values, 8, BLOCK, 1),
            lambda: _numpy_quantize(values, 8, rng),
        ),
        "quantize q4": (
            lambda: quantize(values, 4, BLOCK, 1),
            lambda: _numpy_quantize(values, 4, rng),
        ),
        "quantize q8 nearest": (
            lambda: quantize(values, 8, BLOCK, 1, "nearest"),
            lambda: _numpy_quantize(values, 8, None),
        ),
        "quantize q4 nearest": (
            lambda: quantize(values, 4, BLOCK, 1, "nearest"),
            lambda: _numpy_quantize(values, 4, None),
        ),
        "dequantize+acc q8": (
            lambda: dequantize_accumulate(acc, 0.5, *q8, 8, BLOCK),
            lambda: np.add(acc, np.float32(0.5) * _numpy_decode(q8[0], q8[1], 8), out=acc),
        ),
        "dequantize+acc q4": (
            lambda: dequantize_accumulate(acc, 0.5, *q4, 4, BLOCK),
            lambda: np.add(acc, np.float32(0.5) * _numpy_decode(q4[0], q4[1], 4), out=acc),
        ),
        "accumulate f32": (
            lambda: accumulate(acc, 0.5, values),
            lambda: np.add(acc, np.float32(0.5) * values, out=acc),
        ),
        "l2 norm": (
            lambda: l2_norm(values),
            lambda: float(np.sqrt(np.sum(values.astype(np.float64) ** 2))),
        ),
        "clip by norm": (
            lambda: clip_by_norm(target, 1e30),  # measures the pass; nothing to scale
            lambda: target * min(1.0, 1e30 / float(np.linalg.norm(target))),
        ),
        "scatter-acc 1%": (
            lambda: scatter_accumulate(acc, 0.5, idx, kept),
            lambda: np.add.at(acc, idx, np.float32(0.5) * kept),
        ),
    }
    rows = {}
    print(
        f"{n:,} float32 ({values.nbytes / 2**20:.0f} MiB); np.copyto {gigabytes / copy_s:.2f} GB/s "
        "(measured again next to each kernel: a shared machine's bandwidth drifts)"
    )
    print(
        f"{'kernel':<20} {'GB/s':>8} {'copyto':>8} {'x copyto':>9} {'numpy GB/s':>11} "
        f"{'x numpy':>8}"
    )
    for name, (kernel, reference) in cases.items():
        copy_s = _seconds(lambda: np.copyto(target, values), repeats)
        kernel_s = _seconds(kernel, repeats)
        reference_s = _seconds(reference, max(1, repeats // 2))
        rows[name] = {
            "gbps": round(gigabytes / kernel_s, 2),
            "copyto_gbps": round(gigabytes / copy_s, 2),
            "vs_copyto": round(copy_s / kernel_s, 3),
            "vs_numpy": round(reference_s / kernel_s, 2),
        }
        print(
            f"{name:<20} {gigabytes / kernel_s:>8.2f} {gigabytes / copy_s:>8.2f} "
            f"{copy_s / kernel_s:>9.2f} {gigabytes / reference_s:>11.2f} "
            f"{reference_s / kernel_s:>8.2f}"
        )
    return rows


_FIRST_CALL = """
import time, numpy as np
from fedbus.kernels.norms import l2_norm
from fedbus.kernels.quantize import quantize, dequantize_accumulate, accumulate
from fedbus.kernels.sparsify import scatter_accumulate, topk_with_feedback
from fedbus.kernels.optimizers import adam_step
v = np.ones(1000, np.float32); acc = np.zeros(1000, np.float32)
q8 = (np.ones(4, np.float32), np.zeros(1000, np.uint8))
q4 = (np.ones(4, np.float32), np.zeros(500, np.uint8))
out = {}
for name, call in [
    # numba's own start-up (runtime, LLVM, cache index) lands on the first kernel
    # a process calls: charge it to l2_norm here so that each row below is the kernel's own
    ("numba start-up (l2_norm)", lambda: l2_norm(v)),
    ("quantize q8", lambda: quantize(v, 8, 256, 0)),
    ("quantize q4", lambda: quantize(v, 4, 256, 0)),
    ("dequantize_accumulate q8", lambda: dequantize_accumulate(acc, 1.0, *q8, 8, 256)),
    ("dequantize_accumulate q4", lambda: dequantize_accumulate(acc, 1.0, *q4, 4, 256)),
    ("accumulate", lambda: accumulate(acc, 1.0, v)),
    ("topk_with_feedback", lambda: topk_with_feedback(v, np.zeros(1000, np.float32), 10)),
    ("scatter_accumulate",
     lambda: scatter_accumulate(acc, 1.0, np.arange(5, dtype=np.uint32), v[:5])),
    ("adam_step", lambda: adam_step(v.copy(), v, acc.copy(), acc.copy(), 0.1, 0.9, 0.99, 1e-3, 1)),
]:
    t = time.perf_counter(); call(); out[name] = round((time.perf_counter() - t) * 1000, 2)
print(__import__("json").dumps(out))
"""


def first_calls() -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="fedbus-numba-cache-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        runs = {}
        for label in ("cold", "warm"):
            done = subprocess.run(
                [sys.executable, "-c", _FIRST_CALL], env=env, capture_output=True, text=True
            )
            if done.returncode:
                raise SystemExit(done.stderr)
            runs[label] = json.loads(done.stdout)
    print(f"\n{'first call (ms)':<28} {'cold cache':>10} {'warm cache':>10}")
    for name in runs["cold"]:
        print(f"{name:<28} {runs['cold'][name]:>10.1f} {runs['warm'][name]:>10.1f}")
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--elements", type=int, default=2**25, help="float32 elements (128 MiB)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    n = args.elements - args.elements % BLOCK
    rows = bandwidth(n, args.repeats)
    latency = first_calls()
    print(
        json.dumps({"bench": "kernels", "elements": n, "kernels": rows, "first_call_ms": latency})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
