"""The examples in docs/PROTOCOL.md are real: each hex block decodes to its JSON twin.

Every example comes as a pair of fenced blocks, ```json example=<name> and
```hex example=<name>. The hex bytes must decode with the real codec, unpack
to exactly the JSON rendering (keys in the same order, {"$bin": hex} for bin,
ints, floats and bools kept apart), and re-encode to the same bytes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgpack
import pytest

from fedbus.broker.codec import decode, encode

DOC = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"
MIN_EXAMPLES = 5

_BLOCK = re.compile(
    r"^```(?P<kind>json|hex)[ \t]+example=(?P<name>[A-Za-z0-9_.-]+)[ \t]*\n"
    r"(?P<body>.*?)^```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


def _blocks(kind: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for match in _BLOCK.finditer(DOC.read_text(encoding="utf-8")):
        if match["kind"] != kind:
            continue
        name = match["name"]
        assert name not in found, f"two {kind} examples named {name!r}"
        found[name] = match["body"]
    return found


def _hex_bytes(body: str) -> bytes:
    digits = "".join(body.split())
    assert re.fullmatch(r"(?:[0-9a-fA-F]{2})+", digits), "hex example holds non-hex text"
    return bytes.fromhex(digits)


def _from_json(value: Any) -> Any:
    """msgpack-JSON to the values msgpack unpacks: {"$bin": hex} becomes bytes."""
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        return {key: _from_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_json(item) for item in value]
    return value


def _assert_same(got: Any, want: Any, where: str = "$") -> None:
    """Equality that also checks types (True != 1, 1 != 1.0) and map key order."""
    assert type(got) is type(want), f"{where}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, dict):
        assert list(got) == list(want), f"{where}: keys {list(got)} != {list(want)}"
        for key in want:
            _assert_same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), f"{where}: {len(got)} items != {len(want)}"
        for index, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_same(g, w, f"{where}[{index}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


HEX = _blocks("hex")
JSON = _blocks("json")


def test_the_spec_has_enough_paired_examples() -> None:
    assert len(HEX) >= MIN_EXAMPLES, f"only {len(HEX)} hex examples in {DOC}"
    assert set(HEX) == set(JSON), f"unpaired examples: {sorted(set(HEX) ^ set(JSON))}"


def test_every_message_type_has_an_example() -> None:
    types = {msgpack.unpackb(_hex_bytes(body), raw=False)["type"] for body in HEX.values()}
    assert types >= {"model", "update", "ack", "node_status", "aggregator_status"}


@pytest.mark.parametrize("name", sorted(HEX))
def test_hex_example_decodes_to_its_json_twin_and_reencodes_to_the_same_bytes(
    name: str,
) -> None:
    payload = _hex_bytes(HEX[name])
    want = _from_json(json.loads(JSON[name]))

    message = decode(payload)
    unpacked = msgpack.unpackb(payload, raw=False)

    _assert_same(unpacked, want)
    assert next(iter(unpacked)) == "v", "the protocol version must be the first key"
    assert encode(message) == payload
