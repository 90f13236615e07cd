"""Reading one party's credentials folder (`fedbus broker add-node` writes it).

A device gets one folder: its broker user name and password, its signing key
(nodes), and for TLS the fleet's CA certificate and its own client
certificate and key. Commands take `--credentials DIR` and find each piece
by its file name; single flags (`--username`, `--tls-ca`, ...) override.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedbus.broker.errors import ConfigError

USERNAME_FILE = "username"
PASSWORD_FILE = "password"
SIGNING_KEY_FILE = "signing.key"
CA_CERT_FILE = "ca.crt"
CLIENT_CERT_FILE = "client.crt"
CLIENT_KEY_FILE = "client.key"


@dataclass(frozen=True)
class Credentials:
    """What a folder holds; a missing piece is None."""

    username: str | None = None
    password: str | None = None
    signing_key: Path | None = None
    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None


def _text(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"credentials: cannot read {path}: {exc}") from None


def _present(path: Path) -> Path | None:
    return path if path.is_file() else None


def load_credentials(folder: Path) -> Credentials:
    """The pieces found in `folder`; ConfigError if it is not a directory."""
    if not folder.is_dir():
        raise ConfigError(f"--credentials: {folder} is not a directory")
    return Credentials(
        username=_text(folder / USERNAME_FILE),
        password=_text(folder / PASSWORD_FILE),
        signing_key=_present(folder / SIGNING_KEY_FILE),
        ca_cert=_present(folder / CA_CERT_FILE),
        client_cert=_present(folder / CLIENT_CERT_FILE),
        client_key=_present(folder / CLIENT_KEY_FILE),
    )
