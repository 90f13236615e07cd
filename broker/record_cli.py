"""`fedbus record`: write a fleet's MQTT traffic to a recording file (.fbrec).

Subscribes to every topic of the fleet (or to the chosen channels) with a
clean session and appends each message as it arrives: time since the start,
topic, QoS, retain flag and the exact payload bytes. Stops on SIGINT or
SIGTERM, after --duration seconds or after --count messages; the file is
readable up to the last whole message even if the recorder is killed.

Subscriptions are QoS 2, so each message keeps the QoS its publisher used.
The retain flag is the publisher's: the recorder subscribes with MQTT 5's
"retain as published", so a live retained publish (a model, a status) is
recorded as retained and replays as one; retained messages the broker sends
at subscribe time are marked retained too. (Over MQTT 3.1.1 the broker clears
the flag on live messages.) A message that travels in chunks
(docs/PROTOCOL.md, chunking) is recorded once, whole, under its own topic, as
the bus client hands it over.

Exit status: 0 after a normal stop, 1 when the broker cannot be reached,
2 for a bad option.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from pathlib import Path
from typing import BinaryIO

from fedbus.broker.cli_common import (
    add_bus_arguments,
    add_logging_arguments,
    add_tool_arguments,
    bus_from_args,
    check_tool_arguments,
    command_main,
    setup_logging,
    stop_on_signals,
)
from fedbus.broker.client import BusClient, Received
from fedbus.broker.errors import BrokerError, ConfigError
from fedbus.broker.recording import RecordedMessage, RecordingHeader, RecordingWriter
from fedbus.broker.topics import PER_NODE_CHANNELS, Channel, Topics

log = logging.getLogger(__name__)

#: Channels by the name used on the command line (the topic segment).
CHANNEL_NAMES = {channel.value: channel for channel in Channel}
ALL = "all"


def parse_channels(text: str) -> frozenset[Channel] | None:
    """`--channels` value: comma-separated channel names, or "all" (None)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if names == [ALL]:
        return None
    unknown = [name for name in names if name not in CHANNEL_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown channel {', '.join(unknown) or '(none)'}: choose from "
            f"{', '.join(CHANNEL_NAMES)} or {ALL}"
        )
    return frozenset(CHANNEL_NAMES[name] for name in names)


def channel_filters(topics: Topics, channels: frozenset[Channel] | None) -> list[str]:
    """Subscription filters for `channels` of one fleet (None: everything)."""
    if channels is None:
        return [topics.everything]
    filters = []
    for channel in Channel:  # declaration order, so the header lists them stably
        if channel not in channels:
            continue
        if channel in PER_NODE_CHANNELS:
            filters.append(topics.all_nodes(channel))
        elif channel is Channel.MODEL:
            filters.append(topics.model)
        else:
            filters.append(topics.aggregator_status)
    return filters


def parse_meta(pairs: list[str]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--meta: expected KEY=VALUE, got {pair!r}")
        if key in meta:
            raise ConfigError(f"--meta: key {key!r} given twice")
        meta[key] = value
    return meta


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", type=Path, help="recording file to write (e.g. run.fbrec)")
    parser.add_argument(
        "--channels",
        type=parse_channels,
        default=None,
        metavar="LIST",
        help=f"comma-separated channels to record: {', '.join(CHANNEL_NAMES)}, "
        f"or {ALL} (default: {ALL}, i.e. fedbus/<fleet>/#)",
    )
    parser.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="note stored in the header (repeat), e.g. the aggregator's arguments",
    )
    stop = parser.add_argument_group("when to stop (besides SIGINT/SIGTERM)")
    stop.add_argument("--duration", type=float, default=None, metavar="SECONDS")
    stop.add_argument("--count", type=int, default=None, metavar="N", help="after N messages")
    parser.add_argument(
        "--force", action="store_true", help="overwrite OUTPUT if it exists (default: refuse)"
    )
    add_tool_arguments(parser, "recorder")
    add_bus_arguments(parser)
    add_logging_arguments(parser)


