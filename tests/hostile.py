"""A seeded generator of hostile update payloads, every one of which must be refused.

Each item is (kind, topic level, payload): the payload goes to
`fedbus/<fleet>/update/<topic level>`, or, for kinds starting with `chunk`,
to `.../update/<topic level>/chunk/<i>` (`topic level` then includes the
chunk suffix). The aggregator it is aimed at runs at model version 0 with
the digits layout (W [64, 10], b [10]), the enrolment list {fz, other} and
the norm bound NORM_BOUND. Sequence numbers are unique across the whole
stream, so no payload can be taken for a resend of another (a duplicate is
answered, not refused).

Classes: truncations, trailing bytes, length bombs, deep nesting, wrong types
and missing fields (message and tensor level), huge and negative shapes,
NaN/Inf, wrong protocol versions, node id in the topic against the body,
unknown nodes, future base versions, replays, norm bombs, random bytes, bad
topic levels and garbage chunks.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import numpy as np

LAYOUT = {"W": (64, 10), "b": (10,)}
ENROLLED = ("fz", "other")
NORM_BOUND = 1e6
NODE = "fz"

Item = tuple[str, str, bytes]
#: A payload, or a maker of one given its seq (assigned after the shuffle, so
#: the stream's seqs rise and no refusal turns another into a `replay`).
Draft = tuple[str, str, "bytes | Callable[[int], bytes]"]
Mutation = Callable[[dict[str, Any]], object]


def _tensor(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> dict[str, Any]:
    data = (rng.standard_normal(shape) * 0.01).astype("<f4").tobytes()
    return {"name": name, "dtype": "float32", "shape": list(shape), "codec": "f32", "data": data}


def _body(seq: int, rng: np.random.Generator, node: str = NODE) -> dict[str, Any]:
    return {
        "v": 1,
        "type": "update",
        "node": node,
        "seq": seq,
        "base_version": 0,
        "num_samples": 10,
        "tensors": [_tensor(n, s, rng) for n, s in LAYOUT.items()],
    }


def _pack(body: Any) -> bytes:
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def _later(rng: np.random.Generator, mutate: Mutation | None = None, node: str = NODE):  # type: ignore[no-untyped-def]
    """A maker: the valid body for a seq, changed in place by `mutate`, packed."""

    def make(seq: int) -> bytes:
        body = _body(seq, rng, node)
        if mutate is not None:
            mutate(body)
        return _pack(body)

    return make


WRONG_TYPED: dict[str, list[Any]] = {
    "v": ["1", 1.0, True, None, [1], {"a": 1}, b"\x01"],
    "type": ["model", "ack", 1, None, "", "UPDATE"],
    "node": [1, None, b"fz", "", "a/b", "x" * 65, "ü", " fz", ["fz"]],
    "seq": [-1, "1", 1.5, True, None, [3], 2**64 - 1],
    "base_version": [-1, "0", True, None, 0.5, {"v": 0}],
    "num_samples": [0, -5, "10", True, None, 10.5],
    "tensors": [[], None, "x", [1], [{}], {"W": 1}],
}
WRONG_TENSOR: dict[str, list[Any]] = {
    "name": ["X", "", 1, None, "W" * 5000],
    "dtype": ["float64", "int8", "f4", 1, None],
    "shape": [[10, 64], [2**40], [-1], [2**32, 2**32], [], [65, 10], [64, 10, 1], "64x10", [1.5]],
    "codec": ["q8", "f16", "", None, 4],
    "data": ["not bytes", None, 12, b"", b"\x00" * 3],
}


def generate(seed: int = 0, minimum: int = 10_000, first_seq: int = 1000) -> list[Item]:
    """At least `minimum` hostile items, shuffled; the first one stores a decision.

    Seqs rise from `first_seq` + 1 (one per made payload); a second stream
    for the same aggregator needs a `first_seq` above the first one's last.
    """
    rng = np.random.default_rng(seed)
    pyrng = random.Random(seed)
    drafts: list[Draft] = []
    valid = _pack(_body(1000, rng))

    for cut in sorted(pyrng.sample(range(len(valid)), min(3000, len(valid)))):
        drafts.append(("truncated", NODE, valid[:cut]))
    for _ in range(500):
        tail = pyrng.randbytes(pyrng.randint(1, 16))
        drafts.append(("trailing_bytes", NODE, lambda seq, t=tail: _later(rng)(seq) + t))
    drafts.extend(_length_bombs(pyrng, rng))
    drafts.extend(_nesting(pyrng))
    drafts.extend(_wrong_types(rng))
    drafts.extend(_numeric(pyrng, rng))
    drafts.extend(_identity_and_versions(pyrng, rng))
    for _ in range(1000):
        drafts.append(("random_bytes", NODE, pyrng.randbytes(pyrng.randint(1, 3000))))
    for level in ("bad node", "x" * 65, "ü", "", "a.b"):
        for _ in range(20):
            drafts.append(("bad_topic", level, _later(rng)))
    for i in range(200):
        garbage = pyrng.randbytes(pyrng.randint(1, 400))
        drafts.append(("chunk_garbage", f"{NODE}/chunk/{i % 7}", garbage))
    while len(drafts) < minimum - 1:
        cut = pyrng.randrange(len(valid))
        drafts.append(("truncated", NODE, valid[:cut]))
    pyrng.shuffle(drafts)

    # A decision for the replays to fall below: a future base version, first.
    anchor: Draft = ("future_base", NODE, _later(rng, lambda b: b.update(base_version=7)))
    items: list[Item] = []
    seq = first_seq
    for kind, level, draft in [anchor, *drafts]:
        if callable(draft):
            seq += 1
            items.append((kind, level, draft(seq)))
        else:
            items.append((kind, level, draft))
    return items


def _length_bombs(pyrng: random.Random, rng: np.random.Generator) -> Iterator[Draft]:
    headers = [b"\xdd", b"\xdf", b"\xdb", b"\xc6"]  # array32, map32, str32, bin32
    for _ in range(400):
        claim = pyrng.choice([2**32 - 1, 2**31, 10**9, 2**20, 70_000])
        yield "length_bomb", NODE, pyrng.choice(headers) + struct.pack(">I", claim) + b"\x00" * 8
    for _ in range(200):
        # A whole update whose first tensor's data bin claims far more than follows.
        claim = struct.pack(">I", pyrng.choice([2**32 - 1, 2**28, 3000]))

        def bomb(seq: int, claim: bytes = claim) -> bytes:
            body = _later(rng)(seq)
            marker = body.index(b"\xc5\x0a\x00")  # bin16 header of W's 2560 bytes
            return body[:marker] + b"\xc6" + claim + body[marker + 3 :]

        yield "length_bomb", NODE, bomb


def _nesting(pyrng: random.Random) -> Iterator[Draft]:
    for _ in range(300):
        depth = pyrng.choice([2, 50, 1000, 1100, 5000, 50_000])
        opener = pyrng.choice([b"\x91", b"\x81\xa1k"])
        yield "deep_nesting", NODE, b"\x81\xa1v" + opener * depth + b"\x01"
    for _ in range(100):
        depth = pyrng.choice([10, 2000, 20_000])
        yield "deep_nesting", NODE, b"\x91" * depth + b"\xc0"


def _wrong_types(rng: np.random.Generator) -> Iterator[Draft]:
    def set_field(field: str, value: Any) -> Mutation:
        return lambda body: body.__setitem__(field, value)

    def drop_field(field: str) -> Mutation:
        return lambda body: body.pop(field)

    def set_tensor(index: int, field: str, value: Any) -> Mutation:
        return lambda body: body["tensors"][index].__setitem__(field, value)

    def drop_tensor_field(index: int, field: str) -> Mutation:
        return lambda body: body["tensors"][index].pop(field)

    for _ in range(12):
        for field, values in WRONG_TYPED.items():
            for value in values:
                yield "wrong_type", NODE, _later(rng, set_field(field, value))
            yield "missing_field", NODE, _later(rng, drop_field(field))
        for field, values in WRONG_TENSOR.items():
            for value in values:
                yield "bad_tensor", NODE, _later(rng, set_tensor(0, field, value))
            yield "bad_tensor", NODE, _later(rng, drop_tensor_field(1, field))
        yield "bad_tensor", NODE, _later(rng, lambda b: b["tensors"].append(b["tensors"][0]))


def _numeric(pyrng: random.Random, rng: np.random.Generator) -> Iterator[Draft]:
    poison = [np.nan, np.inf, -np.inf]
    for _ in range(1000):
        spots = [(pyrng.randrange(2), pyrng.random(), pyrng.choice(poison)) for _ in range(3)]
        signalling = pyrng.random() < 0.2

        def poisoned(body: dict[str, Any], spots=spots, signalling=signalling) -> None:  # type: ignore[no-untyped-def]
            for which, where, value in spots:
                tensor = body["tensors"][which]
                values = np.frombuffer(tensor["data"], "<f4").copy()
                values[int(where * values.size)] = value
                if signalling:  # a signalling NaN bit pattern
                    values.view("<u4")[0] = 0x7F800001
                tensor["data"] = values.tobytes()

        yield "non_finite", NODE, _later(rng, poisoned)
    for _ in range(300):
        scale = pyrng.choice([1e5, 1e10, 1e30, 1e36])

        def blown_up(body: dict[str, Any], scale: float = scale) -> None:
            for tensor in body["tensors"]:
                values = np.frombuffer(tensor["data"], "<f4").astype(np.float64) / 0.01 * scale
                tensor["data"] = np.clip(values, -3e38, 3e38).astype("<f4").tobytes()

        yield "norm_bomb", NODE, _later(rng, blown_up)


def _identity_and_versions(pyrng: random.Random, rng: np.random.Generator) -> Iterator[Draft]:
    for _ in range(300):
        version = pyrng.choice([0, 2, 3, 255, 2**32, 2**63 - 1, -1])
        yield "wrong_version", NODE, _later(rng, lambda b, v=version: b.update(v=v))
    for _ in range(300):
        yield "node_mismatch", NODE, _later(rng, node="other")
        yield "node_mismatch", "other", _later(rng, node=NODE)
    for i in range(300):
        node = f"intruder{i % 10}"
        yield "unknown_node", node, _later(rng, node=node)
    for _ in range(300):
        base = pyrng.randint(1, 2**40)
        yield "future_base", NODE, _later(rng, lambda b, base=base: b.update(base_version=base))
    for seq in range(1, 301):  # below every stored decision (stream seqs start above 1000)
        yield "replay", NODE, _pack(_body(seq, rng))
