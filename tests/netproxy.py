"""A loopback TCP proxy that breaks the link between an MQTT client and the broker.

This kernel has no `tc netem`, so tests that need a dropped link, a
partition or lost acks put this proxy between the client and a real
mosquitto on 127.0.0.1::

    with TcpProxy(broker.port) as proxy:
        client = BusClient(..., BrokerAddress(port=proxy.port))
        proxy.cut()              # both sides see the connection die (RST)
        proxy.block()            # partition: nothing moves, new connections refused
        proxy.unblock()
        proxy.hold_downstream()  # broker -> client bytes buffered: publishes arrive, acks do not
        proxy.release_downstream()

One daemon thread runs a selector loop over every socket; the control
methods hand their work to that thread and return once it is done, so
"after `block()` returns, no byte moves" holds exactly. Only 127.0.0.1 is
ever listened on or connected to.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_CHUNK = 64 * 1024
_CONTROL_TIMEOUT_S = 5.0


def _close(sock: socket.socket, *, abrupt: bool) -> None:
    """Close `sock`; `abrupt` sends an RST instead of a FIN, as a dropped link looks."""
    with contextlib.suppress(OSError):
        if abrupt:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


class _Link:
    """One proxied connection: the accepted client socket and ours to the broker."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.to_upstream = bytearray()
        self.to_client = bytearray()
        self.eof = False  # one side closed: flush what is buffered for the other, then close
        self.closed = False
        self.masks = {client: 0, upstream: 0}


