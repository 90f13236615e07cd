"""The edge node: receive a model, train on local data, send the delta, await the ack.

One `EdgeNode` is one device with its own MQTT connection. Its loop runs on
the caller's thread (a device's main loop, or one thread of the fleet
simulator); paho's network thread only fills the inbox.

    idle --new model--> train --> delta --> outbox --> publish --> wait for ack --> idle
                                                          ^-- resend on ack timeout
                                                              or reconnect --'

With a state directory the node survives power loss: the sequence counter
(and, with compression, the error-feedback residual) is saved before an
update is published, the update waits in the on-disk outbox until its ack
arrives, and a restarted node resends what is still there. Without one
(simulations) the same happens in memory.

Raw data never leaves this object: only `delta = w_local - w_base`, the
base version, the sample count and a per-node sequence number do.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedbus.aggregator.robust import PrivacySettings
from fedbus.broker.client import BrokerAddress, BusClient, LastWill
from fedbus.broker.codec import decode, encode
from fedbus.broker.durable_files import write_atomically
from fedbus.broker.errors import CodecError, ConfigError, DataError, ProtocolError
from fedbus.broker.messages import (
    AckMessage,
    ModelMessage,
    NodeMetrics,
    NodeState,
    NodeStatus,
    TrainingTask,
    UpdateMessage,
)
from fedbus.broker.signing import sign_stats, sign_update
from fedbus.broker.tensors import decode_weights
from fedbus.broker.topics import Channel, Topics
from fedbus.kernels.warmup import warm_up
from fedbus.node.compression import CodecSpec, compress
from fedbus.node.device_state import DeviceState, load_device_state, save_device_state, take_seq
from fedbus.node.learners import Learner, build_learner
from fedbus.node.local_privacy import LocalPrivacy
from fedbus.node.local_work import local_shuffle_rng
from fedbus.node.outbox import Outbox
from fedbus.node.portable import inference_steps, normalization_lists, transform_rows
from fedbus.node.sources import Table, from_arrays
from fedbus.node.training_data import (
    Prepared,
    RowSource,
    StatisticsNeeded,
    node_statistics,
    prepare,
)

log = logging.getLogger(__name__)

#: Called between local training and sending, with the node and the local run
#: index; returns False to lose the update (the simulator's dropouts and delays).
BeforeSend = Callable[["EdgeNode", int], bool]
#: Replaces the delta of local run k before it is compressed and signed (the
#: simulator's Byzantine nodes, fedbus.node.attacks).
Tamper = Callable[[dict[str, np.ndarray], int], dict[str, np.ndarray]]


def learner_for(task: TrainingTask) -> Learner:
    """The learner a task names, sized from the task's weight layout."""
    try:
        return build_learner(task.learner, task.weight_shapes)
    except ConfigError as exc:
        raise ProtocolError(f"this node cannot run the task's model: {exc}") from None


@dataclass(frozen=True)
class NodeSettings:
    node_id: str
    address: BrokerAddress
    topics: Topics
    seed: int = 0
    #: Index used in the per-run random streams (BENCH-TASK: node_id of the fleet).
    node_index: int = 0
    ack_timeout: float = 10.0
    connect_timeout: float = 30.0
    #: Device state and outbox live here (None: in memory, lost on restart).
    state_dir: Path | None = None
    #: How updates are encoded (lossy codecs use error feedback).
    codec: CodecSpec = CodecSpec()
    #: The node's Ed25519 key; when set every update carries its signature.
    signing_key: Ed25519PrivateKey | None = None
    #: Local DP: every delta is clipped and noised on the device before it leaves.
    local_privacy: PrivacySettings | None = None


@dataclass
class NodeProgress:
    """What a node has done, for the simulator's summary and for tests."""

    runs: int = 0
    accepted: int = 0
    rejected: int = 0
    resends: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    last_reason: str | None = None
    #: What the preprocessing steps did in the last local run (per step, its counts).
    last_preprocess: dict[str, dict[str, int]] = field(default_factory=dict)


DEVICE_STATE_FILE = "device.state"
#: The last model this node held, as received, so it can predict and export offline.
HELD_MODEL_FILE = "model.msgpack"
#: Beside the state file, not around it: opening an outbox clears its temp files.
OUTBOX_DIR = "outbox"


@dataclass
class _Pending:
    """The update awaiting its ack: exact bytes, so a resend is byte-identical."""

    seq: int
    payload: bytes
    sent_at: float = 0.0
    #: connect_count when last published (0: not yet sent on any connection).
    sent_on: int = 0


