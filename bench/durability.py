"""What durable acks cost: aggregator updates/s with the journal, against none.

The reference, measured in the same run, is the same AggregatorCore deciding
the same update payloads with no journal at all (acks that a crash could
take back). Then the journal as the daemon uses it: every accepted update
appended, one fsync per batch (group commit), for several batch sizes; batch
1 is the naive "fsync per update". Models: the digits-20 layout (650
floats) and a 100k-float one. No broker: this isolates the storage cost.

    python bench/durability.py [--updates N] [--repeats R]

Prints a table and a final JSON line with the ratios to the reference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fedbus.aggregator.buffer import AggregationConfig, BufferedAggregator
from fedbus.aggregator.core import AggregatorCore
from fedbus.aggregator.store import AggregatorStore
from fedbus.broker.codec import encode
from fedbus.broker.messages import TrainingTask, UpdateMessage
from fedbus.broker.tensors import encode_weights

MODELS = {"digits-650": {"W": (64, 10), "b": (10,)}, "wide-100k": {"W": (1000, 100), "b": (100,)}}
BATCHES = (1, 16, 256)


def _core(shapes: dict[str, tuple[int, ...]]) -> AggregatorCore:
    task = TrainingTask("bench", "softmax", shapes)
    initial = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
    config = AggregationConfig.fedbuff(10, max_staleness=1_000_000)
    return AggregatorCore(task, BufferedAggregator(config, initial))


def _payloads(shapes: dict[str, tuple[int, ...]], count: int) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        node = f"n{i % 50}"
        delta = {n: rng.standard_normal(s).astype(np.float32) * 1e-3 for n, s in shapes.items()}
        out.append((node, encode(UpdateMessage(node, i // 50 + 1, 0, 10, encode_weights(delta)))))
    return out


def _run(
    shapes: dict[str, tuple[int, ...]], payloads: list[tuple[str, bytes]], batch: int | None
) -> float:
    """Updates per second; batch None = no journal (the reference)."""
    core = _core(shapes)
    with tempfile.TemporaryDirectory(prefix="fedbus-bench-") as tmp:
        store = None
        if batch is not None:
            store = AggregatorStore(Path(tmp))
            store.recover(core)
        started = time.perf_counter()
        for i, (node, payload) in enumerate(payloads, 1):
            outcome = core.handle_update(node, payload)
            if store is not None:
                if outcome.ack.accepted:
                    store.log_accepted(node, payload)
                if i % batch == 0:  # type: ignore[operator]
                    store.commit()
        if store is not None:
            store.commit()
        return len(payloads) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--updates", type=int, default=2000, help="updates per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="median of this many runs")
    args = parser.parse_args(argv)
    result: dict[str, dict[str, float]] = {}
    print(f"{'model':<12} {'journal':<22} {'updates/s':>12} {'vs no journal':>14}")
    for model, shapes in MODELS.items():
        count = args.updates if model.startswith("digits") else max(200, args.updates // 10)
        payloads = _payloads(shapes, count)
        _run(shapes, payloads[:50], None)  # warm-up
        reference = statistics.median(_run(shapes, payloads, None) for _ in range(args.repeats))
        print(f"{model:<12} {'none (reference)':<22} {reference:>12,.0f} {1.0:>14.2f}")
        result[model] = {"reference_updates_per_s": round(reference, 1)}
        for batch in BATCHES:
            rate = statistics.median(_run(shapes, payloads, batch) for _ in range(args.repeats))
            label = f"fsync per {batch} update" + ("s" if batch > 1 else "")
            print(f"{model:<12} {label:<22} {rate:>12,.0f} {rate / reference:>14.2f}")
            result[model][f"ratio_batch_{batch}"] = round(rate / reference, 3)
    print(json.dumps({"bench": "durability", **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
