"""Deriving one run's mosquitto config from the project's `mosquitto.conf`.

A pure text transformation, kept apart from the process handling in
`fedbus.broker.launcher`: the listener, persistence directory and log
destination are replaced for the run, every other setting is kept, and extra
lines (tests, auth files) are appended or replace the base's own line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fedbus.broker.errors import ConfigError

#: Options that may appear more than once; any other option set in
#: ``extra_lines`` replaces the base config's line, because mosquitto 2.0
#: rejects a repeated string option ("Duplicate ... value in configuration").
_REPEATABLE_OPTIONS = frozenset(
    {
        "listener",
        "log_dest",
        "log_type",
        "include_dir",
        "plugin",
        "auth_plugin",
        "connection",
        "address",
        "addresses",
        "topic",
    }
)
_REPEATABLE_PREFIXES = ("auth_opt_", "plugin_opt_")

#: Options that derive_config owns for the run; extra lines may not set them.
_MANAGED_OPTIONS = frozenset({"persistence_location", "pid_file"})

#: The deprecated default listener (1.x ``port`` / ``bind_address``), which
#: would open a second socket next to the run's listener.
_DEFAULT_LISTENER_OPTIONS = frozenset({"port", "bind_address"})


def option_name(line: str) -> str | None:
    """The option name of a config line, None for blank lines and comments."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    return stripped.split(None, 1)[0]


def _is_repeatable(option: str) -> bool:
    return option in _REPEATABLE_OPTIONS or option.startswith(_REPEATABLE_PREFIXES)


def derive_config(
    base_text: str,
    *,
    port: int,
    host: str,
    data_dir: Path,
    extra_lines: Sequence[str] = (),
) -> str:
    """Rewrite the project's config text for one broker run.

    Pure (no files, no clock), so the rewriting rules are unit-tested without
    a broker:

    - the ``listener`` line becomes ``listener <port> <host>`` (one is added
      at the top if the base has none); ``port`` / ``bind_address`` lines of
      the deprecated default listener are dropped. A base with several
      listeners is rejected: their listener-scoped options cannot be moved
      onto one socket without changing their meaning;
    - ``persistence_location`` becomes ``data_dir`` with a trailing slash;
    - ``pid_file`` and console/file ``log_dest`` lines are dropped and a
      single ``log_dest stderr`` is added, which the launcher redirects into
      the run's log file; ``log_dest syslog`` / ``topic`` are kept;
    - every other line is kept verbatim, then ``extra_lines`` are appended.
      An extra line for a single-valued option replaces the base's line, as
      mosquitto 2.0 refuses a repeated string option.
    """
    if isinstance(extra_lines, str):
        raise TypeError("extra_lines must be a sequence of lines, not one string")
    if not 0 < port < 65536:
        raise ConfigError(f"port: {port} is not a TCP port (1-65535)")
    if not host or any(ch.isspace() for ch in host):
        raise ConfigError(f"host: {host!r} is not a host name or address")
    extras = [line.strip() for line in extra_lines]
    for line in extras:
        if "\n" in line or "\r" in line:
            raise ConfigError(f"extra_lines: {line!r} holds more than one line")
        if option_name(line) in _MANAGED_OPTIONS:
            raise ConfigError(
                f"extra_lines: {option_name(line)} is set by the launcher for each run"
            )
    overridden = {opt for line in extras if (opt := option_name(line)) and not _is_repeatable(opt)}

    listener_line = f"listener {port} {host}"
    location = data_dir.as_posix().rstrip("/") + "/"
    out: list[str] = []
    listeners: list[int] = []
    location_set = False
    for number, line in enumerate(base_text.splitlines(), start=1):
        option = option_name(line)
        if option is None:
            out.append(line)
        elif option == "listener":
            listeners.append(number)
            out.append(listener_line)
        elif option in _DEFAULT_LISTENER_OPTIONS or option == "pid_file":
            continue
        elif option == "log_dest":
            parts = line.split()
            if len(parts) < 2 or parts[1] not in {"stdout", "stderr", "file"}:
                out.append(line)
        elif option == "persistence_location":
            if not location_set:
                out.append(f"persistence_location {location}")
                location_set = True
        elif option in overridden:
            continue
        else:
            out.append(line)
    if len(listeners) > 1:
        raise ConfigError(
            f"listener: the base config defines {len(listeners)} listeners (lines "
            f"{', '.join(map(str, listeners))}); the launcher runs exactly one"
        )

    header = ["# Derived by fedbus.broker.launcher for one run; edit the project's config."]
    if not listeners:
        header.append(listener_line)
    tail = ["", "# --- per-run settings", "log_dest stderr"]
    if not location_set:
        tail.append(f"persistence_location {location}")
    return "\n".join([*header, *out, *tail, *extras]) + "\n"
