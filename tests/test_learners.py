"""SoftmaxRegression: the Learner contract, checked without any network."""

# X (data matrix) and W (weights) are the field's own names.

from __future__ import annotations

import numpy as np
import pytest

from fedbus.broker.errors import KernelInputError
from fedbus.node.learners import Learner, SoftmaxRegression


def _blobs(n_per_class: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated Gaussian blobs in 4-D: a linearly separable toy set."""
    rng = np.random.default_rng(seed)
    centres = np.array([[4, 0, 0, 0], [0, 4, 0, 0], [0, 0, 4, 0]], np.float32)
    X = np.concatenate([c + rng.normal(0, 0.5, (n_per_class, 4)) for c in centres])
    y = np.repeat(np.arange(3), n_per_class)
    return X.astype(np.float32), y.astype(np.int64)


def test_is_a_learner_and_starts_at_zero() -> None:
    learner = SoftmaxRegression(4, 3)
    assert isinstance(learner, Learner)
    assert learner.weight_spec() == {"W": ((4, 3), "float32"), "b": ((3,), "float32")}
    weights = learner.get_weights()
    assert not weights["W"].any() and not weights["b"].any()


def test_weights_round_trip_and_are_copies() -> None:
    rng = np.random.default_rng(0)
    weights = {
        "W": rng.normal(size=(4, 3)).astype(np.float32),
        "b": rng.normal(size=3).astype(np.float32),
    }
    learner = SoftmaxRegression(4, 3)
    learner.set_weights(weights)
    weights["W"][0, 0] = 99.0  # the learner must have copied
    out = learner.get_weights()
    assert out["W"][0, 0] != 99.0
    out["b"][:] = 7.0  # and handed out copies
    assert not np.array_equal(learner.get_weights()["b"], out["b"])


def test_set_weights_accepts_read_only_arrays() -> None:
    W = np.ones((4, 3), np.float32)
    W.setflags(write=False)
    learner = SoftmaxRegression(4, 3)
    learner.set_weights({"W": W, "b": np.zeros(3, np.float32)})
    X, y = _blobs()
    learner.fit(X, y, epochs=1, batch_size=8, lr=0.1, rng=np.random.default_rng(0))


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"W": np.zeros((3, 4), np.float32), "b": np.zeros(3, np.float32)}, "'W' must be"),
        ({"W": np.zeros((4, 3), np.float32), "b": np.zeros(4, np.float32)}, "'b' must be"),
        ({"W": np.zeros((4, 3), np.float64), "b": np.zeros(3, np.float32)}, "float32"),
        ({"W": np.zeros((4, 3), np.float32)}, "named"),
        ({"W": np.zeros((4, 3), np.float32), "bias": np.zeros(3, np.float32)}, "named"),
    ],
)
def test_set_weights_rejects_mismatches_and_keeps_old_weights(weights: dict, message: str) -> None:
    learner = SoftmaxRegression(4, 3)
    with pytest.raises(ValueError, match=message):
        learner.set_weights(weights)
    assert learner.get_weights()["W"].shape == (4, 3)
    assert not learner.get_weights()["W"].any()


def test_fit_lowers_the_loss_and_does_not_mutate_inputs() -> None:
    X, y = _blobs()
    X_before, y_before = X.copy(), y.copy()
    learner = SoftmaxRegression(4, 3)
    start = learner.evaluate(X, y)
    first = learner.fit(X, y, epochs=1, batch_size=8, lr=0.1, rng=np.random.default_rng(0))
    last = learner.fit(X, y, epochs=5, batch_size=8, lr=0.1, rng=np.random.default_rng(1))
    end = learner.evaluate(X, y)
    assert start["loss"] == pytest.approx(np.log(3), rel=1e-6)
    assert last < first < start["loss"]
    assert end["loss"] < 0.1 and end["accuracy"] == 1.0
    np.testing.assert_array_equal(X, X_before)
    np.testing.assert_array_equal(y, y_before)


def test_fit_is_reproducible_from_the_generator() -> None:
    X, y = _blobs()
    a, b = SoftmaxRegression(4, 3), SoftmaxRegression(4, 3)
    for learner in (a, b):
        learner.fit(X, y, epochs=2, batch_size=7, lr=0.2, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a.get_weights()["W"], b.get_weights()["W"])


def test_predict_and_evaluate_shapes() -> None:
    X, y = _blobs(n_per_class=5)
    learner = SoftmaxRegression(4, 3)
    labels = learner.predict(X)
    assert labels.shape == (15,) and labels.dtype == np.int64
    assert learner.predict_proba(X).shape == (15, 3)
    assert learner.predict(np.empty((0, 4), np.float32)).shape == (0,)
    metrics = learner.evaluate(X, y)
    assert set(metrics) == {"accuracy", "loss"}
    assert all(isinstance(v, float) for v in metrics.values())


def test_fit_rejects_unconverted_inputs_and_bad_epochs() -> None:
    X, y = _blobs(n_per_class=3)
    learner = SoftmaxRegression(4, 3)
    rng = np.random.default_rng(0)
    with pytest.raises(KernelInputError, match="float32"):
        learner.fit(X.astype(np.float64), y, epochs=1, batch_size=4, lr=0.1, rng=rng)
    with pytest.raises(ValueError, match="epochs"):
        learner.fit(X, y, epochs=0, batch_size=4, lr=0.1, rng=rng)
