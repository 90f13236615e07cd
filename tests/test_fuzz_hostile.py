"""Three streams of 10,000+ hostile updates through a real Mosquitto at a real aggregator process.

tests/hostile.py makes the streams. A dry run through the same core the
process builds (same CLI arguments, no broker) first checks that every item
is refused for its class's reason, and records what the fleet must then
see: the rejection counts by reason and the exact (node, seq, reason) of
every ack. The live test then requires exactly that from the process: it
stays up, counts every payload (rejected by reason, or as a bad topic or
bad chunk), accepts none, acks every refusal on `ack/<node>` with the seq it
could read, leaves the retained model bit for bit as it was, and keeps its
memory flat from the end of the first stream to the end of the third.
"""

from __future__ import annotations

import argparse
import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from crash_harness import AggregatorProcess, wait_for
from hostile import (
    ENROLLED,
    LAYOUT,
    MAX_STALENESS,
    NORM_BOUND,
    REASONS,
    UNACKED,
    VERSION,
    Item,
    generate,
    kind,
    warm_up,
)

from fedbus.aggregator.cli import build_core, configure_parser
from fedbus.aggregator.core import AggregatorCore
from fedbus.broker.chunking import decode_chunk
from fedbus.broker.client import BrokerAddress, BusClient
from fedbus.broker.codec import decode
from fedbus.broker.errors import CodecError, ProtocolError
from fedbus.broker.messages import AckMessage, AggregatorStatus, ModelMessage, RejectReason
from fedbus.broker.topics import Channel, Topics

AGGREGATOR_ARGS = (
    "--mode",
    "fedasync",
    "--max-staleness",
    str(MAX_STALENESS),
    "--allow-node",
    ENROLLED[0],
    "--allow-node",
    ENROLLED[1],
    "--max-update-norm",
    str(NORM_BOUND),
)
SEEDS_AND_FIRST_SEQS = ((0, 1000), (1, 10**9), (2, 2 * 10**9))
TOPICS = Topics("fuzz")

#: Memory the process may add from the warm-up to the end. The first stream
#: sets the allocator's high-water mark: up to ~100 messages in flight (the
#: broker's max_inflight_messages), a few of them 300 KB value bombs, each
#: decoded under the codec's limits (at most 32,768 values, ~2 MiB of objects).
#: Measured: 3 to 4 MiB on a 2-core VM.
RSS_BOUND = 16 * 2**20
#: Memory the process may add from the end of the first stream to the end of
#: the third, when nothing but leaks should grow. What legitimately grows: the
#: decision table (a stored verdict per new unknown node id, 600 of them, well
#: under 1 MiB; see the xfail in test_validation_hostile.py) and allocator
#: noise (measured: -0.4 to +0.4 MiB). A leak of 200 bytes per payload would
#: add over 4 MiB across the two streams.
RSS_GROWTH_BOUND = 4 * 2**20


def _core() -> AggregatorCore:
    """The core `python -m fedbus.aggregator` builds from AGGREGATOR_ARGS."""
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return build_core(parser.parse_args(AGGREGATOR_ARGS))


AckKey = tuple[str, "int | None", str]
R = TypeVar("R")
#: Payloads published before waiting for their acks: the aggregator's broker
#: queue (max_queued_messages 10000 in mosquitto.conf) must never overflow.
BATCH = 1000


@dataclass
class Expected:
    """What the fleet must see for one stream, from the dry run."""

    items: list[Item]
    rejected: Counter[str] = field(default_factory=Counter)
    unacked: Counter[str] = field(default_factory=Counter)
    acks: Counter[AckKey] = field(default_factory=Counter)


def _dry_run(core: AggregatorCore, items: list[Item]) -> Expected:
    """Run a stream through the core; check every verdict against its class."""
    expected = Expected(items)
    for description, level, payload in items:
        cls = kind(description)
        if cls == "bad_topic":
            with pytest.raises(ProtocolError):
                TOPICS.parse(f"{TOPICS.root}/update/{level}")
            expected.unacked[UNACKED[cls]] += 1
            continue
        if cls == "chunk_garbage":
            with pytest.raises(CodecError):
                decode_chunk(payload)
            expected.unacked[UNACKED[cls]] += 1
            continue
        ack = core.handle_update(level, payload).ack
        assert not ack.accepted and not ack.duplicate, (description, ack)
        assert ack.reason is not None
        want = REASONS[cls]
        assert want is None or ack.reason.value == want, (description, ack)
        expected.rejected[ack.reason.value] += 1
        expected.acks[(ack.node, ack.seq, ack.reason.value)] += 1
    return expected


@pytest.fixture(scope="module")
def expectations() -> tuple[str, list[Expected]]:
    """(model digest after the warm-up, one Expected per stream), from one core."""
    core = _core()
    assert dict(core.task.weight_shapes) == LAYOUT
    for node, payload in warm_up():
        assert core.handle_update(node, payload).ack.accepted
    assert core.version == VERSION
    digest = _digest(core.model_message())
    streams = [
        _dry_run(core, generate(seed=seed, first_seq=first)) for seed, first in SEEDS_AND_FIRST_SEQS
    ]
    assert core.version == VERSION and _digest(core.model_message()) == digest
    assert core.counters.accepted == 2 and core.aggregator.buffered == 0
    return digest, streams