class TcpProxy:
    """Forward 127.0.0.1:<port> to 127.0.0.1:<target_port>, with switches to break it."""

    def __init__(self, target_port: int, *, buffer_limit: int = 4 * 1024 * 1024) -> None:
        self.target_port = target_port
        self.buffer_limit = buffer_limit
        #: Bytes delivered to the broker / to the client.
        self.bytes_upstream = 0
        self.bytes_downstream = 0
        #: Connections forwarded, closed at accept (blocked or broker down), and cut.
        self.connections_accepted = 0
        self.connections_refused = 0
        self.connections_cut = 0
        self._blocked = False
        self._held = False
        self._links: list[_Link] = []
        self._commands: queue.Queue[tuple[Callable[[], Any], threading.Event, list[Any]]] = (
            queue.Queue()
        )
        self._selector: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._port: int | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("proxy not started")
        return self._port

    def start(self) -> int:
        """Listen on a free loopback port and start forwarding; returns the port."""
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, 0))
        listener.listen(64)
        listener.setblocking(False)
        self._listener = listener
        self._port = int(listener.getsockname()[1])
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, "listener")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(
            target=self._run, name=f"tcp-proxy-{self._port}", daemon=True
        )
        self._thread.start()
        return self._port

    def stop(self) -> None:
        """Close every connection (FIN) and the listener, and end the thread. Idempotent."""
        thread = self._thread
        if thread is None:
            return
        if thread.is_alive():
            self._control(self._request_stop)
            thread.join(_CONTROL_TIMEOUT_S)
            if thread.is_alive():
                raise RuntimeError("proxy thread did not stop")
        self._thread = None
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------ switches

    def cut(self) -> int:
        """Reset every current connection on both sides; returns how many. New ones work."""
        return int(self._control(self._cut_all))

    def block(self) -> None:
        """Partition: stop moving bytes on every connection and close new ones at once."""
        self._control(lambda: setattr(self, "_blocked", True))

    def unblock(self) -> None:
        self._control(lambda: setattr(self, "_blocked", False))

    def hold_downstream(self) -> None:
        """Buffer broker -> client bytes instead of delivering them (up to `buffer_limit`)."""
        self._control(lambda: setattr(self, "_held", True))

    def release_downstream(self) -> None:
        """Deliver what was held and forward normally again."""
        self._control(lambda: setattr(self, "_held", False))

    @property
    def active_connections(self) -> int:
        return int(self._control(lambda: len(self._links)))

    @property
    def buffered_downstream(self) -> int:
        """Broker -> client bytes read and not yet delivered (e.g. held)."""
        return int(self._control(lambda: sum(len(link.to_client) for link in self._links)))

    # ------------------------------------------------------------ control

    def _control(self, action: Callable[[], Any]) -> Any:
        """Run `action` on the proxy thread (or here when it is not running); its result."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return action()
        done = threading.Event()
        result: list[Any] = []
        self._commands.put((action, done, result))
        self._wake()
        deadline = time.monotonic() + _CONTROL_TIMEOUT_S
        while not done.wait(0.05):
            if not thread.is_alive():  # it ended before it saw this request: no one else runs
                self._run_commands()
            elif time.monotonic() > deadline:
                raise RuntimeError("proxy thread did not answer")
        return result[0] if result else None

    def _wake(self) -> None:
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"\0")

    def _run_commands(self) -> None:
        while True:
            try:
                action, done, result = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                result.append(action())
            finally:
                done.set()

    def _request_stop(self) -> None:
        self._stopping = True

    # ------------------------------------------------------------ the loop

    def _run(self) -> None:
        assert self._selector is not None
        try:
            while not self._stopping:
                self._refresh_interest()
                for key, mask in self._selector.select(timeout=1.0):
                    self._dispatch(key, mask)
                self._run_commands()
        except Exception:  # a bug here must not print from a daemon thread; log it
            log.exception("tcp proxy loop failed")
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        for link in list(self._links):
            self._close_link(link, abrupt=False)
        if self._listener is not None:
            _close(self._listener, abrupt=False)
        if self._selector is not None:
            self._selector.close()
        self._stopping = True
        self._run_commands()  # answer anyone who asked while we were closing

    def _dispatch(self, key: selectors.SelectorKey, mask: int) -> None:
        if key.data == "wake":
            assert self._wake_r is not None
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)
            return
        if key.data == "listener":
            self._accept()
            return
        link, sock = key.data
        if link.closed:
            return
        if mask & selectors.EVENT_WRITE:
            self._flush(link, sock)
        if mask & selectors.EVENT_READ and not link.closed:
            self._pull(link, sock)

    def _accept(self) -> None:
        assert self._listener is not None and self._selector is not None
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if self._blocked:
            self.connections_refused += 1
            _close(client, abrupt=True)
            return
        try:
            upstream = socket.create_connection((LOOPBACK, self.target_port), timeout=2.0)
        except OSError as exc:
            log.debug("proxy: broker at port %d unreachable: %s", self.target_port, exc)
            self.connections_refused += 1
            _close(client, abrupt=True)
            return
        link = _Link(client, upstream)
        for sock in (client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._links.append(link)
        self.connections_accepted += 1

    def _wanted(self, link: _Link, sock: socket.socket) -> int:
        """The events `sock` should wait for under the current switches."""
        if self._blocked:
            return 0
        to_client = sock is link.client
        outgoing = link.to_client if to_client else link.to_upstream
        incoming = link.to_upstream if to_client else link.to_client
        mask = 0
        if outgoing and not (to_client and self._held):
            mask |= selectors.EVENT_WRITE
        if not link.eof and len(incoming) < self.buffer_limit:
            mask |= selectors.EVENT_READ
        return mask

    def _refresh_interest(self) -> None:
        assert self._selector is not None
        for link in list(self._links):
            if link.eof and not link.to_client and not link.to_upstream:
                self._close_link(link, abrupt=False)
                continue
            for sock in (link.client, link.upstream):
                wanted = self._wanted(link, sock)
                current = link.masks[sock]
                if wanted == current:
                    continue
                if current == 0:
                    self._selector.register(sock, wanted, (link, sock))
                elif wanted == 0:
                    self._selector.unregister(sock)
                else:
                    self._selector.modify(sock, wanted, (link, sock))
                link.masks[sock] = wanted

    def _pull(self, link: _Link, sock: socket.socket) -> None:
        try:
            data = sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_link(link, abrupt=True)
            return
        if not data:
            # One side finished: deliver what is buffered for the other side, then close.
            link.eof = True
            if sock is link.client:
                link.to_client.clear()
            else:
                link.to_upstream.clear()
            return
        (link.to_upstream if sock is link.client else link.to_client).extend(data)

    def _flush(self, link: _Link, sock: socket.socket) -> None:
        buffer = link.to_client if sock is link.client else link.to_upstream
        try:
            sent = sock.send(buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_link(link, abrupt=True)
            return
        del buffer[:sent]
        if sock is link.client:
            self.bytes_downstream += sent
        else:
            self.bytes_upstream += sent

    def _close_link(self, link: _Link, *, abrupt: bool) -> None:
        if link.closed:
            return
        link.closed = True
        for sock in (link.client, link.upstream):
            if link.masks[sock] and self._selector is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
            link.masks[sock] = 0
            _close(sock, abrupt=abrupt)
        self._links.remove(link)

    def _cut_all(self) -> int:
        links = list(self._links)
        for link in links:
            self._close_link(link, abrupt=True)
        self.connections_cut += len(links)
        return len(links)
