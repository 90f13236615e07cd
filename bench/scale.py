"""How far one machine goes: connections, aggregator CPU per update, memory, cold start.

Every part starts its own private mosquitto from the project's config
(ManagedBroker) and the real aggregator daemon as a subprocess
(`python -m fedbus.aggregator` with a fresh --state-dir), and reads CPU time
and memory from /proc. Each figure comes with a reference measured in the
same run:

- connections: N real MQTT clients (bench/mqtt_swarm.py, sharded over
  --procs processes, one epoll loop each) connect as fleet nodes, subscribe
  to the model and their ack topic, must each receive the retained model,
  then stay connected for --hold seconds while sending statuses and one
  update each to the running aggregator (buffer size clients/10, so each
  client also gets about ten fleet-wide model publishes). The broker's own
  count comes from $SYS/broker/clients/connected. Reference: the broker's
  descriptor limit.
- cpu: after 100 warm-up updates (the daemon loads its numba kernels), three
  streams of --updates valid f32 updates of the digits-20 model (650
  floats); the daemon's utime+stime per update decided (acks counted),
  median of the three. Reference: the same payloads decided by
  AggregatorCore in this process, built from the same flags, without MQTT
  or journal (median of 3).
- memory: VmRSS of one `fedbus node` process after its first update is acked,
  and of the aggregator. Reference: a process that only imports paho.
- coldstart: wall time from spawning `python -m fedbus.node` to its first
  retained "online" status arriving at an observer (numba cache warmed by a
  first run), split into `import fedbus.node.cli` and `warm_up()` measured
  in fresh processes. Reference: `python -c pass`.

    python bench/scale.py [--parts connections,cpu,memory,coldstart] [--clients 1000]

Prints one table per part and a final JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from fedbus.aggregator.cli import build_core, configure_parser
from fedbus.broker.codec import decode, encode
from fedbus.broker.errors import FedbusError
from fedbus.broker.launcher import ManagedBroker
from fedbus.broker.messages import AckMessage, ModelMessage, NodeState, NodeStatus, UpdateMessage
from fedbus.broker.tensors import encode_weights
from fedbus.broker.topics import Channel, Topics

PARTS = ("connections", "cpu", "memory", "coldstart")
FLEET = "scale"
#: Mosquitto's own topic (not fedbus's tree): clients connected now, every sys_interval.
SYS_CONNECTED = "$SYS/broker/clients/connected"
SWARM = Path(__file__).with_name("mqtt_swarm.py")
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: The digits-20 task with every update kept (none too stale), for the cpu part.
CPU_FLAGS = ["--buffer-size", "10", "--max-staleness", "1000000"]
#: Updates sent before measuring: the daemon's first ones load its numba kernels.
CPU_WARMUP = 100


# ---------------------------------------------------------------- /proc readers


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pid: int, key: str) -> int:
    """A kB field of /proc/<pid>/status, e.g. VmRSS or VmHWM."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def rss_mib(pid: int) -> float:
    return status_kib(pid, "VmRSS") / 1024


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_soft_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise KeyError("Max open files")


