"""Logistic regression kernels against the numpy references in tests/naive_models.py."""

# X (data matrix) and W (weights) are the field's own names.

from __future__ import annotations

import naive_models as naive
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbus.broker.errors import KernelInputError
from fedbus.kernels import logistic
from fedbus.kernels.logistic import (
    logistic_log_loss_grad,
    logistic_predict_proba,
    logistic_sgd_epoch,
)

RTOL = 1e-4
ATOL = 1e-5


@st.composite
def problems(draw: st.DrawFn, scale: float = 3.0, min_rows: int = 0) -> tuple:
    """Random (X, y, W, b) with edge sizes: 0/1 rows, 0/1/63 features."""
    n_rows = draw(st.sampled_from([min_rows, 1, 2, 17]) | st.integers(min_rows, 40))
    n_features = draw(st.sampled_from([0, 1, 63]) | st.integers(1, 20))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    X = rng.normal(0, 1, (n_rows, n_features)).astype(np.float32)
    y = rng.integers(0, 2, n_rows).astype(np.int64)
    W = rng.normal(0, scale, (n_features, 1)).astype(np.float32)
    b = rng.normal(0, scale, 1).astype(np.float32)
    return X, y, W, b


@settings(max_examples=200, deadline=None)
@given(problems())
def test_loss_and_grad_match_reference(problem: tuple) -> None:
    X, y, W, b = problem
    loss, grad_W, grad_b = logistic_log_loss_grad(X, y, W, b)
    ref_loss, ref_W, ref_b = naive.logistic_log_loss_grad(X, y, W, b)
    assert loss == pytest.approx(ref_loss, rel=RTOL, abs=ATOL)
    assert grad_W.dtype == np.float32 and grad_W.shape == W.shape
    assert grad_b.dtype == np.float32 and grad_b.shape == b.shape
    np.testing.assert_allclose(grad_W, ref_W, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad_b, ref_b, rtol=RTOL, atol=ATOL)


def test_zero_weights_cost_log_two_per_row() -> None:
    X = np.ones((3, 2), np.float32)
    loss, grad_W, grad_b = logistic_log_loss_grad(
        X, np.array([1, 0, 1]), np.zeros((2, 1), np.float32), np.zeros(1, np.float32)
    )
    assert loss == pytest.approx(np.log(2))
    # mean of sigmoid(0) - y = (-0.5 + 0.5 - 0.5) / 3
    np.testing.assert_allclose(grad_b, [-1 / 6], rtol=1e-6)
    np.testing.assert_allclose(grad_W, [[-1 / 6], [-1 / 6]], rtol=1e-6)


def test_empty_input_gives_zero_loss_and_grads() -> None:
    loss, grad_W, grad_b = logistic_log_loss_grad(
        np.empty((0, 4), np.float32),
        np.empty(0, np.int64),
        np.ones((4, 1), np.float32),
        np.ones(1, np.float32),
    )
    assert loss == 0.0
    assert not grad_W.any() and not grad_b.any()


@settings(max_examples=50, deadline=None)
@given(problems(scale=1e4, min_rows=1))
def test_extreme_logits_stay_finite(problem: tuple) -> None:
    X, y, W, b = problem
    loss, grad_W, grad_b = logistic_log_loss_grad(X, y, W, b)
    proba = logistic_predict_proba(X, W, b)
    assert np.isfinite(loss) and np.isfinite(grad_W).all() and np.isfinite(grad_b).all()
    assert np.isfinite(proba).all() and (proba >= 0).all() and (proba <= 1).all()
    ref_loss, _, ref_b = naive.logistic_log_loss_grad(X, y, W, b)
    # float32 logits of size 1e4 carry about 1e-3 absolute error
    assert loss == pytest.approx(ref_loss, rel=RTOL, abs=1e-2)
    np.testing.assert_allclose(grad_b, ref_b, atol=1e-2)


@pytest.mark.parametrize(
    ("logit", "label", "loss", "grad"),
    [
        (1e4, 0, 1e4, 1.0),
        (-1e4, 1, 1e4, -1.0),
        (1e4, 1, 0.0, 0.0),
        (-1e4, 0, 0.0, 0.0),
        (3e38, 0, 3e38, 1.0),
        (-3e38, 1, 3e38, -1.0),
        (-100.0, 0, 0.0, 0.0),
    ],
)
def test_huge_logits_give_exact_losses(logit: float, label: int, loss: float, grad: float) -> None:
    X = np.ones((1, 1), np.float32)
    W = np.array([[logit]], np.float32)
    b = np.zeros(1, np.float32)
    got, grad_W, grad_b = logistic_log_loss_grad(X, np.array([label]), W, b)
    assert got == pytest.approx(loss, rel=1e-7, abs=1e-30)
    np.testing.assert_allclose(grad_b, [grad], atol=1e-30)
    np.testing.assert_allclose(grad_W, [[grad]], atol=1e-30)
    expected = 1.0 if logit > 0 else 0.0
    np.testing.assert_allclose(logistic_predict_proba(X, W, b), [expected], atol=1e-30)


