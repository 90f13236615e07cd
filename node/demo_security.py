"""The demo's security and robustness options: auth, TLS, signatures, attackers, robust rules.

`--secure` gives the run an auth directory (fedbus.broker.accounts) with one
account per node plus the aggregator and the observer: the broker refuses
anonymous clients and enforces the ACL, every node signs its updates and
the aggregator checks them. `--tls` adds the fleet's CA and makes the
broker listen with TLS only; everyone logs in with a client certificate.
`--attack` turns a share of the nodes Byzantine (fedbus.node.attacks), and
the robust and DP options are passed to the aggregator as they are.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedbus.broker.accounts import AGGREGATOR_ACCOUNT, OBSERVER_ACCOUNT, AuthDir, Role
from fedbus.broker.client import BrokerAddress
from fedbus.broker.credentials import load_credentials
from fedbus.broker.errors import ConfigError
from fedbus.broker.serve import security_lines
from fedbus.broker.signing import load_signing_key
from fedbus.node.attacks import Attack, malicious_nodes, tamper


def add_security_arguments(parser: argparse.ArgumentParser) -> None:
    sec = parser.add_argument_group("security and robustness")
    sec.add_argument(
        "--secure",
        action="store_true",
        help="broker accounts and ACL (no anonymous clients), signed updates",
    )
    sec.add_argument(
        "--tls", action="store_true", help="as --secure, over a TLS-only listener with client certs"
    )
    sec.add_argument(
        "--attack", choices=[a.value for a in Attack], default=None, help="Byzantine behaviour"
    )
    sec.add_argument(
        "--malicious",
        type=float,
        default=0.2,
        metavar="FRACTION",
        help="share of nodes that run --attack (default %(default)s)",
    )
    sec.add_argument(
        "--robust", choices=["mean", "median", "trimmed"], default="mean", help="aggregation rule"
    )
    sec.add_argument("--trim-beta", type=float, default=0.2, help="trimmed mean: share per end")
    sec.add_argument("--clip-norm", type=float, default=None, help="fixed L2 clip per update")
    sec.add_argument(
        "--adaptive-clip", type=float, default=None, help="clip to this x the median recent norm"
    )
    sec.add_argument("--dp-noise-multiplier", type=float, default=None, help="central DP z")
    sec.add_argument("--dp-clip", type=float, default=None, help="central DP per-node bound")


class DemoSecurity:
    """What one demo run's parts need to log in, sign, check and attack."""

    def __init__(self, args: argparse.Namespace, run_dir: Path, fleet: str, nodes: int) -> None:
        self.args = args
        self.enabled = bool(args.secure or args.tls)
        self.tls = bool(args.tls)
        self.node_ids = [f"node-{i:03d}" for i in range(nodes)]
        self.auth = AuthDir(run_dir / "auth")
        self.attackers: dict[int, Attack] = {}
        if args.attack is not None:
            chosen = malicious_nodes(nodes, args.malicious, args.seed)
            self.attackers = {i: Attack(args.attack) for i in chosen}
        if not self.enabled:
            return
        if self.auth.exists:
            raise ConfigError(f"--run-dir {run_dir} already holds an auth dir; use a new one")
        self.auth.initialize(fleet)
        for node in self.node_ids:
            self.auth.add(node, Role.NODE)
        if self.tls:
            from fedbus.broker.certificates import init_ca, issue_client_cert

            init_ca(self.auth.tls_dir, fleet=fleet)
            for account in self.auth.accounts():
                issue_client_cert(
                    self.auth.tls_dir, account.name, self.auth.credentials_dir(account.name)
                )

    def broker_lines(self) -> list[str]:
        return security_lines(self.auth.root, self.tls) if self.enabled else []

    def address(self, base: BrokerAddress, account: str) -> BrokerAddress:
        """`base` with the credentials of `account` (unchanged when security is off)."""
        if not self.enabled:
            return base
        creds = load_credentials(self.auth.credentials_dir(account))
        if self.tls:  # the certificate is the identity: no password is sent
            return dataclasses.replace(
                base, tls_ca=creds.ca_cert, tls_cert=creds.client_cert, tls_key=creds.client_key
            )
        return dataclasses.replace(base, username=creds.username, password=creds.password)

    def observer_address(self, base: BrokerAddress) -> BrokerAddress:
        return self.address(base, OBSERVER_ACCOUNT)

    def node_access(
        self, base: BrokerAddress, node: str
    ) -> tuple[BrokerAddress, Ed25519PrivateKey | None]:
        if not self.enabled:
            return base, None
        key = load_signing_key(self.auth.credentials_dir(node) / "signing.key")
        return self.address(base, node), key

    def tamper_for(
        self, index: int
    ) -> Callable[[dict[str, np.ndarray], int], dict[str, np.ndarray]] | None:
        attack = self.attackers.get(index)
        if attack is None:
            return None
        seed = self.args.seed

        def hook(delta: dict[str, np.ndarray], run: int) -> dict[str, np.ndarray]:
            return tamper(attack, delta, np.random.default_rng([seed, index, run, 7]))

        return hook

    def aggregator_flags(self) -> list[str]:
        args = self.args
        flags = ["--robust", args.robust, "--trim-beta", str(args.trim_beta)]
        for flag, value in (
            ("--clip-norm", args.clip_norm),
            ("--adaptive-clip", args.adaptive_clip),
            ("--dp-noise-multiplier", args.dp_noise_multiplier),
            ("--dp-clip", args.dp_clip),
        ):
            if value is not None:
                flags += [flag, str(value)]
        if self.enabled:
            flags += [
                "--credentials",
                str(self.auth.credentials_dir(AGGREGATOR_ACCOUNT)),
                "--node-keys",
                str(self.auth.root),
            ]
            if self.tls:
                flags.append("--tls")
        return flags

    def summary(self) -> dict[str, object]:
        return {
            "secure": self.enabled,
            "tls": self.tls,
            "attack": self.args.attack,
            "malicious_nodes": sorted(self.attackers),
            "robust": self.args.robust,
        }