def raise_fd_limit(wanted: int) -> tuple[int, int]:
    """Raise this process's soft descriptor limit (inherited by the broker) to `wanted`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# ---------------------------------------------------------------- bus observer


class Observer:
    """One plain paho client in this process. Callbacks only record what arrived."""

    def __init__(self, port: int, topics: Topics, filters: list[str]) -> None:
        self.topics = topics
        self.changed = threading.Condition()
        self.sys_connected: list[tuple[float, int]] = []
        self.online_at: dict[str, float] = {}
        self.acks: dict[str, list[bool]] = {}
        self.model_version: int | None = None
        self._filters = filters
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"obs-{os.getpid()}")
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port, keepalive=60)
        self._client.loop_start()

    def _on_connect(self, client: paho.Client, *_: object) -> None:
        for topic_filter in self._filters:
            client.subscribe(topic_filter, qos=1)

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        with self.changed:
            with contextlib.suppress(FedbusError, ValueError):
                self._record(msg, now)
            self.changed.notify_all()

    def _record(self, msg: paho.MQTTMessage, now: float) -> None:
        if msg.topic == SYS_CONNECTED:
            self.sys_connected.append((time.monotonic(), int(msg.payload)))
            return
        if not msg.payload:
            return
        channel, node = self.topics.parse(msg.topic)
        if channel is Channel.MODEL:
            self.model_version = decode(msg.payload, ModelMessage).version
        elif channel is Channel.STATUS and node is not None:
            status = decode(msg.payload, NodeStatus)
            if status.state is NodeState.ONLINE and not msg.retain:
                self.online_at.setdefault(node, now)
        elif channel is Channel.ACK and node is not None:
            self.acks.setdefault(node, []).append(decode(msg.payload, AckMessage).accepted)

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        with self.changed:
            if not self.changed.wait_for(predicate, timeout):
                raise TimeoutError(f"no {what} within {timeout:g} s")

    def acked(self) -> int:
        return sum(len(v) for v in self.acks.values())

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


# ---------------------------------------------------------------- broker + aggregator


class Stack:
    """A private broker, an observer on it and the aggregator daemon as a subprocess."""

    def __init__(self, workdir: Path, aggregator_flags: list[str], filters: list[str]) -> None:
        self.workdir = workdir
        self.topics = Topics(FLEET)
        self.broker = ManagedBroker(data_dir=workdir / "broker")
        self.broker.start()
        self.observer = Observer(self.broker.port, self.topics, [self.topics.model, *filters])
        self._log: IO[bytes] = (workdir / "aggregator.log").open("wb")
        self.aggregator: subprocess.Popen[bytes] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fedbus.aggregator",
                *self.bus_flags(),
                "--state-dir",
                str(workdir / "aggregator"),
                "--log-level",
                "WARNING",
                *aggregator_flags,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self.observer.wait(lambda: self.observer.model_version is not None, 30, "model")
        except BaseException:
            self.close()
            raise

    def bus_flags(self) -> list[str]:
        return ["--port", str(self.broker.port), "--fleet", FLEET]

    def close(self) -> None:
        stop(self.aggregator)
        self._log.close()
        self.observer.close()
        self.broker.stop()


@contextlib.contextmanager
def stack(workdir: Path, aggregator_flags: list[str], filters: list[str]) -> Iterator[Stack]:
    started = Stack(workdir, aggregator_flags, filters)
    try:
        yield started
    finally:
        started.close()


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def sample_idle_cpu(pid: int, seconds: float) -> float:
    """CPU-seconds per second a process burns while nothing arrives."""
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / seconds


# ---------------------------------------------------------------- part 1: connections


def _worker_line(worker: subprocess.Popen[str]) -> dict[str, Any]:
    assert worker.stdout is not None
    line = worker.stdout.readline()
    if not line:
        raise RuntimeError(f"swarm worker {worker.pid} exited ({worker.wait()})")
    event: dict[str, Any] = json.loads(line)
    return event


def _tell(workers: list[subprocess.Popen[str]], command: dict[str, Any]) -> None:
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write(json.dumps(command) + "\n")
        worker.stdin.flush()


def part_connections(workdir: Path, clients: int, procs: int, hold: float) -> dict[str, Any]:
    # One update per client, one model step per clients/10 of them: each client
    # sees about ten fleet-wide model publishes during the hold, whatever the
    # fleet size, without the fan-out alone saturating two cores.
    flags = ["--buffer-size", str(max(10, clients // 10))]
    topics = Topics(FLEET)
    with stack(workdir, flags, [SYS_CONNECTED, topics.all_nodes(Channel.ACK)]) as bus:
        broker_pid = bus.broker.pid
        assert broker_pid is not None
        sizes = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
        firsts = [sum(sizes[:i]) for i in range(procs)]
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(SWARM),
                    *bus.bus_flags(),
                    "--first",
                    str(first),
                    "--count",
                    str(size),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for first, size in zip(firsts, sizes, strict=True)
            if size
        ]
        try:
            for worker in workers:
                _worker_line(worker)  # hello: imports done
            broker_cpu0 = cpu_seconds(broker_pid)
            aggregator_cpu0 = cpu_seconds(bus.aggregator.pid)
            _tell(workers, {"cmd": "connect"})
            ready = [_worker_line(worker) for worker in workers]
            broker_fds = open_fds(broker_pid)
            hold_started = time.monotonic()
            _tell(workers, {"cmd": "hold", "seconds": hold})
            broker_rss = []
            while time.monotonic() - hold_started < hold:
                broker_rss.append(rss_mib(broker_pid))
                time.sleep(1.0)
            done = [_worker_line(worker) for worker in workers]
            broker_cpu = cpu_seconds(broker_pid) - broker_cpu0
            aggregator_cpu = cpu_seconds(bus.aggregator.pid) - aggregator_cpu0
            hold_ended = time.monotonic()
        finally:
            for worker in workers:
                with contextlib.suppress(BrokenPipeError):
                    assert worker.stdin is not None
                    worker.stdin.close()
            for worker in workers:
                try:
                    worker.wait(15)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
        # Mosquitto republishes a $SYS value (retained) only when it changed, at most
        # every sys_interval (10 s): the last one before the hold ended is the count then.
        sys_values = [c for at, c in bus.observer.sys_connected if at <= hold_ended]
        sys_during = [c for at, c in bus.observer.sys_connected if hold_started <= at <= hold_ended]
        sys_at_end = sys_values[-1] if sys_values else None
        limit = fd_soft_limit(broker_pid)
    connacks = [r["last_connack_at"] for r in ready if r["last_connack_at"] is not None]
    retained = [r["last_retained_model_at"] for r in ready if r["last_retained_model_at"]]
    first = min(r["first_connect_at"] for r in ready)

    def total(key: str, rows: list[dict[str, Any]]) -> int:
        return int(sum(r[key] for r in rows))

    result = {
        "clients": clients,
        "processes": len(workers),
        "connected": total("connected", ready),
        "subscribed": total("subscribed", ready),
        "retained_model": total("retained_model", ready),
        "connect_all_s": round(max(connacks) - first, 3) if connacks else None,
        "retained_model_all_s": round(max(retained) - first, 3) if retained else None,
        "connect_latency_max_s": round(max(r["connect_latency_max_s"] or 0 for r in ready), 3),
        "hold_s": hold,
        "connected_at_end": total("connected_at_end", done),
        "never_dropped": total("never_dropped", done),
        "broker_sys_connected_at_hold_end": sys_at_end,
        "broker_sys_connected_published_in_hold": sys_during,
        "statuses_sent": total("statuses_sent", done),
        "updates_sent": total("updates_sent", done),
        "clients_acked": total("acked", done),
        "models_per_client_min": min(r["models_min"] for r in done),
        "models_per_client_max": max(r["models_max"] for r in done),
        "decode_errors": total("decode_errors", done),
        "broker_fds": broker_fds,
        "broker_fd_limit": limit,
        "broker_rss_mib_max": round(max(broker_rss), 1),
        "broker_cpu_s": round(broker_cpu, 2),
        "aggregator_cpu_s": round(aggregator_cpu, 2),
        "swarm_cpu_s": round(sum(r["cpu_s"] for r in done), 2),
        "swarm_fds_max_per_process": max(r["open_fds"] for r in ready),
        "swarm_rss_mib_max_per_process": round(max(r["max_rss_mib"] for r in done), 1),
        "refused_examples": [x for r in ready for x in r["refused"]][:3],
    }
    rows = [
        ("clients asked / worker processes", f"{clients} / {len(workers)}"),
        ("CONNACKs received", result["connected"]),
        ("both SUBACKs received", result["subscribed"]),
        ("retained model received", result["retained_model"]),
        ("first CONNECT -> last CONNACK s", result["connect_all_s"]),
        ("first CONNECT -> last retained model s", result["retained_model_all_s"]),
        ("slowest single CONNECT->CONNACK s", result["connect_latency_max_s"]),
        (f"connected after {hold:g} s hold", result["connected_at_end"]),
        ("never disconnected", result["never_dropped"]),
        ("broker $SYS clients/connected at hold end", f"{sys_at_end} (incl. 2 bench clients)"),
        ("statuses / updates sent", f"{result['statuses_sent']} / {result['updates_sent']}"),
        ("clients that got their ack", result["clients_acked"]),
        (
            "model messages per client min/max",
            f"{result['models_per_client_min']} / {result['models_per_client_max']}",
        ),
        ("broker fds / fd soft limit (reference)", f"{broker_fds} / {limit}"),
        ("fds per swarm process (max)", result["swarm_fds_max_per_process"]),
        ("broker RSS max MiB", result["broker_rss_mib_max"]),
        ("CPU s: broker / aggregator / swarm", _cpu_row(result)),
    ]
    _print_table("connections", rows)
    return result


def _cpu_row(result: dict[str, Any]) -> str:
    return f"{result['broker_cpu_s']} / {result['aggregator_cpu_s']} / {result['swarm_cpu_s']}"


def _print_table(title: str, rows: list[tuple[str, Any]]) -> None:
    print(f"\n== {title}")
    for label, value in rows:
        print(f"{label:<42} {value}")
    sys.stdout.flush()


# ---------------------------------------------------------------- part 2: cpu per update


def daemon_args(flags: list[str]) -> argparse.Namespace:
    """The aggregator CLI's own parse of `flags` (defaults: the digits-20 task)."""
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return parser.parse_args(["--fleet", FLEET, *flags])


