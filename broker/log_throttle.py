"""Log a recurring event once per time window, with a count of what was held back.

A hostile or broken node can send thousands of bad updates a second; one log
line each would flood the disk and bury everything else. Each key (here a
reject reason) gets at most one line per window; the next line says how many
were suppressed since the previous one. Time is passed in, never read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass


@dataclass
class _KeyState:
    last_logged: float
    suppressed: int = 0


class ThrottledLog:
    def __init__(self, logger: logging.Logger, window: float = 10.0, level: int = logging.INFO):
        if window < 0:
            raise ValueError(f"window must be >= 0, got {window}")
        self.logger = logger
        self.window = window
        self.level = level
        self._keys: dict[str, _KeyState] = {}

    def log(self, key: str, now: float, message: str, *args: object) -> bool:
        """Log `message % args` unless `key` was logged less than `window` ago.

        Returns True if a line was written.
        """
        state = self._keys.get(key)
        if state is not None and now - state.last_logged < self.window:
            state.suppressed += 1
            return False
        suppressed = 0 if state is None else state.suppressed
        self._keys[key] = _KeyState(now)
        if suppressed:
            message += f" (and {suppressed} more like it in the last {self.window:g} s)"
        self.logger.log(self.level, message, *args)
        return True

    def suppressed(self, key: str) -> int:
        """How many lines of `key` are being held back right now."""
        state = self._keys.get(key)
        return 0 if state is None else state.suppressed
