"""The aggregator daemon: a thin loop around `AggregatorCore`.

receive -> core.handle_update -> publish ack (and the new model). paho's
network thread only fills the inbox (see fedbus.broker.client); all
decoding and arithmetic run on the thread that calls `run`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from fedbus.aggregator.core import AggregatorCore
from fedbus.broker.client import BrokerAddress, BusClient, LastWill
from fedbus.broker.codec import encode
from fedbus.broker.errors import ProtocolError
from fedbus.broker.messages import AggregatorStatus
from fedbus.broker.topics import Channel, Topics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DaemonSettings:
    address: BrokerAddress
    topics: Topics
    status_interval: float = 1.0
    #: Apply a partial buffer when its oldest update has waited this long (None: never).
    flush_after: float | None = None
    connect_timeout: float = 30.0


class AggregatorDaemon:
    def __init__(self, core: AggregatorCore, settings: DaemonSettings) -> None:
        self.core = core
        self.settings = settings
        self.topics = settings.topics
        self.stopping = threading.Event()
        self._status_due = 0.0
        self._status_dirty = True
        self._buffer_since: float | None = None
        self.client = BusClient(
            f"fedbus-{self.topics.fleet}-aggregator",
            settings.address,
            persistent_session=True,
            # The will is fixed at connect time, so it carries no counters: a
            # status with state "offline" says the daemon is gone, nothing more.
            will=LastWill(
                self.topics.aggregator_status,
                encode(AggregatorStatus("offline", self.core.version, self._mode)),
            ),
        )

    @property
    def _mode(self) -> str:
        return self.core.aggregator.config.mode.value

    def _status_payload(self, state: str) -> bytes:
        return encode(
            AggregatorStatus(
                state=state,
                version=self.core.version,
                mode=self._mode,
                counters={
                    **self.core.counters.as_dict(),
                    "applied": self.core.aggregator.applied_updates,
                    "buffered": self.core.aggregator.buffered,
                },
            )
        )

    def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.core.counters.bytes_out += len(payload)
        self.client.publish(topic, payload, qos=1, retain=retain)

    def publish_model(self) -> None:
        self._publish(self.topics.model, encode(self.core.model_message()), retain=True)
        self.core.counters.models_published += 1
        log.info("published model version %d", self.core.version)
        self.publish_status()

    def publish_status(self, state: str = "running") -> None:
        self.client.publish(
            self.topics.aggregator_status, self._status_payload(state), qos=1, retain=True
        )
        self._status_dirty = False

    def run(self) -> None:
        """Serve until `stopping` is set (SIGTERM/SIGINT handlers set it)."""
        self.client.subscribe(self.topics.all_nodes(Channel.UPDATE), qos=1)
        self.client.start()
        self.client.wait_connected(self.settings.connect_timeout)
        announced_connection = 0
        try:
            while not self.stopping.is_set():
                if self.client.connect_count != announced_connection:
                    # First connect, or back after a broker restart that may have lost
                    # the retained model and replaced the status with the last will.
                    announced_connection = self.client.connect_count
                    self.publish_model()
                received = self.client.receive(timeout=0.05)
                now = time.monotonic()
                if received is not None:
                    self._handle(received.topic, received.payload, now)
                self._maybe_flush(now)
                if self._status_dirty and now >= self._status_due:
                    self.publish_status()
                    self._status_due = now + self.settings.status_interval
        finally:
            self.publish_status("stopped")
            self.client.stop()

    def _handle(self, topic: str, payload: bytes, now: float) -> None:
        try:
            channel, node = self.topics.parse(topic)
        except ProtocolError as exc:
            self.core.counters.bad_topics += 1
            log.warning("ignored message on bad topic: %s", exc)
            return
        if channel is not Channel.UPDATE or node is None:
            return
        outcome = self.core.handle_update(node, payload)
        self._publish(self.topics.ack(node), encode(outcome.ack))
        self._status_dirty = True
        if outcome.model_changed:
            self._buffer_since = None
            self.publish_model()
        elif self.core.aggregator.buffered and self._buffer_since is None:
            self._buffer_since = now

    def _maybe_flush(self, now: float) -> None:
        deadline = self.settings.flush_after
        if deadline is None or self._buffer_since is None or now - self._buffer_since < deadline:
            return
        self._buffer_since = None
        if self.core.flush():
            log.info("deadline flush of a partial buffer")
            self.publish_model()
