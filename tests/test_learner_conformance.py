"""One conformance suite for every learner: the Learner contract, checked the same way for all.

Each learner is a ``Case``: how to build a fresh one, a small toy data set it
can learn, and what it claims to be (task kind, built-in layout, classes). A
new learner joins by adding a Case; docs/LEARNERS.md lists what each test
below guarantees. Learner-specific behaviour is tested in test_learners.py.
"""

# X (data matrix) and W (weights) are the field's own names.

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import SGDClassifier, SGDRegressor

from fedbus.node.learners import (
    Learner,
    LinearRegression,
    LogisticRegression,
    MLPClassifier,
    SoftmaxRegression,
    build_learner,
)
from fedbus.node.sklearn_adapter import SklearnAdapter

Data = tuple[np.ndarray, np.ndarray]


def _blobs(n_classes: int, n_per_class: int = 30, n_features: int = 4, seed: int = 0) -> Data:
    """Well-separated Gaussian blobs, one per class on its own axis: linearly separable."""
    rng = np.random.default_rng(seed)
    centres = 4.0 * np.eye(n_classes, n_features)
    X = np.concatenate([c + rng.normal(0, 0.5, (n_per_class, n_features)) for c in centres])
    y = np.repeat(np.arange(n_classes), n_per_class)
    return X.astype(np.float32), y.astype(np.int64)


def _linear_targets(n_outputs: int, rows: int = 60, seed: int = 0) -> Data:
    """``X @ W + b`` plus a little noise: a well-posed least-squares problem.

    One output comes back 1-D, as a node hands regression targets over.
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 3)).astype(np.float32)
    W = rng.normal(size=(3, n_outputs))
    Y = X @ W + 0.5 + rng.normal(0, 0.01, (rows, n_outputs))
    return X, (Y[:, 0] if n_outputs == 1 else Y).astype(np.float32)


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], Any]
    data: Callable[[], Data]
    #: Built-in layout name for build_learner, or None for a plugged-in model.
    layout: str | None
    #: Number of classes, or None for a regression.
    n_classes: int | None
    epochs: int = 5
    batch_size: int = 8
    lr: float = 0.1

    @property
    def task_kind(self) -> str:
        return "regression" if self.n_classes is None else "classification"


CASES = [
    Case("linear", lambda: LinearRegression(3), lambda: _linear_targets(1), "linear", None),
    Case(
        "linear 2 outputs",
        lambda: LinearRegression(3, 2),
        lambda: _linear_targets(2),
        "linear",
        None,
    ),
    Case("logistic", lambda: LogisticRegression(4), lambda: _blobs(2), "logistic", 2),
    Case("softmax", lambda: SoftmaxRegression(4, 3), lambda: _blobs(3), "softmax", 3),
    Case("mlp 1 hidden", lambda: MLPClassifier(4, [8], 3), lambda: _blobs(3), "mlp", 3),
    Case("mlp 2 hidden", lambda: MLPClassifier(4, [8, 6], 3), lambda: _blobs(3), "mlp", 3),
    Case(
        "sklearn SGDClassifier binary",
        lambda: SklearnAdapter(
            SGDClassifier(loss="log_loss", random_state=0), n_features=4, classes=[0, 1]
        ),
        lambda: _blobs(2),
        None,
        2,
    ),
    Case(
        "sklearn SGDClassifier 3 classes",
        lambda: SklearnAdapter(
            SGDClassifier(loss="log_loss", random_state=0), n_features=4, classes=[0, 1, 2]
        ),
        lambda: _blobs(3),
        None,
        3,
    ),
    Case(
        "sklearn SGDRegressor",
        lambda: SklearnAdapter(SGDRegressor(random_state=0), n_features=3),
        lambda: _linear_targets(1),
        None,
        None,
    ),
]

every_learner = pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])


def _fit(case: Case, learner: Any, X: np.ndarray, y: np.ndarray, seed: int = 0) -> float:
    return learner.fit(
        X,
        y,
        epochs=case.epochs,
        batch_size=case.batch_size,
        lr=case.lr,
        rng=np.random.default_rng(seed),
    )


def _random_weights(learner: Any, seed: int) -> dict[str, np.ndarray]:
    """Weights that fit the learner's spec, drawn from ``seed`` (none of them zero)."""
    rng = np.random.default_rng(seed)
    return {
        name: rng.normal(size=shape).astype(dtype)
        for name, (shape, dtype) in learner.weight_spec().items()
    }


def _assert_weights_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@every_learner
def test_is_a_learner_of_its_task_kind(case: Case) -> None:
    learner = case.make()
    assert isinstance(learner, Learner)
    assert learner.task_kind == case.task_kind


@every_learner
def test_weight_spec_describes_get_weights(case: Case) -> None:
    learner = case.make()
    spec = learner.weight_spec()
    weights = learner.get_weights()
    assert list(weights) == list(spec)
    for name, (shape, dtype) in spec.items():
        assert dtype == "float32"
        assert weights[name].shape == shape and weights[name].dtype == np.float32


