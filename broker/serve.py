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
        "--data-dir",
        type=Path,
        default=None,
        metavar="PATH",
        help="directory for the persistence database, derived config and log; keeps "
        "retained models and sessions across restarts (default: a temporary directory "
        "removed on exit)",
    )


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
    broker = ManagedBroker(config, port=args.port, host=args.host, data_dir=args.data_dir)
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
    return command_main("fedbus broker", __doc__, configure_parser, run, argv)
