"""The broker's access rules for one fleet, as Mosquitto ACL text.

Pure: accounts in, file text out, so the rules are unit-tested without a
broker and an integration test checks that mosquitto enforces them. Every
topic comes from `fedbus.broker.topics`; chunked messages travel on
`<topic>/chunk/<i>`, so each grant on a topic is repeated for its chunks.

Who may do what (DESIGN.md section 2):
- a node publishes only its own `update/`, `status/`, `stats/` and
  `metrics/` topics, and reads only `model` and its own `ack/`;
- only the aggregator publishes `model`, `ack/<node>` and
  `aggregator/status`; it reads what nodes publish;
- an observer (status view, recorder, the demo's scorer) reads the whole
  fleet and publishes nothing.
Anything not granted is denied: with an ACL file, mosquitto refuses every
topic that no line names.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from fedbus.broker.topics import Channel, Topics, chunk_filter, validate_id


class Role(str, Enum):
    NODE = "node"
    AGGREGATOR = "aggregator"
    OBSERVER = "observer"


#: Per-node topics a node writes, each its own.
NODE_WRITES = (Channel.UPDATE, Channel.STATUS, Channel.STATS, Channel.METRICS)
#: Per-node topics the aggregator reads from every node.
AGGREGATOR_READS = (Channel.UPDATE, Channel.STATUS, Channel.STATS, Channel.METRICS)


def _with_chunks(access: str, topic: str) -> list[str]:
    lines = [f"topic {access} {topic}"]
    chunks = chunk_filter(topic)
    if chunks is not None:
        lines.append(f"topic {access} {chunks}")
    return lines


def account_rules(topics: Topics, name: str, role: Role) -> list[str]:
    """The ACL block of one account: a `user` line and its topic grants."""
    validate_id(name, "account name")
    lines = [f"user {name}"]
    if role is Role.NODE:
        for channel in NODE_WRITES:
            lines += _with_chunks("write", topics.for_node(channel, name))
        lines += _with_chunks("read", topics.model)
        lines += _with_chunks("read", topics.ack(name))
    elif role is Role.AGGREGATOR:
        lines += _with_chunks("write", topics.model)
        lines += _with_chunks("write", topics.all_nodes(Channel.ACK))
        lines += _with_chunks("readwrite", topics.aggregator_status)
        for channel in AGGREGATOR_READS:
            lines += _with_chunks("read", topics.all_nodes(channel))
    else:
        lines.append(f"topic read {topics.everything}")
    return lines


def acl_text(topics: Topics, accounts: Iterable[tuple[str, Role]]) -> str:
    """The whole ACL file for a fleet: one block per account, sorted by name."""
    blocks = [
        "# Written by `fedbus broker add-node`; edits are lost at the next change.",
        f"# Fleet {topics.fleet!r}: nodes write only their own topics, only the",
        "# aggregator writes the model; anything not granted here is denied.",
    ]
    for name, role in sorted(accounts):
        blocks += ["", f"# {role.value}", *account_rules(topics, name, role)]
    return "\n".join(blocks) + "\n"
