"""A seeded generator of hostile update payloads, every one of which an aggregator must refuse.

`generate` returns (description, topic level, payload) items. The payload
goes to `fedbus/<fleet>/update/<topic level>`; for the `chunk_garbage` class
the level already ends in `/chunk/<i>`. The description starts with the
payload's class and a colon (`kind` reads it back); `REASONS` gives the
reject reason each class must get.

The target is an aggregator with the default task layout (`LAYOUT`), the
enrolment list `ENROLLED`, `--max-staleness 0`, the norm bound `NORM_BOUND`,
in fedasync mode, that has taken the two `warm_up` updates and so stands at
model version `VERSION`. Every "otherwise valid" body is valid for exactly
that state, so each payload is refused for the one flaw it was given.

Sequence numbers rise through the stream (they are handed out after the
shuffle) and are never repeated, so a refused payload can neither turn a
later one into a `replay` nor be mistaken for a resend (a duplicate is
answered, not refused). `first_seq` lets several streams follow each other
against one aggregator. Generating 10,000 items takes well under a second.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import numpy as np

LAYOUT = {"W": (64, 10), "b": (10,)}
NODE = "fz"
ENROLLED = (NODE, "other")
VERSION = 2
MAX_STALENESS = 0
NORM_BOUND = 1e6

Item = tuple[str, str, bytes]
#: Makes a payload given the next free seq.
Maker = Callable[[int], bytes]
#: (description, topic level, a payload or its maker).
Draft = tuple[str, str, "bytes | Maker"]
Body = dict[str, Any]

#: Classes published where the aggregator drops them without an ack, and the
#: status counter that counts them instead of `rejected`.
UNACKED = {"bad_topic": "bad_topics", "chunk_garbage": "bad_chunks"}

#: The reason each acked class is refused for; None: whichever check fails first.
REASONS: dict[str, str | None] = {
    "truncated": "malformed",
    "truncated_wide": "malformed",
    "trailing_bytes": "malformed",
    "random_bytes": "malformed",
    "length_bomb": "malformed",
    "value_bomb": "malformed",
    "deep_nesting": "malformed",
    "ext": "malformed",
    "wrong_type": "malformed",
    "missing_field": "malformed",
    "bad_tensor": "malformed",
    "wrong_version": "unsupported_version",
    "node_mismatch": "node_mismatch",
    "unknown_node": "unknown_node",
    "replay": "replay",
    "future_base": "future_base",
    "stale": "stale",
    "bad_samples": "bad_samples",
    "wrong_shape": "wrong_shape",
    "non_finite": "non_finite",
    "norm_bomb": "norm_exceeded",
    "bit_flip": None,
    "field_swap": None,
}


def kind(description: str) -> str:
    """The class of an item from its description."""
    return description.partition(":")[0]


# ---------------------------------------------------------------- valid bodies


def _tensor(name: str, values: np.ndarray) -> Body:
    data = values.astype("<f4").tobytes()
    return {
        "name": name,
        "dtype": "float32",
        "shape": list(values.shape),
        "codec": "f32",
        "data": data,
    }


def _body(seq: int, rng: np.random.Generator, node: str = NODE, base: int = VERSION) -> Body:
    """A valid update for the target: small random delta, 3..1000 samples."""
    return {
        "v": 1,
        "type": "update",
        "node": node,
        "seq": seq,
        "base_version": base,
        "num_samples": int(rng.integers(3, 1001)),  # never VERSION: see _field_swaps
        "tensors": [
            _tensor(name, rng.standard_normal(shape) * 0.01) for name, shape in LAYOUT.items()
        ],
        "train_loss": float(rng.uniform(0.1, 3.0)),
    }


def _pack(body: Any) -> bytes:
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def pack_wide(value: Any) -> bytes:
    """msgpack in the widest format of every value (map32, str32, bin32, int64, float64).

    Receivers must accept every format (docs/PROTOCOL.md section 4), and
    cutting such a payload short hits the 32-bit length headers.
    """
    if value is None:
        return b"\xc0"
    if isinstance(value, bool):
        return b"\xc3" if value else b"\xc2"
    if isinstance(value, int):
        return (
            b"\xcf" + struct.pack(">Q", value) if value >= 0 else b"\xd3" + struct.pack(">q", value)
        )
    if isinstance(value, float):
        return b"\xcb" + struct.pack(">d", value)
    if isinstance(value, str):
        raw = value.encode()
        return b"\xdb" + struct.pack(">I", len(raw)) + raw
    if isinstance(value, bytes):
        return b"\xc6" + struct.pack(">I", len(value)) + value
    if isinstance(value, list):
        return b"\xdd" + struct.pack(">I", len(value)) + b"".join(pack_wide(v) for v in value)
    if isinstance(value, dict):
        pairs = b"".join(pack_wide(k) + pack_wide(v) for k, v in value.items())
        return b"\xdf" + struct.pack(">I", len(value)) + pairs
    raise TypeError(f"cannot pack {type(value).__name__}")


def warm_up() -> list[tuple[str, bytes]]:
    """(node, payload) of two valid updates that take a fresh target to VERSION.

    Both come from the enrolled node `other`; the second one is in the wide
    encoding, so the target shows it accepts every msgpack format.
    """
    rng = np.random.default_rng(12345)
    first = _pack(_body(1, rng, node="other", base=0))
    second = pack_wide(_body(2, rng, node="other", base=1))
    return [("other", first), ("other", second)]


Change = Callable[[Body], object]
#: Where a field sits: () for the body itself, ("tensors", i) for tensor i.
Where = tuple["str | int", ...]
TOP: Where = ()


def _made(rng: np.random.Generator, change: Change | None = None, **body_kw: Any) -> Maker:
    """A maker: the valid body for a seq, changed in place by `change`, packed."""

    def make(seq: int) -> bytes:
        body = _body(seq, rng, **body_kw)
        if change is not None:
            change(body)
        return _pack(body)

    return make


def _then(maker: Maker, tail: bytes) -> Maker:
    return lambda seq: maker(seq) + tail


def _at(body: Body, where: Where) -> Body:
    for step in where:
        body = body[step]  # type: ignore[index]
    return body


def _tensor_at(index: int) -> Where:
    return ("tensors", index)


def _set(key: str, value: Any, where: Where = TOP) -> Change:
    return lambda body: _at(body, where).__setitem__(key, value)


def _drop(key: str, where: Where = TOP) -> Change:
    return lambda body: _at(body, where).pop(key)


def _swap(first: Where, a: str, second: Where, b: str) -> Change:
    def swap(body: Body) -> None:
        x, y = _at(body, first), _at(body, second)
        x[a], y[b] = y[b], x[a]

    return swap


def _with_raw(key: str, raw: bytes, rng: np.random.Generator) -> Maker:
    """A maker of a valid body whose field `key` (new or replaced) holds raw msgpack bytes."""

    def make(seq: int) -> bytes:
        body = _body(seq, rng)
        body.pop(key, None)
        packed = _pack(body)
        assert 0x80 <= packed[0] < 0x8F  # a fixmap with room for one more pair
        return bytes([packed[0] + 1]) + packed[1:] + _pack(key) + raw

    return make


# ---------------------------------------------------------------- the classes


def _framing(pyrng: random.Random, rng: np.random.Generator) -> Iterator[Draft]:
    """Cut short at every byte, extra bytes after the map, random bytes."""
    compact = _pack(_body(1, rng))
    for cut in range(len(compact)):
        yield f"truncated: first {cut} of {len(compact)} bytes", NODE, compact[:cut]
    wide = pack_wide(_body(1, rng))
    for cut in range(len(wide)):
        yield f"truncated_wide: first {cut} of {len(wide)} bytes", NODE, wide[:cut]
    for i in range(300):
        tail = pyrng.randbytes(pyrng.randint(1, 16))
        maker = _made(rng)
        yield (
            f"trailing_bytes: {len(tail)} after the map #{i}",
            NODE,
            _then(maker, tail),
        )
    for i in range(800):
        yield f"random_bytes: #{i}", NODE, pyrng.randbytes(pyrng.randint(0, 3000))


def _bombs(pyrng: random.Random, rng: np.random.Generator) -> Iterator[Draft]:
    """Headers that claim far more than follows, too many values, too deep, ext types."""
    headers = {"array32": b"\xdd", "map32": b"\xdf", "str32": b"\xdb", "bin32": b"\xc6"}
    for i in range(100):
        name, head = pyrng.choice(sorted(headers.items()))
        claim = pyrng.randrange(2**16, 2**32)
        junk = pyrng.randbytes(pyrng.randint(0, 64))
        yield (
            f"length_bomb: top-level {name} claims {claim} #{i}",
            NODE,
            head + struct.pack(">I", claim) + junk,
        )
    for i in range(100):
        claim = pyrng.randrange(4 * 640 + 1, 2**32)

        def data_bomb(seq: int, claim: int = claim) -> bytes:
            packed = _pack(_body(seq, rng))
            at = packed.index(b"\xc5\x0a\x00")  # bin16 header of W's 2560 bytes
            return packed[:at] + b"\xc6" + struct.pack(">I", claim) + packed[at + 3 :]

        yield f"length_bomb: W data claims {claim} bytes #{i}", NODE, data_bomb
    for i in range(100):
        claim = pyrng.randrange(1025, 2**32)

        def array_bomb(seq: int, claim: int = claim) -> bytes:
            packed = _pack(_body(seq, rng))
            at = packed.index(b"\xa7tensors\x92") + 8  # the fixarray header of 2 tensors
            return packed[:at] + b"\xdd" + struct.pack(">I", claim) + packed[at + 1 :]

        yield f"length_bomb: tensors array claims {claim} #{i}", NODE, array_bomb
    for _ in range(60):
        # Empty arrays in arrays of 1024: one byte each on the wire, a list object each in memory.
        groups = pyrng.randint(33, 300)
        raw = b"\xdc" + struct.pack(">H", groups) + (b"\xdc\x04\x00" + b"\x90" * 1024) * groups
        yield (
            f"value_bomb: {groups * 1025} values under an unknown key",
            NODE,
            _with_raw("extra", raw, rng),
        )
    for i in range(200):
        depth = pyrng.choice([pyrng.randint(1025, 3000), pyrng.randint(30_000, 60_000)])
        opener, inner = pyrng.choice([(b"\x91", "arrays"), (b"\x81\xa1k", "maps")])
        if i % 2:
            yield (
                f"deep_nesting: {depth} {inner} at the top #{i}",
                NODE,
                b"\x81\xa1v" + opener * depth + b"\x01",
            )
        else:
            raw = opener * depth + b"\xc0"
            yield (
                f"deep_nesting: {depth} {inner} under an unknown key #{i}",
                NODE,
                _with_raw("extra", raw, rng),
            )
    exts = {
        "empty ext8": b"\xc7\x00\x05",
        "empty ext16": b"\xc8\x00\x00\x05",
        "empty ext32": b"\xc9\x00\x00\x00\x00\x05",
        "fixext1": b"\xd4\x05\x00",
        "timestamp32": b"\xd6\xff\x00\x00\x00\x00",
    }
    for i in range(12):
        for name, raw in exts.items():
            yield f"ext: {name} under an unknown key #{i}", NODE, _with_raw("extra", raw, rng)
            yield f"ext: {name} as train_loss #{i}", NODE, _with_raw("train_loss", raw, rng)


WRONG_TYPED: dict[str, list[Any]] = {
    "v": ["1", 1.0, True, None, [1], {"a": 1}, b"\x01"],
    "type": ["model", "ack", 1, None, "", "UPDATE", b"update"],
    "node": [1, None, b"fz", "", "a/b", "x" * 65, "ü", " fz", ["fz"], True],
    "seq": [-1, "1", 1.5, True, False, None, [3], 2**63, 2**64 - 1],
    "base_version": [-1, "2", True, None, 2.0, {"v": 2}, 2**63],
    "num_samples": ["10", True, False, None, 10.0, [10]],
    "tensors": [None, "x", [1], [{}], {"W": 1}, True],  # [] is a layout error
    "train_loss": ["0.5", True, [0.5], b"\x00"],
}
WRONG_TENSOR: dict[str, list[Any]] = {
    "name": [1, None, "W" * 5000, True, b"W"],
    "dtype": ["float64", "int8", "f4", "FLOAT32", 1, None],
    "shape": [
        [2**40],
        [-1],
        [-64, -10],
        [2**32, 2**32, 2**32],
        [2**64 - 1],
        [0, 2**40],
        [1] * 9,
        "64x10",
        [64.0, 10],
        [True, 10],
        [64, None],
        640,
        None,
    ],
    "codec": ["q8", "f16", "F32", "", None, 4],
    "data": ["not bytes", None, 12, b"", b"\x00" * 3, b"\x00" * 2561, [0] * 10],
}


def _types(rng: np.random.Generator) -> Iterator[Draft]:
    """Every field with values of the wrong type or range (bool is never an int), or missing."""
    for rep in range(3):
        for key, values in WRONG_TYPED.items():
            for value in values:
                yield (
                    f"wrong_type: {key} = {value!r:.40} #{rep}",
                    NODE,
                    _made(rng, _set(key, value)),
                )
            if key != "train_loss":  # optional
                yield f"missing_field: {key} #{rep}", NODE, _made(rng, _drop(key))
        for key, values in WRONG_TENSOR.items():
            for index in (0, 1):
                for value in values:
                    yield (
                        f"bad_tensor: tensor {index} {key} = {value!r:.40} #{rep}",
                        NODE,
                        _made(rng, _set(key, value, _tensor_at(index))),
                    )
                yield (
                    f"missing_field: tensor {index} {key} #{rep}",
                    NODE,
                    _made(rng, _drop(key, _tensor_at(index))),
                )


def _protocol(pyrng: random.Random, rng: np.random.Generator) -> Iterator[Draft]:
    """Versions, identities, sequence numbers, base versions, sample counts, layouts."""
    for i in range(200):
        version = pyrng.choice([0, 2, 3, 255, 2**32, 2**63 - 1, 2**64 - 1, -1, -(2**63)])
        yield f"wrong_version: v = {version} #{i}", NODE, _made(rng, _set("v", version))
    for i in range(150):
        yield f"node_mismatch: body other on topic {NODE} #{i}", NODE, _made(rng, node="other")
        yield f"node_mismatch: body {NODE} on topic other #{i}", "other", _made(rng)
    for _ in range(300):
        intruder = f"intruder-{pyrng.getrandbits(40):x}"
        yield f"unknown_node: {intruder}", intruder, _made(rng, node=intruder)
    for i in range(200):
        base = pyrng.choice([VERSION + 1, pyrng.randint(VERSION + 1, 2**63 - 1)])
        yield f"future_base: base_version {base} #{i}", NODE, _made(rng, _set("base_version", base))
    for i in range(200):
        base = pyrng.randint(0, VERSION - MAX_STALENESS - 1)
        yield f"stale: base_version {base} #{i}", NODE, _made(rng, _set("base_version", base))
    for i in range(150):
        samples = pyrng.choice(
            [
                0,
                -1,
                -(2**63),
                pyrng.randint(-(2**63), -1),
                2**63,
                2**64 - 1,
                pyrng.randint(2**63, 2**64 - 1),
            ]
        )
        yield (
            f"bad_samples: num_samples {samples} #{i}",
            NODE,
            _made(rng, _set("num_samples", samples)),
        )
    layouts: dict[str, Change] = {
        "W transposed": _set("shape", [10, 64], _tensor_at(0)),
        "W as a vector": _set("shape", [640], _tensor_at(0)),
        "b renamed": _set("name", "B", _tensor_at(1)),
        "b missing": lambda b: b["tensors"].pop(),
        "W twice": lambda b: b["tensors"].__setitem__(1, b["tensors"][0]),
        "extra tensor": lambda b: b["tensors"].append(_tensor("c", np.zeros(3))),
        "no tensors": lambda b: b["tensors"].clear(),
    }
    for rep in range(15):
        for name, change in layouts.items():
            yield f"wrong_shape: {name} #{rep}", NODE, _made(rng, change)


def _values(pyrng: random.Random, rng: np.random.Generator) -> Iterator[Draft]:
    """NaN and Inf (quiet and signalling NaN bit patterns), and finite norm bombs."""
    poisons = {
        "nan": 0x7FC00000,
        "-nan": 0xFFC00000,
        "snan": 0x7F800001,
        "inf": 0x7F800000,
        "-inf": 0xFF800000,
    }
    for _ in range(600):
        index = pyrng.randrange(2)
        name = pyrng.choice(sorted(poisons))
        where = pyrng.randrange(640 if index == 0 else 10)

        def poison(
            body: Body, index: int = index, where: int = where, bits: int = poisons[name]
        ) -> None:
            tensor = body["tensors"][index]
            words = np.frombuffer(tensor["data"], "<u4").copy()
            words[where] = bits
            tensor["data"] = words.tobytes()

        yield f"non_finite: {name} at tensor {index} element {where}", NODE, _made(rng, poison)
    for i in range(200):
        scale = pyrng.choice([1e5, 1e8, 1e20, 1e36, 3e38])

        def blow_up(body: Body, scale: float = scale) -> None:
            for tensor in body["tensors"]:
                values = np.frombuffer(tensor["data"], "<f4").astype(np.float64) / 0.01 * scale
                tensor["data"] = np.clip(values, -3.4e38, 3.4e38).astype("<f4").tobytes()

        yield f"norm_bomb: delta scaled to ~{scale:g} #{i}", NODE, _made(rng, blow_up)
    for i in range(100):
        yield f"replay: seq {i + 1} below the first decision", NODE, _pack(_body(i + 1, rng))


def _poisoned(seq: int, rng: np.random.Generator, pyrng: random.Random, count: int) -> bytes:
    """A valid body with `count` NaNs at distinct elements of W, packed."""
    body = _body(seq, rng)
    words = np.frombuffer(body["tensors"][0]["data"], "<u4").copy()
    words[pyrng.sample(range(words.size), count)] = 0x7FC00000
    body["tensors"][0]["data"] = words.tobytes()
    return _pack(body)


def _bit_flips(pyrng: random.Random, rng: np.random.Generator, count: int) -> Iterator[Draft]:
    """1 to 3 bits flipped anywhere but in the seq value, of a body with one more NaN than flips.

    A flip may repair one NaN at most, so one always stays; it may break
    anything else, which only changes the reason. The seq value is left
    alone so that no flip can reorder the stream or collide with a decision.
    """
    for i in range(count):
        flips = pyrng.randint(1, 3)

        def flipped(seq: int, flips: int = flips) -> bytes:
            packed = bytearray(_poisoned(seq, rng, pyrng, flips + 1))
            at = packed.index(b"\xa3seq") + 4
            seq_bytes = range(at, at + len(_pack(seq)))
            bits: set[int] = set()
            while len(bits) < flips:
                bit = pyrng.randrange(len(packed) * 8)
                if bit // 8 not in seq_bytes:
                    bits.add(bit)
            for bit in bits:
                packed[bit // 8] ^= 1 << (bit % 8)
            return bytes(packed)

        yield f"bit_flip: {flips} bits #{i}", NODE, flipped


def _field_swaps(rng: np.random.Generator) -> Iterator[Draft]:
    """The values of two fields exchanged, at the top level and in and across tensors.

    Every pair of fields holds values of different types or different
    values that cannot both be valid in the other's place (num_samples is
    never VERSION), so every swap is refused; seq is never swapped.
    """
    top = ["v", "type", "node", "base_version", "num_samples", "tensors", "train_loss"]
    tensor_keys = ["name", "dtype", "shape", "codec", "data"]
    swaps: dict[str, Change] = {}
    for i, a in enumerate(top):
        for b in top[i + 1 :]:
            swaps[f"{a} <-> {b}"] = _swap(TOP, a, TOP, b)
    for index in (0, 1):
        where = _tensor_at(index)
        for i, a in enumerate(tensor_keys):
            for b in tensor_keys[i + 1 :]:
                swaps[f"tensor {index} {a} <-> {b}"] = _swap(where, a, where, b)
    for key in ("name", "shape", "data"):
        swaps[f"W {key} <-> b {key}"] = _swap(_tensor_at(0), key, _tensor_at(1), key)
    for rep in range(5):
        for name, swap in swaps.items():
            yield f"field_swap: {name} #{rep}", NODE, _made(rng, swap)


def _not_for_updates(pyrng: random.Random, rng: np.random.Generator) -> Iterator[Draft]:
    """Valid bodies on topic levels that are no node id, and garbage on chunk topics."""
    for level in ("bad node", "x" * 65, "ü", "", "a.b", "fz ", "😀"):
        for i in range(8):
            yield f"bad_topic: level {level!r} #{i}", level, _made(rng)
    for i in range(50):
        yield (
            f"chunk_garbage: #{i}",
            f"{NODE}/chunk/{i % 7}",
            pyrng.randbytes(pyrng.randint(1, 400)),
        )


# ---------------------------------------------------------------- the stream


def generate(seed: int = 0, minimum: int = 10_000, first_seq: int = 1000) -> list[Item]:
    """At least `minimum` distinct hostile items in a seeded random order.

    The first item is a `future_base` update that the target stores as the
    node's decision, so the `replay` items (seqs 1..100) fall below it. Made
    payloads get the seqs first_seq + 1, first_seq + 2, ... in stream order.
    """
    rng = np.random.default_rng(seed)
    pyrng = random.Random(seed)
    drafts: list[Draft] = [
        *_framing(pyrng, rng),
        *_bombs(pyrng, rng),
        *_types(rng),
        *_protocol(pyrng, rng),
        *_values(pyrng, rng),
        *_bit_flips(pyrng, rng, 1000),
        *_field_swaps(rng),
        *_not_for_updates(pyrng, rng),
    ]
    pyrng.shuffle(drafts)
    anchor: Draft = (
        "future_base: the first decision",
        NODE,
        _made(rng, _set("base_version", VERSION + 5)),
    )
    items: list[Item] = []
    seen: set[tuple[str, bytes]] = set()
    seq = first_seq
    extra = 0
    pending = iter([anchor, *drafts])
    while True:
        draft = next(pending, None)
        if draft is None:
            if len(items) >= minimum:
                return items
            draft = next(_bit_flips(pyrng, rng, 1))
            draft = (f"bit_flip: extra #{extra}", draft[1], draft[2])
            extra += 1
        description, level, payload = draft
        if callable(payload):
            seq += 1
            payload = payload(seq)
        if (level, payload) not in seen:
            seen.add((level, payload))
            items.append((description, level, payload))