def update_payloads(
    shapes: dict[str, tuple[int, ...]], count: int, nodes: int = 50
) -> list[tuple[str, bytes]]:
    """`count` valid f32 updates of layout `shapes` from `nodes` nodes, seqs rising."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        node = f"n{i % nodes}"
        delta = {n: (rng.standard_normal(s) * 1e-3).astype(np.float32) for n, s in shapes.items()}
        message = UpdateMessage(node, i // nodes + 1, 0, 10, encode_weights(delta))
        out.append((node, encode(message)))
    return out


def reference_cpu(payloads: list[tuple[str, bytes]], flags: list[str]) -> float:
    """CPU-seconds per update of AggregatorCore alone, built from the daemon's flags."""
    args = daemon_args(flags)

    def run(batch: list[tuple[str, bytes]]) -> float:
        core = build_core(args)
        started = time.process_time()
        for node, payload in batch:
            outcome = core.handle_update(node, payload, time.monotonic())
            assert outcome.ack.accepted, outcome.ack
        return (time.process_time() - started) / len(batch)

    run(payloads[:50])
    return statistics.median(run(payloads) for _ in range(3))


def _stream(bus: Stack, sender: paho.Client, batch: list[tuple[str, bytes]]) -> tuple[float, float]:
    """(daemon CPU s, wall s) for deciding `batch`: publish all, wait for every ack.

    CPU is read 0.2 s after the last ack, so the batch's trailing work (PUBACKs,
    a status publish) is counted; the daemon's idle polling over that gap is
    measured separately and is negligible.
    """
    pid = bus.aggregator.pid
    target = bus.observer.acked() + len(batch)
    cpu0 = cpu_seconds(pid)
    started = time.monotonic()
    for node, payload in batch:
        sender.publish(bus.topics.update(node), payload, qos=1)
    bus.observer.wait(lambda: bus.observer.acked() >= target, 300, "acks")
    wall = time.monotonic() - started
    time.sleep(0.2)
    return cpu_seconds(pid) - cpu0, wall


