"""A fleet's accounts on disk: who may log in to the broker and with which key.

One directory (`fedbus broker --auth-dir`, default `fedbus-auth`) holds

    accounts.json        names, roles and nodes' public signing keys (no secrets)
    passwd               Mosquitto password file (PBKDF2-SHA512 hashes, mode 0600)
    acl                  Mosquitto ACL file written from accounts.json
    tls/                 the fleet's CA and the broker's certificate, if made
    credentials/<name>/  what one party needs, to be copied onto its device:
        username, password, signing.key (nodes), ca.crt, client.crt, client.key

The registry is the source of truth; passwd and acl are rewritten from it on
every change, so they never drift apart. Each change writes files atomically
(a crash leaves the old or the new set) and a running `fedbus broker
--auth-dir` reloads them. Passwords are generated here, 32 random bytes in
URL-safe base64, so nobody picks a weak one; only their hashes stay in the
auth directory next to the broker.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from fedbus.broker.acl import Role, acl_text
from fedbus.broker.credentials import PASSWORD_FILE as SECRET_FILE
from fedbus.broker.credentials import SIGNING_KEY_FILE, USERNAME_FILE
from fedbus.broker.durable_files import write_atomically
from fedbus.broker.errors import ConfigError, ProtocolError
from fedbus.broker.signing import (
    new_signing_key,
    parse_public_key,
    public_key_bytes,
    seed_hex,
)
from fedbus.broker.topics import Topics, validate_id

#: The aggregator's and the default observer's account names.
AGGREGATOR_ACCOUNT = "aggregator"
OBSERVER_ACCOUNT = "observer"
SERVICE_ACCOUNTS = {AGGREGATOR_ACCOUNT: Role.AGGREGATOR, OBSERVER_ACCOUNT: Role.OBSERVER}

#: Mosquitto 2.0's own password hash: "$7$" PBKDF2-HMAC-SHA512, 101 rounds by
#: default (mosquitto_passwd), a 12-byte salt, base64 salt and hash.
_PBKDF2_ROUNDS = 101
_SALT_BYTES = 12

REGISTRY_FILE = "accounts.json"
PASSWORD_FILE = "passwd"
ACL_FILE = "acl"
CREDENTIALS_DIR = "credentials"
TLS_DIR = "tls"


def mosquitto_password_hash(password: str, salt: bytes, rounds: int = _PBKDF2_ROUNDS) -> str:
    """The `$7$` hash Mosquitto 2.0 checks a password against (as mosquitto_passwd writes)."""
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, rounds)
    encode = base64.b64encode
    return f"$7${rounds}${encode(salt).decode()}${encode(digest).decode()}"


def _write_private(path: Path, text: str) -> None:
    """A secret file, readable by its owner only, written atomically."""
    write_atomically(path, text.encode("utf-8"), mode=0o600)


@dataclass(frozen=True)
class Account:
    name: str
    role: Role
    #: Ed25519 public key of a node (32 bytes); None for service accounts.
    verify_key: bytes | None = None


class AuthDir:
    """The accounts of one fleet in one directory; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def of(cls, path: Path) -> AuthDir:
        """The auth dir given either itself or its accounts.json."""
        path = Path(path)
        return cls(path.parent if path.name == REGISTRY_FILE else path)

    # ---------------------------------------------------------------- paths

    @property
    def registry_path(self) -> Path:
        return self.root / REGISTRY_FILE

    @property
    def password_path(self) -> Path:
        return self.root / PASSWORD_FILE

    @property
    def acl_path(self) -> Path:
        return self.root / ACL_FILE

    @property
    def tls_dir(self) -> Path:
        return self.root / TLS_DIR

    def credentials_dir(self, name: str) -> Path:
        return self.root / CREDENTIALS_DIR / validate_id(name, "account name")

    @property
    def exists(self) -> bool:
        return self.registry_path.is_file()

    # ---------------------------------------------------------------- reading

    def fleet(self) -> str:
        return str(self._load()["fleet"])

    def accounts(self) -> list[Account]:
        """Every account, sorted by name."""
        raw = self._load()["accounts"]
        out = []
        for name, entry in sorted(raw.items()):
            try:
                role = Role(entry["role"])
            except (KeyError, ValueError, TypeError):
                raise ConfigError(
                    f"{self.registry_path}: account {name!r} has no valid role"
                ) from None
            key = entry.get("verify_key")
            where = f"{self.registry_path}: account {name!r}"
            out.append(Account(name, role, None if key is None else parse_public_key(key, where)))
        return out

    def nodes(self) -> list[Account]:
        return [a for a in self.accounts() if a.role is Role.NODE]

    def verify_keys(self) -> dict[str, bytes]:
        """Node id -> public key, what the aggregator checks signatures with."""
        return {a.name: a.verify_key for a in self.nodes() if a.verify_key is not None}

    def _load(self) -> dict:  # type: ignore[type-arg]
        try:
            raw = json.loads(self.registry_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                f"auth dir {self.root}: no {REGISTRY_FILE}; create it with "
                "`fedbus broker add-node <id> --auth-dir ...`"
            ) from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.registry_path}: unreadable: {exc}") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("accounts"), dict):
            raise ConfigError(f"{self.registry_path}: not an accounts registry")
        return raw

    # ---------------------------------------------------------------- changing

    def initialize(self, fleet: str) -> None:
        """Create the directory with the aggregator and observer accounts (idempotent)."""
        Topics(fleet)  # validates the fleet id
        if self.exists:
            if self.fleet() != fleet:
                raise ConfigError(
                    f"auth dir {self.root} belongs to fleet {self.fleet()!r}, not {fleet!r}"
                )
            return
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self._save({"fleet": fleet, "accounts": {}}, hashes={})
        for name, role in SERVICE_ACCOUNTS.items():
            self.add(name, role)

    def add(self, name: str, role: Role) -> Account:
        """Enrol an account: new password (and signing key for a node), files rewritten."""
        try:
            validate_id(name, "account name")
        except ProtocolError as exc:
            raise ConfigError(str(exc)) from None
        registry = self._load()
        if name in registry["accounts"]:
            raise ConfigError(f"account {name!r} already exists; remove it first to renew it")
        if role is Role.NODE and name in SERVICE_ACCOUNTS:
            raise ConfigError(f"{name!r} is reserved for the {SERVICE_ACCOUNTS[name].value}")
        folder = self.credentials_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        password = secrets.token_urlsafe(32)
        entry: dict[str, str] = {"role": role.value}
        verify_key = None
        if role is Role.NODE:
            key = new_signing_key()
            verify_key = public_key_bytes(key)
            entry["verify_key"] = verify_key.hex()
            _write_private(folder / SIGNING_KEY_FILE, seed_hex(key) + "\n")
        _write_private(folder / SECRET_FILE, password + "\n")
        write_atomically(folder / USERNAME_FILE, (name + "\n").encode())
        hashes = self._hashes()
        hashes[name] = mosquitto_password_hash(password, secrets.token_bytes(_SALT_BYTES))
        registry["accounts"][name] = entry
        self._save(registry, hashes)
        return Account(name, role, verify_key)

    def remove(self, name: str) -> None:
        """Withdraw an account: it can no longer log in nor sign accepted updates."""
        registry = self._load()
        if name not in registry["accounts"]:
            raise ConfigError(f"no account {name!r} in {self.registry_path}")
        del registry["accounts"][name]
        hashes = self._hashes()
        hashes.pop(name, None)
        self._save(registry, hashes)
        folder = self.root / CREDENTIALS_DIR / name
        for child in folder.glob("*"):
            child.unlink()
        if folder.is_dir():
            folder.rmdir()

    def _hashes(self) -> dict[str, str]:
        hashes: dict[str, str] = {}
        if self.password_path.is_file():
            for line in self.password_path.read_text(encoding="utf-8").splitlines():
                user, sep, digest = line.partition(":")
                if sep:
                    hashes[user] = digest
        return hashes

    def _save(self, registry: dict, hashes: dict[str, str]) -> None:  # type: ignore[type-arg]
        """Rewrite passwd and acl from the registry, then the registry itself."""
        topics = Topics(registry["fleet"])
        roles = [(name, Role(entry["role"])) for name, entry in registry["accounts"].items()]
        _write_private(
            self.password_path,
            "".join(f"{name}:{hashes[name]}\n" for name, _ in sorted(roles) if name in hashes),
        )
        write_atomically(self.acl_path, acl_text(topics, roles).encode("utf-8"), mode=0o600)
        write_atomically(
            self.registry_path, (json.dumps(registry, indent=2, sort_keys=True) + "\n").encode()
        )

    # ---------------------------------------------------------------- broker

    def broker_lines(self) -> list[str]:
        """Mosquitto config lines that turn auth on with these files.

        `use_username_as_clientid` stops a node from taking over another
        node's session by connecting with its client id: the broker uses
        the authenticated name instead of whatever id the client sent.
        """
        return [
            "allow_anonymous false",
            f"password_file {self.password_path.resolve()}",
            f"acl_file {self.acl_path.resolve()}",
            "use_username_as_clientid true",
        ]