def test_small_losses_keep_their_digits() -> None:
    # log(1 + e^-30) is about 9.4e-14; 1 - sigmoid(30) in float32 would round to 0
    X = np.ones((1, 1), np.float32)
    loss, _, _ = logistic_log_loss_grad(
        X, np.array([1]), np.array([[30.0]], np.float32), np.zeros(1, np.float32)
    )
    assert loss == pytest.approx(np.log1p(np.exp(-30.0)), rel=1e-5)


@settings(max_examples=30, deadline=None)
@given(problems(scale=1.0, min_rows=1))
def test_gradient_matches_finite_differences_in_float64(problem: tuple) -> None:
    # The private kernel runs the same body on float64 arrays, so the check is tight.
    X, y, W, b = problem
    X, W, b = X.astype(np.float64), W.astype(np.float64), b.astype(np.float64)
    rows = np.arange(len(X), dtype=np.int64)

    def loss_and_grad(W: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        grad_W, grad_b = np.empty_like(W), np.empty_like(b)
        loss = logistic._batch_loss_grad_kernel(X, y, rows, W, b, grad_W, grad_b)
        return loss, grad_W, grad_b

    _, grad_W, grad_b = loss_and_grad(W, b)
    eps = 1e-6
    for param, grad in ((W, grad_W), (b, grad_b)):
        numeric = np.empty_like(param)
        for i in np.ndindex(param.shape):
            saved = param[i]
            param[i] = saved + eps
            up = loss_and_grad(W, b)[0]
            param[i] = saved - eps
            down = loss_and_grad(W, b)[0]
            param[i] = saved
            numeric[i] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


@settings(max_examples=200, deadline=None)
@given(problems())
def test_predict_proba_matches_reference(problem: tuple) -> None:
    X, _, W, b = problem
    proba = logistic_predict_proba(X, W, b)
    assert proba.dtype == np.float32 and proba.shape == (X.shape[0],)
    np.testing.assert_allclose(proba, naive.logistic_proba(X, W, b), rtol=RTOL, atol=ATOL)


@settings(max_examples=150, deadline=None)
@given(
    problems(scale=0.5),
    st.integers(1, 20),
    st.sampled_from([0.0, 0.01, 0.1, 1.0]),
    st.integers(0, 2**32 - 1),
)
def test_sgd_epoch_matches_numpy_loop(
    problem: tuple, batch_size: int, lr: float, seed: int
) -> None:
    X, y, W, b = problem
    order = np.random.default_rng(seed).permutation(len(X))
    ref_loss, ref_W, ref_b = naive.logistic_sgd_epoch(X, y, W, b, order, batch_size, lr)
    X_before, y_before = X.copy(), y.copy()
    loss = logistic_sgd_epoch(X, y, W, b, batch_size, lr, np.random.default_rng(seed))
    assert loss == pytest.approx(ref_loss, rel=RTOL, abs=ATOL)
    np.testing.assert_allclose(W, ref_W, rtol=RTOL, atol=1e-4)
    np.testing.assert_allclose(b, ref_b, rtol=RTOL, atol=1e-4)
    np.testing.assert_array_equal(X, X_before)
    np.testing.assert_array_equal(y, y_before)


def _separable_toy(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(400, 5)).astype(np.float32)
    margin = X @ rng.normal(size=5) + 0.3
    keep = np.abs(margin) > 0.2  # a clear gap between the classes
    y = (margin[keep] > 0).astype(np.int64)
    return X[keep].copy(), y, np.zeros((5, 1), np.float32), np.zeros(1, np.float32)


def test_sgd_epochs_separate_a_separable_problem() -> None:
    X, y, W, b = _separable_toy()
    start, _, _ = logistic_log_loss_grad(X, y, W, b)
    rng = np.random.default_rng(5)
    epoch_losses = [logistic_sgd_epoch(X, y, W, b, 8, 0.5, rng) for _ in range(20)]
    end, _, _ = logistic_log_loss_grad(X, y, W, b)
    assert epoch_losses[-1] < epoch_losses[0]
    assert end < 0.2 * start
    accuracy = np.mean((logistic_predict_proba(X, W, b) > 0.5) == y)
    assert accuracy >= 0.98


def test_seeded_epochs_are_bit_identical_and_seeds_matter() -> None:
    runs = []
    for seed in (7, 7, 8):
        X, y, W, b = _separable_toy()
        rng = np.random.default_rng(seed)
        losses = [logistic_sgd_epoch(X, y, W, b, 10, 0.1, rng) for _ in range(3)]
        runs.append((losses, W, b))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    np.testing.assert_array_equal(runs[0][2], runs[1][2])
    assert not np.array_equal(runs[0][1], runs[2][1])


def test_sgd_epoch_last_batch_may_be_smaller_and_no_rows_is_a_no_op() -> None:
    X = np.ones((5, 2), np.float32)
    y = np.array([0, 1, 1, 0, 1], np.int64)
    W, b = np.zeros((2, 1), np.float32), np.zeros(1, np.float32)
    # lr 0 keeps W at zero, so each batch (2, 2, 1 rows) has loss log(2)
    loss = logistic_sgd_epoch(X, y, W, b, 2, 0.0, np.random.default_rng(0))
    assert loss == pytest.approx(np.log(2), rel=1e-6)
    empty, no_labels = np.empty((0, 2), np.float32), np.empty(0, np.int64)
    assert logistic_sgd_epoch(empty, no_labels, W, b, 4, 0.5, np.random.default_rng(0)) == 0.0
    assert not W.any() and not b.any()


def _valid() -> dict:
    return {
        "X": np.zeros((4, 3), np.float32),
        "y": np.array([0, 1, 1, 0], np.int64),
        "W": np.zeros((3, 1), np.float32),
        "b": np.zeros(1, np.float32),
    }


BAD_INPUTS = {
    "X float64": ("X", np.zeros((4, 3), np.float64), "dtype float32"),
    "y float32": ("y", np.array([0, 1, 1, 0], np.float32), "dtype int64"),
    "y bool": ("y", np.array([0, 1, 1, 0], bool), "dtype int64"),
    "W float16": ("W", np.zeros((3, 1), np.float16), "dtype float32"),
    "X 1-D": ("X", np.zeros(12, np.float32), "2-D"),
    "y 2-D": ("y", np.zeros((4, 1), np.int64), "1-D"),
    "X list": ("X", [[0.0] * 3] * 4, "numpy array"),
    "X features": ("X", np.zeros((4, 5), np.float32), "features"),
    "W two columns": ("W", np.zeros((3, 2), np.float32), r"\(n_features, 1\)"),
    "b shape": ("b", np.zeros(2, np.float32), r"b must have shape \(1,\)"),
    "y length": ("y", np.array([0, 1], np.int64), "entries"),
    "X fortran": ("X", np.asfortranarray(np.zeros((4, 3), np.float32)), "C-contiguous"),
    "y strided": ("y", np.zeros(8, np.int64)[::2], "C-contiguous"),
    "label 2": ("y", np.array([0, 1, 2, 0], np.int64), "0 or 1"),
    "label negative": ("y", np.array([0, -1, 1, 0], np.int64), "0 or 1"),
}


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_wrappers_reject_bad_inputs(case: tuple) -> None:
    name, value, message = case
    args = _valid() | {name: value}
    with pytest.raises(KernelInputError, match=message):
        logistic_log_loss_grad(args["X"], args["y"], args["W"], args["b"])
    with pytest.raises(KernelInputError, match=message):
        logistic_sgd_epoch(
            args["X"], args["y"], args["W"], args["b"], 2, 0.1, np.random.default_rng(0)
        )
    if name != "y":
        with pytest.raises(KernelInputError, match=message):
            logistic_predict_proba(args["X"], args["W"], args["b"])


@pytest.mark.parametrize(
    ("batch_size", "lr", "rng", "message"),
    [
        (0, 0.1, np.random.default_rng(0), "batch_size"),
        (2.5, 0.1, np.random.default_rng(0), "batch_size"),
        (2, float("inf"), np.random.default_rng(0), "lr"),
        (2, 0.1, None, "Generator"),
    ],
)
def test_sgd_epoch_rejects_bad_hyperparameters(
    batch_size: int, lr: float, rng: np.random.Generator, message: str
) -> None:
    a = _valid()
    with pytest.raises(KernelInputError, match=message):
        logistic_sgd_epoch(a["X"], a["y"], a["W"], a["b"], batch_size, lr, rng)


def test_sgd_epoch_rejects_read_only_weights() -> None:
    a = _valid()
    a["W"].setflags(write=False)
    with pytest.raises(KernelInputError, match="writeable"):
        logistic_sgd_epoch(a["X"], a["y"], a["W"], a["b"], 2, 0.1, np.random.default_rng(0))