def part_cpu(workdir: Path, updates: int, repeats: int = 3) -> dict[str, Any]:
    shapes = dict(build_core(daemon_args(CPU_FLAGS)).task.weight_shapes)
    payloads = update_payloads(shapes, CPU_WARMUP + repeats * updates)
    warmup, measured = payloads[:CPU_WARMUP], payloads[CPU_WARMUP:]
    batches = [measured[i * updates : (i + 1) * updates] for i in range(repeats)]
    topics = Topics(FLEET)
    with stack(workdir, CPU_FLAGS, [topics.all_nodes(Channel.ACK)]) as bus:
        pid = bus.aggregator.pid
        sender = paho.Client(CallbackAPIVersion.VERSION2, client_id="scale-sender")
        sender.max_inflight_messages_set(100)
        sender.connect("127.0.0.1", bus.broker.port)
        sender.loop_start()
        try:
            _stream(bus, sender, warmup)  # loads the numba kernels, fills caches
            idle = sample_idle_cpu(pid, 2.0)
            runs = [_stream(bus, sender, batch) for batch in batches]
            rss = rss_mib(pid)
        finally:
            sender.disconnect()
            sender.loop_stop()
        accepted = sum(sum(v) for v in bus.observer.acks.values()) - CPU_WARMUP
        decided = bus.observer.acked() - CPU_WARMUP
    reference = reference_cpu(batches[0], CPU_FLAGS)
    per_update_runs = sorted(cpu / updates for cpu, _ in runs)
    per_update = statistics.median(per_update_runs)
    wall = statistics.median(w for _, w in runs)
    cpu = statistics.median(c for c, _ in runs)
    net = max(0.0, cpu - idle * (wall + 0.2)) / updates
    result = {
        "updates": updates,
        "repeats": repeats,
        "decided": decided,
        "accepted": accepted,
        "wall_s": round(wall, 2),
        "updates_per_s": round(updates / wall, 1),
        "daemon_cpu_us_per_update_runs": [round(x * 1e6, 1) for x in per_update_runs],
        "daemon_cpu_s": round(cpu, 2),
        "daemon_cpu_us_per_update": round(per_update * 1e6, 1),
        "daemon_idle_cpu_s_per_s": round(idle, 4),
        "daemon_cpu_us_per_update_minus_idle": round(net * 1e6, 1),
        "reference_core_cpu_us_per_update": round(reference * 1e6, 1),
        "ratio_to_reference": round(per_update / reference, 2),
        "daemon_rss_mib_after": round(rss, 1),
    }
    _print_table(
        f"cpu per update (digits-20, 650 f32, K=10; {CPU_WARMUP} warm-up updates first)",
        [
            (
                "updates sent / decided / accepted",
                f"{repeats} x {updates} / {decided} / {accepted}",
            ),
            (
                "stream wall s (updates/s), median",
                f"{result['wall_s']} ({result['updates_per_s']})",
            ),
            ("daemon CPU s (utime+stime), median", result["daemon_cpu_s"]),
            ("daemon CPU us/update, median", result["daemon_cpu_us_per_update"]),
            ("  each run", result["daemon_cpu_us_per_update_runs"]),
            ("daemon idle CPU s/s (polling)", result["daemon_idle_cpu_s_per_s"]),
            ("daemon CPU us/update minus idle", result["daemon_cpu_us_per_update_minus_idle"]),
            ("reference: AggregatorCore us/update", result["reference_core_cpu_us_per_update"]),
            ("daemon / reference", result["ratio_to_reference"]),
        ],
    )
    return result