def _digest(model: ModelMessage) -> str:
    return hashlib.sha256(b"".join(t.data for t in model.tensors)).hexdigest()


def test_every_stream_has_ten_thousand_distinct_items_of_every_class(
    expectations: tuple[str, list[Expected]],
) -> None:
    _, streams = expectations
    for stream in streams:
        assert len({(level, payload) for _, level, payload in stream.items}) >= 10_000
        assert {kind(d) for d, _, _ in stream.items} == set(REASONS) | set(UNACKED)
    reasons = set().union(*(stream.rejected for stream in streams))
    # Every reason but oversize (64 MiB: more than the broker takes) is provoked;
    # this fleet needs no signatures (tests/test_signed_updates.py provokes those).
    assert reasons == {r.value for r in RejectReason} - {"oversize", "unsigned", "bad_signature"}


def _assert_same_up_to_replays(live: Counter, expected: Counter) -> None:  # type: ignore[type-arg]
    """Equal counts, except that some verdicts may have become `replay` live.

    The dry run decides in publish order. Live, the daemon decided 38 of
    about 35,000 payloads in a different order once (a clean-clone CI run on
    a loaded machine; the cause, whether in paho's resend queue or in
    Mosquitto's in-flight window and queue, is not yet known), and a node's
    lower seq decided after a higher one is rightly answered `replay`. So a
    verdict may turn into `replay`; everything else must match exactly.
    """
    if "replay" in expected or "replay" in live:
        moved = live.get("replay", 0) - expected.get("replay", 0)
        assert moved >= 0, (live, expected)
        others = {k for k in expected.keys() | live.keys() if k != "replay"}
        assert all(live.get(k, 0) <= expected.get(k, 0) for k in others), (live, expected)
        assert sum(live.values()) == sum(expected.values()), (live, expected)
    else:
        assert live == expected


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class _Fleet:
    """What the fleet sees, collected on a thread: latest status and model, every ack."""

    def __init__(self, address: BrokerAddress) -> None:
        self.status: AggregatorStatus | None = None
        self.model: ModelMessage | None = None
        self.refusals: Counter[AckKey] = Counter()
        self.other_acks: list[AckMessage] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.client = BusClient("test-fuzz-fleet", address, persistent_session=False)
        self.client.subscribe(TOPICS.aggregator_status)
        self.client.subscribe(TOPICS.model)
        self.client.subscribe(TOPICS.all_nodes(Channel.ACK))
        self._thread = threading.Thread(target=self._drain, daemon=True)

    def start(self) -> _Fleet:
        self.client.start()
        self.client.wait_connected(10)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.stop()

    def _drain(self) -> None:
        while not self._stop.is_set():
            received = self.client.receive(0.05)
            if received is None:
                continue
            channel, _ = TOPICS.parse(received.topic)
            with self._lock:
                if channel is Channel.AGGREGATOR_STATUS:
                    self.status = decode(received.payload, AggregatorStatus)
                elif channel is Channel.MODEL:
                    self.model = decode(received.payload, ModelMessage)
                elif channel is Channel.ACK:
                    ack = decode(received.payload, AckMessage)
                    if ack.accepted or ack.duplicate or ack.reason is None:
                        self.other_acks.append(ack)
                    else:
                        self.refusals[(ack.node, ack.seq, ack.reason.value)] += 1

    def read(self, what: Callable[[_Fleet], R]) -> R:
        with self._lock:
            return what(self)

    def counters(self) -> dict[str, Any]:
        """Counters of the latest `running` status; {} before there is one."""
        with self._lock:
            if self.status is None or self.status.state != "running":
                return {}
            return dict(self.status.counters)

    def refused(self) -> int:
        """Payloads the aggregator says it refused (-1 before its first status)."""
        counters = self.counters()
        return sum(counters[n] for n in REFUSAL_COUNTERS) if counters else -1

    def refusal_acks(self) -> int:
        return self.read(lambda f: sum(f.refusals.values()))

    def model_version(self) -> int | None:
        return self.read(lambda f: None if f.model is None else f.model.version)


REFUSAL_COUNTERS = ("rejected", "bad_topics", "bad_chunks")


def _delta(after: dict[str, Any], before: dict[str, Any], name: str) -> Counter[str]:
    return Counter(after[name]) - Counter(before[name])


def _retained_model(address: BrokerAddress) -> ModelMessage:
    """The model as a node joining now gets it."""
    late = BusClient("test-fuzz-late", address, persistent_session=False)
    late.subscribe(TOPICS.model)
    late.start()
    try:
        retained = late.receive(10)
    finally:
        late.stop()
    assert retained is not None
    return decode(retained.payload, ModelMessage)


