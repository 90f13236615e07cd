"""`fedbus replay`: publish a recording (.fbrec) back to a broker.

By default only what nodes send is published (update, status, stats and
metrics), so replaying into a fresh aggregator feeds it the recorded run and
it computes the same models again; --channels chooses others ("all" also
includes topics the recorder saw that are not part of the protocol). Each
message keeps its recorded QoS and retain flag and its exact payload; the
order is the recorded one; a payload over --chunk-limit travels as chunks
again. --fleet moves the replay to another fleet (the topic root
fedbus/<fleet> is rewritten; payloads name no fleet).

Timing follows the recording (--speed 1, the default; 2 is twice as fast)
counted from the first selected message, or --fast publishes back to back.
The whole file is checked before anything is published. The command exits
once the broker has acknowledged every QoS 1 and 2 publish (QoS 0 ones once
written to the socket). With --fast, a slow subscriber's broker queue can
overflow (mosquitto's max_queued_messages) and lose messages: replay a large
recording at a finite speed.

Exit status: 0 when everything selected was published and acknowledged,
1 for a broker failure (unreachable, connection lost, acks missing),
2 for a bad option or an unreadable recording, 3 when stopped by a signal.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from fedbus.broker.client import BusClient
from fedbus.broker.errors import BrokerError, ConfigError, ProtocolError
from fedbus.broker.record_cli import ALL, CHANNEL_NAMES, parse_channels
from fedbus.broker.recording import (
    RecordedMessage,
    RecordingError,
    RecordingHeader,
    RecordingReader,
)
from fedbus.broker.topics import Channel, Topics

if TYPE_CHECKING:
    from paho.mqtt.client import MQTTMessageInfo

log = logging.getLogger(__name__)

#: What nodes publish: replaying these into a fresh aggregator reproduces a run.
NODE_CHANNELS = frozenset({Channel.UPDATE, Channel.STATUS, Channel.STATS, Channel.METRICS})
EXIT_BROKER = 1
EXIT_BAD_RECORDING = 2
EXIT_INTERRUPTED = 3
#: Publishes not yet acknowledged before the replay waits for the oldest.
_MAX_PENDING = 1000


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recording", type=Path, help="recording file written by `fedbus record`")
    parser.add_argument(
        "--channels",
        type=parse_channels,
        default=NODE_CHANNELS,
        metavar="LIST",
        help=f"comma-separated channels to publish: {', '.join(CHANNEL_NAMES)}, or {ALL} "
        "(default: update,status,stats,metrics, what nodes send)",
    )
    timing = parser.add_mutually_exclusive_group()
    timing.add_argument(
        "--speed",
        type=float,
        default=1.0,
        metavar="FACTOR",
        help="replay FACTOR times as fast as recorded (default 1: original timing)",
    )
    timing.add_argument("--fast", action="store_true", help="publish as fast as possible")
    parser.add_argument(
        "--ack-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest wait for the broker's acks, at the end and whenever "
        f"{_MAX_PENDING} publishes are unacknowledged (default %(default)s)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="publish nothing: print the header and what would be published as JSON",
    )
    add_tool_arguments(parser, "replay")
    add_bus_arguments(parser)
    parser.set_defaults(fleet=None)  # the recording's own fleet
    add_logging_arguments(parser)


@dataclass(frozen=True)
class Selection:
    """Which records to publish and under which topics."""

    source: Topics
    target: Topics
    channels: frozenset[Channel] | None

    def channel_of(self, topic: str) -> Channel | None:
        try:
            return self.source.parse(topic)[0]
        except ProtocolError:
            return None

    def wants(self, record: RecordedMessage) -> bool:
        return self.channels is None or self.channel_of(record.topic) in self.channels

    def topic_for(self, topic: str) -> str:
        """`topic` under the target fleet's root (unchanged if outside the source root)."""
        if self.source == self.target or not topic.startswith(self.source.root + "/"):
            return topic
        return self.target.root + topic[len(self.source.root) :]


def _open(path: Path) -> RecordingReader:
    """A reader with its header read; the caller closes `reader.stream`."""
    try:
        stream = path.open("rb")
    except OSError as exc:
        raise ConfigError(f"recording: cannot open {path}: {exc}") from None
    try:
        return RecordingReader(stream)
    except RecordingError as exc:
        stream.close()
        raise ConfigError(f"recording {path}: {exc}") from None


def _selected(path: Path, selection: Selection) -> Generator[RecordedMessage, None, None]:
    reader = _open(path)
    with reader.stream:
        for record in reader:
            if selection.wants(record):
                yield record


def _read_header(path: Path) -> RecordingHeader:
    reader = _open(path)
    reader.stream.close()
    return reader.header