# ---------------------------------------------------------------- parts 3 and 4: one node


def write_csv(path: Path, rows: int = 200) -> Path:
    rng = np.random.default_rng(0)
    header = ",".join([*(f"x{i}" for i in range(64)), "label"])
    lines = [header]
    for _ in range(rows):
        features = rng.integers(0, 17, 64)
        lines.append(",".join([*(str(v) for v in features), str(int(rng.integers(0, 10)))]))
    path.write_text("\n".join(lines) + "\n")
    return path


def spawn_node(bus: Stack, node_id: str, data: Path, log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedbus.node",
            "--id",
            node_id,
            "--data",
            str(data),
            "--state-dir",
            str(bus.workdir / f"node-{node_id}"),
            "--log-level",
            "WARNING",
            *bus.bus_flags(),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def idle_python_rss(code: str) -> float:
    """RSS of a fresh interpreter that ran `code` and then sleeps."""
    script = f"{code}\nimport sys, time\nprint('ok', flush=True)\ntime.sleep(60)"
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        process.stdout.readline()
        time.sleep(0.5)
        return rss_mib(process.pid)
    finally:
        process.kill()
        process.wait()


def part_memory(workdir: Path) -> dict[str, Any]:
    topics = Topics(FLEET)
    data = write_csv(workdir / "node.csv")
    filters = [topics.all_nodes(Channel.ACK)]
    with stack(workdir, [], filters) as bus, (workdir / "node.log").open("wb") as log:
        node = spawn_node(bus, "mem1", data, log)
        try:
            bus.observer.wait(lambda: "mem1" in bus.observer.acks, 60, "ack for mem1")
            time.sleep(2.0)
            node_rss = rss_mib(node.pid)
            node_hwm = status_kib(node.pid, "VmHWM") / 1024
            aggregator_rss = rss_mib(bus.aggregator.pid)
        finally:
            stop(node)
    reference = idle_python_rss("import paho.mqtt.client")
    result = {
        "node_rss_mib": round(node_rss, 1),
        "node_hwm_mib": round(node_hwm, 1),
        "aggregator_rss_mib": round(aggregator_rss, 1),
        "reference_paho_rss_mib": round(reference, 1),
        "node_over_reference": round(node_rss / reference, 2),
        "aggregator_over_reference": round(aggregator_rss / reference, 2),
    }
    _print_table(
        "memory (VmRSS after the node's first update was acked)",
        [
            ("fedbus node RSS MiB (peak)", f"{result['node_rss_mib']} ({result['node_hwm_mib']})"),
            ("aggregator RSS MiB", result["aggregator_rss_mib"]),
            ("reference: python + import paho MiB", result["reference_paho_rss_mib"]),
            ("node / reference", result["node_over_reference"]),
            ("aggregator / reference", result["aggregator_over_reference"]),
        ],
    )
    return result


def fresh_process_times(runs: int) -> tuple[float, float, float]:
    """Medians of: `python -c pass` wall s, `import fedbus.node.cli` s, `warm_up()` s."""
    probe = (
        "import json, time\n"
        "t0 = time.perf_counter()\n"
        "import fedbus.node.cli\n"
        "t1 = time.perf_counter()\n"
        "from fedbus.kernels.warmup import warm_up\n"
        "warm_up()\n"
        "print(json.dumps([t1 - t0, time.perf_counter() - t1]))\n"
    )
    starts, imports, warmups = [], [], []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        starts.append(time.perf_counter() - started)
        out = subprocess.run(
            [sys.executable, "-c", probe], check=True, capture_output=True, text=True
        )
        import_s, warmup_s = json.loads(out.stdout)
        imports.append(import_s)
        warmups.append(warmup_s)
    return statistics.median(starts), statistics.median(imports), statistics.median(warmups)


def _seen_online(observer: Observer, node_id: str) -> Callable[[], bool]:
    return lambda: node_id in observer.online_at


def part_coldstart(workdir: Path, runs: int) -> dict[str, Any]:
    topics = Topics(FLEET)
    data = write_csv(workdir / "node.csv")
    with stack(workdir, [], [topics.all_nodes(Channel.STATUS)]) as bus:
        totals = []
        with (workdir / "node.log").open("wb") as log:
            for k in range(runs + 1):  # run 0 fills the numba cache, not counted
                node_id = f"cold{k}"
                started = time.perf_counter()
                node = spawn_node(bus, node_id, data, log)
                try:
                    bus.observer.wait(_seen_online(bus.observer, node_id), 120, "online status")
                finally:
                    stop(node)
                if k:
                    totals.append(bus.observer.online_at[node_id] - started)
    python_s, import_s, warmup_s = fresh_process_times(runs)
    total = statistics.median(totals)
    rest = total - python_s - import_s - warmup_s
    result = {
        "runs": runs,
        "to_online_s": round(total, 3),
        "to_online_all_s": [round(t, 3) for t in totals],
        "import_fedbus_node_cli_s": round(import_s, 3),
        "warm_up_s": round(warmup_s, 3),
        "rest_s": round(rest, 3),
        "reference_python_pass_s": round(python_s, 3),
        "ratio_to_reference": round(total / python_s, 1),
    }
    _print_table(
        f"cold start of `python -m fedbus.node` (median of {runs}, warm numba cache)",
        [
            ("spawn -> first 'online' status seen s", result["to_online_s"]),
            ("  import fedbus.node.cli s", result["import_fedbus_node_cli_s"]),
            ("  kernels warm_up() s", result["warm_up_s"]),
            ("  rest: data, connect, publish s", result["rest_s"]),
            ("reference: python -c pass s", result["reference_python_pass_s"]),
            ("total / reference", result["ratio_to_reference"]),
        ],
    )
    return result


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset")
    parser.add_argument("--clients", type=int, default=1000, help="concurrent connections")
    parser.add_argument("--procs", type=int, default=4, help="processes the clients share")
    parser.add_argument("--hold", type=float, default=30.0, help="seconds all stay connected")
    parser.add_argument("--updates", type=int, default=2000, help="updates for the cpu part")
    parser.add_argument("--runs", type=int, default=5, help="cold starts (median)")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"--parts: unknown {sorted(unknown)}; choose from {','.join(PARTS)}")
    soft, hard = raise_fd_limit(max(4096, 2 * args.clients + 1024))
    print(
        f"machine: {os.cpu_count()} CPUs, {platform.machine()}, Python "
        f"{platform.python_version()}, fd limit {soft}/{hard}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    result: dict[str, Any] = {"bench": "scale"}
    with tempfile.TemporaryDirectory(prefix="fedbus-scale-") as tmp:
        for part in parts:
            workdir = Path(tmp) / part
            workdir.mkdir()
            if part == "connections":
                result[part] = part_connections(workdir, args.clients, args.procs, args.hold)
            elif part == "cpu":
                result[part] = part_cpu(workdir, args.updates)
            elif part == "memory":
                result[part] = part_memory(workdir)
            else:
                result[part] = part_coldstart(workdir, args.runs)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
