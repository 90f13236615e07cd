"""The aggregator daemon: a thin loop around `AggregatorCore`.

Each turn takes a batch of received messages and runs them through the
core, appends the accepted ones (and any deadline flush) to the journal,
fsyncs once for the whole batch (group commit), and only then sends the
acks, the broker PUBACKs (the client runs with manual_ack) and the new
model. So nothing leaves the daemon that a crash could take back: an ack
a node holds is for an update on disk, and a message the daemon dies
with before the fsync was never PUBACKed, so the broker delivers it again.

paho's network thread only fills the inbox (see fedbus.broker.client); all
decoding and arithmetic run on the thread that calls `run`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fedbus.aggregator.buffer import BufferedAggregator
from fedbus.aggregator.core import AggregatorCore
from fedbus.aggregator.event_log import EventLog
from fedbus.aggregator.metrics import AggregatorMetrics
from fedbus.aggregator.robust import Rule
from fedbus.aggregator.store import AggregatorStore
from fedbus.broker.accounts import AuthDir
from fedbus.broker.client import BrokerAddress, BusClient, LastWill, Received
from fedbus.broker.codec import encode
from fedbus.broker.errors import ConfigError, ProtocolError
from fedbus.broker.messages import AckMessage, AggregatorStatus
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
    #: Write a checkpoint (and start a new journal segment) every N model versions.
    checkpoint_every: int = 10
    #: Most messages decided per group commit (one fsync each batch).
    max_batch: int = 256
    #: The enrolled nodes' keys (fedbus broker add-node); reread when it changes.
    node_keys: Path | None = None
    #: JSON-lines event log (fedbus.aggregator.event_log); None: none.
    event_log: Path | None = None
    #: Serve Prometheus metrics on this port; None: not served.
    metrics_port: int | None = None


def robust_counters(aggregator: BufferedAggregator) -> dict[str, float]:
    """The privacy spent so far and the current clip bound, for `aggregator/status`."""
    out: dict[str, float] = {}
    if aggregator.rows is not None:
        bound = aggregator.rows.clip_bound()
        if bound is not None:
            out["clip_bound"] = bound
    spent = aggregator.privacy_spent()
    if spent is not None and aggregator.config.privacy is not None:
        out |= {
            "dp_epsilon": spent.epsilon,
            "dp_delta": spent.delta,
            "dp_steps": spent.steps,
            "dp_noise_multiplier": aggregator.config.privacy.noise_multiplier,
            "dp_clip": aggregator.config.privacy.clip,
        }
    return out


class AggregatorDaemon:
    def __init__(
        self,
        core: AggregatorCore,
        settings: DaemonSettings,
        store: AggregatorStore | None = None,
    ) -> None:
        """`store` must already hold the recovered state (`store.recover(core)`).

        Without a store nothing is durable: only for tests of pure behaviour.
        """
        self.core = core
        self.settings = settings
        self.store = store
        self._checkpointed_version = core.version
        self.topics = settings.topics
        self.stopping = threading.Event()
        self._keys_checked_at = -math.inf
        self._keys_stamp: int | None = None
        self._status_due = 0.0
        self._status_dirty = True
        self._buffer_since: float | None = time.monotonic() if core.aggregator.buffered else None
        self._normalization_due = False
        self.events = None if settings.event_log is None else EventLog(settings.event_log)
        self.metrics: AggregatorMetrics | None = None
        if settings.metrics_port is not None:
            self.metrics = AggregatorMetrics()
            self.metrics.serve(settings.metrics_port)
            log.info("Prometheus metrics on port %d", settings.metrics_port)
        self.client = BusClient(
            f"fedbus-{self.topics.fleet}-aggregator",
            settings.address,
            persistent_session=True,
            manual_ack=store is not None,
            # The will is fixed at connect time, so it carries no counters: a
            # status with state "offline" says the daemon is gone, nothing more.
            will=LastWill(
                self.topics.aggregator_status,
                encode(AggregatorStatus("offline", self.core.version, self._mode)),
            ),
        )

    @property
    def _mode(self) -> str:
        """The mode and any robust or DP setting, e.g. "fedbuff+median+clip"."""
        config = self.core.aggregator.config
        parts = [config.mode.value]
        if config.robust.rule is not Rule.MEAN:
            parts.append(config.robust.rule.value)
        if config.robust.clip_norm is not None or config.robust.adaptive_clip is not None:
            parts.append("clip")
        if config.privacy is not None:
            parts.append("dp")
        return "+".join(parts)

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
                    "bad_chunks": self.client.reassembler.counters.bad,
                    **robust_counters(self.core.aggregator),
                },
            )
        )

    def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.core.counters.bytes_out += len(payload)
        if self.metrics is not None:
            self.metrics.bytes_out.inc(len(payload))
        self.client.publish(topic, payload, qos=1, retain=retain)

    def publish_model(self) -> None:
        self._publish(self.topics.model, encode(self.core.model_message()), retain=True)
        self.core.counters.models_published += 1
        log.info("published model version %d", self.core.version)
        if self.events is not None:
            aggregator = self.core.aggregator
            self.events.write(
                "model",
                version=self.core.version,
                applied=aggregator.applied_updates,
                buffered=aggregator.buffered,
            )
        if self.metrics is not None:
            self.metrics.models.inc()
        self.publish_status()

    def publish_status(self, state: str = "running") -> None:
        self.client.publish(
            self.topics.aggregator_status, self._status_payload(state), qos=1, retain=True
        )
        self._status_dirty = False

    def run(self) -> None:
        """Serve until `stopping` is set (SIGTERM/SIGINT handlers set it)."""
        self.client.subscribe(self.topics.all_nodes(Channel.UPDATE), qos=1)
        if self.core.task.needs_normalization:
            self.client.subscribe(self.topics.all_nodes(Channel.STATS), qos=1)
        self.client.start()
        self.client.wait_connected(self.settings.connect_timeout)
        if self.events is not None:
            self.events.write(
                "start", fleet=self.topics.fleet, version=self.core.version, mode=self._mode
            )
        announced_connection = 0
        try:
            while not self.stopping.is_set():
                self._reload_keys_if_changed()
                if self.client.connect_count != announced_connection:
                    # First connect, or back after a broker restart that may have lost
                    # the retained model and replaced the status with the last will.
                    announced_connection = self.client.connect_count
                    self.publish_model()
                self._turn(self._receive_batch())
        finally:
            if self.store is not None:
                self.store.close(self.core)
            self.publish_status("stopped")
            self.client.stop()
            if self.events is not None:
                self.events.write("stop", version=self.core.version)
                self.events.close()

    def _reload_keys_if_changed(self) -> None:
        """Enrol nodes added (or drop nodes removed) since start, at most once a second."""
        path = self.settings.node_keys
        now = time.monotonic()
        if path is None or now - self._keys_checked_at < 1.0:
            return
        self._keys_checked_at = now
        auth = AuthDir.of(path)
        try:
            stamp = auth.registry_path.stat().st_mtime_ns
            if stamp == self._keys_stamp:
                return
            keys = auth.verify_keys()
        except (OSError, ConfigError) as exc:
            log.warning("cannot reread node keys from %s: %s; keeping the old ones", path, exc)
            return
        if self._keys_stamp is not None:
            log.info("node keys changed: %d nodes enrolled", len(keys))
        self._keys_stamp = stamp
        self.core.enrol(keys)

    def _receive_batch(self) -> list[Received]:
        first = self.client.receive(timeout=0.05)
        if first is None:
            return []
        batch = [first]
        while len(batch) < self.settings.max_batch:
            more = self.client.receive(timeout=0)
            if more is None:
                break
            batch.append(more)
        return batch

    def _turn(self, batch: list[Received]) -> None:
        """Decide a batch, make it durable, then answer it (see module docstring)."""
        now = time.monotonic()
        acks: list[AckMessage] = []
        model_changed = False
        for received in batch:
            ack, stepped = self._decide(received.topic, received.payload, now)
            model_changed |= stepped
            if ack is not None:
                acks.append(ack)
        model_changed |= self._maybe_flush(now)
        if model_changed:
            self._buffer_since = None
        if self.core.aggregator.buffered and self._buffer_since is None:
            self._buffer_since = now
        if self.store is not None:
            self.store.commit()
        if self._normalization_due:
            # The task now carries the pooled statistics. A checkpoint first (after
            # the commit, so it covers this batch): once a node standardizes with
            # them and trains, a restarted aggregator must not pool different ones.
            self._normalization_due = False
            if self.store is not None:
                self.store.checkpoint(self.core)
                self._checkpointed_version = self.core.version
            model_changed = True
        if model_changed:
            # Before the acks: a node that reads "accepted, version N" in its ack
            # then finds version N already retained on the model topic.
            self.publish_model()
            self._maybe_checkpoint()
        for ack in acks:
            self._publish(self.topics.ack(ack.node), encode(ack))
        for received in batch:
            self.client.ack(received)
        if acks:
            self._status_dirty = True
        self.core.rejection_log.flush(now)
        self._observe_state()
        if self._status_dirty and now >= self._status_due:
            self.publish_status()
            self._status_due = now + self.settings.status_interval

    def _decide(self, topic: str, payload: bytes, now: float) -> tuple[AckMessage | None, bool]:
        """(ack to send, model moved) for one message; journals an accepted update."""
        try:
            channel, node = self.topics.parse(topic)
        except ProtocolError as exc:
            self.core.counters.bad_topics += 1
            self.core.rejection_log.log("bad_topic", now, "ignored message on bad topic: %s", exc)
            return None, False
        if channel is Channel.STATS and node is not None:
            stats = self.core.handle_stats(node, payload, now)
            if stats.pooled and self.store is not None:
                self.store.log_stats(node, payload)
            self._normalization_due |= stats.complete
            return None, False
        if channel is not Channel.UPDATE or node is None:
            return None, False
        outcome = self.core.handle_update(node, payload, now)
        if self.store is not None and outcome.ack.accepted and not outcome.ack.duplicate:
            self.store.log_accepted(node, payload)
        if self.events is not None:
            self.events.update(outcome.ack, outcome.staleness, len(payload))
        if self.metrics is not None:
            self.metrics.update(outcome.ack, outcome.staleness, len(payload), time.time())
        return outcome.ack, outcome.model_changed

    def _observe_state(self) -> None:
        """After each batch: event lines to disk, gauges to the current state."""
        if self.events is not None:
            self.events.flush()
        if self.metrics is not None:
            aggregator = self.core.aggregator
            spent = aggregator.privacy_spent()
            self.metrics.state(
                self.core.version,
                aggregator.buffered,
                aggregator.config.buffer_size,
                None if spent is None else spent.epsilon,
            )

    def _maybe_flush(self, now: float) -> bool:
        deadline = self.settings.flush_after
        if deadline is None or self._buffer_since is None or now - self._buffer_since < deadline:
            return False
        self._buffer_since = None
        if not self.core.flush():
            return False
        if self.store is not None:
            self.store.log_flush()
        log.info("deadline flush of a partial buffer")
        if self.events is not None:
            self.events.write("deadline_flush", version=self.core.version)
        return True

    def _maybe_checkpoint(self) -> None:
        if self.store is None:
            return
        if self.core.version - self._checkpointed_version >= self.settings.checkpoint_every:
            self.store.checkpoint(self.core)
            self._checkpointed_version = self.core.version
            if self.events is not None:
                self.events.write("checkpoint", version=self.core.version)
