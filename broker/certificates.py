"""The fleet's certificate authority: CA, broker and client certificates.

A fleet's TLS rests on one small private CA. `init_ca` creates it next to the
broker's server certificate; `issue_client_cert` signs one certificate per
node or service account, with the node id as the subject's common name, so
that mosquitto's ``use_identity_as_username true`` turns the certificate
into the MQTT username and the ACL applies per node. `broker_tls_lines` gives
the listener lines that make mosquitto use these files.

Keys are ECDSA P-256, signatures SHA-256. Private keys are written unencrypted
(mosquitto and paho read them without a passphrase) with mode 0600, created
with that mode so they are never readable by others, not even for an
instant; no key material ever reaches a log line or an error message.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedbus.broker.durable_files import write_atomically
from fedbus.broker.errors import ConfigError, ProtocolError
from fedbus.broker.topics import validate_id

log = logging.getLogger(__name__)

CA_CERT_NAME = "ca.crt"
CA_KEY_NAME = "ca.key"
BROKER_CERT_NAME = "broker.crt"
BROKER_KEY_NAME = "broker.key"
CLIENT_CERT_NAME = "client.crt"
CLIENT_KEY_NAME = "client.key"

DEFAULT_BROKER_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1")
DEFAULT_DAYS = 825
#: The oldest TLS version the broker accepts; mosquitto 2.0 reads
#: ``tls_version`` as a minimum (1.6 read it as the only version allowed).
MIN_TLS_VERSION = "tlsv1.2"

#: A certificate is valid from this long before it was made, so a device
#: whose clock runs a little behind the CA's does not reject it.
_CLOCK_SKEW = datetime.timedelta(minutes=5)
_MAX_DAYS = 36500
_KEY_MODE = 0o600
_DIR_MODE = 0o700
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+")


@dataclass(frozen=True)
class TlsFiles:
    """What one party needs for mutual TLS: the CA certificate that verifies
    the other side, its own certificate and its own private key."""

    ca_cert: Path
    cert: Path
    key: Path


def ca_exists(directory: Path) -> bool:
    """True if `directory` already holds a CA certificate or key."""
    directory = Path(directory)
    return (directory / CA_CERT_NAME).exists() or (directory / CA_KEY_NAME).exists()


def init_ca(
    directory: Path,
    *,
    broker_hosts: Sequence[str] = DEFAULT_BROKER_HOSTS,
    days: int = DEFAULT_DAYS,
    fleet: str = "default",
) -> TlsFiles:
    """Create a fleet's CA and the broker's server certificate in `directory`.

    Writes ``ca.crt``, ``ca.key``, ``broker.crt`` and ``broker.key`` (keys
    0600). The broker certificate names every entry of `broker_hosts` in its
    subjectAltName, as an IP address or a DNS name; clients check the host
    they connect to against that list. Raises ConfigError if any of the four
    files exists already (a new CA would orphan every certificate the old one
    issued) or an argument is invalid. Returns the broker's files.
    """
    directory = Path(directory)
    hosts = _check_hosts(broker_hosts)
    lifetime = _check_days(days)
    fleet = _check_name(fleet, "fleet")
    paths = [
        directory / name for name in (CA_CERT_NAME, CA_KEY_NAME, BROKER_CERT_NAME, BROKER_KEY_NAME)
    ]
    existing = [str(path) for path in paths if path.exists()]
    if existing:
        raise ConfigError(
            f"tls directory: refusing to overwrite {', '.join(existing)}; "
            "a new CA would invalidate every certificate the old one issued. "
            "Choose an empty directory or remove the old CA deliberately."
        )

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"fedbus {fleet} CA", fleet)
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), now, lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    broker_key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([_general_name(host) for host in hosts])
    broker_cert = (
        _leaf(
            _name(hosts[0], fleet),
            ca_name,
            broker_key.public_key(),
            ca_key,
            ExtendedKeyUsageOID.SERVER_AUTH,
            now,
            lifetime,
        )
        .add_extension(san, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    # Keys and the broker certificate first, the CA certificate last: a crash
    # part-way leaves a directory that init refuses, never a half CA that
    # issue_client_cert would use.
    try:
        _make_private_dir(directory)
        _write_key(directory / CA_KEY_NAME, ca_key)
        _write_key(directory / BROKER_KEY_NAME, broker_key)
        write_atomically(directory / BROKER_CERT_NAME, _pem(broker_cert))
        write_atomically(directory / CA_CERT_NAME, _pem(ca_cert))
    except OSError as exc:
        raise ConfigError(f"tls directory: cannot write {directory}: {exc.strerror}") from None
    log.info(
        "created CA for fleet %s and broker certificate for %s in %s (valid %d days)",
        fleet,
        ", ".join(hosts),
        directory,
        lifetime,
    )
    return TlsFiles(
        ca_cert=directory / CA_CERT_NAME,
        cert=directory / BROKER_CERT_NAME,
        key=directory / BROKER_KEY_NAME,
    )


def issue_client_cert(
    directory: Path, common_name: str, out_dir: Path, *, days: int = DEFAULT_DAYS
) -> TlsFiles:
    """Sign a client certificate with the CA in `directory`.

    The subject's common name is `common_name`, a node id or a service
    account name (the pattern of `validate_id`); with
    ``use_identity_as_username`` it becomes the MQTT username. Writes
    ``client.crt``, ``client.key`` (0600) and a copy of ``ca.crt`` into
    `out_dir`, replacing an older client certificate there, and returns them.
    Raises ConfigError for a bad name, a bad lifetime or a missing or
    unreadable CA.
    """
    directory = Path(directory)
    out_dir = Path(out_dir)
    common_name = _check_name(common_name, "common name")
    lifetime = _check_days(days)
    ca_cert, ca_key = _load_ca(directory)

    now = datetime.datetime.now(datetime.timezone.utc)
    client_key = ec.generate_private_key(ec.SECP256R1())
    fleet = _attribute(ca_cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
    client_cert = _leaf(
        _name(common_name, fleet),
        ca_cert.subject,
        client_key.public_key(),
        ca_key,
        ExtendedKeyUsageOID.CLIENT_AUTH,
        now,
        lifetime,
    ).sign(ca_key, hashes.SHA256())

    files = TlsFiles(
        ca_cert=out_dir / CA_CERT_NAME,
        cert=out_dir / CLIENT_CERT_NAME,
        key=out_dir / CLIENT_KEY_NAME,
    )
    try:
        _make_private_dir(out_dir)
        _write_key(files.key, client_key)
        write_atomically(files.cert, _pem(client_cert))
        write_atomically(files.ca_cert, _pem(ca_cert))
    except OSError as exc:
        raise ConfigError(f"tls output: cannot write {out_dir}: {exc.strerror}") from None
    log.info(
        "issued client certificate for %s (serial %x, valid %d days) in %s",
        common_name,
        client_cert.serial_number,
        lifetime,
        out_dir,
    )
    return files


def broker_tls_lines(
    files: TlsFiles, *, require_certificate: bool = True, identity_as_username: bool = True
) -> list[str]:
    """The mosquitto config lines that make a listener speak TLS with `files`.

    They are listener-scoped, so they belong after the listener line (which
    is where ManagedBroker's ``extra_lines`` go). ``identity_as_username``
    needs ``require_certificate``: without a client certificate there is no
    identity, and mosquitto would refuse every client.
    """
    if identity_as_username and not require_certificate:
        raise ConfigError(
            "tls: identity_as_username needs require_certificate "
            "(the username is the client certificate's common name)"
        )
    for path in (files.ca_cert, files.cert, files.key):
        text = str(path)
        if text != text.strip() or "\n" in text or "\r" in text:
            raise ConfigError(f"tls: {text!r} cannot be written into a mosquitto config line")
    return [
        f"cafile {files.ca_cert}",
        f"certfile {files.cert}",
        f"keyfile {files.key}",
        f"require_certificate {_flag(require_certificate)}",
        f"use_identity_as_username {_flag(identity_as_username)}",
        f"tls_version {MIN_TLS_VERSION}",
    ]


# --- building certificates ------------------------------------------------


def _name(common_name: str, fleet: str | None) -> x509.Name:
    attributes = [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedbus"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ]
    if fleet:
        attributes.insert(1, x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, fleet))
    return x509.Name(attributes)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
    days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _leaf(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    ca_key: ec.EllipticCurvePrivateKey,
    purpose: x509.ObjectIdentifier,
    now: datetime.datetime,
    days: int,
) -> x509.CertificateBuilder:
    """An end-entity certificate (broker or client) for one TLS `purpose`."""
    return (
        _builder(subject, issuer, public_key, now, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; a leaf signs TLS handshakes."""
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _attribute(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if values else None


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _public_bytes(key: object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return b""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _flag(value: bool) -> str:
    return "true" if value else "false"


# --- checking arguments -----------------------------------------------------


def _check_name(value: str, what: str) -> str:
    try:
        return validate_id(value, what)
    except ProtocolError as exc:
        raise ConfigError(str(exc)) from None


def _check_days(days: int) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= _MAX_DAYS:
        raise ConfigError(f"days: must be a whole number from 1 to {_MAX_DAYS}, got {days!r}")
    return days


def _check_hosts(hosts: Sequence[str]) -> list[str]:
    if isinstance(hosts, str):
        raise ConfigError(f"broker_hosts: give a list of names, not one string {hosts!r}")
    checked: list[str] = []
    for host in hosts:
        if not isinstance(host, str):
            raise ConfigError(f"broker_hosts: {host!r} is not a host name or IP address")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not _HOSTNAME.fullmatch(host):
                raise ConfigError(
                    f"broker_hosts: {host!r} is neither an IP address nor a DNS name"
                ) from None
        if host not in checked:
            checked.append(host)
    if not checked:
        raise ConfigError("broker_hosts: name at least one host or IP address of the broker")
    return checked


# --- files ----------------------------------------------------------------


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Read the CA of `directory` and check that its key and certificate match.

    Error messages name the file, never its content: a key must not end up in
    a log because it failed to parse.
    """
    cert_path, key_path = directory / CA_CERT_NAME, directory / CA_KEY_NAME
    if not (cert_path.is_file() and key_path.is_file()):
        raise ConfigError(
            f"tls directory: no CA in {directory} (needs {CA_CERT_NAME} and {CA_KEY_NAME}); "
            "create one first with init_ca"
        )
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        raise ConfigError(f"tls directory: {cert_path} is not a readable PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        raise ConfigError(
            f"tls directory: {key_path} is not a readable unencrypted PEM private key"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"tls directory: {key_path} is not an ECDSA key")
    if _public_bytes(key.public_key()) != _public_bytes(cert.public_key()):
        raise ConfigError(f"tls directory: {key_path} is not the key of {cert_path}")
    return cert, key


def _make_private_dir(directory: Path) -> None:
    if not directory.exists():
        directory.mkdir(mode=_DIR_MODE, parents=True)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write a private key atomically, created 0600 so no one else may read it."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomically(path, data, mode=_KEY_MODE)
