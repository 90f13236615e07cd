"""Latency from publishing an update to the model version that contains it.

FedAsync (K = 1: every accepted update makes a new version), the real
daemon (`python -m fedbus.aggregator`, a subprocess with a fresh state
dir, so the journal fsync, the model publish and the checkpoint every 10
versions are all in the path) behind a real Mosquitto. One node sends its
updates one at a time with base_version = the newest model (staleness 0)
and waits for the model of the next version (and its ack) before sending
the next. Latency: from just before `publish` to the moment the whole
model message is in hand (a model over the 128 KiB chunk limit arrives as
chunks and is reassembled first; decoding it is not counted).

Reference, measured in the same run, alternating with the aggregator one
exchange each: a raw MQTT round trip of the same update payload. The same
client publishes it QoS 1, a bare paho process (bench/busbench.py echo)
receives it and publishes a reply the size of the model (QoS 1, retained,
as the model is) that the client receives. So the ratio is what the
aggregator adds to two broker hops: decode, validate, step, journal +
fsync, encode and publish the model.

    python bench/latency.py [--sizes 10KB,100KB,1MB] [--updates 300] [--warmup 10]

Prints a table (milliseconds) and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
from busbench import (
    NAGLE_ENV,
    AggregatorProcess,
    machine,
    parse_sizes,
    raw_client,
    start_helper,
    update_payloads,
)

from fedbus.aggregator.store import applied_updates
from fedbus.broker.chunking import Reassembler
from fedbus.broker.client import BrokerAddress, BusClient
from fedbus.broker.codec import decode, encode
from fedbus.broker.launcher import ManagedBroker
from fedbus.broker.messages import AckMessage, ModelMessage, UpdateMessage
from fedbus.broker.tensors import WireTensor
from fedbus.broker.topics import Topics, chunk_filter, parse_chunk_topic

NODE = "n000"
#: The table's columns after the size, as keys of a result row.
COLUMNS = (
    "update_bytes",
    "raw_p50_ms",
    "raw_p99_ms",
    "aggregator_p50_ms",
    "aggregator_p99_ms",
    "ratio_p50",
    "ratio_p99",
)


class Exchange:
    """The measuring node: a bare paho client (TCP_NODELAY, see busbench.raw_client)
    subscribed to the model (and its chunks), its ack and the echo's reply."""

    def __init__(self, broker: ManagedBroker, agg: Topics, ref: Topics, timeout: float) -> None:
        self.agg = agg
        self.ref = ref
        self.timeout = timeout
        self.version = -1
        self.problems: list[str] = []
        self.inbox: queue.Queue[tuple[float, str, bytes]] = queue.Queue()
        self.reassembler = Reassembler()
        self.subscribed = threading.Event()
        filters = [agg.model, chunk_filter(agg.model) or agg.model, agg.ack(NODE), ref.model]
        self.client = raw_client(f"bench-latency-{agg.fleet}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in filters])
        self.client.on_subscribe = lambda c, u, mid, rc, p: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=60)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise TimeoutError("latency client: no SUBACK")

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        self.inbox.put((time.monotonic(), msg.topic, bytes(msg.payload)))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _next(self, deadline: float) -> tuple[float, str, bytes]:
        """(arrival, topic, payload) of the next whole message; a chunked one
        arrives with its last chunk (reassembly on this thread, as BusClient does)."""
        while True:
            try:
                now, topic, payload = self.inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError("no message in time") from None
            chunk_of = parse_chunk_topic(topic)
            if chunk_of is None:
                return now, topic, payload
            whole = self.reassembler.add(topic, payload, now)
            if whole is not None:
                return now, chunk_of[0], whole

    def wait_model(self) -> int:
        """Take the retained model; returns its version."""
        deadline = time.monotonic() + self.timeout
        while self.version < 0:
            _, topic, payload = self._next(deadline)
            if topic == self.agg.model and payload:
                self.version = decode(payload, ModelMessage).version
        return self.version

    def reference(self, payload: bytes) -> float:
        """Seconds for one raw request/reply round trip."""
        deadline = time.monotonic() + self.timeout
        started = time.monotonic()
        self.client.publish(self.ref.update(NODE), payload, qos=1)
        while True:
            now, topic, _ = self._next(deadline)
            if topic == self.ref.model:
                return now - started

    def aggregator(self, seq: int, tensors: tuple[WireTensor, ...]) -> float:
        """Seconds from publishing update `seq` to holding the model version it made."""
        payload = encode(UpdateMessage(NODE, seq, self.version, 10, tensors))
        deadline = time.monotonic() + self.timeout
        expected = self.version + 1
        model_at: float | None = None
        ack: AckMessage | None = None
        started = time.monotonic()
        self.client.publish(self.agg.update(NODE), payload, qos=1)
        while model_at is None or ack is None:
            now, topic, body = self._next(deadline)
            if topic == self.agg.model:
                version = decode(body, ModelMessage).version
                if version == expected:
                    model_at = now
                    self.version = version
                else:
                    self.problems.append(f"seq {seq}: model version {version}, not {expected}")
            elif topic == self.agg.ack(NODE):
                ack = decode(body, AckMessage)
                if not ack.accepted or ack.seq != seq or ack.version != expected:
                    self.problems.append(f"seq {seq}: unexpected ack {ack}")
        return model_at - started


