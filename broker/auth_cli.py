"""`fedbus broker add-node | remove-node | list-nodes | add-observer | init-tls`.

Manages a fleet's auth directory (fedbus.broker.accounts): broker password
file and ACL, nodes' signing keys, and with `init-tls` the fleet's CA and
certificates. A running `fedbus broker --auth-dir` picks up every change
within a second. Secrets are written to files (mode 0600), never printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from fedbus.broker.accounts import AuthDir, Role
from fedbus.broker.errors import ConfigError

DEFAULT_AUTH_DIR = Path("fedbus-auth")

ACTIONS = {
    "add-node": "enrol a node: broker password, ACL entry, signing key (and TLS cert)",
    "remove-node": "withdraw a node: it can no longer log in, and its key is forgotten",
    "list-nodes": "list the accounts of the fleet (names, roles, public keys)",
    "add-observer": "a read-only account for a status view or recorder",
    "init-tls": "create the fleet's CA, the broker's certificate and client certificates",
}


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--auth-dir",
        type=Path,
        default=DEFAULT_AUTH_DIR,
        metavar="DIR",
        help="the fleet's auth directory (default %(default)s)",
    )
    parser.add_argument(
        "--fleet",
        default=None,
        help="fleet id of a new directory (default: default); an existing one keeps its own",
    )


def _configure(action: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"fedbus broker {action}", description=ACTIONS[action])
    _common(parser)
    if action in ("add-node", "remove-node", "add-observer"):
        parser.add_argument("name", help="node id or account name ([A-Za-z0-9_-]{1,64})")
    if action == "list-nodes":
        parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    if action == "init-tls":
        parser.add_argument(
            "--broker-host",
            action="append",
            default=None,
            metavar="NAME",
            help="DNS name or IP address clients use to reach the broker (repeat; "
            "default localhost and 127.0.0.1)",
        )
        parser.add_argument("--days", type=int, default=825, help="certificate lifetime")
    return parser


def _issue_cert_if_tls(auth: AuthDir, name: str) -> bool:
    if not (auth.tls_dir / "ca.crt").is_file():
        return False
    from fedbus.broker.certificates import issue_client_cert

    issue_client_cert(auth.tls_dir, name, auth.credentials_dir(name))
    return True


def _open(args: argparse.Namespace) -> AuthDir:
    """The auth dir, created for `--fleet` if new; a named fleet must match an existing one."""
    auth = AuthDir(args.auth_dir)
    if args.fleet is not None or not auth.exists:
        auth.initialize(args.fleet or "default")
    return auth


def _add(args: argparse.Namespace, role: Role) -> int:
    auth = _open(args)
    account = auth.add(args.name, role)
    with_cert = _issue_cert_if_tls(auth, account.name)
    print(f"added {role.value} {account.name}; credentials in {auth.credentials_dir(account.name)}")
    if account.verify_key is not None:
        print(f"  signing key (public): {account.verify_key.hex()}")
    if with_cert:
        print("  TLS client certificate issued (CN = the account name)")
    return 0


def _list(args: argparse.Namespace) -> int:
    auth = AuthDir(args.auth_dir)
    accounts = auth.accounts()
    if args.json:
        entries = [
            {
                "name": a.name,
                "role": a.role.value,
                "verify_key": None if a.verify_key is None else a.verify_key.hex(),
            }
            for a in accounts
        ]
        print(json.dumps({"fleet": auth.fleet(), "accounts": entries}, indent=2))
        return 0
    print(f"fleet {auth.fleet()}: {sum(a.role is Role.NODE for a in accounts)} nodes")
    for account in accounts:
        key = "" if account.verify_key is None else account.verify_key.hex()
        print(f"  {account.name:<24} {account.role.value:<10} {key}")
    return 0


def _init_tls(args: argparse.Namespace) -> int:
    from fedbus.broker.certificates import init_ca

    auth = _open(args)
    hosts = tuple(args.broker_host or ("localhost", "127.0.0.1"))
    broker = init_ca(auth.tls_dir, broker_hosts=hosts, days=args.days, fleet=auth.fleet())
    issued = [a.name for a in auth.accounts() if _issue_cert_if_tls(auth, a.name)]
    print(f"CA and broker certificate in {auth.tls_dir} (broker: {broker.cert.name})")
    print(f"client certificates issued for {len(issued)} accounts: {', '.join(issued)}")
    return 0


def run(action: str, args: argparse.Namespace) -> int:
    if action == "add-node":
        return _add(args, Role.NODE)
    if action == "add-observer":
        return _add(args, Role.OBSERVER)
    if action == "remove-node":
        AuthDir(args.auth_dir).remove(args.name)
        print(f"removed {args.name}")
        return 0
    if action == "list-nodes":
        return _list(args)
    return _init_tls(args)


def main(action: str, argv: Sequence[str]) -> int:
    """Run one action; a bad name or directory exits 2 with the reason."""
    parser = _configure(action)
    args = parser.parse_args(list(argv))
    try:
        return run(action, args)
    except ConfigError as exc:
        parser.exit(2, f"fedbus broker {action}: error: {exc}\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
