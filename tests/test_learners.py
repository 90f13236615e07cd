"""Each learner's own behaviour; the contract all of them share is in test_learner_conformance.py.

SoftmaxRegression's contract tests came first and stay here; below them, what
is specific to the other learners, to build_learner and to SklearnAdapter.
"""

# X (data matrix) and W (weights) are the field's own names.

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression as SklearnLogistic
from sklearn.linear_model import SGDClassifier, SGDRegressor
from sklearn.metrics import hinge_loss
from sklearn.naive_bayes import GaussianNB

from fedbus.broker.errors import ConfigError, KernelInputError
from fedbus.broker.layouts import initial_weights, weight_shapes
from fedbus.node.learners import (
    Learner,
    LinearRegression,
    LogisticRegression,
    MLPClassifier,
    SoftmaxRegression,
    build_learner,
)
from fedbus.node.sklearn_adapter import SklearnAdapter


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


# --- build_learner -----------------------------------------------------------


def test_build_learner_takes_shapes_as_a_decoded_task_holds_them() -> None:
    learner = build_learner("softmax", {"W": [np.int64(4), 3], "b": [3]})  # type: ignore[dict-item]
    assert isinstance(learner, SoftmaxRegression)
    assert learner.weight_spec() == {"W": ((4, 3), "float32"), "b": ((3,), "float32")}


def test_build_learner_starts_an_mlp_where_the_aggregator_does() -> None:
    shapes = weight_shapes("mlp", 4, 3, [8, 5])
    learner = build_learner("mlp", shapes)
    assert isinstance(learner, MLPClassifier) and learner.hidden == (8, 5)
    expected = initial_weights("mlp", shapes, 0)
    for name, weight in learner.get_weights().items():
        np.testing.assert_array_equal(weight, expected[name])


@pytest.mark.parametrize(
    ("learner", "shapes", "message"),
    [
        ("tree", {"W": (3, 1), "b": (1,)}, "unknown learner"),
        ("linear", {"W": (3, 2), "b": (3,)}, "not a linear layout"),
        ("linear", {"b": (1,), "W": (3, 1)}, "not a linear layout"),  # wire order matters
        ("linear", {"W": (3, 1), "b": (1,), "c": (1,)}, "not a linear layout"),
        ("softmax", {"W": (3, 2)}, "not a softmax layout"),
        ("softmax", {"W": (3,), "b": (3,)}, "W \\(n_features, n_outputs\\)"),
        ("softmax", {"b": (3,)}, "W \\(n_features, n_outputs\\)"),
        ("softmax", {"W": (0, 3), "b": (3,)}, "n_features"),
        ("logistic", {"W": (3, 2), "b": (2,)}, "one output"),
        ("linear", {"W": ("three", 1), "b": (1,)}, "sequences of ints"),
        ("mlp", {"W": (3, 2), "b": (2,)}, "W1, b1"),
        ("mlp", {"W1": (4, 8), "b1": (8,), "W2": (7, 3), "b2": (3,)}, "do not chain"),
        ("mlp", {"W1": (4, 8), "b1": (8,), "W2": (8, 1), "b2": (1,)}, ">= 2 classes"),
    ],
)
def test_build_learner_refuses_unknown_names_and_inconsistent_shapes(
    learner: str, shapes: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        build_learner(learner, shapes)


# --- MLPClassifier -------------------------------------------------------------


def test_mlp_starts_from_the_layouts_initial_weights_for_its_seed() -> None:
    shapes = weight_shapes("mlp", 4, 3, [8])
    a, b = MLPClassifier(4, [8], 3, seed=3), MLPClassifier(4, [8], 3, seed=4)
    expected = initial_weights("mlp", shapes, 3)
    assert list(a.get_weights()) == ["W1", "b1", "W2", "b2"]
    for name, weight in a.get_weights().items():
        np.testing.assert_array_equal(weight, expected[name])
    assert not np.array_equal(a.get_weights()["W1"], b.get_weights()["W1"])


@pytest.mark.parametrize(
    ("hidden", "n_classes"), [((), 3), ((8, 0), 3), ((8,), 1), ((4, 4, 4, 4, 4), 3)]
)
def test_mlp_refuses_sizes_the_layout_does_not_allow(hidden: tuple, n_classes: int) -> None:
    with pytest.raises(ValueError, match="hidden|classes"):
        MLPClassifier(4, hidden, n_classes)


# --- LinearRegression ------------------------------------------------------------


def _line(W: list[list[float]], b: list[float]) -> LinearRegression:
    """A LinearRegression over X = [[0], [1], [2]]-style inputs with fixed weights."""
    learner = LinearRegression(len(W), len(b))
    learner.set_weights({"W": np.array(W, np.float32), "b": np.array(b, np.float32)})
    return learner


X_LINE = np.array([[0.0], [1.0], [2.0]], np.float32)


def test_linear_metrics_are_mse_rmse_and_r2_by_their_formulas() -> None:
    learner = _line([[2.0]], [1.0])  # predicts 1, 3, 5
    y = np.array([1.0, 3.0, 6.0], np.float32)  # residuals 0, 0, -1; mean 10/3
    metrics = learner.evaluate(X_LINE, y)
    assert metrics["loss"] == pytest.approx(1 / 3)
    assert metrics["rmse"] == pytest.approx(np.sqrt(1 / 3))
    assert metrics["r2"] == pytest.approx(1 - 1 / (114 / 9))  # SS_tot = (49 + 1 + 64) / 9
    perfect = learner.evaluate(X_LINE, np.array([1.0, 3.0, 5.0], np.float32))
    assert perfect == {"loss": 0.0, "rmse": 0.0, "r2": 1.0}


def test_linear_r2_of_constant_targets_is_one_if_exact_else_zero() -> None:
    y = np.full(3, 3.0, np.float32)  # SS_tot = 0
    exact = _line([[0.0]], [3.0]).evaluate(X_LINE, y)
    off = _line([[0.0]], [2.0]).evaluate(X_LINE, y)
    assert exact["r2"] == 1.0 and exact["loss"] == 0.0
    assert off["r2"] == 0.0 and off["loss"] == 1.0


def test_linear_r2_averages_outputs_and_mse_averages_every_cell() -> None:
    learner = _line([[2.0, 0.0]], [1.0, 2.0])  # outputs: 1, 3, 5 and 2, 2, 2
    Y = np.array([[1.0, 3.0], [3.0, 3.0], [5.0, 3.0]], np.float32)
    metrics = learner.evaluate(X_LINE, Y)
    assert metrics["r2"] == pytest.approx(0.5)  # (1.0 exact + 0.0 missed constant) / 2
    assert metrics["loss"] == pytest.approx(3 / 6)  # three cells off by 1, of six


def test_linear_fit_reports_the_same_mse_as_evaluate() -> None:
    # lr 0 and one batch: the epoch's loss is the untouched model's loss on all rows
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3)).astype(np.float32)
    Y = rng.normal(size=(40, 2)).astype(np.float32)
    learner = LinearRegression(3, 2)
    learner.set_weights({"W": np.ones((3, 2), np.float32), "b": np.ones(2, np.float32)})
    reported = learner.fit(X, Y, epochs=1, batch_size=40, lr=0.0, rng=rng)
    assert reported == pytest.approx(learner.evaluate(X, Y)["loss"], rel=1e-5)