def percentiles(values: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.array(values) * 1e3, [50, 99])
    return float(p50), float(p99)


def run_size(
    broker: ManagedBroker, size: str, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    tag = size.lower()
    address = BrokerAddress(broker.host, broker.port, chunk_limit=None)
    monitor = BusClient(f"bench-lat-monitor-{tag}", address, persistent_session=False)
    monitor.start()
    monitor.wait_connected(10)
    daemon = AggregatorProcess(
        broker, f"lat-agg-{tag}", size, workdir / f"state-{tag}", ["--mode", "fedasync"]
    )
    daemon.start(monitor)
    monitor.stop()  # it only waited for the daemon; statuses would pile up in its inbox
    ref = Topics(f"lat-ref-{tag}")
    echo = start_helper(
        "echo", broker.port, "--request", ref.update(NODE), "--reply", ref.model,
        "--reply-size", size, "--timeout", "600",
    )  # fmt: skip
    exchange = Exchange(broker, daemon.topics, ref, args.timeout)
    problems: list[str] = []
    try:
        exchange.wait_model()
        request = update_payloads(size, [NODE], 1, 1)[NODE][0]
        tensors = decode(request, UpdateMessage).tensors
        raw: list[float] = []
        agg: list[float] = []
        for i in range(args.warmup + args.updates):
            reference = exchange.reference(request)
            latency = exchange.aggregator(i + 1, tensors)
            if i >= args.warmup:
                raw.append(reference)
                agg.append(latency)
    finally:
        exchange.close()
        echo.terminate()
        echo.communicate(timeout=10)
        code = daemon.stop()
    sent = args.warmup + args.updates
    journal = applied_updates(daemon.state_dir)
    if code != 0:
        problems.append(f"aggregator exited with status {code}")
    if sorted(journal) != [(NODE, s) for s in range(1, sent + 1)]:
        problems.append(f"journal holds {len(journal)} updates, {sent} were sent")
    problems += exchange.problems
    raw_p50, raw_p99 = percentiles(raw)
    agg_p50, agg_p99 = percentiles(agg)
    return {
        "size": size,
        "update_bytes": len(request),
        "updates": args.updates,
        "raw_p50_ms": round(raw_p50, 3),
        "raw_p99_ms": round(raw_p99, 3),
        "aggregator_p50_ms": round(agg_p50, 3),
        "aggregator_p99_ms": round(agg_p99, 3),
        "ratio_p50": round(agg_p50 / raw_p50, 2),
        "ratio_p99": round(agg_p99 / raw_p99, 2),
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10KB,100KB,1MB", help="comma-separated")
    parser.add_argument("--updates", type=int, default=300, help="measured updates per size")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured updates first")
    parser.add_argument("--timeout", type=float, default=30.0, help="per exchange, seconds")
    parser.add_argument(
        "--nagle", action="store_true", help="leave Nagle on in the raw clients (paho's default)"
    )
    args = parser.parse_args(argv)
    sizes = parse_sizes(args.sizes)
    if args.nagle:
        os.environ[NAGLE_ENV] = "1"
    print(f"machine: {machine()}; FedAsync, {args.updates} updates one at a time, ms")
    header = ["size", "bytes", "raw p50", "raw p99", "aggr p50", "aggr p99", "x p50", "x p99"]
    print(f"{header[0]:<7}" + "".join(f"{h:>11}" for h in header[1:]))
    rows: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="fedbus-latency-"))
    try:
        with ManagedBroker() as broker:
            for size in sizes:
                row = run_size(broker, size, args, workdir)
                rows.append(row)
                print(f"{size:<7}" + "".join(f"{row[k]:>11}" for k in COLUMNS), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    failed = [f"{r['size']}: {p}" for r in rows for p in r["problems"]]
    for problem in failed:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    print(json.dumps({"bench": "latency", "machine": machine(), "rows": rows, "ok": not failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
