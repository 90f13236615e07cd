"""Many fleet nodes' MQTT connections in one process: the fleet side of bench/scale.py.

    python bench/mqtt_swarm.py --port P --fleet F --first 0 --count 250

paho's own loops (`loop_start`, `loop_forever`) wait with select(), which
fails for file descriptors >= 1024, and a looping client also holds a socket
pair to wake its thread. Here every client uses paho's external-loop API
instead: its socket callbacks register the socket with one
`selectors.DefaultSelector` (epoll on Linux), readiness calls `loop_read` /
`loop_write`, and `loop_misc` runs once a second for keepalive. So a client
holds exactly one descriptor and one process can drive hundreds of them.

Each client is a node as the broker sees it: client id
`fedbus-<fleet>-node-<id>`, MQTT 5 with a persistent session and the node's
last will, subscribed (QoS 1) to the model and to its own ack topic. It does
not train: during the hold it publishes its retained "online" status every
few seconds and one valid f32 update (a random delta with the received
model's layout, on the model version it holds), and counts what comes back.

The parent talks to the worker with one JSON object per line:

    worker -> {"event": "hello"}
    parent -> {"cmd": "connect"}
    worker -> {"event": "ready", ...}   every CONNACK, SUBACK and retained model (or timeout)
    parent -> {"cmd": "hold", "seconds": S}
    worker -> {"event": "done", ...}    after the hold; then it disconnects and exits
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import selectors
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fedbus.broker.client import DEFAULT_SESSION_EXPIRY
from fedbus.broker.codec import decode, encode
from fedbus.broker.errors import FedbusError
from fedbus.broker.messages import (
    AckMessage,
    ModelMessage,
    NodeState,
    NodeStatus,
    UpdateMessage,
)
from fedbus.broker.tensors import WireTensor, encode_weights
from fedbus.broker.topics import Topics

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
#: The stdin key's data in the selector (clients' keys carry their SwarmNode).
_STDIN = "stdin"


@dataclass
class SwarmNode:
    """One connection's bookkeeping."""

    node_id: str
    client: paho.Client
    connect_started: float = 0.0
    connack_at: float | None = None
    connect_refused: str | None = None
    subacks: int = 0
    retained_model_at: float | None = None
    model_version: int | None = None
    models: int = 0
    acks_accepted: int = 0
    acks_rejected: int = 0
    updates_sent: int = 0
    statuses_sent: int = 0
    disconnects: int = 0
    next_status: float = 0.0
    update_due: float | None = None
    errors: list[str] = field(default_factory=list)


