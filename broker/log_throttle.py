"""At most one log line per key and time window, with a count of what was held back.

A broken or hostile node can send thousands of bad updates a second. One log
line for each would fill the disk and bury every other line, so the
aggregator (per reject reason) and the bus client (bad chunks) go through a
throttle. `LogThrottle` only decides and never reads a clock (the caller
passes monotonic seconds in), so it is a plain value to test; `ThrottledLog`
is the thin part that writes the lines.

A key's first event is logged. Further events within `window` seconds of the
last logged one are held back and counted; the first event after the window
is logged again and says how many were held back in between. `flush`
reports counts still held back once their window is over, so the tail of a
burst that simply stops is not lost either.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

#: Key under which events are counted when `max_keys` distinct keys are in use.
OVERFLOW_KEY = "*"


@dataclass(frozen=True)
class Admission:
    """The throttle's answer for one event."""

    #: Write a line for this event now.
    log: bool
    #: Events of the same key held back since its previous line (0 when `log` is False).
    held_back: int = 0


@dataclass
class _KeyWindow:
    logged_at: float
    held_back: int = 0


class LogThrottle:
    """Decides which events of each key get a log line; see the module docstring.

    Keys are meant to come from a small fixed set (reject reasons). Memory
    stays bounded even if they do not: past `max_keys` keys in use, idle ones
    are dropped, and if none is idle the event counts under `OVERFLOW_KEY`.
    """

    def __init__(self, window: float = 10.0, max_keys: int = 64) -> None:
        if not (math.isfinite(window) and window >= 0):
            raise ValueError(f"window must be a finite number of seconds >= 0, got {window}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self.window = window
        self.max_keys = max_keys
        self._keys: dict[str, _KeyWindow] = {}

    def admit(self, key: str, now: float) -> Admission:
        """Whether to log this event of `key` at time `now` (seconds, monotonic).

        A `now` earlier than the key's last line (a clock that went back)
        starts a new window rather than silencing the key until it catches up.
        """
        state = self._keys.get(key)
        if state is None:
            if len(self._keys) >= self.max_keys and not self._drop_idle(now):
                return self._count_overflow(now)
            self._keys[key] = _KeyWindow(now)
            return Admission(True)
        if 0 <= now - state.logged_at < self.window:
            state.held_back += 1
            return Admission(False)
        held_back = state.held_back
        state.logged_at, state.held_back = now, 0
        return Admission(True, held_back)

    def flush(self, now: float) -> list[tuple[str, int]]:
        """(key, count) for every key whose window is over with events held back.

        The caller logs one summary line for each; it counts as the key's
        line, so the key's next event within `window` of `now` is held back.
        """
        due = []
        for key, state in self._keys.items():
            if state.held_back and not 0 <= now - state.logged_at < self.window:
                due.append((key, state.held_back))
                state.logged_at, state.held_back = now, 0
        return due

    def held_back(self, key: str) -> int:
        """Events of `key` held back since its last line."""
        state = self._keys.get(key)
        return 0 if state is None else state.held_back

    def _drop_idle(self, now: float) -> bool:
        """Forget keys with nothing held back and their window over; True if room was made."""
        idle = [
            key
            for key, state in self._keys.items()
            if key != OVERFLOW_KEY
            and state.held_back == 0
            and not 0 <= now - state.logged_at < self.window
        ]
        for key in idle:
            del self._keys[key]
        return bool(idle)

    def _count_overflow(self, now: float) -> Admission:
        state = self._keys.get(OVERFLOW_KEY)
        if state is None:
            # The table is full of busy keys: make the overflow key the one
            # extra entry, never more, and hold the event back under it.
            self._keys[OVERFLOW_KEY] = _KeyWindow(now, held_back=1)
        else:
            state.held_back += 1
        return Admission(False)


class ThrottledLog:
    """A logger behind a `LogThrottle`: `log` writes a line only when the throttle admits it."""

    def __init__(
        self, logger: logging.Logger, window: float = 10.0, level: int = logging.INFO
    ) -> None:
        self.logger = logger
        self.level = level
        self.throttle = LogThrottle(window)

    def log(self, key: str, now: float | None, message: str, *args: object) -> bool:
        """Log `message % args` unless `key` was logged less than `window` ago.

        `now` None (a caller without a clock: tests, replays) logs every line.
        Returns True if a line was written.
        """
        if now is None:
            self.logger.log(self.level, message, *args)
            return True
        admission = self.throttle.admit(key, now)
        if not admission.log:
            return False
        if admission.held_back:
            message += (
                f" (and {admission.held_back} more like it in the last {self.throttle.window:g} s)"
            )
        self.logger.log(self.level, message, *args)
        return True

    def flush(self, now: float) -> None:
        """One summary line per key whose burst ended with events held back."""
        for key, count in self.throttle.flush(now):
            self.logger.log(self.level, "%d more %s events held back", count, key)

    def suppressed(self, key: str) -> int:
        """How many lines of `key` are being held back right now."""
        return self.throttle.held_back(key)
