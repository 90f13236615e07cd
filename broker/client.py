"""A small wrapper around paho-mqtt's v2 client for fedbus daemons.

What it adds to paho, and why:
- paho's network thread only converts a message and puts it in a bounded
  inbox; training, aggregation and anything slow run on the caller's thread.
  A full inbox blocks the network thread, which stops reading the socket and
  so pushes back on the broker instead of dropping messages.
- subscriptions are remembered and renewed on every (re)connect, so a broker
  that lost the session (restart without persistence) still delivers.
- `connect_async` plus paho's own reconnect loop, with the wait before each
  attempt set by `backoff_delay`: capped exponential growth with full
  jitter, so a thousand devices cut off by one broker restart do not all
  knock again in the same second.
- MQTT 5 persistent sessions (`clean_start=False` and a session expiry) by
  default, so the broker keeps subscriptions and queued QoS 1 messages while
  a device is away; MQTT 3.1.1 (`clean_session=False`; expiry is then the
  broker's `persistent_client_expiration`) for brokers without MQTT 5.
- `manual_ack=True` holds back the broker's PUBACK of a received QoS 1
  message until the caller says it is safe (the aggregator: after its
  journal write); the broker redelivers anything unacknowledged.
- messages over the broker's payload limit (`BrokerAddress.chunk_limit`)
  travel as chunks (fedbus.broker.chunking): `publish` splits, `receive`
  reassembles on the caller's thread and hands over the whole message as if
  it came on the base topic. Chunks are PUBACKed as they arrive, even with
  manual_ack: holding them until the whole message is processed would stall
  any message with more chunks than the broker's in-flight window, and the
  sender's outbox already covers a crash between chunk and message.
- paho's errors become `BrokerError` at this boundary.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from fedbus.broker.chunking import DEFAULT_CHUNK_LIMIT, Reassembler, needs_chunking, split_message
from fedbus.broker.errors import BrokerError, CodecError
from fedbus.broker.log_throttle import ThrottledLog
from fedbus.broker.topics import chunk_filter, chunk_topic, parse_chunk_topic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is and how to log in."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    keepalive: int = 30
    #: Largest payload sent as one PUBLISH; larger ones go as chunks (None: never).
    #: Cloud brokers cap payloads (AWS IoT Core at 128 KiB), hence the default.
    chunk_limit: int | None = DEFAULT_CHUNK_LIMIT
    #: TLS: the CA certificate that signed the broker's; None: plain TCP.
    tls_ca: Path | None = None
    #: TLS client certificate and key (certificate identity); None: none sent.
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def __repr__(self) -> str:
        """Without the password, so an address can be logged."""
        secret = "" if self.password is None else ", password=***"
        tls = "" if self.tls_ca is None else ", tls"
        return f"BrokerAddress({self.host}:{self.port}, username={self.username!r}{secret}{tls})"


@dataclass(frozen=True)
class Received:
    """One message as the network thread hands it over."""

    topic: str
    payload: bytes
    retain: bool
    qos: int
    #: Packet id and connection number, for `BusClient.ack` (manual_ack clients).
    mid: int = 0
    connection: int = 0


@dataclass(frozen=True)
class LastWill:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


#: MQTT protocol names accepted by `BusClient(protocol=...)`.
PROTOCOLS = {"5": paho.MQTTv5, "3.1.1": paho.MQTTv311}
#: How long the broker keeps a disconnected client's session (MQTT 5): a week
#: covers a device that is off over a long weekend; after that it starts afresh.
DEFAULT_SESSION_EXPIRY = 7 * 24 * 3600


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0 = the first).

    Capped exponential backoff with "full jitter" (uniform in [base, ceiling]):
    spreading the attempts of many devices flattens the reconnect storm after
    a broker restart, while the first retry stays quick.
    """
    ceiling = min(cap, base * 2.0 ** min(attempt, 30))
    return rng.uniform(base, max(base, ceiling))


