"""Run a private mosquitto for the demo and the tests.

The project's ``mosquitto.conf`` is the one broker configuration; a run must
not edit it, and two runs (two test workers, a demo next to a test) must not
share a port or a persistence file. So every run derives its own config from
it with `derive_config` (listener, persistence dir, log destination replaced,
everything else kept) and `ManagedBroker` starts mosquitto on that copy in a
data dir of its own, waits until it accepts connections and stops it again.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from fedbus.broker.errors import BrokerError, ConfigError
from fedbus.broker.mosquitto_config import derive_config, option_name

log = logging.getLogger(__name__)

#: The project's broker config, shipped as package data next to this module.
DEFAULT_CONFIG: Path = Path(__file__).with_name("mosquitto.conf")

#: Where Debian and Ubuntu install the broker; /usr/sbin is not on every PATH.
_FALLBACK_EXECUTABLES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


_READY_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
_PORT_ATTEMPTS = 5
#: How long a listener must stay up before it counts as ours: if another
#: process took the port between free_port() and mosquitto's bind, our connect
#: reaches that process while mosquitto is busy exiting with EADDRINUSE.
_SETTLE_S = 0.05


def find_mosquitto() -> str:
    """Return the path of the mosquitto executable.

    Looks on PATH first so a developer's own build wins, then where Debian
    installs it (/usr/sbin is often missing from a non-root PATH).
    """
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in _FALLBACK_EXECUTABLES:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError(
        "mosquitto not found on PATH nor in /usr/sbin; install it "
        "(Debian/Ubuntu: apt-get install mosquitto; macOS: brew install mosquitto)"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now.

    The kernel picks it, so parallel test runs do not collide the way a fixed
    or random port would. It is free only at this instant; ManagedBroker
    retries with a new one if another process grabs it before mosquitto binds.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, start: int = 0, limit: int = 2000) -> str:
    """The last ``limit`` bytes of a log file after offset ``start``.

    The log is appended to across restarts; ``start`` keeps an error message
    to the lines of the run that failed.
    """
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(start, handle.tell() - limit))
            return handle.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


class ManagedBroker:
    """One mosquitto process on a private port and data dir.

    Used as a context manager by the demo and the tests::

        with ManagedBroker() as broker:
            client.connect(broker.host, broker.port)

    ``port=None`` picks a free port; ``data_dir=None`` uses a fresh temporary
    directory that `stop` removes. `restart` and `kill` keep both, so a test
    can check what survives a clean restart or a crash.
    """

    def __init__(
        self,
        config_path: Path | None = None,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        data_dir: Path | None = None,
        extra_lines: Sequence[str] = (),
    ) -> None:
        if isinstance(extra_lines, str):
            raise TypeError("extra_lines must be a sequence of lines, not one string")
        self._config_path = Path(config_path) if config_path is not None else DEFAULT_CONFIG
        self._host = host
        self._port_fixed = port is not None
        self._port: int | None = port
        self._data_dir: Path | None = Path(data_dir).resolve() if data_dir is not None else None
        self._owns_data_dir = False
        self._extra_lines = tuple(extra_lines)
        self._process: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        self._log_start = 0

    # --- properties -------------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The port of the current (or last) run; fixed once started."""
        if self._port is None:
            raise BrokerError("broker has not been started, so it has no port yet")
        return self._port

    @property
    def url(self) -> str:
        return f"mqtt://{self._host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The process id while mosquitto runs, else None."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def data_dir(self) -> Path:
        if self._data_dir is None:
            raise BrokerError("broker has not been started, so it has no data dir yet")
        return self._data_dir

    @property
    def config_path(self) -> Path:
        """The derived config of this run (inside the data dir)."""
        return self.data_dir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "mosquitto.log"

    # --- lifecycle --------------------------------------------------------

    def start(self) -> ManagedBroker:
        """Start mosquitto and return once it accepts TCP connections.

        Raises BrokerError with the tail of the broker's log if it exits or
        does not listen within the timeout, ConfigError if the base config
        cannot be read.
        """
        if self.running:
            raise BrokerError(f"broker already running (pid {self.pid}) at {self.url}")
        try:
            base_text = self._config_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"config: cannot read {self._config_path}: {exc}") from exc
        executable = find_mosquitto()
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="fedbus-broker-"))
            self._owns_data_dir = True
        self._data_dir.mkdir(parents=True, exist_ok=True)

        for attempt in range(1, _PORT_ATTEMPTS + 1):
            if self._port is None:
                self._port = free_port(self._host)
            if self._launch(executable, base_text):
                return self
            if self._port_fixed:
                raise BrokerError(
                    f"port {self._port} on {self._host} is already in use; "
                    f"log {self.log_path}:\n{_tail(self.log_path, self._log_start)}"
                )
            log.warning(
                "port %d was taken before mosquitto bound it (attempt %d); retrying",
                self._port,
                attempt,
            )
            self._port = None
        raise BrokerError(f"no free port found for mosquitto after {_PORT_ATTEMPTS} attempts")

    def _privilege_lines(self, base_text: str) -> list[str]:
        """Keep mosquitto running as the caller when the caller is root.

        Started as root, mosquitto 2.0 switches to the "mosquitto" user, which
        cannot write the caller's data dir (a 0700 temp dir), so persistence
        would fail at the first save. A demo or test broker should run as the
        user who started it; a base config or extra line naming a user wins.
        """
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            return []
        lines = [*base_text.splitlines(), *self._extra_lines]
        if any(option_name(line) == "user" for line in lines):
            return []
        return ["user root"]

    def _launch(self, executable: str, base_text: str) -> bool:
        """Start one process on self._port; False if the port was taken."""
        assert self._port is not None and self._data_dir is not None
        text = derive_config(
            base_text,
            port=self._port,
            host=self._host,
            data_dir=self._data_dir,
            extra_lines=[*self._privilege_lines(base_text), *self._extra_lines],
        )
        self.config_path.write_text(text, encoding="utf-8")
        self._log_handle = self.log_path.open("ab")
        self._log_start = self._log_handle.tell()
        # A new session: a Ctrl-C in the terminal reaches only us, and we stop
        # the broker in order (saving its database) instead of racing it.
        self._process = subprocess.Popen(
            [executable, "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.debug("started mosquitto pid %d with %s", self._process.pid, self.config_path)
        try:
            self._wait_ready()
        except _PortTakenError:
            self._reap()
            return False
        except BaseException:
            self._terminate(signal.SIGKILL)
            raise
        log.info(
            "mosquitto pid %d listening on %s (data %s)",
            self._process.pid,
            self.url,
            self._data_dir,
        )
        return True

    def _wait_ready(self) -> None:
        assert self._process is not None and self._port is not None
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self._raise_if_exited()
            try:
                with socket.create_connection((self._host, self._port), timeout=0.2):
                    pass
            except OSError:
                time.sleep(0.01)
                continue
            time.sleep(_SETTLE_S)
            self._raise_if_exited()
            return
        tail = _tail(self.log_path, self._log_start)
        raise BrokerError(
            f"mosquitto did not listen on {self._host}:{self._port} within "
            f"{_READY_TIMEOUT_S:.0f} s; log {self.log_path}:\n{tail}"
        )

    def _raise_if_exited(self) -> None:
        assert self._process is not None
        code = self._process.poll()
        if code is None:
            return
        if self._log_handle is not None:
            self._log_handle.flush()
        tail = _tail(self.log_path, self._log_start)
        if "Address already in use" in tail:
            raise _PortTakenError
        raise BrokerError(f"mosquitto exited with status {code}; log {self.log_path}:\n{tail}")

    def stop(self) -> None:
        """Stop mosquitto with SIGTERM (it saves its database), SIGKILL after
        a timeout, and remove the data dir if this object created it.
        Safe to call any number of times."""
        self._terminate(signal.SIGTERM)
        if self._owns_data_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None
            self._owns_data_dir = False

    def kill(self) -> None:
        """SIGKILL mosquitto, as a crash would: nothing is saved since the
        last autosave. Port and data dir stay for a later `start`."""
        self._terminate(signal.SIGKILL)

    def reload(self) -> None:
        """SIGHUP: mosquitto rereads its password file and ACL, clients stay connected."""
        process = self._process
        if process is None or process.poll() is not None:
            raise BrokerError("broker is not running, so it cannot reload")
        process.send_signal(signal.SIGHUP)

    def restart(self) -> ManagedBroker:
        """Stop cleanly and start again on the same port and data dir, so
        retained messages and persistent sessions survive."""
        self._terminate(signal.SIGTERM)
        return self.start()

    def _terminate(self, sig: signal.Signals) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning(
                    "mosquitto pid %d ignored %s for %.0f s; killing it",
                    process.pid,
                    sig.name,
                    _STOP_TIMEOUT_S,
                )
                process.kill()
                process.wait()
            log.info(
                "mosquitto pid %d stopped (%s, status %s)",
                process.pid,
                sig.name,
                process.returncode,
            )
        self._reap()

    def _reap(self) -> None:
        if self._process is not None:
            self._process.wait()
            self._process = None
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def __enter__(self) -> ManagedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{self._host}:{self._port}" if self._port is not None else "not started"
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"ManagedBroker({where}, {state})"


class _PortTakenError(Exception):
    """Internal: mosquitto exited because its port was taken meanwhile."""