def test_linear_evaluate_holds_targets_to_the_kernel_rules() -> None:
    X = np.zeros((3, 1), np.float32)
    with pytest.raises(KernelInputError, match="float32"):
        LinearRegression(1).evaluate(X, np.zeros(3))
    with pytest.raises(KernelInputError, match="shape"):
        LinearRegression(1, 2).evaluate(X, np.zeros(3, np.float32))


# --- LogisticRegression -----------------------------------------------------------


def test_logistic_probability_is_the_sigmoid_and_half_predicts_one() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3)).astype(np.float32)
    learner = LogisticRegression(3)
    assert (learner.predict(X) == 1).all()  # zero weights: P = 0.5, the portable model's 1
    W, b = rng.normal(size=(3, 1)).astype(np.float32), np.array([0.3], np.float32)
    learner.set_weights({"W": W, "b": b})
    expected = 1 / (1 + np.exp(-(X.astype(np.float64) @ W[:, 0] + b[0])))
    np.testing.assert_allclose(learner.predict_proba(X), expected, rtol=1e-5)


def test_logistic_refuses_labels_other_than_zero_and_one() -> None:
    X = np.zeros((3, 2), np.float32)
    with pytest.raises(KernelInputError, match="0 or 1"):
        LogisticRegression(2).fit(
            X, np.array([0, 1, 2]), epochs=1, batch_size=2, lr=0.1, rng=np.random.default_rng(0)
        )


# --- SklearnAdapter ---------------------------------------------------------------


def _binary_rows(rows: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 3)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(np.int64)


def test_adapter_binary_weights_are_the_logistic_layout_and_mean_the_same_model() -> None:
    rng = np.random.default_rng(0)
    weights = {"W": rng.normal(size=(3, 1)).astype(np.float32), "b": np.array([0.2], np.float32)}
    adapter = SklearnAdapter(SGDClassifier(loss="log_loss"), 3, classes=[0, 1])
    logistic = LogisticRegression(3)
    X, _ = _binary_rows()

    adapter.set_weights(weights)
    logistic.set_weights(weights)

    assert adapter.layout == "logistic"
    assert adapter.weight_spec() == logistic.weight_spec()
    np.testing.assert_array_equal(adapter.estimator.coef_, weights["W"].T)
    np.testing.assert_array_equal(adapter.estimator.intercept_, weights["b"])
    np.testing.assert_allclose(adapter.predict_proba(X), logistic.predict_proba(X), rtol=1e-5)