@every_learner
def test_weights_round_trip_and_are_copies_both_ways(case: Case) -> None:
    learner = case.make()
    weights = _random_weights(learner, seed=1)
    expected = {name: w.copy() for name, w in weights.items()}

    learner.set_weights(weights)
    for w in weights.values():
        w += 1.0  # the caller's arrays change after handing them over
    first = learner.get_weights()
    for w in first.values():
        w *= -3.0  # and the arrays handed out are changed too

    _assert_weights_equal(learner.get_weights(), expected)


@every_learner
def test_set_weights_accepts_read_only_arrays_and_can_train_after(case: Case) -> None:
    learner = case.make()
    weights = _random_weights(learner, seed=2)
    for w in weights.values():
        w.setflags(write=False)
    X, y = case.data()

    learner.set_weights(weights)
    _fit(case, learner, X, y)

    assert any(not np.array_equal(learner.get_weights()[name], weights[name]) for name in weights)


def _renamed(weights: dict[str, np.ndarray]) -> dict[str, Any]:
    last = list(weights)[-1]
    return {**{k: v for k, v in weights.items() if k != last}, last + "_x": weights[last]}


def _missing(weights: dict[str, np.ndarray]) -> dict[str, Any]:
    return dict(list(weights.items())[:-1])


def _extra(weights: dict[str, np.ndarray]) -> dict[str, Any]:
    return {**weights, "extra": np.zeros(1, np.float32)}


def _wrong_shape(weights: dict[str, np.ndarray]) -> dict[str, Any]:
    last = list(weights)[-1]
    return {**weights, last: np.zeros(weights[last].size + 1, np.float32)}


def _transposed(weights: dict[str, np.ndarray]) -> dict[str, Any]:
    first = list(weights)[0]  # no case has a square W, so W.T never fits
    return {**weights, first: np.ascontiguousarray(weights[first].T)}


def _wrong_dtype(weights: dict[str, np.ndarray]) -> dict[str, Any]:
    last = list(weights)[-1]
    return {**weights, last: weights[last].astype(np.float64)}


def _not_an_array(weights: dict[str, np.ndarray]) -> dict[str, Any]:
    last = list(weights)[-1]
    return {**weights, last: weights[last].tolist()}


BAD_WEIGHTS = [_renamed, _missing, _extra, _wrong_shape, _transposed, _wrong_dtype, _not_an_array]


@every_learner
@pytest.mark.parametrize("spoil", BAD_WEIGHTS, ids=[f.__name__[1:] for f in BAD_WEIGHTS])
def test_set_weights_rejects_a_mismatch_and_changes_nothing(
    case: Case, spoil: Callable[[dict[str, np.ndarray]], dict[str, Any]]
) -> None:
    learner = case.make()
    current = _random_weights(learner, seed=3)
    learner.set_weights(current)
    # Every tensor differs from `current`, and the spoiled one is last in wire
    # order (first for `transposed`), so assigning before checking would show.
    bad = spoil(_random_weights(learner, seed=4))

    with pytest.raises(ValueError):
        learner.set_weights(bad)

    _assert_weights_equal(learner.get_weights(), current)


@every_learner
def test_fit_predict_and_evaluate_only_read_their_inputs(case: Case) -> None:
    X, y = case.data()
    X_before, y_before = X.copy(), y.copy()
    X.setflags(write=False)
    y.setflags(write=False)
    learner = case.make()

    _fit(case, learner, X, y)
    learner.predict(X)
    learner.evaluate(X, y)

    np.testing.assert_array_equal(X, X_before)
    np.testing.assert_array_equal(y, y_before)


@every_learner
def test_fit_lowers_the_loss_on_a_well_posed_toy_set(case: Case) -> None:
    X, y = case.data()
    learner = case.make()
    before = learner.evaluate(X, y)["loss"]

    returned = _fit(case, learner, X, y)

    after = learner.evaluate(X, y)["loss"]
    assert isinstance(returned, float) and np.isfinite(returned)
    assert after < 0.5 * before


@every_learner
def test_predict_gives_one_label_or_value_per_row(case: Case) -> None:
    X, y = case.data()
    learner = case.make()
    _fit(case, learner, X, y)

    predicted = learner.predict(X)
    empty = learner.predict(X[:0])

    if case.n_classes is None:
        assert predicted.dtype == np.float32 and predicted.shape == y.shape
        assert empty.dtype == np.float32 and empty.shape == (0, *y.shape[1:])
    else:
        assert predicted.dtype == np.int64 and predicted.shape == (len(X),)
        assert predicted.min() >= 0 and predicted.max() < case.n_classes
        assert empty.dtype == np.int64 and empty.shape == (0,)


CLASSIFIERS = [c for c in CASES if c.n_classes is not None]


@pytest.mark.parametrize("case", CLASSIFIERS, ids=[c.name for c in CLASSIFIERS])
def test_predict_proba_is_a_distribution_that_predict_follows(case: Case) -> None:
    X, y = case.data()
    learner = case.make()
    _fit(case, learner, X, y)

    proba = learner.predict_proba(X)

    assert proba.dtype == np.float32
    if case.n_classes == 2:
        assert proba.shape == (len(X),)
        assert np.all((proba >= 0) & (proba <= 1))
        np.testing.assert_array_equal(learner.predict(X), (proba >= 0.5).astype(np.int64))
    else:
        assert proba.shape == (len(X), case.n_classes)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(learner.predict(X), proba.argmax(axis=1))