class _NoOutbox:
    """Stands in for the outbox of a node without a state directory."""

    def highest_seq(self) -> int | None:
        return None


_NO_OUTBOX = _NoOutbox()


class EdgeNode:
    def __init__(
        self,
        settings: NodeSettings,
        features: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        *,
        source: RowSource | None = None,
        before_send: BeforeSend | None = None,
        tamper: Tamper | None = None,
    ) -> None:
        """Local data is either fixed arrays (`features`, `labels`) or a `source` of
        raw rows, called before every local run (a stream's window moves)."""
        if (source is None) == (features is None or labels is None):
            raise ValueError("give either features and labels, or a source")
        self.settings = settings
        self.node_id = settings.node_id
        self.topics = settings.topics
        self.features = None if features is None else np.ascontiguousarray(features)
        self.labels = None if labels is None else np.ascontiguousarray(labels)
        self._source = source
        self.before_send = before_send
        self.tamper = tamper
        self.privacy = None
        if settings.local_privacy is not None:
            self.privacy = LocalPrivacy(settings.local_privacy)
        #: The task whose statistics this node published, and a task it cannot run.
        self._stats_sent_for: TrainingTask | None = None
        self._unusable: TrainingTask | None = None
        #: Fixed arrays as a Table (built once), and the last preparation of a Table.
        self._fixed_rows: Table | None = None
        self._prepared: tuple[TrainingTask, Table, Prepared] | None = None
        self.progress = NodeProgress()
        self.stopping = threading.Event()
        self.latest_model: ModelMessage | None = None
        self.latest_weights: dict[str, np.ndarray] = {}
        self.learner: Learner | None = None
        self.outbox: Outbox | None = None
        self.device_state = DeviceState()
        if settings.state_dir is not None:
            self.device_state = load_device_state(settings.state_dir / DEVICE_STATE_FILE)
            self.outbox = Outbox(settings.state_dir / OUTBOX_DIR)
        self._trained_version: int | None = self.device_state.model_version
        self._pending: _Pending | None = None
        self._load_next_pending()
        self._announced_connection = 0
        self.client = BusClient(
            f"fedbus-{self.topics.fleet}-node-{self.node_id}",
            settings.address,
            persistent_session=True,
            will=LastWill(
                self.topics.status(self.node_id),
                encode(NodeStatus(self.node_id, NodeState.OFFLINE)),
            ),
        )

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        warm_up()
        self.client.subscribe(self.topics.model, qos=1)
        self.client.subscribe(self.topics.ack(self.node_id), qos=1)
        self.client.start()

    def run(self) -> None:
        """Connect and work until `stopping` is set."""
        self.start()
        try:
            self.client.wait_connected(self.settings.connect_timeout)
            while not self.stopping.is_set():
                self.step(timeout=0.05)
        finally:
            self.close()

    def close(self) -> None:
        if self.client.connected.is_set():
            self._publish_status(NodeState.OFFLINE).wait_for_publish(2.0)
        self.client.stop()

    def step(self, timeout: float) -> None:
        """One turn of the loop: take in messages, then train or resend if due."""
        received = self.client.receive(timeout=timeout)
        while received is not None:
            self._take(received.topic, received.payload)
            received = self.client.receive(timeout=0)
        if (
            self.client.connect_count != self._announced_connection
            and self.client.connected.is_set()
        ):
            # After every (re)connect: replace the retained last will "offline", and
            # resend at once what still waits for its ack: the broker may have lost
            # it, and waiting out the ack timeout would only add latency.
            self._announced_connection = self.client.connect_count
            self._publish_status(NodeState.ONLINE, self._trained_version)
            pending = self._pending
            if pending is not None and pending.sent_on != self.client.connect_count:
                if pending.sent_on:
                    self.progress.resends += 1
                self._send(pending)
        if self._pending is not None:
            if (
                self._pending.sent_on
                and time.monotonic() - self._pending.sent_at > self.settings.ack_timeout
            ):
                log.info("%s: no ack for seq %d, resending", self.node_id, self._pending.seq)
                self.progress.resends += 1
                self._send(self._pending)
            return
        model = self.latest_model
        if model is not None and model.version != self._trained_version:
            self._train_and_send(model, self.latest_weights)

    # ------------------------------------------------------------ inference

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Answer from the latest model this node holds; works while offline.

        `features` are raw rows, as the sensors give them (NaN for a missing
        cell): the task's inference transform (pooled means for missing
        cells, clip bounds, pooled scaling) is applied first, as in an
        exported model file.
        """
        model = self.latest_model
        if self.learner is None or model is None:
            raise ProtocolError(f"{self.node_id}: no model received yet")
        task = model.task
        rows = np.asarray(features)
        if task.preprocess or task.normalization is not None:
            names = task.features or tuple(f"x{i}" for i in range(rows.shape[-1]))
            steps = inference_steps(task.preprocess, names, normalization_lists(task.normalization))
            rows = transform_rows(steps, rows.reshape(-1, len(names)))
        rows = np.ascontiguousarray(rows, dtype=np.float32).reshape(-1, rows.shape[-1])
        self.learner.set_weights(self.latest_weights)
        return self.learner.predict(rows)

    def hold_model(self, model: ModelMessage, payload: bytes | None = None) -> None:
        """Make `model` the one this node trains on and answers from.

        The learner and the decoded weights are built first, so a model this
        node cannot run raises here (CodecError, ProtocolError) and replaces
        nothing; it never reaches the training loop. With a state directory
        the model's bytes are kept there (`fedbus export`, offline prediction
        after a restart).
        """
        same_task = self.latest_model is not None and self.latest_model.task == model.task
        learner = (
            self.learner if same_task and self.learner is not None else learner_for(model.task)
        )
        weights = decode_weights(model.tensors, model.task.weight_shapes)
        self.latest_model, self.latest_weights, self.learner = model, weights, learner
        if self.settings.state_dir is not None:
            self.settings.state_dir.mkdir(parents=True, exist_ok=True)
            write_atomically(
                self.settings.state_dir / HELD_MODEL_FILE,
                payload if payload is not None else encode(model),
            )

    # ------------------------------------------------------------ internals

    def _take(self, topic: str, payload: bytes) -> None:
        self.progress.bytes_received += len(payload)
        if not payload:
            return  # a retained message being deleted (see PROTOCOL.md 15.7)
        try:
            channel, _ = self.topics.parse(topic)
            if channel is Channel.MODEL:
                model = decode(payload, ModelMessage)
                held = self.latest_model
                # The same version with another task: the aggregator completed the
                # task with its pooled normalization (PROTOCOL.md 9, 10.0).
                if (
                    held is None
                    or model.version > held.version
                    or (model.version == held.version and model.task != held.task)
                ):
                    self.hold_model(model, payload)
            elif channel is Channel.ACK:
                self._take_ack(decode(payload, AckMessage))
        except (CodecError, ProtocolError) as exc:
            log.warning("%s: ignored bad message on %s: %s", self.node_id, topic, exc)

    @property
    def seq(self) -> int:
        """The last sequence number this node used (0: none yet)."""
        return self.device_state.next_seq - 1

    def _load_next_pending(self) -> None:
        """Make the oldest update still in the outbox the pending one (or none)."""
        waiting = self.outbox.pending() if self.outbox is not None else []
        self._pending = _Pending(*waiting[0]) if waiting else None
        if waiting:
            log.info("%s: %d update(s) in the outbox to resend", self.node_id, len(waiting))

    def _take_ack(self, ack: AckMessage) -> None:
        if self._pending is None or ack.seq != self._pending.seq:
            return
        if self.outbox is not None:
            # Any verdict is final, and the aggregator refuses seqs below it anyway.
            self.outbox.remove_through(ack.seq)
            self._load_next_pending()
            if self._pending is not None and self.client.connected.is_set():
                self._send(self._pending)
        else:
            self._pending = None
        if ack.accepted:
            self.progress.accepted += 1
        else:
            self.progress.rejected += 1
            self.progress.last_reason = ack.reason.value if ack.reason else None
            log.info("%s: update %s rejected: %s %s", self.node_id, ack.seq, ack.reason, ack.detail)

    def _training_data(self, task: TrainingTask) -> Prepared | None:
        """This run's arrays, or None: statistics sent and awaiting normalization,
        or a task this node cannot run (logged once).

        The loop asks on every turn while a model waits to be trained on, so
        nothing is recomputed that cannot have changed: a task awaiting its
        normalization returns at once once its statistics are out, and rows a
        source returns again unchanged (the same Table object: a file read
        once) are prepared once per task.
        """
        if task == self._unusable:
            return None
        if task.needs_normalization and task == self._stats_sent_for:
            return None
        if self.features is not None and self.labels is not None:
            if not task.preprocess and task.normalization is None:
                return Prepared(self.features, self.labels, len(self.labels), {})
            if self._fixed_rows is None:
                self._fixed_rows = from_arrays(self.features, self.labels)
            table = self._fixed_rows
        else:
            assert self._source is not None
            table = self._source()
        cached = self._prepared
        if cached is not None and cached[0] == task and cached[1] is table:
            return cached[2]
        assert self.learner is not None
        try:
            prepared = prepare(task, table, self.learner.task_kind)
        except (ConfigError, DataError) as exc:
            log.error("%s: cannot train on task %r: %s", self.node_id, task.name, exc)
            self._unusable = task
            return None
        if isinstance(prepared, StatisticsNeeded):
            stats = node_statistics(self.node_id, prepared.cleaned)
            if self.settings.signing_key is not None:
                signature = sign_stats(self.settings.signing_key, self.topics.fleet, stats)
                stats = replace(stats, signature=signature)
            self.client.publish(self.topics.stats(self.node_id), encode(stats), qos=1, retain=True)
            self._stats_sent_for = task
            log.info("%s: sent statistics of %d rows", self.node_id, len(prepared.cleaned.X))
            return None
        if len(prepared.y) == 0:
            return None  # nothing left to train on (a stream not filled yet)
        self._prepared = (task, table, prepared)
        return prepared

    def _train_and_send(self, model: ModelMessage, base: dict[str, np.ndarray]) -> None:
        task = model.task
        assert self.learner is not None  # hold_model built it with the model
        data = self._training_data(task)
        if data is None:
            return
        self.learner.set_weights(base)
        run = self.progress.runs + 1  # BENCH-TASK counts local runs k = 1, 2, ...
        self._publish_status(NodeState.TRAINING, model.version)
        # The received model on this node's own rows, before training: how well
        # the fleet's model fits here (`fedbus status` shows it per node).
        evaluation = {k: float(v) for k, v in self.learner.evaluate(data.X, data.y).items()}
        metrics = NodeMetrics(
            self.node_id, model.version, data.rows_raw, len(data.y), data.report, evaluation
        )
        self.client.publish(self.topics.metrics(self.node_id), encode(metrics), qos=0)
        self.progress.last_preprocess = data.report
        loss = self.learner.fit(
            data.X,
            data.y,
            epochs=task.local_epochs,
            batch_size=task.batch_size,
            lr=task.learning_rate,
            rng=local_shuffle_rng(self.settings.seed, self.settings.node_index, run),
        )
        local = self.learner.get_weights()
        delta = {name: (local[name] - base[name]).astype(np.float32) for name in base}
        if self.tamper is not None:
            delta = self.tamper(delta, run)
        if self.privacy is not None:
            delta = self.privacy.apply(delta)
            spent = self.privacy.spent()
            log.info(
                "%s: local DP epsilon %.3g at delta %g", self.node_id, spent.epsilon, spent.delta
            )
        tensors, residual = compress(
            delta,
            self.device_state.residual,
            self.settings.codec,
            seed=(self.settings.seed * 1_000_003 + self.settings.node_index) * 1_000_003 + run,
        )
        self.progress.runs += 1
        self._trained_version = model.version
        if self.before_send is not None and not self.before_send(self, run):
            self._publish_status(NodeState.ONLINE, model.version)
            return
        seq, state = take_seq(self.device_state, self.outbox or _NO_OUTBOX)
        update = UpdateMessage(
            node=self.node_id,
            seq=seq,
            base_version=model.version,
            num_samples=len(data.y),
            tensors=tensors,
            train_loss=float(loss),
        )
        if self.settings.signing_key is not None:
            signature = sign_update(self.settings.signing_key, self.topics.fleet, update)
            update = replace(update, signature=signature)
        payload = encode(update)
        # Write-ahead: the used seq is on disk before anything can carry it.
        self.device_state = replace(state, model_version=model.version, residual=residual)
        if self.settings.state_dir is not None:
            save_device_state(self.settings.state_dir / DEVICE_STATE_FILE, self.device_state)
        if self.outbox is not None:
            self.outbox.put(seq, payload)
        self._pending = _Pending(seq, payload)
        self._send(self._pending)
        self._publish_status(NodeState.ONLINE, model.version)

    def _send(self, pending: _Pending) -> None:
        self.client.publish(self.topics.update(self.node_id), pending.payload, qos=1)
        self.progress.bytes_sent += len(pending.payload)
        pending.sent_at = time.monotonic()
        pending.sent_on = max(1, self.client.connect_count)

    def _publish_status(self, state: NodeState, version: int | None = None):  # type: ignore[no-untyped-def]
        payload = encode(NodeStatus(self.node_id, state, version))
        return self.client.publish(self.topics.status(self.node_id), payload, qos=1, retain=True)
