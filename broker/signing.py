"""Ed25519 signatures on updates and feature statistics (docs/PROTOCOL.md section 17).

The broker's ACL stops node A from publishing on node B's topic, but only on
a broker that is configured right; a bridged or misconfigured broker, or a
recording replayed later, carries whatever was put on it. A signature made
with the node's own key, checked by the aggregator against the key it
enrolled, protects the model independently of the broker.

What is signed is a SHA-512 digest of the update's fields in one canonical
byte layout, not the msgpack bytes: two msgpack encoders may lay out the
same map differently, and a small device should be able to compute the
digest from its own fields without re-encoding anything. The digest covers
the fleet (an update for one fleet is worthless in another), node, seq,
base version, sample count, train loss and every byte of every tensor; the
signature is Ed25519 over the 64-byte digest. A node's feature statistics
(`stats`), which set the normalization every node trains with, are signed
the same way over their own digest.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from fedbus.broker.errors import ConfigError
from fedbus.broker.messages import FeatureStatistics, UpdateMessage
from fedbus.broker.tensors import WireTensor

#: First bytes of the digested stream; a new layout gets a new tag.
DOMAIN_TAG = b"fedbus-update-signature-v1\x00"
STATS_DOMAIN_TAG = b"fedbus-stats-signature-v1\x00"
SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32
SEED_BYTES = 32


def _text(value: str) -> bytes:
    """A string as u16 little-endian length + UTF-8, so fields cannot run together."""
    raw = value.encode("utf-8")
    return struct.pack("<H", len(raw)) + raw


def _blob(value: bytes) -> bytes:
    """The length prefix (u64 LE) of a byte field; the bytes follow separately."""
    return struct.pack("<Q", len(value))


def _tensor_parts(tensor: WireTensor) -> list[bytes]:
    parts = [
        _text(tensor.name),
        _text(tensor.dtype),
        _text(tensor.codec),
        struct.pack("<I", len(tensor.shape)),
        *(struct.pack("<Q", dim) for dim in tensor.shape),
        struct.pack("<I", tensor.block),
        _text(tensor.values_codec),
    ]
    for field in (tensor.scales, tensor.indices, tensor.data):
        parts += [_blob(field), field]
    return parts


def update_digest(fleet: str, message: UpdateMessage) -> bytes:
    """SHA-512 of the canonical byte layout of `message` in `fleet` (PROTOCOL 17.1).

    Tensor bytes are fed to the hash in place, so a 1 MB update is not copied.
    """
    digest = hashlib.sha512(DOMAIN_TAG)
    loss = message.train_loss
    header = [
        _text(fleet),
        _text(message.node),
        struct.pack("<QQQ", message.seq, message.base_version, message.num_samples),
        b"\x00" if loss is None else b"\x01" + struct.pack("<d", loss),
        struct.pack("<I", len(message.tensors)),
    ]
    for part in header:
        digest.update(part)
    for tensor in message.tensors:
        for part in _tensor_parts(tensor):
            digest.update(part)
    return digest.digest()


def sign_update(key: Ed25519PrivateKey, fleet: str, message: UpdateMessage) -> bytes:
    """The 64-byte Ed25519 signature a node puts in its update's `sig` field."""
    return key.sign(update_digest(fleet, message))


def verify_update(public_key: bytes, fleet: str, message: UpdateMessage) -> bool:
    """True when `message.signature` was made over this update by `public_key`'s owner."""
    return _verify(public_key, message.signature, update_digest(fleet, message))


def stats_digest(fleet: str, stats: FeatureStatistics) -> bytes:
    """SHA-512 of a node's feature statistics in their wire layout (PROTOCOL 17.3).

    The pooled normalization changes what every node trains on, so forged
    statistics would bend the model as surely as a forged update.
    """
    digest = hashlib.sha512(STATS_DOMAIN_TAG)
    digest.update(_text(fleet) + _text(stats.node) + struct.pack("<I", stats.n_features))
    digest.update(np.asarray(stats.count, dtype="<u8").tobytes())
    for vector in (stats.total, stats.total_sq, stats.minimum, stats.maximum):
        digest.update(np.asarray(vector, dtype="<f8").tobytes())
    return digest.digest()


def sign_stats(key: Ed25519PrivateKey, fleet: str, stats: FeatureStatistics) -> bytes:
    return key.sign(stats_digest(fleet, stats))


def verify_stats(public_key: bytes, fleet: str, stats: FeatureStatistics) -> bool:
    return _verify(public_key, stats.signature, stats_digest(fleet, stats))


def _verify(public_key: bytes, signature: bytes | None, digest: bytes) -> bool:
    if signature is None or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, digest)
    except (InvalidSignature, ValueError):
        return False
    return True


# ---------------------------------------------------------------- keys on disk


def new_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_key_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def seed_hex(key: Ed25519PrivateKey) -> str:
    """The 32-byte private seed as hex: the whole key, in a form any device can read."""
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Read a node's signing key file: 64 hex characters (the seed), nothing else."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"signing key: cannot read {path}: {exc}") from None
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        seed = b""
    if len(seed) != SEED_BYTES:
        # The message never echoes the file's content: it is a secret.
        raise ConfigError(f"signing key: {path} must hold {SEED_BYTES * 2} hex characters")
    return Ed25519PrivateKey.from_private_bytes(seed)


def parse_public_key(text: str, where: str) -> bytes:
    """A public key from its 64-hex-character form, or ConfigError naming `where`."""
    try:
        raw = bytes.fromhex(text)
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ConfigError(f"{where}: a public key is {PUBLIC_KEY_BYTES * 2} hex characters")
    return raw
