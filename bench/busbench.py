"""Shared parts of the bus benchmarks, bench/throughput.py and bench/latency.py.

- the softmax layouts that make an f32 update 10 KB, 100 KB or 1 MB, and
  pre-encoded valid update payloads for them;
- `AggregatorProcess`: the real daemon, `python -m fedbus.aggregator`, as a
  subprocess with a fresh state dir (so the journal and its fsyncs are
  measured). A subprocess rather than a thread: in production the daemon
  is a process of its own with its own GIL, so the benchmark's publisher
  and ack-collecting threads must not take turns with it on one GIL, and
  py-spy can attach to its pid;
- the raw references, also subprocesses (so they stand where the daemon
  stands), run from this file: `sink`, a bare paho QoS 1 subscriber that
  only counts messages, and `echo`, which answers every request with one
  reply of a fixed size;
- `NodeFleet`: bare paho clients standing in for edge nodes, each
  publishing its own pre-encoded updates (QoS 1) and collecting the acks
  on its own ack topic.

The benchmarks start the subprocesses themselves; by hand it would be

    python bench/busbench.py sink --port P --filter F --count N
    python bench/busbench.py echo --port P --request T --reply T --reply-bytes N

Environment: BUSBENCH_NAGLE=1 leaves Nagle's algorithm on in the raw clients
(the benchmarks' --nagle); BUSBENCH_DAEMON_SCRIPT=file.py runs that file
instead of `-m fedbus.aggregator`, to measure a patched daemon.

Clocks: `time.monotonic()` is CLOCK_MONOTONIC, one clock for every process
on a Linux machine, so a time a subprocess reports compares with ours.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from fedbus.broker.client import BusClient
from fedbus.broker.codec import DEFAULT_LIMITS, decode, encode
from fedbus.broker.launcher import ManagedBroker
from fedbus.broker.layouts import weight_shapes
from fedbus.broker.messages import AggregatorStatus, ModelMessage, TrainingTask, UpdateMessage
from fedbus.broker.tensors import encode_weights
from fedbus.broker.topics import Topics

#: Update size -> softmax input features; with 10 classes, 10 x features + 10 floats.
SIZES = {"10KB": 250, "100KB": 2500, "1MB": 25_000}
CLASSES = 10
THIS_FILE = Path(__file__).resolve()
#: Set to "1" to leave Nagle's algorithm on in the raw clients (paho's default).
NAGLE_ENV = "BUSBENCH_NAGLE"
#: The status carries a staleness histogram: with --max-staleness 10**6 and
#: base_version 0 it outgrows the codec's default 256 map entries.
STATUS_LIMITS = dataclasses.replace(DEFAULT_LIMITS, max_map_len=1 << 20, max_objects=1 << 22)


def machine() -> str:
    """One line naming the machine, for the table header."""
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def parse_sizes(text: str) -> list[str]:
    sizes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise SystemExit(f"--sizes: unknown {unknown}; choose from {list(SIZES)}")
    return sizes


def shapes_of(size: str) -> dict[str, tuple[int, ...]]:
    return weight_shapes("softmax", SIZES[size], CLASSES)


def _delta(size: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        n: (rng.standard_normal(s) * 1e-3).astype(np.float32) for n, s in shapes_of(size).items()
    }


def update_payloads(
    size: str, nodes: Sequence[str], first_seq: int, per_node: int, base_version: int = 0
) -> dict[str, list[bytes]]:
    """Node -> its encoded updates, seq first_seq, first_seq + 1, ... (one delta for all)."""
    tensors = encode_weights(_delta(size))
    return {
        node: [
            encode(UpdateMessage(node, seq, base_version, 10, tensors))
            for seq in range(first_seq, first_seq + per_node)
        ]
        for node in nodes
    }


def model_sized_payload(size: str) -> bytes:
    """A model message of the size's layout: the raw echo's reply."""
    shapes = shapes_of(size)
    return encode(
        ModelMessage(1, TrainingTask("bench", "softmax", shapes), encode_weights(_delta(size)))
    )


# ---------------------------------------------------------------- the daemon

#: A Python file to run instead of `-m fedbus.aggregator` (same CLI): how to
#: measure a patched daemon (e.g. one that monkeypatches a proposed change)
#: without touching the package.
DAEMON_ENV = "BUSBENCH_DAEMON_SCRIPT"


def daemon_entry() -> list[str]:
    script = os.environ.get(DAEMON_ENV)
    return [script] if script else ["-m", "fedbus.aggregator"]


class AggregatorProcess:
    """`python -m fedbus.aggregator` for one fleet, with its own state dir."""

    def __init__(
        self, broker: ManagedBroker, fleet: str, size: str, state_dir: Path, args: Sequence[str]
    ) -> None:
        self.broker = broker
        self.topics = Topics(fleet)
        self.state_dir = state_dir
        self.command = [
            sys.executable, *daemon_entry(),
            "--host", broker.host, "--port", str(broker.port), "--fleet", fleet,
            "--learner", "softmax", "--features", str(SIZES[size]), "--classes", str(CLASSES),
            "--state-dir", str(state_dir), "--log-level", "WARNING", *args,
        ]  # fmt: skip
        self.log_path = state_dir.with_name(state_dir.name + ".log")
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self, monitor: BusClient, timeout: float = 60.0) -> AggregatorStatus:
        """Start it and return its first "running" status (its subscription is then live:
        it subscribes before it publishes, and the broker keeps a connection's order)."""
        monitor.subscribe(self.topics.aggregator_status, qos=1)
        monitor.wait_subscribed(10)
        self._log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"aggregator exited: {self.log_path.read_text()[-2000:]}")
            status = latest_status(monitor, self.topics, 0.2)
            if status is not None and status.state == "running":
                return status
        raise RuntimeError(f"aggregator not running after {timeout:g} s; see {self.log_path}")

    def stop(self) -> int:
        """SIGTERM (a clean stop: final checkpoint) and wait; returns the exit status."""
        process = self._process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
        self._process = None
        return process.returncode