class Recorder:
    """Takes messages from a connected client's inbox and appends them to a writer."""

    def __init__(
        self,
        client: BusClient,
        writer: RecordingWriter,
        *,
        started_ns: int,
        duration: float | None = None,
        count: int | None = None,
        progress_every: float = 0.0,
        stopping: threading.Event | None = None,
    ) -> None:
        self.client = client
        self.writer = writer
        self.started_ns = started_ns
        self.duration_ns = None if duration is None else int(duration * 1e9)
        self.count = count
        self.progress_every = progress_every
        self.stopping = stopping or threading.Event()
        self._connections_seen = client.connect_count

    def run(self) -> None:
        next_progress = time.monotonic() + self.progress_every
        while not self.stopping.is_set() and not self._done():
            received = self.client.receive(timeout=0.1)
            if received is not None:
                self._append(received)
            self._note_reconnect()
            if self.progress_every and time.monotonic() >= next_progress:
                self._log_progress()
                next_progress = time.monotonic() + self.progress_every

    def drain(self) -> None:
        """Append what the client received before it stopped (up to --count)."""
        while not self._done():
            received = self.client.receive(timeout=0)
            if received is None:
                return
            self._append(received)

    def _done(self) -> bool:
        if self.count is not None and self.writer.records >= self.count:
            return True
        return (
            self.duration_ns is not None
            and time.monotonic_ns() - self.started_ns >= self.duration_ns
        )

    def _append(self, received: Received) -> None:
        self.writer.write(
            RecordedMessage(
                t_ns=max(0, time.monotonic_ns() - self.started_ns),
                topic=received.topic,
                qos=received.qos,
                retain=received.retain,
                payload=received.payload,
            )
        )

    def _note_reconnect(self) -> None:
        if self.client.connect_count > self._connections_seen:
            if self._connections_seen:
                log.warning(
                    "reconnected to the broker: messages published while the recorder "
                    "was away are missing, retained ones may appear again"
                )
            self._connections_seen = self.client.connect_count

    def _log_progress(self) -> None:
        elapsed = (time.monotonic_ns() - self.started_ns) / 1e9
        log.info(
            "recorded %d messages, %.1f KiB of payload, in %.0f s",
            self.writer.records,
            self.writer.payload_bytes / 1024,
            elapsed,
        )


def _open_output(path: Path, force: bool) -> BinaryIO:
    try:
        return path.open("wb" if force else "xb")
    except FileExistsError:
        raise ConfigError(f"output: {path} exists (use --force to overwrite)") from None
    except OSError as exc:
        raise ConfigError(f"output: cannot create {path}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_json)
    address, topics = bus_from_args(args)
    if args.duration is not None and not args.duration > 0:
        raise ConfigError(f"--duration must be > 0, got {args.duration}")
    if args.count is not None and args.count < 1:
        raise ConfigError(f"--count must be >= 1, got {args.count}")
    check_tool_arguments(args)
    meta = parse_meta(args.meta)
    filters = channel_filters(topics, args.channels)
    client = BusClient(
        args.client_id or f"fedbus-{topics.fleet}-recorder-{os.getpid()}",
        address,
        persistent_session=False,
    )
    for topic_filter in filters:
        client.subscribe(topic_filter, qos=2, retain_as_published=True)
    stopping = threading.Event()
    stop_on_signals(stopping)
    with _open_output(args.output, args.force) as stream:
        try:
            client.start()
            client.wait_connected(args.connect_timeout)
        except BrokerError as exc:
            client.stop()
            stream.close()
            args.output.unlink()
            log.error("%s", exc)
            return 1
        # The SUBSCRIBEs went out before the client reported connected, so by the
        # time the header exists (the sign a caller may wait for) the broker has them.
        started_ns = time.monotonic_ns()
        header = RecordingHeader(topics.fleet, time.time(), tuple(filters), meta)
        writer = RecordingWriter(stream, header)
        recorder = Recorder(
            client,
            writer,
            started_ns=started_ns,
            duration=args.duration,
            count=args.count,
            progress_every=args.progress_every,
            stopping=stopping,
        )
        log.info("recording %s to %s", ", ".join(filters), args.output)
        try:
            recorder.run()
        finally:
            client.stop()
            recorder.drain()
            os.fsync(stream.fileno())
    log.info(
        "recorded %d messages (%d bytes) in %.1f s to %s",
        writer.records,
        writer.bytes_written,
        (time.monotonic_ns() - started_ns) / 1e9,
        args.output,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return command_main("fedbus record", __doc__, configure_parser, run, argv)
