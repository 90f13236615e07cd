"""The fleet simulator: many edge nodes on one machine, each with its own MQTT link.

Every node is a real `EdgeNode` with its own connection and client id,
running on its own thread, so the broker and the aggregator see exactly what
a fleet of devices would send. Seeded device and link conditions
(`fedbus.node.conditions`) make runs repeatable.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedbus.broker.client import BrokerAddress
from fedbus.broker.topics import Topics
from fedbus.node.agent import EdgeNode, NodeSettings, Tamper
from fedbus.node.compression import CodecSpec
from fedbus.node.conditions import Heterogeneity, run_conditions, slow_nodes
from fedbus.node.training_data import RowSource

log = logging.getLogger(__name__)

#: One simulated node's data: fixed (features, labels) arrays, or a row source.
NodeData: TypeAlias = tuple[np.ndarray, np.ndarray] | RowSource


@dataclass(frozen=True)
class FleetTotals:
    nodes: int
    runs: int
    accepted: int
    rejected: int
    resends: int
    dropped: int
    link_flaps: int
    bytes_sent: int
    bytes_received: int


class Fleet:
    def __init__(
        self,
        partitions: Sequence[NodeData],
        address: BrokerAddress,
        topics: Topics,
        *,
        seed: int = 0,
        heterogeneity: Heterogeneity | None = None,
        ack_timeout: float = 10.0,
        state_root: Path | None = None,
        codec: CodecSpec | None = None,
        access: Callable[[str], tuple[BrokerAddress, Ed25519PrivateKey | None]] | None = None,
        tampers: Callable[[int], Tamper | None] | None = None,
    ) -> None:
        """One node per entry of `partitions`: fixed (features, labels) arrays, or a
        row source called before each local run (fedbus.node.training_data).
        `state_root`: each node keeps its device state and outbox in a folder here.
        `access`: node id -> its own broker address and signing key (secured fleets).
        `tampers`: node index -> the hook that makes it Byzantine, or None."""
        self.heterogeneity = heterogeneity or Heterogeneity()
        self.seed = seed
        self._slow = slow_nodes(len(partitions), self.heterogeneity.slow_fraction, seed)
        self.dropped = 0
        self.link_flaps = 0
        self._lock = threading.Lock()

        def login(node_id: str) -> tuple[BrokerAddress, Ed25519PrivateKey | None]:
            return access(node_id) if access is not None else (address, None)

        self._tampers = tampers or (lambda index: None)
        logins = [login(f"node-{i:03d}") for i in range(len(partitions))]
        self.nodes = [
            self._node(
                i,
                data,
                NodeSettings(
                    f"node-{i:03d}",
                    logins[i][0],
                    topics,
                    seed=seed,
                    node_index=i,
                    ack_timeout=ack_timeout,
                    state_dir=None if state_root is None else state_root / f"node-{i:03d}",
                    codec=codec or CodecSpec(),
                    signing_key=logins[i][1],
                ),
            )
            for i, data in enumerate(partitions)
        ]
        self._threads: list[threading.Thread] = []

    def _node(self, index: int, data: NodeData, settings: NodeSettings) -> EdgeNode:
        tamper = self._tampers(index)
        if callable(data):
            return EdgeNode(settings, source=data, before_send=self._before_send, tamper=tamper)
        features, labels = data
        return EdgeNode(settings, features, labels, before_send=self._before_send, tamper=tamper)

    def _before_send(self, node: EdgeNode, run: int) -> bool:
        """Apply the drawn conditions of this run: wait, flap the link, or drop out."""
        index = node.settings.node_index
        conditions = run_conditions(self.heterogeneity, self.seed, index, run, index in self._slow)
        if node.stopping.wait(conditions.delay):
            return False
        if conditions.dropped:
            with self._lock:
                self.dropped += 1
            node.stopping.wait(self.heterogeneity.dropout_seconds)
            return False
        if conditions.link_flap:
            with self._lock:
                self.link_flaps += 1
            node.client.drop_connection()
        return True

    def start(self) -> None:
        for node in self.nodes:
            thread = threading.Thread(target=node.run, name=node.node_id, daemon=True)
            thread.start()
            self._threads.append(thread)

    def wait_connected(self, timeout: float) -> None:
        for node in self.nodes:
            node.client.wait_connected(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        for node in self.nodes:
            node.stopping.set()
        for thread in self._threads:
            thread.join(timeout)

    def totals(self) -> FleetTotals:
        progress = [node.progress for node in self.nodes]

        def total(field: str) -> int:
            return sum(getattr(p, field) for p in progress)

        return FleetTotals(
            nodes=len(self.nodes),
            runs=total("runs"),
            accepted=total("accepted"),
            rejected=total("rejected"),
            resends=total("resends"),
            dropped=self.dropped,
            link_flaps=self.link_flaps,
            bytes_sent=total("bytes_sent"),
            bytes_received=total("bytes_received"),
        )