def _survey(path: Path, selection: Selection) -> tuple[dict[str, Any], int]:
    """Read the whole file once: check it, count what would be published (a summary, n)."""
    reader = _open(path)
    by_channel: Counter[str] = Counter()
    selected = 0
    last_t = 0
    try:
        with reader.stream:
            for record in reader:
                channel = selection.channel_of(record.topic)
                by_channel[channel.value if channel else "(not a protocol topic)"] += 1
                if selection.wants(record):
                    selected += 1
                last_t = record.t_ns
    except RecordingError as exc:
        raise ConfigError(f"recording {path}: {exc}") from None
    if reader.truncated:
        log.warning(
            "%s ends inside a record (%d bytes): a recorder that was cut off; "
            "replaying the %d whole records",
            path,
            reader.trailing_bytes,
            reader.records,
        )
    header = reader.header
    summary = {
        "file": str(path),
        "fleet": header.fleet,
        "started_at": header.started_at,
        "filters": list(header.filters),
        "meta": dict(header.meta),
        "records": reader.records,
        "truncated": reader.truncated,
        "seconds": round(last_t / 1e9, 3),
        "records_by_channel": dict(sorted(by_channel.items())),
        "selected": selected,
        "target_fleet": selection.target.fleet,
    }
    return summary, selected


class Replayer:
    """Publishes records in order and on schedule, then waits for the broker's acks."""

    def __init__(
        self,
        client: BusClient,
        selection: Selection,
        *,
        speed: float | None,
        stopping: threading.Event,
        ack_timeout: float = 30.0,
        progress_every: float = 0.0,
    ) -> None:
        self.client = client
        self.ack_timeout = ack_timeout
        self.selection = selection
        self.speed = speed
        self.stopping = stopping
        self.progress_every = progress_every
        self.published = 0
        self._pending: deque[MQTTMessageInfo] = deque()

    def publish_all(self, records: Iterator[RecordedMessage], total: int) -> bool:
        """Publish `records`; False if `stopping` was set before the last one."""
        first_t: int | None = None
        started = time.monotonic()
        next_progress = started + self.progress_every
        for record in records:
            if first_t is None:
                first_t = record.t_ns
            if self.speed is not None:
                due = started + (record.t_ns - first_t) / 1e9 / self.speed
                if self.stopping.wait(max(0.0, due - time.monotonic())):
                    return False
            elif self.stopping.is_set():
                return False
            self._publish(record)
            if self.progress_every and time.monotonic() >= next_progress:
                log.info("published %d of %d messages", self.published, total)
                next_progress = time.monotonic() + self.progress_every
        return True

    def _publish(self, record: RecordedMessage) -> None:
        if not self.client.connected.is_set():
            raise BrokerError("connection to the broker lost during the replay")
        info = self.client.publish(
            self.selection.topic_for(record.topic),
            record.payload,
            qos=record.qos,
            retain=record.retain,
        )
        if info.rc:  # BusClient.publish raises for every other failure: "no connection"
            raise BrokerError("connection to the broker lost during the replay")
        self.published += 1
        self._pending.append(info)
        while len(self._pending) > _MAX_PENDING:
            self._wait_oldest(time.monotonic() + self.ack_timeout)

    def wait_acknowledged(self) -> None:
        """Block until the broker acknowledged every publish, or raise BrokerError."""
        deadline = time.monotonic() + self.ack_timeout
        while self._pending:
            self._wait_oldest(deadline)

    def _wait_oldest(self, deadline: float) -> None:
        info = self._pending[0]
        try:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            done = info.is_published()
        except (RuntimeError, ValueError) as exc:
            raise BrokerError(f"publish failed: {exc}") from None
        if not done:
            raise BrokerError(
                f"{len(self._pending)} publishes not acknowledged by the broker in time"
            )
        self._pending.popleft()


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_json)
    if not args.fast and not args.speed > 0:
        raise ConfigError(f"--speed must be > 0, got {args.speed}")
    if not args.ack_timeout > 0:
        raise ConfigError(f"--ack-timeout must be > 0, got {args.ack_timeout}")
    check_tool_arguments(args)
    header = _read_header(args.recording)
    try:
        source = Topics(header.fleet)
    except ProtocolError as exc:
        raise ConfigError(f"recording {args.recording}: header fleet: {exc}") from None
    if args.fleet is None:
        args.fleet = header.fleet
    address, target = bus_from_args(args)
    selection = Selection(source, target, args.channels)
    survey, total = _survey(args.recording, selection)
    if args.dry_run:
        print(json.dumps(survey))
        return 0
    stopping = threading.Event()
    stop_on_signals(stopping)
    client = BusClient(
        args.client_id or f"fedbus-{target.fleet}-replay-{os.getpid()}",
        address,
        persistent_session=False,
    )
    replayer = Replayer(
        client,
        selection,
        speed=None if args.fast else args.speed,
        stopping=stopping,
        ack_timeout=args.ack_timeout,
        progress_every=args.progress_every,
    )
    started = time.monotonic()
    records = _selected(args.recording, selection)
    try:
        client.start()
        client.wait_connected(args.connect_timeout)
        log.info("replaying %d messages of %s into fleet %s", total, args.recording, target.fleet)
        finished = replayer.publish_all(records, total)
        replayer.wait_acknowledged()
    except BrokerError as exc:
        log.error("%s (%d of %d messages published)", exc, replayer.published, total)
        return EXIT_BROKER
    except RecordingError as exc:  # the file changed after the survey read it
        log.error("recording %s: %s", args.recording, exc)
        return EXIT_BAD_RECORDING
    finally:
        records.close()
        client.stop()
    log.info(
        "replayed %d of %d messages in %.2f s%s",
        replayer.published,
        total,
        time.monotonic() - started,
        "" if finished else " (stopped early)",
    )
    return 0 if finished else EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    return command_main("fedbus replay", __doc__, configure_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
