"""A synthetic fleet of machine sensors: drifting, glitching, with gaps.

Each simulated device watches one machine through six sensors and labels a
row 1 when the machine is in a fault state. What makes it a test of the data
path rather than of the model:

- calibration: every device reads temperature and motor current with its own
  offset and gain, so no two devices agree on scale (federated normalization
  pools them into one);
- drift: temperature and current readings creep upward as the device ages
  (the same physical state reads higher later);
- glitches: about 2 % of rows carry a spike (a value 8 to 30 times too large)
  or a stuck-at-zero sensor, with the machine's true label (the anomaly step
  should drop them);
- gaps: about 3 % of cells are missing (NaN).

Rows are a pure function of (seed, device, row index), so a stream can be
replayed and a test set drawn from the same physics without the glitches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SENSOR_FEATURES", "SensorDevice", "sensor_test_set"]

SENSOR_FEATURES = (
    "temperature_c",
    "humidity_pct",
    "vibration_rms",
    "motor_current_a",
    "pressure_kpa",
    "rpm",
)
_NOMINAL_MEAN = np.array([55.0, 40.0, 2.0, 12.0, 300.0, 1500.0])
_NOMINAL_STD = np.array([6.0, 10.0, 0.6, 2.0, 25.0, 120.0])
#: How the standardized physical state drives the fault logit.
_FAULT_WEIGHTS = np.array([0.9, 0.2, 1.6, 1.1, 0.0, -0.7])
_FAULT_BIAS = -0.8
_GLITCH_RATE = 0.02
_GAP_RATE = 0.03
_DRIFT_PER_ROW = np.array([0.0015, 0.0, 0.0, 0.0004, 0.0, 0.0])  # units per row


@dataclass(frozen=True)
class SensorDevice:
    """One device: its calibration is drawn from (seed, index); rows from (seed, index, row)."""

    seed: int
    index: int

    def calibration(self) -> tuple[np.ndarray, np.ndarray]:
        """(offset, gain) per sensor; only temperature and current are miscalibrated."""
        rng = np.random.default_rng([self.seed, self.index, 0])
        offset = np.zeros(6)
        gain = np.ones(6)
        offset[[0, 3]] = rng.normal(0, [3.0, 1.0])
        gain[[0, 3]] = rng.uniform(0.9, 1.1, 2)
        return offset, gain

    def rows(
        self, start: int, count: int, *, glitches: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows start .. start + count - 1 as (readings float64 (count, 6), labels float64 0/1)."""
        index = np.arange(start, start + count)
        rng = np.random.default_rng([self.seed, self.index, 1, start, count])
        state = rng.standard_normal((count, 6))  # the machine's physical state, standardized
        logit = state @ _FAULT_WEIGHTS + _FAULT_BIAS + rng.normal(0, 0.3, count)
        labels = (logit > 0).astype(np.float64)
        offset, gain = self.calibration()
        physical = _NOMINAL_MEAN + state * _NOMINAL_STD
        readings = physical * gain + offset + np.outer(index, _DRIFT_PER_ROW)
        if glitches:
            glitched = rng.random(count) < _GLITCH_RATE
            sensor = rng.integers(0, 6, count)
            spike = rng.uniform(8, 30, count) * rng.choice([-1.0, 1.0], count)
            stuck = rng.random(count) < 0.3
            for row in np.flatnonzero(glitched):
                column = sensor[row]
                readings[row, column] = (
                    0.0 if stuck[row] else physical[row, column] + spike[row] * _NOMINAL_STD[column]
                )
            readings[rng.random((count, 6)) < _GAP_RATE] = np.nan
        return readings, labels


def sensor_test_set(seed: int, rows: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Clean rows (no glitches or gaps) from devices the fleet never saw, for scoring."""
    parts = [SensorDevice(seed + 10_000, i).rows(0, rows // 8, glitches=False) for i in range(8)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
