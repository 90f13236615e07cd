"""Make the small .fbrec recordings that tests/test_replay.py replays.

Each scenario is a real run: mosquitto from the repo's config on a free
port, `fedbus record` subscribed to the whole fleet before anything else
connects, a simulated fleet of 5 digits nodes (threads, one MQTT connection
each, seeded), and `python -m fedbus.aggregator` as its own process with a
fresh --state-dir. The run stops once the aggregator has published the
scenario's target version: the fleet stops first, then the aggregator, then
the recorder. The aggregator's arguments (without broker address, fleet and
state dir) are stored in the header as meta `aggregator.args`.

    /work/venv/bin/python tests/data/make_recordings.py             # every scenario
    /work/venv/bin/python tests/data/make_recordings.py fedbuff-k3  # one of them

Scenario, seed and arguments are fixed, so a rerun makes an equivalent
recording, though not a byte-identical one: the order in which five nodes'
updates reach the broker depends on thread scheduling. Each file is
consistent in itself: its updates, in its order, produce its models.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from fedbus.broker.client import BrokerAddress, BusClient
from fedbus.broker.codec import decode
from fedbus.broker.errors import FedbusError
from fedbus.broker.launcher import ManagedBroker
from fedbus.broker.messages import AckMessage, ModelMessage
from fedbus.broker.recording import RecordingError, read_recording
from fedbus.broker.topics import Channel, Topics
from fedbus.node.conditions import Heterogeneity
from fedbus.node.datasets import load_digits_task
from fedbus.node.fleet import Fleet
from fedbus.node.partition import dirichlet_partition

HERE = Path(__file__).resolve().parent
REPO_CONFIG = HERE.parents[1] / "mosquitto.conf"
NODES = 5
SEED = 0


@dataclass(frozen=True)
class Scenario:
    name: str
    aggregator_args: tuple[str, ...]
    #: Stop once the aggregator has published this model version.
    target_version: int
    heterogeneity: Heterogeneity = Heterogeneity()

    @property
    def fleet(self) -> str:
        return f"rec-{self.name}"

    @property
    def path(self) -> Path:
        return HERE / f"{self.name}.fbrec"


_TASK = ("--features", "64", "--classes", "10")
SCENARIOS = {
    s.name: s
    for s in (
        Scenario("fedbuff-k3", ("--mode", "fedbuff", "-K", "3", "--server-lr", "1.0", *_TASK), 8),
        # Link flaps make nodes reconnect and resend: duplicates in the stream.
        Scenario(
            "fedasync-flaps",
            ("--mode", "fedasync", "--server-lr", "0.6", *_TASK),
            10,
            Heterogeneity(link_flap=0.3),
        ),
        Scenario("sync-5", ("--mode", "sync", "-K", str(NODES), *_TASK), 4),
    )
}


def _wait(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise FedbusError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def _header_written(path: Path) -> bool:
    try:
        read_recording(path)
    except (OSError, RecordingError):
        return False
    return True


def _stop(process: subprocess.Popen[bytes], what: str) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise FedbusError(f"{what} ignored SIGTERM") from None
    if code != 0:
        raise FedbusError(f"{what} exited with status {code}")


def record(scenario: Scenario, workdir: Path) -> Path:
    task = load_digits_task()
    parts = dirichlet_partition(task.y_train, NODES, alpha=0.5, seed=SEED)
    partitions = [(task.X_train[idx], task.y_train[idx]) for idx in parts]
    topics = Topics(scenario.fleet)
    logs = (workdir / f"{scenario.name}-recorder.log").open("wb")
    agg_log = (workdir / f"{scenario.name}-aggregator.log").open("wb")
    with ManagedBroker(REPO_CONFIG) as broker:
        bus = ["--host", broker.host, "--port", str(broker.port), "--fleet", topics.fleet]
        meta = {
            "aggregator.args": shlex.join(scenario.aggregator_args),
            "scenario": scenario.name,
            "fleet.nodes": str(NODES),
            "fleet.seed": str(SEED),
            "fleet.partition": "dirichlet(0.5) of digits-20 train",
            "fleet.heterogeneity": repr(scenario.heterogeneity),
            "made_by": "tests/data/make_recordings.py",
        }
        recorder = subprocess.Popen(
            [sys.executable, "-m", "fedbus.broker.cli", "record", str(scenario.path), "--force"]
            + bus
            + [arg for key, value in meta.items() for arg in ("--meta", f"{key}={value}")],
            stderr=logs,
        )
        address = BrokerAddress(broker.host, broker.port)
        watcher = BusClient(f"{topics.fleet}-maker-watcher", address, persistent_session=False)
        watcher.subscribe(topics.model)
        fleet = Fleet(partitions, address, topics, seed=SEED, heterogeneity=scenario.heterogeneity)
        aggregator = None
        try:
            _wait(lambda: _header_written(scenario.path), 30, "the recorder")
            watcher.start()
            watcher.wait_connected(10)
            fleet.start()
            fleet.wait_connected(30)
            aggregator = subprocess.Popen(
                [sys.executable, "-m", "fedbus.aggregator", *scenario.aggregator_args, *bus]
                + ["--state-dir", str(workdir / f"{scenario.name}-state")],
                stderr=agg_log,
            )
            latest = -1
            deadline = time.monotonic() + 120
            while latest < scenario.target_version:
                if time.monotonic() > deadline or aggregator.poll() is not None:
                    raise FedbusError(f"{scenario.name}: stuck at version {latest}")
                received = watcher.receive(0.2)
                if received is not None:
                    latest = max(latest, decode(received.payload, ModelMessage).version)
            fleet.stop()
            time.sleep(1.0)  # let the aggregator decide what is still in flight
            _stop(aggregator, "the aggregator")
            time.sleep(0.5)  # its last status reaches the recorder
            _stop(recorder, "the recorder")
        finally:
            fleet.stop()
            watcher.stop()
            for process in (aggregator, recorder):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()
            logs.close()
            agg_log.close()
    return scenario.path


def describe(path: Path) -> str:
    header, records = read_recording(path)
    topics = Topics(header.fleet)
    channels: Counter[str] = Counter()
    versions = []
    duplicates = 0
    for record in records:
        channel, _ = topics.parse(record.topic)
        channels[channel.value] += 1
        if channel is Channel.MODEL:
            versions.append(decode(record.payload, ModelMessage).version)
        elif channel is Channel.ACK:
            duplicates += decode(record.payload, AckMessage).duplicate
    return (
        f"{path.name}: {path.stat().st_size / 1024:.0f} KiB, {len(records)} records over "
        f"{records[-1].seconds:.1f} s, models {versions[0]}..{versions[-1]}, "
        f"duplicate acks {duplicates}, {dict(sorted(channels.items()))}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", help=f"any of {', '.join(SCENARIOS)} (default all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}")
    with tempfile.TemporaryDirectory(prefix="fedbus-recordings-") as tmp:
        for name in args.scenarios or list(SCENARIOS):
            path = record(SCENARIOS[name], Path(tmp))
            print(describe(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
