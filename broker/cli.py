"""`fedbus`: one command, one subcommand per daemon or job.

Subcommand modules are imported only when chosen, so `fedbus broker` on a
small gateway does not pay for numba's import.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "broker": ("fedbus.broker.serve", "run the project's Mosquitto broker in the foreground"),
    "aggregator": ("fedbus.aggregator.cli", "run the asynchronous aggregation daemon"),
    "node": ("fedbus.node.cli", "run one edge node on local data"),
    "demo": ("fedbus.node.demo", "broker + aggregator + simulated fleet on a real data set"),
    "record": ("fedbus.broker.record_cli", "record a fleet's MQTT traffic to a .fbrec file"),
    "replay": ("fedbus.broker.replay_cli", "publish a .fbrec recording back to a broker"),
    "export": ("fedbus.node.export_cli", "write a node's or the fleet's model as a portable file"),
    "predict": ("fedbus.node.predict_cli", "predict for the rows of a CSV from a model file"),
    "status": ("fedbus.broker.status_cli", "live view of a running fleet, from the bus alone"),
    "report": ("fedbus.node.report_cli", "plots of a run from its event log and scores"),
}


def _top_parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<12}{text}" for name, (_, text) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="fedbus",
        description="Asynchronous federated learning for edge fleets over MQTT.",
        epilog=f"commands:\n{listing}\n\nRun `fedbus COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    parsed = parser.parse_args(argv[:1])
    module = importlib.import_module(COMMANDS[parsed.command][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
