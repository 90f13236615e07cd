"""The demo's tabular data sets: diabetes (regression) and the synthetic sensor fleet."""

from __future__ import annotations

import numpy as np
import pytest

from fedbus.node.datasets import central_linear_baseline, load_diabetes_task
from fedbus.node.learner_metrics import regression_metrics
from fedbus.node.sensors import SENSOR_FEATURES, SensorDevice, sensor_test_set


def test_diabetes_is_raw_clinical_units_split_354_88_read_only() -> None:
    task = load_diabetes_task()
    assert task.X_train.shape == (354, 10) and task.X_test.shape == (88, 10)
    assert task.kind == "regression" and task.n_outputs == 1
    assert task.feature_names[:4] == ("age", "sex", "bmi", "bp")
    # not standardized: ages in years, targets in the data set's own range
    assert task.X_train[:, 0].min() >= 18 and task.X_train[:, 0].max() <= 80
    assert task.y_train.min() >= 25 and task.y_train.max() <= 346
    with pytest.raises(ValueError):
        task.X_train[0, 0] = 0


def test_central_baseline_is_least_squares_on_the_pooled_rows() -> None:
    task = load_diabetes_task()
    scores = central_linear_baseline(task)
    # any other linear fit of the same features does no better on the training rows
    X = np.column_stack([task.X_train, np.ones(len(task.X_train))])
    coef = np.linalg.lstsq(X, task.y_train, rcond=None)[0]
    assert 0.4 < scores["r2"] < 0.7  # the data set's known ceiling for a linear model
    test_pred = np.column_stack([task.X_test, np.ones(len(task.X_test))]) @ coef
    # standardizing first does not change a least-squares fit with an intercept
    fit = regression_metrics(task.y_test.reshape(-1, 1), test_pred.reshape(-1, 1))
    assert fit["r2"] == pytest.approx(scores["r2"], abs=1e-9)


def test_sensor_rows_are_a_pure_function_of_seed_device_and_index() -> None:
    first = SensorDevice(7, 2).rows(100, 50)
    again = SensorDevice(7, 2).rows(100, 50)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    other = SensorDevice(7, 3).rows(100, 50)
    assert not np.array_equal(np.nan_to_num(first[0]), np.nan_to_num(other[0]))


def test_sensor_stream_has_gaps_glitches_calibration_and_drift() -> None:
    device = SensorDevice(0, 1)
    readings, labels = device.rows(0, 20_000)
    assert readings.shape == (20_000, len(SENSOR_FEATURES))
    assert set(np.unique(labels)) == {0.0, 1.0} and 0.2 < labels.mean() < 0.5
    assert np.isnan(readings).mean() == pytest.approx(0.03, abs=0.005)
    clean, _ = device.rows(0, 20_000, glitches=False)
    assert not np.isnan(clean).any()
    # glitches: 2 % of rows, 70 % of them spikes at least 8 sensor stds off the
    # clean physics, 30 % a sensor stuck at zero
    nominal_std = np.array([6.0, 10.0, 0.6, 2.0, 25.0, 120.0])
    deviation = np.abs(np.nan_to_num(readings - clean)) / nominal_std
    assert (deviation.max(axis=1) > 7).mean() == pytest.approx(0.02 * 0.7, abs=0.004)
    assert (readings == 0).any(axis=1).mean() == pytest.approx(0.02 * 0.3, abs=0.003)
    # drift: the same device reads warmer late in its life
    early, _ = device.rows(0, 2000, glitches=False)
    late, _ = device.rows(100_000, 2000, glitches=False)
    assert late[:, 0].mean() - early[:, 0].mean() == pytest.approx(150, rel=0.1)
    # calibration: two devices disagree on temperature for the same physics
    offsets = [SensorDevice(0, i).calibration()[0][0] for i in range(20)]
    assert np.std(offsets) > 1.0


def test_sensor_test_set_is_clean_and_balanced_enough() -> None:
    X, y = sensor_test_set(0)
    assert X.shape == (2000, 6) and not np.isnan(X).any()
    assert 0.2 < y.mean() < 0.5