def _send(sender: BusClient, fleet: _Fleet, stream: Expected, acked_before: int) -> int:
    """Publish a stream in batches, each once the previous one's acks are in; acks to expect."""
    acked = acked_before
    for start in range(0, len(stream.items), BATCH):
        batch = stream.items[start : start + BATCH]
        for _, level, payload in batch:
            sender.publish(f"{TOPICS.root}/update/{level}", payload, qos=1)
        acked += sum(kind(description) not in UNACKED for description, _, _ in batch)
        _wait_for_count(fleet.refusal_acks, acked, "rejecting acks")
    return acked


def _wait_for_count(count: Callable[[], int], target: int, what: str) -> None:
    wait_for(lambda: count() >= target, 60, f"{target} {what}")


@pytest.mark.broker
def test_hostile_streams_are_refused_counted_acked_and_change_nothing(
    mosquitto_broker,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    expectations: tuple[str, list[Expected]],
) -> None:
    digest_after_warm_up, streams = expectations
    address = BrokerAddress(mosquitto_broker.host, mosquitto_broker.port)
    aggregator = AggregatorProcess(
        address, TOPICS, tmp_path / "state", tmp_path / "aggregator.log", AGGREGATOR_ARGS
    ).start()
    fleet = _Fleet(address).start()
    # chunk_limit=None: every payload travels whole, as a hostile sender would send it.
    sender = BusClient(
        "test-fuzz-sender", BrokerAddress(address.host, address.port, chunk_limit=None)
    )
    sender.start()
    try:
        sender.wait_connected(10)
        # The first model means the daemon has subscribed: nothing sent from now on is lost.
        wait_for(lambda: fleet.model_version() is not None, 30, "the first model")
        for node, payload in warm_up():
            sender.publish(TOPICS.update(node), payload, qos=1)
        wait_for(lambda: fleet.counters().get("accepted") == 2, 30, "the warm-up accepted")
        wait_for(lambda: fleet.model_version() == VERSION, 30, f"model version {VERSION}")
        assert _digest(_retained_model(address)) == digest_after_warm_up  # process = dry run
        before = fleet.counters()
        assert aggregator.process is not None
        pid = aggregator.process.pid
        rss = [_rss_bytes(pid)]

        started = time.monotonic()
        sent = acked = 0
        refused_before = fleet.refused()
        for stream in streams:
            acked = _send(sender, fleet, stream, acked)
            sent += len(stream.items)
            _wait_for_count(fleet.refused, refused_before + sent, "refusals counted")
            rss.append(_rss_bytes(pid))
        seconds = time.monotonic() - started
        assert aggregator.alive, "the daemon died of hostile input"
    except BaseException:
        if aggregator.alive:
            aggregator.kill()
        raise
    finally:
        sender.stop()
        fleet.stop()

    after = fleet.counters()
    print(
        f"\n{sent} hostile payloads refused in {seconds:.1f} s; VmRSS after the warm-up "
        f"and after each stream: {[round(r / 2**20, 1) for r in rss]} MiB"
    )
    # Every payload counted once, for the reason the dry run gave it; none accepted.
    assert sum(after[n] - before[n] for n in REFUSAL_COUNTERS) == sent
    _assert_same_up_to_replays(
        _delta(after, before, "rejected_by_reason"),
        sum((stream.rejected for stream in streams), Counter()),
    )
    for counter in UNACKED.values():
        assert after[counter] - before[counter] == sum(s.unacked[counter] for s in streams)
    assert after["accepted"] == before["accepted"] == 2
    assert after["applied"] == before["applied"] and after["duplicates"] == 0
    # Every refusal acked on ack/<topic node>, with the seq it could read and its reason.
    _assert_same_up_to_replays(
        Counter({(node, seq): n for (node, seq, _), n in fleet.refusals.items()}),
        Counter(
            {
                (node, seq): n
                for (node, seq, _), n in sum((s.acks for s in streams), Counter()).items()
            }
        ),
    )
    expected_reasons: dict[tuple[str, int | None], set[str]] = {}
    for node, seq, reason in sum((s.acks for s in streams), Counter()):
        expected_reasons.setdefault((node, seq), set()).add(reason)
    for node, seq, reason in fleet.refusals:
        assert reason in expected_reasons[(node, seq)] | {"replay"}, (node, seq, reason)
    assert [(a.node, a.seq, a.accepted) for a in fleet.other_acks] == [
        ("other", 1, True),
        ("other", 2, True),
    ]  # the warm-up's
    # Memory: bounded by the limits, and flat once the first stream has set the high-water mark.
    assert max(rss) - rss[0] < RSS_BOUND, rss
    assert rss[-1] - rss[1] < RSS_GROWTH_BOUND, rss
    # The model, bit for bit.
    model = _retained_model(address)
    assert (model.version, _digest(model)) == (VERSION, digest_after_warm_up)
    assert aggregator.stop() == 0
