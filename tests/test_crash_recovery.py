"""SIGKILL during training: nothing acknowledged is lost, nothing is applied twice.

Real processes and a real Mosquitto. The ledger (tests/crash_harness.py)
sees every ack the aggregator publishes; after the run, `fedbus aggregator
--audit` replays the journal from genesis and must land on the final
checkpoint bit for bit, and every acknowledged (node, seq) must be in the
journal exactly once.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from crash_harness import AckLedger, AggregatorProcess, accuracy, wait_for

from fedbus.aggregator.store import applied_updates
from fedbus.broker.client import BrokerAddress, BusClient
from fedbus.broker.codec import decode
from fedbus.broker.messages import UpdateMessage
from fedbus.broker.topics import Channel, Topics
from fedbus.node.datasets import load_digits_task
from fedbus.node.fleet import Fleet
from fedbus.node.partition import iid_partition

pytestmark = pytest.mark.broker

#: The demo's target on digits-20 (README, BENCH-TASK).
TARGET_ACCURACY = 0.93


@pytest.fixture
def reaper() -> Iterator[list[AggregatorProcess]]:
    """Aggregator processes a test started; killed at teardown if a failure left them."""
    started: list[AggregatorProcess] = []
    yield started
    for process in started:
        if process.alive:
            process.resume()
            process.kill()


def _fleet(address: BrokerAddress, topics: Topics, nodes: int = 20) -> Fleet:
    task = load_digits_task()
    parts = iid_partition(len(task.y_train), nodes, seed=0)
    partitions = [(task.X_train[idx], task.y_train[idx]) for idx in parts]
    return Fleet(partitions, address, topics, seed=0, ack_timeout=2.0)


@dataclass
class TrainingRun:
    """A broker's fleet in training: the aggregator process, the ledger, 20 nodes."""

    aggregator: AggregatorProcess
    ledger: AckLedger
    fleet: Fleet
    state_dir: Path

    @classmethod
    def start(
        cls,
        broker,
        tmp_path: Path,
        reaper: list[AggregatorProcess],
        fleet_id: str,  # type: ignore[no-untyped-def]
    ) -> TrainingRun:
        address = BrokerAddress(broker.host, broker.port)
        topics = Topics(fleet_id)
        state_dir = tmp_path / "aggregator"
        aggregator = AggregatorProcess(address, topics, state_dir, tmp_path / "aggregator.log")
        reaper.append(aggregator)
        run = cls(
            aggregator, AckLedger(address, topics).start(), _fleet(address, topics), state_dir
        )
        aggregator.start()
        run.fleet.start()
        return run

    def wait_for_model(self) -> None:
        self.fleet.wait_connected(30)
        wait_for(lambda: self.latest_version() is not None, 30, "a model")

    def latest_version(self) -> int | None:
        self.ledger.poll(0.05)
        return None if self.ledger.latest_model is None else self.ledger.latest_model.version

    def watch(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.ledger.poll(0.05)

    def finish(self) -> None:
        """Stop the fleet, then the aggregator cleanly (it checkpoints), then the ledger."""
        self.fleet.stop()
        time.sleep(0.5)
        self.ledger.poll(0.2)
        assert self.aggregator.stop() == 0
        self.ledger.poll(0.5)
        self.ledger.stop()


def _check_history(aggregator: AggregatorProcess, ledger: AckLedger, state_dir: Path) -> dict:  # type: ignore[type-arg]
    report = aggregator.audit()
    assert report["consistent"], report
    journal = applied_updates(state_dir)
    assert len(journal) == len(set(journal)), "an update was applied twice"
    missing = ledger.accepted - set(journal)
    assert not missing, f"acknowledged but not in the journal: {sorted(missing)[:5]}"
    assert ledger.latest_model is not None
    assert ledger.latest_model.version == report["version"]
    return report


def test_aggregator_sigkilled_ten_times_loses_no_acknowledged_update(
    mosquitto_broker,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    reaper: list[AggregatorProcess],
) -> None:
    run = TrainingRun.start(mosquitto_broker, tmp_path, reaper, "killagg")
    aggregator, ledger = run.aggregator, run.ledger
    task = load_digits_task()
    rng = random.Random(20261122)
    try:
        run.wait_for_model()
        versions_at_kill = []
        for _ in range(10):
            run.watch(rng.uniform(0.4, 1.5))
            aggregator.kill()
            versions_at_kill.append(run.latest_version())
            aggregator.start()
        # The last restart serves again (and is past its start-up, so the SIGTERM
        # at the end meets its handler), and training goes on until good enough.
        wait_for(
            lambda: (run.latest_version() or 0) > versions_at_kill[-1] + 2,
            60,
            "training after the last restart",
        )
        wait_for(
            lambda: (
                (ledger.poll(0.05), ledger.latest_model)[1] is not None
                and accuracy(ledger.latest_model, task.X_test, task.y_test) >= TARGET_ACCURACY
            ),
            90,
            f"test accuracy {TARGET_ACCURACY}",
        )
    finally:
        run.finish()

    assert aggregator.starts == 11
    assert versions_at_kill[-1] > versions_at_kill[0], "training made no progress across kills"
    report = _check_history(aggregator, ledger, run.state_dir)
    print(
        f"kills at versions {versions_at_kill}; audit {report}; "
        f"duplicate acks {ledger.duplicate_acks}, fleet {run.fleet.totals()}"
    )
    assert report["updates_in_journal"] >= len(ledger.accepted) > 0
    assert ledger.latest_model is not None
    assert accuracy(ledger.latest_model, task.X_test, task.y_test) >= TARGET_ACCURACY


def test_broker_sigkilled_during_training_loses_no_acknowledged_update(
    mosquitto_broker,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    reaper: list[AggregatorProcess],
) -> None:
    run = TrainingRun.start(mosquitto_broker, tmp_path, reaper, "killbroker")
    aggregator, ledger = run.aggregator, run.ledger
    rng = random.Random(7)
    try:
        run.wait_for_model()
        for _ in range(3):
            run.watch(rng.uniform(0.5, 1.5))
            # SIGKILL: whatever mosquitto held in memory (queued updates, acks in
            # flight, the retained model since its last autosave) is gone.
            mosquitto_broker.kill()
            time.sleep(rng.uniform(0.2, 1.0))
            mosquitto_broker.restart()
            version = run.latest_version() or 0
            wait_for(
                lambda v=version: (run.latest_version() or 0) > v + 2,
                60,
                "training to go on after the broker restart",
            )
        assert aggregator.alive, "the aggregator must ride out a broker restart"
    finally:
        run.finish()

    report = _check_history(aggregator, ledger, run.state_dir)
    totals = run.fleet.totals()
    print(f"audit {report}; duplicate acks {ledger.duplicate_acks}; fleet {totals}")
    assert totals.resends > 0, "nodes must resend what the dead broker may have lost"
    assert ledger.duplicate_acks > 0, "resent updates that were applied get a duplicate ack"


class UpdateTap:
    """Counts every copy of each (node, seq) update the broker routes."""

    def __init__(self, address: BrokerAddress, topics: Topics) -> None:
        self.copies: Counter[tuple[str, int]] = Counter()
        self.client = BusClient("test-update-tap", address, persistent_session=False)
        self.client.subscribe(topics.all_nodes(Channel.UPDATE))
        self.client.start()
        self.client.wait_connected(10)

    def poll(self) -> Counter[tuple[str, int]]:
        received = self.client.receive(0.05)
        while received is not None:
            update = decode(received.payload, UpdateMessage)
            self.copies[(update.node, update.seq)] += 1
            received = self.client.receive(0)
        return self.copies


def _node_command(address: BrokerAddress, topics: Topics, data: Path, state: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fedbus.node",
        "--id",
        "n1",
        "--data",
        str(data),
        "--state-dir",
        str(state),
        "--ack-timeout",
        "600",  # only the outbox may cause the resend under test
        "--host",
        address.host,
        "--port",
        str(address.port),
        "--fleet",
        topics.fleet,
    ]


def test_node_sigkilled_between_publish_and_ack_resends_from_its_outbox(
    mosquitto_broker,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    reaper: list[AggregatorProcess],
) -> None:
    address = BrokerAddress(mosquitto_broker.host, mosquitto_broker.port)
    topics = Topics("killnode")
    task = load_digits_task()
    data = tmp_path / "n1.npz"
    np.savez(data, X=task.X_train[:80], y=task.y_train[:80])
    node_state = tmp_path / "n1"
    outbox = node_state / "outbox"
    state_dir = tmp_path / "aggregator"
    aggregator = AggregatorProcess(
        address,
        topics,
        state_dir,
        tmp_path / "aggregator.log",
        extra_args=("--mode", "fedasync", "--features", "64", "--classes", "10"),
    )
    reaper.append(aggregator)
    ledger = AckLedger(address, topics).start()
    tap = UpdateTap(address, topics)
    aggregator.start()
    wait_for(lambda: (ledger.poll(0.05), ledger.latest_model)[1] is not None, 30, "a model")
    aggregator.pause()  # the update will reach the broker, its ack cannot come back
    node_log = (tmp_path / "node.log").open("ab")
    node = subprocess.Popen(_node_command(address, topics, data, node_state), stderr=node_log)
    try:
        wait_for(lambda: tap.poll()[("n1", 1)] == 1, 60, "seq 1 published")
        assert [p.name for p in outbox.glob("*.msg")] == ["update-000000000001.msg"]
        node.send_signal(signal.SIGKILL)
        node.wait(10)

        node = subprocess.Popen(_node_command(address, topics, data, node_state), stderr=node_log)
        wait_for(lambda: tap.poll()[("n1", 1)] == 2, 60, "seq 1 resent from the outbox")
        aggregator.resume()
        # fedasync: seq 1 makes version 1, on which the node trains seq 2.
        wait_for(lambda: tap.poll()[("n1", 2)] >= 1, 60, "the next update, seq 2")
        wait_for(lambda: not list(outbox.glob("*.msg")), 30, "an empty outbox")
    finally:
        aggregator.resume()
        node.send_signal(signal.SIGTERM)
        node.wait(20)
        node_log.close()
        tap.client.stop()
    ledger.poll(0.5)
    assert aggregator.stop() == 0
    ledger.stop()

    assert ("n1", 1) in ledger.accepted and ledger.duplicate_acks >= 1
    journal = applied_updates(state_dir)
    assert journal.count(("n1", 1)) == 1, journal
    assert journal.count(("n1", 2)) == 1, journal
    assert aggregator.audit()["consistent"]
