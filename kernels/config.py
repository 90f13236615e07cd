"""The numba flags every fedbus kernel is compiled with, kept in one place.

- ``cache=True`` writes the compiled machine code next to the module
  (``__pycache__/*.nbi``/``*.nbc``), so a node or aggregator that restarts, and
  every test run after the first, skips the multi-second compile.
- ``nogil=True`` releases the GIL while a kernel runs, so the fleet simulator's
  node threads train at the same time and the MQTT network thread keeps
  servicing keep-alives while a node trains.

Kernels are declared as ``@njit(**JIT_OPTIONS)``. Setting the environment
variable ``NUMBA_DISABLE_JIT=1`` runs the same bodies as plain Python, which is
how coverage sees inside them.
"""

from __future__ import annotations

from typing import Final

JIT_OPTIONS: Final[dict[str, bool]] = {"cache": True, "nogil": True}
