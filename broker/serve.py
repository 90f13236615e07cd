"""`fedbus broker`: run the project's mosquitto in the foreground.

The demo needs one command that starts a correctly configured broker and
stops it cleanly (saving retained models and sessions) on Ctrl-C or a
service manager's SIGTERM. It is a thin shell around `ManagedBroker`, so the
demo broker and the test brokers are started by the same code.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from fedbus.broker import auth_cli
from fedbus.broker.accounts import AuthDir
from fedbus.broker.auth_cli import ACTIONS
from fedbus.broker.cli_common import command_main
from fedbus.broker.errors import BrokerError, ConfigError
from fedbus.broker.launcher import DEFAULT_CONFIG, ManagedBroker

#: How often the foreground loop checks that mosquitto is still alive.
_WATCH_INTERVAL_S = 0.5


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the `fedbus broker` options to ``parser``."""
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        metavar="PATH",
        help="mosquitto config to derive the run's config from (default: the packaged "
        "mosquitto.conf)",
    )
    parser.add_argument(
        "--port", type=int, default=1883, help="TCP port to listen on (default: 1883)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    parser.add_argument(
        "--auth-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="turn auth on with this directory's password file and ACL (made by "
        "`fedbus broker add-node`); anonymous clients are refused; changes are "
        "picked up within a second",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="listen with TLS only, certificates from --auth-dir's tls/ "
        "(`fedbus broker init-tls`); clients log in with their certificate",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="PATH",
        help="directory for the persistence database, derived config and log; keeps "
        "retained models and sessions across restarts (default: a temporary directory "
        "removed on exit)",
    )


def security_lines(auth_dir: Path | None, tls: bool) -> list[str]:
    """Config lines for auth (password file, ACL) and, with `tls`, a TLS-only listener."""
    if auth_dir is None:
        if tls:
            raise ConfigError("--tls needs --auth-dir (the CA and certificates live there)")
        return []
    auth = AuthDir(auth_dir)
    auth.accounts()  # fails early, naming the file, if the directory is not set up
    lines = auth.broker_lines()
    if tls:
        from fedbus.broker.certificates import TlsFiles, broker_tls_lines

        files = TlsFiles(
            auth.tls_dir / "ca.crt", auth.tls_dir / "broker.crt", auth.tls_dir / "broker.key"
        )
        if not files.ca_cert.is_file():
            raise ConfigError(f"--tls: no {files.ca_cert}; run `fedbus broker init-tls` first")
        lines += broker_tls_lines(files)
    return lines


def _stamps(paths: list[Path]) -> list[int]:
    """Modification times of the auth files: a change means mosquitto must reload."""
    return [p.stat().st_mtime_ns if p.exists() else 0 for p in paths]


def _fail(message: str, code: int) -> int:
    print(f"fedbus broker: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    """Run the broker until SIGINT or SIGTERM; return the process exit code.

    0 after a clean stop, 2 for a bad configuration (unreadable --config,
    bad port), 1 when mosquitto is missing, cannot start or dies.
    """
    config: Path = args.config
    if not config.is_file():
        return _fail(f"--config: {config} is not a readable file", 2)
    if not 0 < args.port < 65536:
        return _fail(f"--port: {args.port} is not a TCP port (1-65535)", 2)

    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        extra_lines = security_lines(args.auth_dir, args.tls)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    broker = ManagedBroker(
        config, port=args.port, host=args.host, data_dir=args.data_dir, extra_lines=extra_lines
    )
    auth = None if args.auth_dir is None else AuthDir(args.auth_dir)
    auth_files = [] if auth is None else [auth.password_path, auth.acl_path]
    seen = _stamps(auth_files)
    try:
        try:
            broker.start()
        except ConfigError as exc:
            return _fail(str(exc), 2)
        except BrokerError as exc:
            return _fail(str(exc), 1)
        print(
            f"fedbus broker: listening on {broker.url} (pid {broker.pid}); "
            f"log {broker.log_path}; Ctrl-C to stop",
            flush=True,
        )
        while not stop_requested.wait(_WATCH_INTERVAL_S):
            if _stamps(auth_files) != seen:
                seen = _stamps(auth_files)
                broker.reload()
                print("fedbus broker: accounts changed; mosquitto reloaded them", flush=True)
            if not broker.running:
                # Read the log now: stop() removes a temporary data dir.
                tail = broker.log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
                return _fail(f"mosquitto exited unexpectedly; its log ends:\n{tail}", 1)
        print("fedbus broker: stopping", flush=True)
        return 0
    finally:
        broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ACTIONS:
        return auth_cli.main(argv[0], argv[1:])
    return command_main("fedbus broker", __doc__, configure_parser, run, argv, epilog=_ACTIONS_HELP)


_ACTIONS_HELP = "account actions (`fedbus broker ACTION --help`):\n" + "\n".join(
    f"  {name:<14}{text}" for name, text in ACTIONS.items()
)
