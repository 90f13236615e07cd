"""Command-line pieces every fedbus command shares: broker address, fleet, logging."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fedbus.broker.chunking import DEFAULT_CHUNK_LIMIT
from fedbus.broker.client import BrokerAddress
from fedbus.broker.credentials import Credentials, load_credentials
from fedbus.broker.errors import ConfigError
from fedbus.broker.topics import Topics

#: Smallest sensible chunk limit: room for the chunk header and some data.
MIN_CHUNK_LIMIT = 256


def add_bus_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("bus")
    group.add_argument("--host", default="127.0.0.1", help="MQTT broker host (default %(default)s)")
    group.add_argument(
        "--port", type=int, default=1883, help="MQTT broker port (default %(default)s)"
    )
    group.add_argument("--fleet", default="default", help="fleet id, the topic root fedbus/<fleet>")
    group.add_argument(
        "--credentials",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder from `fedbus broker add-node`: user name, password, signing key, "
        "TLS certificates (single flags below override its pieces)",
    )
    group.add_argument("--username", default=None, help="broker user name, if auth is on")
    group.add_argument(
        "--password-env",
        default="FEDBUS_PASSWORD",
        metavar="VAR",
        help="environment variable holding the broker password (wins over --credentials)",
    )
    group.add_argument(
        "--tls",
        action="store_true",
        help="connect with TLS (CA and client certificate from --credentials or the flags)",
    )
    group.add_argument("--tls-ca", type=Path, default=None, metavar="PEM", help="CA certificate")
    group.add_argument(
        "--tls-cert", type=Path, default=None, metavar="PEM", help="client certificate"
    )
    group.add_argument("--tls-key", type=Path, default=None, metavar="PEM", help="client key")
    group.add_argument(
        "--chunk-limit",
        type=int,
        default=DEFAULT_CHUNK_LIMIT,
        metavar="BYTES",
        help="send larger payloads as chunks; the broker's payload cap "
        "(default %(default)s, AWS IoT Core's; 0: never chunk)",
    )


def bus_from_args(args: argparse.Namespace) -> tuple[BrokerAddress, Topics]:
    try:
        topics = Topics(args.fleet)
    except Exception as exc:
        raise ConfigError(f"--fleet: {exc}") from None
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port: {args.port} is not a TCP port")
    creds = load_credentials(args.credentials) if args.credentials else Credentials()
    username = args.username or creds.username
    password = None
    if username:
        password = os.environ.get(args.password_env) or creds.password
    if args.chunk_limit < 0 or 0 < args.chunk_limit < MIN_CHUNK_LIMIT:
        raise ConfigError(
            f"--chunk-limit: must be 0 or >= {MIN_CHUNK_LIMIT}, got {args.chunk_limit}"
        )
    chunk_limit = args.chunk_limit or None
    tls_ca = args.tls_ca or creds.ca_cert
    if args.tls and tls_ca is None:
        raise ConfigError("--tls: no CA certificate (give --tls-ca or --credentials with ca.crt)")
    address = BrokerAddress(
        args.host,
        args.port,
        username,
        password,
        chunk_limit=chunk_limit,
        tls_ca=tls_ca if args.tls else None,
        tls_cert=(args.tls_cert or creds.client_cert) if args.tls else None,
        tls_key=(args.tls_key or creds.client_key) if args.tls else None,
    )
    return address, topics


def add_tool_arguments(parser: argparse.ArgumentParser, role: str) -> None:
    """Options of the bus tools (record, replay): client id, progress, connect timeout."""
    parser.add_argument(
        "--client-id", default=None, help=f"MQTT client id (default fedbus-<fleet>-{role}-<pid>)"
    )
    parser.add_argument(
        "--progress-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="log progress this often on stderr (0: never; default %(default)s)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="give up (exit 1) if the broker does not answer within this (default %(default)s)",
    )


def check_tool_arguments(args: argparse.Namespace) -> None:
    if not args.connect_timeout > 0:
        raise ConfigError(f"--connect-timeout must be > 0, got {args.connect_timeout}")
    if args.progress_every < 0:
        raise ConfigError(f"--progress-every must be >= 0, got {args.progress_every}")


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.add_argument("--log-json", action="store_true", help="one JSON object per log line")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str = "INFO", as_json: bool = False) -> None:
    """Structured logs to stderr; stdout stays free for command output."""
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
        logging.Formatter.converter = time.gmtime
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def stop_on_signals(stopping: threading.Event) -> None:
    """Set `stopping` on SIGTERM and SIGINT so daemons shut down cleanly."""

    def _handler(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)


def command_main(
    prog: str,
    description: str | None,
    configure_parser: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
    argv: list[str] | None,
    epilog: str | None = None,
) -> int:
    """Parse `argv` for one subcommand and run it; a ConfigError exits 2 naming the field.

    `epilog` is printed as written (a listing of actions, say) under --help.
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter
        if epilog
        else argparse.HelpFormatter,
    )
    configure_parser(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ConfigError as exc:
        parser.exit(2, f"{prog}: error: {exc}\n")
