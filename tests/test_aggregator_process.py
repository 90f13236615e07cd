"""`python -m fedbus.aggregator` as a process: serves, then stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from fedbus.broker.client import BrokerAddress, BusClient
from fedbus.broker.codec import decode
from fedbus.broker.messages import AggregatorStatus, ModelMessage
from fedbus.broker.topics import Topics

pytestmark = pytest.mark.broker


def _latest_status(client: BusClient, timeout: float) -> AggregatorStatus | None:
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        received = client.receive(0.1)
        if received is not None and received.topic.endswith("aggregator/status"):
            status = decode(received.payload, AggregatorStatus)
            if status.state == "stopped":
                return status
    return status


def test_aggregator_process_publishes_model_and_stops_cleanly_on_sigterm(
    mosquitto_broker,  # type: ignore[no-untyped-def]
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    topics = Topics("proc")
    address = BrokerAddress(mosquitto_broker.host, mosquitto_broker.port)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedbus.aggregator",
            "--host",
            address.host,
            "--port",
            str(address.port),
            "--fleet",
            topics.fleet,
            "--mode",
            "fedbuff",
            "-K",
            "4",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    watcher = BusClient("test-proc-watcher", address, persistent_session=False)
    watcher.subscribe(topics.model)
    watcher.subscribe(topics.aggregator_status)
    watcher.start()
    try:
        watcher.wait_connected(10)
        received = watcher.receive(30)
        while received is not None and received.topic != topics.model:
            received = watcher.receive(30)
        assert received is not None
        model = decode(received.payload, ModelMessage)
        assert model.version == 0 and dict(model.task.weight_shapes) == {"W": (64, 10), "b": (10,)}

        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0, process.stderr.read() if process.stderr else ""
        status = _latest_status(watcher, 5)
        assert status is not None and status.state == "stopped" and status.mode == "fedbuff"
    finally:
        watcher.stop()
        if process.poll() is None:
            process.kill()
            process.wait()


def test_bad_configuration_exits_2_naming_the_field() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fedbus.aggregator", "--fleet", "no/slashes"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "--fleet" in result.stderr