def latest_status(
    monitor: BusClient, topics: Topics, timeout: float, state: str | None = None
) -> AggregatorStatus | None:
    """The newest aggregator status in the monitor's inbox (waiting up to `timeout`);
    with `state`, the newest in that state (a last will may follow a "stopped")."""
    found = None
    received = monitor.receive(timeout)
    while received is not None:
        if received.topic == topics.aggregator_status and received.payload:
            status = decode(received.payload, AggregatorStatus, STATUS_LIMITS)
            if state is None or status.state == state:
                found = status
        received = monitor.receive(0)
    return found


# ---------------------------------------------------------------- raw reference processes


def start_helper(mode: str, port: int, *args: str) -> subprocess.Popen[str]:
    """Start `busbench.py <mode>` and return once it says its subscription is live."""
    process = subprocess.Popen(
        [sys.executable, str(THIS_FILE), mode, "--port", str(port), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if line.strip() != "ready":
        process.kill()
        raise RuntimeError(f"busbench {mode} did not start: {line!r}")
    return process


def finish_helper(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The JSON line the helper prints when it is done."""
    out, _ = process.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"busbench helper printed no result: {out[-500:]!r}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def nagle_kept() -> bool:
    """True when the raw clients keep paho's socket as it is (Nagle on); see `raw_client`."""
    return os.environ.get(NAGLE_ENV) == "1"


def _no_delay(client: paho.Client, userdata: object, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def raw_client(client_id: str) -> paho.Client:
    """A bare paho MQTT 5 client with TCP_NODELAY, as the broker's own sockets have.

    paho leaves Nagle's algorithm on: a write smaller than a segment waits
    for the peer's (delayed, up to 40 ms) ACK of the previous one, so a
    PUBACK followed by a small publish stalls. The raw references must not
    pay that; `NAGLE_ENV=1` (the benchmarks' --nagle) keeps paho's default.
    """
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5,
    )
    if not nagle_kept():
        client.on_socket_open = _no_delay
    return client


def _serve(client: paho.Client, host: str, port: int, topic_filter: str, timeout: float) -> None:
    """Connect, subscribe QoS 1, say "ready" on stdout after the SUBACK, loop until done."""

    def on_connect(c: paho.Client, u: object, f: object, rc: object, p: object) -> None:
        c.subscribe(topic_filter, qos=1)

    def on_subscribe(c: paho.Client, u: object, mid: int, rc: object, p: object) -> None:
        print("ready", flush=True)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    timer = threading.Timer(timeout, client.disconnect)
    timer.daemon = True
    timer.start()
    client.connect(host, port, keepalive=60)
    client.loop_forever()
    timer.cancel()


def sink_main(args: argparse.Namespace) -> None:
    """Count QoS 1 messages (paho PUBACKs each at once) until `--count`, then report."""
    counts: dict[str, int] = {}
    times: list[float] = []
    client = raw_client("busbench-sink")

    def on_message(c: paho.Client, u: object, message: paho.MQTTMessage) -> None:
        now = time.monotonic()
        if not times:
            times.append(now)
        counts[message.topic] = counts.get(message.topic, 0) + 1
        if sum(counts.values()) >= args.count:
            times.append(now)
            c.disconnect()

    client.on_message = on_message
    _serve(client, args.host, args.port, args.filter, args.timeout)
    received = sum(counts.values())
    first = times[0] if times else None
    last = times[-1] if len(times) > 1 else None
    print(json.dumps({"received": received, "first": first, "last": last, "topics": len(counts)}))


def echo_main(args: argparse.Namespace) -> None:
    """Answer every request on `--request` with one `--reply-bytes` reply on `--reply`."""
    reply = model_sized_payload(args.reply_size) if args.reply_size else bytes(args.reply_bytes)
    answered = [0]
    client = raw_client("busbench-echo")

    def on_message(c: paho.Client, u: object, message: paho.MQTTMessage) -> None:
        c.publish(args.reply, reply, qos=1, retain=True)
        answered[0] += 1

    client.on_message = on_message
    _serve(client, args.host, args.port, args.request, args.timeout)
    print(json.dumps({"answered": answered[0]}))


# ---------------------------------------------------------------- simulated nodes


class NodeFleet:
    """Bare paho clients, one per node, each subscribed to its own ack topic.

    Everything is published at once and paho keeps at most its in-flight
    window (20) unacknowledged per client, so the broker and the consumer,
    not a sleep in here, set the pace.
    """

    def __init__(self, host: str, port: int, nodes: Sequence[str], ack_topics: Topics) -> None:
        self.nodes = list(nodes)
        self.ack_topics = ack_topics
        self._lock = threading.Condition()
        self._acks: list[tuple[float, bytes]] = []
        self._pubacks = 0
        self._last_puback = 0.0
        self._subscribed = 0
        self.clients: dict[str, paho.Client] = {}
        for node in self.nodes:
            client = raw_client(f"bench-{ack_topics.fleet}-{node}")
            client.on_connect = self._on_connect
            client.on_subscribe = self._on_subscribe
            client.on_message = self._on_message
            client.on_publish = self._on_publish
            client.user_data_set(node)
            client.connect(host, port, keepalive=60)
            client.loop_start()
            self.clients[node] = client
        self._wait(lambda: self._subscribed >= len(self.nodes), 30, "ack subscriptions")

    def _on_connect(self, c: paho.Client, node: str, f: object, rc: object, p: object) -> None:
        c.subscribe(self.ack_topics.ack(node), qos=1)

    def _on_subscribe(self, c: paho.Client, u: object, mid: int, rc: object, p: object) -> None:
        with self._lock:
            self._subscribed += 1
            self._lock.notify_all()

    def _on_message(self, c: paho.Client, u: object, message: paho.MQTTMessage) -> None:
        now = time.monotonic()
        with self._lock:
            self._acks.append((now, bytes(message.payload)))
            self._lock.notify_all()

    def _on_publish(self, c: paho.Client, u: object, mid: int, rc: object, p: object) -> None:
        with self._lock:
            self._pubacks += 1
            self._last_puback = time.monotonic()
            self._lock.notify_all()

    def _wait(self, done: Any, timeout: float, what: str) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def publish(self, topics: Topics, payloads: Mapping[str, list[bytes]]) -> float:
        """Queue every node's updates (round robin over nodes); returns the start time."""
        with self._lock:
            self._acks.clear()
            self._pubacks = 0
        started = time.monotonic()
        longest = max(len(p) for p in payloads.values())
        for i in range(longest):
            for node, mine in payloads.items():
                if i < len(mine):
                    self.clients[node].publish(topics.update(node), mine[i], qos=1)
        return started

    def wait_pubacks(self, count: int, timeout: float) -> float | None:
        """When the broker had acknowledged `count` publishes (None: not in time)."""
        ok = self._wait(lambda: self._pubacks >= count, timeout, "PUBACKs")
        return self._last_puback if ok else None

    def wait_acks(self, count: int, timeout: float) -> list[tuple[float, bytes]]:
        """The aggregator acks received so far, after waiting for `count` (or timeout)."""
        self._wait(lambda: len(self._acks) >= count, timeout, "acks")
        time.sleep(0.2)  # a duplicate ack would come right behind
        with self._lock:
            return list(self._acks)

    def close(self) -> None:
        for client in self.clients.values():
            client.disconnect()
            client.loop_stop()


# ---------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("sink", "echo"):
        p = sub.add_parser(mode)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--timeout", type=float, default=300.0, help="give up after this long")
        if mode == "sink":
            p.add_argument("--filter", required=True)
            p.add_argument("--count", type=int, required=True)
        else:
            p.add_argument("--request", required=True)
            p.add_argument("--reply", required=True)
            p.add_argument("--reply-bytes", type=int, default=0)
            p.add_argument("--reply-size", choices=list(SIZES), default=None)
    args = parser.parse_args(argv)
    if args.mode == "sink":
        sink_main(args)
    else:
        echo_main(args)


if __name__ == "__main__":
    main()