def _disable_nagle(client: paho.Client, userdata: object, sock: object) -> None:
    """TCP_NODELAY on our side of the connection, as mosquitto.conf sets on its side.

    With Nagle on, a small publish (an ack, a status) that follows another
    unacknowledged segment waits for the peer's delayed ACK, up to 40 ms on
    Linux: a 10 KB update's round trip measured 42 ms with it, 0.4 ms without.
    """
    setsockopt = getattr(sock, "setsockopt", None)
    if setsockopt is not None:
        # OSError: not a TCP socket (a test's socket pair, a Unix socket).
        with contextlib.suppress(OSError):
            setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class BusClient:
    """One MQTT connection with an inbox; see the module docstring."""

    def __init__(
        self,
        client_id: str,
        address: BrokerAddress,
        *,
        persistent_session: bool = True,
        will: LastWill | None = None,
        inbox_size: int = 1024,
        reconnect_min_delay: float = 0.5,
        reconnect_max_delay: float = 30.0,
        protocol: str = "5",
        session_expiry: int = DEFAULT_SESSION_EXPIRY,
        manual_ack: bool = False,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise BrokerError(f"unknown MQTT protocol {protocol!r}: use one of {list(PROTOCOLS)}")
        self.client_id = client_id
        self.address = address
        self.protocol = protocol
        self.persistent_session = persistent_session
        self.session_expiry = session_expiry if persistent_session else 0
        self.manual_ack = manual_ack
        self.inbox: queue.Queue[Received] = queue.Queue(maxsize=inbox_size)
        self.connected = threading.Event()
        self.connect_count = 0
        #: filter -> (qos, retain as published)
        self._subscriptions: dict[str, tuple[int, bool]] = {}
        self._lock = threading.Lock()
        #: Packet ids of SUBSCRIBEs the broker has not yet acknowledged.
        self._unacked_subscribes: set[int] = set()
        self._subscribed = threading.Event()
        self._subscribed.set()
        self.reassembler = Reassembler()
        self._chunk_log = ThrottledLog(log, window=10.0, level=logging.WARNING)
        #: Chunk count of the last retained chunked publish per topic, to clear leftovers.
        self._retained_chunks: dict[str, int] = {}
        self._reconnect_attempt = 0
        self._reconnect_delays = (reconnect_min_delay, reconnect_max_delay)
        self._jitter = random.Random()
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            # MQTT 5 takes clean_start at connect time; paho refuses clean_session for it.
            clean_session=None if protocol == "5" else not persistent_session,
            protocol=PROTOCOLS[protocol],
            manual_ack=manual_ack,
        )
        if address.username is not None:
            self._client.username_pw_set(address.username, address.password)
        if address.tls_ca is not None:
            try:
                self._client.tls_set(
                    ca_certs=str(address.tls_ca),
                    certfile=None if address.tls_cert is None else str(address.tls_cert),
                    keyfile=None if address.tls_key is None else str(address.tls_key),
                )
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise BrokerError(f"TLS settings refused: {exc}") from None
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self._schedule_reconnect()
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.on_socket_open = _disable_nagle
        self._started = False

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Begin connecting in the background; returns at once."""
        try:
            if self.protocol == "5":
                connect_properties = Properties(PacketTypes.CONNECT)
                connect_properties.SessionExpiryInterval = self.session_expiry
                self._client.connect_async(
                    self.address.host,
                    self.address.port,
                    keepalive=self.address.keepalive,
                    clean_start=not self.persistent_session,
                    properties=connect_properties,
                )
            else:
                self._client.connect_async(
                    self.address.host, self.address.port, keepalive=self.address.keepalive
                )
        except (OSError, ValueError) as exc:
            raise BrokerError(
                f"cannot connect to {self.address.host}:{self.address.port}: {exc}"
            ) from exc
        self._client.loop_start()
        self._started = True

    def wait_connected(self, timeout: float) -> None:
        """Block until connected, or raise BrokerError after `timeout` seconds."""
        if not self.connected.wait(timeout):
            raise BrokerError(
                f"{self.client_id}: no connection to {self.address.host}:{self.address.port} "
                f"within {timeout:g} s"
            )

    def stop(self) -> None:
        """Disconnect cleanly (no last will is sent) and stop the network thread."""
        if not self._started:
            return
        self._started = False
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()

    def drop_connection(self) -> None:
        """Close the socket without DISCONNECT, as a link failure would (tests, flaps).

        The broker then publishes the last will; paho reconnects on its own.
        """
        sock = self._client.socket()
        if sock is not None:
            sock.close()

    # ------------------------------------------------------------ messaging

    def subscribe(
        self, topic_filter: str, qos: int = 1, *, retain_as_published: bool = False
    ) -> None:
        """Subscribe now (if connected) and again after every reconnect.

        Also subscribes to the chunks of messages on `topic_filter`.
        `retain_as_published` (MQTT 5 only): keep the publisher's retain flag on
        live messages instead of the broker clearing it, e.g. for a recorder.
        """
        filters = [topic_filter]
        extra = chunk_filter(topic_filter)
        if extra is not None:
            filters.append(extra)
        with self._lock:
            for each in filters:
                self._subscriptions[each] = (qos, retain_as_published)
        if self.connected.is_set():
            for each in filters:
                self._subscribe_now(self._client, each, qos, retain_as_published)

    def wait_subscribed(self, timeout: float) -> None:
        """Block until the broker has acknowledged every subscription of this connection.

        A message published after this returns reaches this client; one
        published before may not (the broker routes by the subscriptions it
        has processed). Raises BrokerError after `timeout` seconds.
        """
        if not self._subscribed.wait(timeout):
            raise BrokerError(f"{self.client_id}: subscriptions not acknowledged in {timeout} s")

    def _subscribe_now(
        self, client: paho.Client, topic_filter: str, qos: int, retain_as_published: bool
    ) -> None:
        with self._lock:  # paho's thread may deliver the SUBACK before subscribe() returns
            self._subscribed.clear()
            if self.protocol == "5":
                options = SubscribeOptions(qos=qos, retainAsPublished=retain_as_published)
                _, mid = client.subscribe(topic_filter, options=options)
            else:
                _, mid = client.subscribe(topic_filter, qos)
            if mid is not None:
                self._unacked_subscribes.add(mid)
            if not self._unacked_subscribes:
                self._subscribed.set()

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> paho.MQTTMessageInfo:
        """Queue a publish; paho sends it (and resends QoS 1 after a reconnect).

        A payload over the chunk limit goes out as chunks, in order; the info
        returned is that of the last one.
        """
        limit = self.address.chunk_limit
        if limit is None or not needs_chunking(payload, limit):
            info = self._publish_one(topic, payload, qos, retain)
            if retain:
                self._clear_retained_chunks(topic, keep=0)
            return info
        chunks = split_message(payload, limit)
        if retain and topic not in self._retained_chunks:
            # A whole retained message may sit on the base topic: delete it, so a
            # late joiner does not take an old unchunked message for the newest.
            self._publish_one(topic, b"", qos, True)
        for index, chunk in enumerate(chunks):
            info = self._publish_one(chunk_topic(topic, index), chunk, qos, retain)
        if retain:
            self._clear_retained_chunks(topic, keep=len(chunks))
            self._retained_chunks[topic] = len(chunks)
        return info

    def _publish_one(
        self, topic: str, payload: bytes, qos: int, retain: bool
    ) -> paho.MQTTMessageInfo:
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
        except ValueError as exc:  # paho: wildcard in the topic, payload too long, bad qos
            raise BrokerError(f"cannot publish to {topic!r}: {exc}") from None
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise BrokerError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        return info

    def _clear_retained_chunks(self, topic: str, keep: int) -> None:
        """Delete retained chunks a previous, longer retained message left behind.

        (An empty retained payload deletes a retained message; receivers
        ignore empty chunk payloads.) Only what this client published is known.
        """
        previous = self._retained_chunks.pop(topic, 0)
        for index in range(keep, previous):
            self._publish_one(chunk_topic(topic, index), b"", 1, True)

    def ack(self, message: Received) -> None:
        """Send the broker's PUBACK for `message` now (manual_ack clients only).

        A message from an earlier connection is skipped: its packet id means
        nothing on the new one, and the broker redelivers it anyway.
        """
        if (
            not self.manual_ack
            or message.qos == 0
            or message.mid == 0  # a reassembled message: its chunks were acked
            or message.connection != self.connect_count
        ):
            return
        self._client.ack(message.mid, message.qos)

    def receive(self, timeout: float | None = None) -> Received | None:
        """Next whole message, or None after `timeout` seconds (None: wait forever).

        Chunks are taken in here and only the reassembled message comes out.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                message = self.inbox.get(timeout=remaining)
            except queue.Empty:
                return None
            chunk_of = parse_chunk_topic(message.topic)
            if chunk_of is None:
                return message
            whole = self._take_chunk(message, chunk_of[0])
            if whole is not None:
                return whole

    def _take_chunk(self, message: Received, base_topic: str) -> Received | None:
        self.ack(message)
        try:
            whole = self.reassembler.add(message.topic, message.payload, time.monotonic())
        except CodecError as exc:
            self._chunk_log.log(
                "bad_chunk",
                time.monotonic(),
                "%s: dropped a bad chunk on %s: %s",
                self.client_id,
                message.topic,
                exc,
            )
            return None
        if whole is None:
            return None
        return Received(base_topic, whole, message.retain, message.qos, 0, message.connection)

    # ------------------------------------------------------------ paho callbacks
    # These run on paho's network thread: convert, enqueue, nothing else.

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.warning("%s: connection refused: %s", self.client_id, reason_code)
            return
        with self._lock:
            subscriptions = list(self._subscriptions.items())
            self._unacked_subscribes.clear()  # ids of a dead connection are never acked
            if not subscriptions:
                self._subscribed.set()
        for topic_filter, (qos, retain_as_published) in subscriptions:
            self._subscribe_now(client, topic_filter, qos, retain_as_published)
        self._reconnect_attempt = 0
        self._schedule_reconnect()
        self.connect_count += 1
        self.connected.set()
        log.debug("%s: connected (session present: %s)", self.client_id, flags.session_present)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected.clear()
        with self._lock:
            if self._subscriptions:
                self._subscribed.clear()
        if self._started:
            log.info("%s: connection lost (%s), reconnecting", self.client_id, reason_code)
            self._schedule_reconnect()

    def _on_connect_fail(self, client: paho.Client, userdata: object) -> None:
        self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        """Set the wait before paho's next reconnect attempt (see `backoff_delay`)."""
        low, high = self._reconnect_delays
        delay = backoff_delay(self._reconnect_attempt, low, high, self._jitter)
        self._reconnect_attempt += 1
        # paho types the delays as int but sleeps on floats; sub-second jitter matters.
        self._client.reconnect_delay_set(cast(int, delay), cast(int, delay))

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = [code for code in reason_codes if code.is_failure]
        if refused:
            log.warning("%s: subscription refused: %s", self.client_id, refused)
        with self._lock:
            self._unacked_subscribes.discard(mid)
            if not self._unacked_subscribes:
                self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        payload = msg.payload
        self.inbox.put(
            Received(
                msg.topic,
                payload if isinstance(payload, bytes) else bytes(payload),
                bool(msg.retain),
                msg.qos,
                msg.mid,
                self.connect_count,
            )
        )