def test_adapter_multiclass_and_regressor_weights_map_to_coef_shapes() -> None:
    rng = np.random.default_rng(0)
    multi = SklearnAdapter(SGDClassifier(), 3, classes=[0, 1, 2])
    W3 = rng.normal(size=(3, 3)).astype(np.float32)
    multi.set_weights({"W": W3, "b": np.zeros(3, np.float32)})
    regressor = SklearnAdapter(SGDRegressor(), 3)
    W1, b1 = rng.normal(size=(3, 1)).astype(np.float32), np.array([0.5], np.float32)
    regressor.set_weights({"W": W1, "b": b1})
    linear = LinearRegression(3)
    linear.set_weights({"W": W1, "b": b1})
    X, _ = _binary_rows()

    assert multi.layout == "softmax" and multi.estimator.coef_.shape == (3, 3)
    np.testing.assert_array_equal(multi.estimator.coef_, W3.T)
    assert regressor.layout == "linear" and regressor.estimator.coef_.shape == (3,)
    np.testing.assert_allclose(regressor.predict(X), linear.predict(X), rtol=1e-5, atol=1e-6)


def test_adapter_first_fit_is_exactly_what_sklearn_does_from_scratch() -> None:
    # the zero row that makes scikit-learn allocate its weights leaves no trace
    X, y = _binary_rows()
    reference = SGDClassifier(loss="log_loss", random_state=0)
    order = np.random.default_rng(3).permutation(len(X))
    for start in range(0, len(X), 8):
        rows = order[start : start + 8]
        reference.partial_fit(X[rows].astype(np.float64), y[rows], classes=[0, 1])
    adapter = SklearnAdapter(SGDClassifier(loss="log_loss", random_state=0), 3, classes=[0, 1])

    adapter.fit(X, y, epochs=1, batch_size=8, lr=0.1, rng=np.random.default_rng(3))

    weights = adapter.get_weights()
    np.testing.assert_array_equal(weights["W"], reference.coef_.T.astype(np.float32))
    np.testing.assert_array_equal(weights["b"], reference.intercept_.astype(np.float32))
    assert adapter.estimator.t_ == reference.t_


def test_adapter_ignores_lr_and_leaves_the_callers_estimator_alone() -> None:
    X, y = _binary_rows()
    mine = SGDClassifier(loss="log_loss", random_state=0)
    slow = SklearnAdapter(mine, 3, classes=[0, 1])
    fast = SklearnAdapter(mine, 3, classes=[0, 1])

    slow.fit(X, y, epochs=2, batch_size=8, lr=1e-6, rng=np.random.default_rng(0))
    fast.fit(X, y, epochs=2, batch_size=8, lr=50.0, rng=np.random.default_rng(0))

    np.testing.assert_array_equal(slow.get_weights()["W"], fast.get_weights()["W"])
    assert slow.estimator is not mine and not hasattr(mine, "coef_")


def test_adapter_without_probabilities_reports_hinge_loss() -> None:
    X, y = _binary_rows()
    adapter = SklearnAdapter(SGDClassifier(loss="hinge", random_state=0), 3, classes=[0, 1])
    adapter.fit(X, y, epochs=2, batch_size=8, lr=0.1, rng=np.random.default_rng(0))

    expected = hinge_loss(y, adapter.estimator.decision_function(X.astype(np.float64)))

    assert adapter.evaluate(X, y)["loss"] == pytest.approx(expected)
    with pytest.raises(AttributeError, match="no probabilities"):
        adapter.predict_proba(X)


def test_adapter_refuses_labels_outside_its_classes_before_training() -> None:
    X, y = _binary_rows()
    adapter = SklearnAdapter(SGDClassifier(), 3, classes=[0, 1])
    y = y.copy()
    y[0] = 2
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        adapter.fit(X, y, epochs=1, batch_size=8, lr=0.1, rng=np.random.default_rng(0))
    assert not adapter.get_weights()["W"].any()


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: SklearnAdapter(SGDClassifier(), 3), ValueError, "needs classes="),
        (lambda: SklearnAdapter(SGDClassifier(), 3, classes=[1, 2]), ValueError, "0 .. k-1"),
        (lambda: SklearnAdapter(SGDClassifier(), 3, classes=[0]), ValueError, "k >= 2"),
        (lambda: SklearnAdapter(SGDRegressor(), 3, classes=[0, 1]), ValueError, "regressor"),
        (lambda: SklearnAdapter(SGDRegressor(average=True), 3), ValueError, "average"),
        (lambda: SklearnAdapter(SGDRegressor(), 0), ValueError, "n_features"),
        (lambda: SklearnAdapter(SklearnLogistic(), 3, [0, 1]), TypeError, "partial_fit"),
        (lambda: SklearnAdapter(GaussianNB(), 3, classes=[0, 1]), TypeError, "coef_"),
    ],
)
def test_adapter_refuses_what_it_cannot_map(make: Callable, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        make()


def test_adapter_names_the_extra_to_install_when_sklearn_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    estimator = SGDClassifier()
    monkeypatch.setitem(sys.modules, "sklearn.base", None)  # import now fails
    with pytest.raises(ImportError, match=r"pip install 'fedbus\[demo\]'"):
        SklearnAdapter(estimator, 3, classes=[0, 1])