class Swarm:
    """`count` node connections driven by one epoll loop."""

    def __init__(
        self, host: str, port: int, topics: Topics, first: int, count: int, keepalive: int
    ) -> None:
        self.host = host
        self.port = port
        self.topics = topics
        self.keepalive = keepalive
        self.selector = selectors.DefaultSelector()
        self.nodes = [self._node(f"n{i:05d}", topics) for i in range(first, first + count)]
        self.delta_tensors: tuple[WireTensor, ...] | None = None
        self.rng = random.Random(first)
        self._misc_due = 0.0
        self._stdin_buffer = b""
        self.selector.register(sys.stdin.fileno(), _READ, _STDIN)

    def _node(self, node_id: str, topics: Topics) -> SwarmNode:
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"fedbus-{topics.fleet}-node-{node_id}",
            protocol=paho.MQTTv5,
        )
        node = SwarmNode(node_id, client)
        client.user_data_set(node)
        offline = encode(NodeStatus(node_id, NodeState.OFFLINE))
        client.will_set(topics.status(node_id), offline, qos=1, retain=True)
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        return node

    # ------------------------------------------------------------ socket callbacks

    def _on_socket_open(self, client: paho.Client, node: SwarmNode, sock: Any) -> None:
        self.selector.register(sock, _READ, node)

    def _on_socket_close(self, client: paho.Client, node: SwarmNode, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(sock)

    def _on_register_write(self, client: paho.Client, node: SwarmNode, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.selector.modify(sock, _READ | _WRITE, node)

    def _on_unregister_write(self, client: paho.Client, node: SwarmNode, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.selector.modify(sock, _READ, node)

    # ------------------------------------------------------------ MQTT callbacks

    def _on_connect(
        self,
        client: paho.Client,
        node: SwarmNode,
        flags: Any,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            node.connect_refused = str(reason)
            return
        node.connack_at = time.time()
        client.subscribe(self.topics.model, qos=1)
        client.subscribe(self.topics.ack(node.node_id), qos=1)

    def _on_subscribe(
        self,
        client: paho.Client,
        node: SwarmNode,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        node.subacks += sum(1 for r in reasons if not r.is_failure)

    def _on_message(self, client: paho.Client, node: SwarmNode, msg: paho.MQTTMessage) -> None:
        try:
            if msg.topic == self.topics.model:
                model = decode(msg.payload, ModelMessage)
                node.models += 1
                if msg.retain and node.retained_model_at is None:
                    node.retained_model_at = time.time()
                node.model_version = max(node.model_version or 0, model.version)
                if self.delta_tensors is None:
                    self.delta_tensors = _random_delta(model)
            else:
                ack = decode(msg.payload, AckMessage)
                if ack.accepted:
                    node.acks_accepted += 1
                else:
                    node.acks_rejected += 1
        except FedbusError as exc:
            node.errors.append(f"{msg.topic}: {exc}")

    def _on_disconnect(
        self,
        client: paho.Client,
        node: SwarmNode,
        flags: Any,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        node.disconnects += 1

    # ------------------------------------------------------------ the loop

    def turn(self, timeout: float) -> list[dict[str, Any]]:
        """Serve every ready socket once; return any commands that arrived on stdin."""
        commands: list[dict[str, Any]] = []
        for key, mask in self.selector.select(timeout):
            if key.data == _STDIN:
                commands.extend(self._read_commands())
                continue
            client = key.data.client
            if mask & _READ:
                client.loop_read()
            if mask & _WRITE and client.socket() is not None:
                client.loop_write()
        now = time.monotonic()
        if now >= self._misc_due:
            self._misc_due = now + 1.0
            for node in self.nodes:
                if node.client.socket() is not None:
                    node.client.loop_misc()
        return commands

    def _read_commands(self) -> list[dict[str, Any]]:
        chunk = os.read(sys.stdin.fileno(), 65536)
        if not chunk:
            return [{"cmd": "eof"}]
        self._stdin_buffer += chunk
        lines = self._stdin_buffer.split(b"\n")
        self._stdin_buffer = lines.pop()
        return [json.loads(line) for line in lines if line.strip()]

    def connect_all(self, window: int, timeout: float) -> list[dict[str, Any]]:
        """Connect every node, at most `window` CONNECTs awaiting CONNACK at a time,
        until all are subscribed and hold the retained model (or `timeout`)."""
        session = Properties(PacketTypes.CONNECT)
        session.SessionExpiryInterval = DEFAULT_SESSION_EXPIRY
        deadline = time.monotonic() + timeout
        waiting = list(reversed(self.nodes))
        started: list[SwarmNode] = []
        commands: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            in_flight = sum(
                1 for n in started if n.connack_at is None and n.connect_refused is None
            )
            while waiting and in_flight < window:
                node = waiting.pop()
                node.connect_started = time.time()
                try:
                    node.client.connect(
                        self.host,
                        self.port,
                        keepalive=self.keepalive,
                        clean_start=False,
                        properties=session,
                    )
                except OSError as exc:
                    node.connect_refused = f"{type(exc).__name__}: {exc}"
                started.append(node)
                in_flight += 1
            if not waiting and all(_settled(n) for n in self.nodes):
                break
            commands.extend(self.turn(0.05))
        return commands

    def hold(self, seconds: float, status_every: float) -> None:
        """Stay connected for `seconds`: statuses every `status_every` s, one update each."""
        start = time.monotonic()
        end = start + seconds
        for node in self.nodes:
            node.next_status = start + self.rng.uniform(0, status_every)
            node.update_due = start + self.rng.uniform(0, 0.6 * seconds)
        while (now := time.monotonic()) < end:
            for node in self.nodes:
                if node.connack_at is None:
                    continue
                if now >= node.next_status:
                    node.next_status += status_every
                    status = NodeStatus(node.node_id, NodeState.ONLINE, node.model_version)
                    topic = self.topics.status(node.node_id)
                    node.client.publish(topic, encode(status), qos=1, retain=True)
                    node.statuses_sent += 1
                if node.update_due is not None and now >= node.update_due:
                    self._send_update(node)
            self.turn(0.05)

    def _send_update(self, node: SwarmNode) -> None:
        if self.delta_tensors is None or node.model_version is None:
            return  # no model yet: try again next turn
        node.update_due = None
        update = UpdateMessage(node.node_id, 1, node.model_version, 32, self.delta_tensors)
        node.client.publish(self.topics.update(node.node_id), encode(update), qos=1)
        node.updates_sent += 1

    def disconnect_all(self, timeout: float) -> None:
        for node in self.nodes:
            if node.client.socket() is not None:
                node.client.disconnect()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(n.client.socket() for n in self.nodes):
            self.turn(0.05)

    # ------------------------------------------------------------ reports

    def ready_report(self) -> dict[str, Any]:
        latencies = [
            n.connack_at - n.connect_started for n in self.nodes if n.connack_at is not None
        ]
        connacks = [n.connack_at for n in self.nodes if n.connack_at is not None]
        retained = [n.retained_model_at for n in self.nodes if n.retained_model_at is not None]
        return {
            "event": "ready",
            "clients": len(self.nodes),
            "connected": len(connacks),
            "refused": [n.connect_refused for n in self.nodes if n.connect_refused][:5],
            "subscribed": sum(1 for n in self.nodes if n.subacks >= 2),
            "retained_model": len(retained),
            "first_connect_at": min(n.connect_started for n in self.nodes if n.connect_started),
            "last_connack_at": max(connacks, default=None),
            "last_retained_model_at": max(retained, default=None),
            "connect_latency_median_s": statistics.median(latencies) if latencies else None,
            "connect_latency_max_s": max(latencies, default=None),
            "open_fds": len(os.listdir("/proc/self/fd")),
        }

    def done_report(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        connected = [n for n in self.nodes if n.client.is_connected()]
        return {
            "event": "done",
            "connected_at_end": len(connected),
            "never_dropped": sum(1 for n in self.nodes if n.disconnects == 0 and n.connack_at),
            "statuses_sent": sum(n.statuses_sent for n in self.nodes),
            "updates_sent": sum(n.updates_sent for n in self.nodes),
            "acked": sum(1 for n in self.nodes if n.acks_accepted + n.acks_rejected > 0),
            "acks_rejected": sum(n.acks_rejected for n in self.nodes),
            "models_min": min(n.models for n in self.nodes),
            "models_max": max(n.models for n in self.nodes),
            "latest_version_min": min((n.model_version or 0) for n in self.nodes),
            "latest_version_max": max((n.model_version or 0) for n in self.nodes),
            "decode_errors": sum(len(n.errors) for n in self.nodes),
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "max_rss_mib": usage.ru_maxrss / 1024,
        }


def _settled(node: SwarmNode) -> bool:
    """Connected, both subscriptions granted and the retained model received; or refused."""
    if node.connect_refused is not None:
        return True
    return node.subacks >= 2 and node.retained_model_at is not None


def _random_delta(model: ModelMessage) -> tuple[WireTensor, ...]:
    rng = np.random.default_rng(0)
    shapes = model.task.weight_shapes
    return encode_weights(
        {name: (rng.standard_normal(s) * 1e-3).astype(np.float32) for name, s in shapes.items()}
    )


def _say(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _wait_for(swarm: Swarm, pending: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """Keep serving sockets until the parent sends command `name` (or stdin closes)."""
    while True:
        while pending:
            command = pending.pop(0)
            if command["cmd"] in (name, "eof"):
                return command
        pending.extend(swarm.turn(0.2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fleet", required=True)
    parser.add_argument("--first", type=int, default=0, help="index of the first node id")
    parser.add_argument("--count", type=int, default=250, help="connections in this process")
    parser.add_argument("--keepalive", type=int, default=60)
    parser.add_argument("--window", type=int, default=25, help="CONNECTs awaiting CONNACK")
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    parser.add_argument("--status-every", type=float, default=5.0)
    args = parser.parse_args(argv)
    swarm = Swarm(args.host, args.port, Topics(args.fleet), args.first, args.count, args.keepalive)
    _say({"event": "hello"})
    pending: list[dict[str, Any]] = []
    if _wait_for(swarm, pending, "connect")["cmd"] == "eof":
        return 1
    pending.extend(swarm.connect_all(args.window, args.ready_timeout))
    _say(swarm.ready_report())
    command = _wait_for(swarm, pending, "hold")
    if command["cmd"] == "eof":
        swarm.disconnect_all(2.0)
        return 1
    swarm.hold(float(command["seconds"]), args.status_every)
    _say(swarm.done_report())
    swarm.disconnect_all(5.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
