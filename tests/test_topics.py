"""The topic tree of protocol v1: builders, parsing, id rules, subscription filters."""

from __future__ import annotations

import pytest

from fedbus.broker.errors import ProtocolError
from fedbus.broker.topics import (
    DEFAULT_FLEET,
    PER_NODE_CHANNELS,
    ROOT,
    Channel,
    Topics,
    validate_id,
)

FLEET = Topics("lab-3")

BAD_IDS = [
    "",
    "a" * 65,
    "a/b",
    "/",
    "+",
    "#",
    "node+",
    "node#",
    "nöde",
    "节点",
    "n\u200b1",
    "with space",
    "dot.ted",
    "n1\n",
    "\x00",
]


def test_default_fleet_root() -> None:
    assert (ROOT, DEFAULT_FLEET) == ("fedbus", "default")
    assert Topics().root == "fedbus/default"


def test_builders_spell_the_documented_tree() -> None:
    assert FLEET.root == "fedbus/lab-3"
    assert FLEET.model == "fedbus/lab-3/model"
    assert FLEET.aggregator_status == "fedbus/lab-3/aggregator/status"
    assert FLEET.update("n1") == "fedbus/lab-3/update/n1"
    assert FLEET.ack("n1") == "fedbus/lab-3/ack/n1"
    assert FLEET.status("n1") == "fedbus/lab-3/status/n1"
    assert FLEET.stats("n1") == "fedbus/lab-3/stats/n1"
    assert FLEET.metrics("n1") == "fedbus/lab-3/metrics/n1"


@pytest.mark.parametrize("channel", PER_NODE_CHANNELS)
def test_for_node_matches_the_named_builder(channel: Channel) -> None:
    named = getattr(FLEET, channel.value)

    assert FLEET.for_node(channel, "node_07") == named("node_07")


@pytest.mark.parametrize("channel", [Channel.MODEL, Channel.AGGREGATOR_STATUS])
def test_fleet_wide_channels_have_no_per_node_topic(channel: Channel) -> None:
    with pytest.raises(ValueError):
        FLEET.for_node(channel, "n1")
    with pytest.raises(ValueError):
        FLEET.all_nodes(channel)


@pytest.mark.parametrize("channel", PER_NODE_CHANNELS)
@pytest.mark.parametrize("node", ["n1", "A", "z" * 64, "edge_gw-07", "0", "-", "_"])
def test_parse_inverts_every_per_node_builder(channel: Channel, node: str) -> None:
    assert FLEET.parse(FLEET.for_node(channel, node)) == (channel, node)


def test_parse_fleet_wide_channels() -> None:
    assert FLEET.parse(FLEET.model) == (Channel.MODEL, None)
    assert FLEET.parse(FLEET.aggregator_status) == (Channel.AGGREGATOR_STATUS, None)


@pytest.mark.parametrize(
    "topic",
    [
        "fedbus/other/model",
        "fedbus/lab-3x/model",
        "fedbus/lab/model",
        "fedbus/LAB-3/model",
        "fedbus2/lab-3/model",
        "Fedbus/lab-3/model",
        "/fedbus/lab-3/model",
        "fedbus/lab-3",
        "fedbus",
        "",
        "lab-3/model",
        "other/fedbus/lab-3/model",
    ],
)
def test_parse_rejects_topics_outside_the_fleet_root(topic: str) -> None:
    with pytest.raises(ProtocolError):
        FLEET.parse(topic)


@pytest.mark.parametrize(
    "topic",
    [
        "fedbus/lab-3/",
        "fedbus/lab-3/models",
        "fedbus/lab-3/model/",
        "fedbus/lab-3/model/n1",
        "fedbus/lab-3/update",
        "fedbus/lab-3/update/",
        "fedbus/lab-3/update/n1/extra",
        "fedbus/lab-3/Update/n1",
        "fedbus/lab-3/aggregator",
        "fedbus/lab-3/aggregator/status/x",
        "fedbus/lab-3/aggregator/n1",
        "fedbus/lab-3/gossip/n1",
    ],
)
def test_parse_rejects_unknown_topics_inside_the_root(topic: str) -> None:
    with pytest.raises(ProtocolError):
        FLEET.parse(topic)


@pytest.mark.parametrize("node", BAD_IDS)
def test_bad_node_ids_are_refused_by_builders_and_parse(node: str) -> None:
    with pytest.raises(ProtocolError):
        validate_id(node)
    with pytest.raises(ProtocolError):
        FLEET.update(node)
    with pytest.raises(ProtocolError):
        FLEET.parse("fedbus/lab-3/update/" + node)


@pytest.mark.parametrize("fleet", BAD_IDS)
def test_bad_fleet_ids_are_refused(fleet: str) -> None:
    with pytest.raises(ProtocolError, match="fleet id"):
        Topics(fleet)


@pytest.mark.parametrize("value", [None, 7, b"n1", ["n1"]])
def test_ids_must_be_strings(value: object) -> None:
    with pytest.raises(ProtocolError):
        validate_id(value)  # type: ignore[arg-type]


def test_id_length_bounds() -> None:
    assert validate_id("a") == "a"
    assert validate_id("a" * 64) == "a" * 64


@pytest.mark.parametrize("channel", PER_NODE_CHANNELS)
def test_all_nodes_filter_is_one_level_wildcard(channel: Channel) -> None:
    assert FLEET.all_nodes(channel) == f"fedbus/lab-3/{channel.value}/+"


def test_everything_filter() -> None:
    assert FLEET.everything == "fedbus/lab-3/#"


def _matches(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 topic filter matching (section 4.7), for checking our filters."""
    levels, pattern = topic.split("/"), topic_filter.split("/")
    for index, part in enumerate(pattern):
        if part == "#":
            return True
        if index >= len(levels) or (part != "+" and part != levels[index]):
            return False
    return len(levels) == len(pattern)


def test_filters_match_exactly_the_topics_they_are_for() -> None:
    every_topic = [FLEET.model, FLEET.aggregator_status] + [
        FLEET.for_node(channel, node) for channel in PER_NODE_CHANNELS for node in ("n1", "n2")
    ]
    foreign = Topics("other").update("n1")

    for channel in PER_NODE_CHANNELS:
        matched = [t for t in every_topic if _matches(FLEET.all_nodes(channel), t)]
        assert matched == [FLEET.for_node(channel, "n1"), FLEET.for_node(channel, "n2")]
    assert all(_matches(FLEET.everything, t) for t in every_topic)
    assert not _matches(FLEET.everything, foreign)
    assert not _matches(FLEET.all_nodes(Channel.STATUS), FLEET.aggregator_status)


def test_topics_are_frozen_values() -> None:
    assert Topics("lab-3") == FLEET
    assert hash(Topics("lab-3")) == hash(FLEET)
    with pytest.raises(AttributeError):
        FLEET.fleet = "other"  # type: ignore[misc]