@every_learner
def test_evaluate_reports_the_documented_metrics_as_floats(case: Case) -> None:
    X, y = case.data()
    learner = case.make()
    expected = {"loss", "rmse", "r2"} if case.n_classes is None else {"accuracy", "loss"}

    metrics = learner.evaluate(X, y)
    no_rows = learner.evaluate(X[:0], y[:0])

    assert set(metrics) == expected
    assert all(type(v) is float and np.isfinite(v) for v in metrics.values())
    assert no_rows == dict.fromkeys(expected, 0.0)


@every_learner
def test_the_generator_alone_decides_the_trained_weights(case: Case) -> None:
    X, y = case.data()
    a, b, c = case.make(), case.make(), case.make()

    _fit(case, a, X, y, seed=5)
    _fit(case, b, X, y, seed=5)
    _fit(case, c, X, y, seed=6)

    _assert_weights_equal(a.get_weights(), b.get_weights())
    assert any(
        not np.array_equal(a.get_weights()[name], c.get_weights()[name]) for name in a.weight_spec()
    )


@every_learner
def test_fit_rejects_zero_epochs(case: Case) -> None:
    X, y = case.data()
    learner = case.make()
    before = learner.get_weights()

    with pytest.raises(ValueError, match="epochs"):
        learner.fit(X, y, epochs=0, batch_size=8, lr=0.1, rng=np.random.default_rng(0))

    _assert_weights_equal(learner.get_weights(), before)


BUILT_INS = [c for c in CASES if c.layout is not None]


@pytest.mark.parametrize("case", BUILT_INS, ids=[c.name for c in BUILT_INS])
def test_build_learner_builds_an_equivalent_learner_from_name_and_shapes(case: Case) -> None:
    learner = case.make()
    shapes = {name: shape for name, (shape, _) in learner.weight_spec().items()}
    weights = _random_weights(learner, seed=7)
    X, _ = case.data()

    built = build_learner(case.layout, shapes)

    assert type(built) is type(learner)
    assert built.weight_spec() == learner.weight_spec()
    assert built.task_kind == learner.task_kind
    learner.set_weights(weights)
    built.set_weights(weights)
    np.testing.assert_array_equal(built.predict(X), learner.predict(X))


def _xor(rows: int = 160, seed: int = 0) -> Data:
    """Four tight blobs at the corners of a square, labelled by XOR: no line separates them."""
    rng = np.random.default_rng(seed)
    corners = rng.integers(0, 2, (rows, 2))
    X = (2.0 * corners - 1.0 + rng.normal(0, 0.15, (rows, 2))).astype(np.float32)
    return X, (corners[:, 0] ^ corners[:, 1]).astype(np.int64)


def test_mlp_fits_xor_which_a_linear_model_cannot() -> None:
    X, y = _xor()
    mlp, logistic = MLPClassifier(2, [16], 2, seed=1), LogisticRegression(2)

    for learner in (mlp, logistic):
        learner.fit(X, y, epochs=40, batch_size=8, lr=0.1, rng=np.random.default_rng(9))

    assert mlp.evaluate(X, y)["accuracy"] >= 0.95
    assert logistic.evaluate(X, y)["accuracy"] <= 0.75


def test_linear_regression_recovers_known_coefficients_from_noiseless_data() -> None:
    rng = np.random.default_rng(0)
    W_true = np.array([[1.5, -2.0], [0.0, 0.5], [-1.0, 3.0]], np.float32)
    b_true = np.array([0.25, -1.0], np.float32)
    X = rng.normal(size=(200, 3)).astype(np.float32)
    Y = (X @ W_true + b_true).astype(np.float32)
    learner = LinearRegression(3, 2)

    learner.fit(X, Y, epochs=60, batch_size=16, lr=0.1, rng=np.random.default_rng(1))

    weights = learner.get_weights()
    np.testing.assert_allclose(weights["W"], W_true, atol=1e-4)
    np.testing.assert_allclose(weights["b"], b_true, atol=1e-4)
    assert learner.evaluate(X, Y)["r2"] > 1 - 1e-6


LEARNERS_DOC = Path(__file__).resolve().parent.parent / "docs" / "LEARNERS.md"


def test_the_sklearn_example_in_the_docs_runs() -> None:
    blocks = re.findall(r"^```python\n(.*?)^```", LEARNERS_DOC.read_text("utf-8"), re.M | re.S)
    assert len(blocks) == 1, "docs/LEARNERS.md should hold exactly one python example"
    namespace: dict[str, Any] = {"__name__": "learners_doc_example"}

    exec(compile(blocks[0], str(LEARNERS_DOC), "exec"), namespace)  # its asserts must hold

    assert namespace["metrics"]["accuracy"] > 0.9
