"""Softmax kernels against the numpy references in tests/naive.py."""

# X (data matrix) and W (weights) are the field's own names.

from __future__ import annotations

import naive
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbus.broker.errors import KernelInputError
from fedbus.kernels.softmax import (
    softmax_cross_entropy_grad,
    softmax_predict_proba,
    softmax_sgd_epoch,
)

RTOL = 1e-4
ATOL = 1e-5


@st.composite
def problems(draw: st.DrawFn, scale: float = 3.0, min_rows: int = 0) -> tuple:
    """Random (X, y, W, b) including edge sizes: 0/1 rows, 1/2 classes, 63 features."""
    n_rows = draw(st.sampled_from([min_rows, 1, 2, 17]) | st.integers(min_rows, 40))
    n_features = draw(st.sampled_from([0, 1, 63]) | st.integers(1, 20))
    n_classes = draw(st.sampled_from([1, 2, 10]) | st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    X = rng.normal(0, 1, (n_rows, n_features)).astype(np.float32)
    y = rng.integers(0, n_classes, n_rows).astype(np.int64)
    W = rng.normal(0, scale, (n_features, n_classes)).astype(np.float32)
    b = rng.normal(0, scale, n_classes).astype(np.float32)
    return X, y, W, b


@settings(max_examples=200, deadline=None)
@given(problems())
def test_loss_and_grad_match_reference(problem: tuple) -> None:
    X, y, W, b = problem
    loss, grad_W, grad_b = softmax_cross_entropy_grad(X, y, W, b)
    ref_loss, ref_W, ref_b = naive.softmax_cross_entropy_grad(X, y, W, b)
    assert loss == pytest.approx(ref_loss, rel=RTOL, abs=ATOL)
    assert grad_W.dtype == np.float32 and grad_W.shape == W.shape
    assert grad_b.dtype == np.float32 and grad_b.shape == b.shape
    np.testing.assert_allclose(grad_W, ref_W, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad_b, ref_b, rtol=RTOL, atol=ATOL)


def test_empty_input_gives_zero_loss_and_grads() -> None:
    X = np.empty((0, 5), np.float32)
    W = np.ones((5, 3), np.float32)
    loss, grad_W, grad_b = softmax_cross_entropy_grad(
        X, np.empty(0, np.int64), W, np.ones(3, np.float32)
    )
    assert loss == 0.0
    assert not grad_W.any() and not grad_b.any()


@settings(max_examples=50, deadline=None)
@given(problems(scale=1e4, min_rows=1))
def test_extreme_logits_stay_finite(problem: tuple) -> None:
    X, y, W, b = problem
    loss, grad_W, grad_b = softmax_cross_entropy_grad(X, y, W, b)
    proba = softmax_predict_proba(X, W, b)
    assert np.isfinite(loss) and np.isfinite(grad_W).all() and np.isfinite(grad_b).all()
    assert np.isfinite(proba).all()
    ref_loss, _, ref_b = naive.softmax_cross_entropy_grad(X, y, W, b)
    # float32 logits of size 1e4 carry about 1e-3 absolute error
    assert loss == pytest.approx(ref_loss, rel=RTOL, abs=1e-2)
    np.testing.assert_allclose(grad_b, ref_b, atol=1e-2)


def test_huge_logit_gap_gives_exact_probabilities() -> None:
    X = np.ones((1, 1), np.float32)
    W = np.array([[1e4, -1e4]], np.float32)
    b = np.zeros(2, np.float32)
    np.testing.assert_array_equal(softmax_predict_proba(X, W, b), [[1.0, 0.0]])
    loss, _, _ = softmax_cross_entropy_grad(X, np.array([1]), W, b)
    assert loss == pytest.approx(2e4)


@settings(max_examples=200, deadline=None)
@given(problems())
def test_predict_proba_matches_reference(problem: tuple) -> None:
    X, _, W, b = problem
    proba = softmax_predict_proba(X, W, b)
    assert proba.dtype == np.float32 and proba.shape == (X.shape[0], W.shape[1])
    np.testing.assert_allclose(proba, naive.softmax_proba(X, W, b), rtol=RTOL, atol=ATOL)


@settings(max_examples=150, deadline=None)
@given(problems(scale=0.5), st.integers(1, 20), st.sampled_from([0.0, 0.01, 0.1, 1.0]))
def test_sgd_epoch_matches_numpy_loop(problem: tuple, batch_size: int, lr: float) -> None:
    X, y, W, b = problem
    order = np.random.default_rng(len(X)).permutation(len(X)).astype(np.int64)
    ref_loss, ref_W, ref_b = naive.softmax_sgd_epoch(X, y, W, b, order, batch_size, lr)
    X_before, y_before = X.copy(), y.copy()
    loss = softmax_sgd_epoch(X, y, W, b, order, batch_size, lr)
    assert loss == pytest.approx(ref_loss, rel=RTOL, abs=ATOL)
    np.testing.assert_allclose(W, ref_W, rtol=RTOL, atol=1e-4)
    np.testing.assert_allclose(b, ref_b, rtol=RTOL, atol=1e-4)
    np.testing.assert_array_equal(X, X_before)
    np.testing.assert_array_equal(y, y_before)


def test_sgd_epoch_last_batch_may_be_smaller_and_empty_order_is_a_no_op() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(5, 3)).astype(np.float32)
    y = np.array([0, 1, 1, 0, 1], np.int64)
    W, b = np.zeros((3, 2), np.float32), np.zeros(2, np.float32)
    order = np.arange(5, dtype=np.int64)
    # lr 0 keeps W at zero, so each of the batches (2, 2, 1 rows) has loss log(2)
    loss = softmax_sgd_epoch(X, y, W, b, order, 2, 0.0)
    assert loss == pytest.approx(np.log(2), rel=1e-6)
    assert softmax_sgd_epoch(X, y, W, b, np.empty(0, np.int64), 4, 0.5) == 0.0
    assert not W.any() and not b.any()


def _valid() -> dict:
    return {
        "X": np.zeros((4, 3), np.float32),
        "y": np.array([0, 1, 2, 1], np.int64),
        "W": np.zeros((3, 3), np.float32),
        "b": np.zeros(3, np.float32),
    }


BAD_INPUTS = {
    "X float64": ("X", np.zeros((4, 3), np.float64), "dtype float32"),
    "y int32": ("y", np.array([0, 1, 2, 1], np.int32), "dtype int64"),
    "W float16": ("W", np.zeros((3, 3), np.float16), "dtype float32"),
    "X 1-D": ("X", np.zeros(12, np.float32), "2-D"),
    "X list": ("X", [[0.0] * 3] * 4, "numpy array"),
    "X features": ("X", np.zeros((4, 5), np.float32), "features"),
    "b shape": ("b", np.zeros(4, np.float32), "b must have shape"),
    "y length": ("y", np.array([0, 1], np.int64), "entries"),
    "W no class": ("W", np.zeros((3, 0), np.float32), "class"),
    "X fortran": ("X", np.asfortranarray(np.zeros((4, 3), np.float32)), "C-contiguous"),
    "W strided": ("W", np.zeros((3, 6), np.float32)[:, ::2], "C-contiguous"),
    "label too big": ("y", np.array([0, 1, 3, 1], np.int64), "range"),
    "label negative": ("y", np.array([0, -1, 2, 1], np.int64), "range"),
}


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_wrappers_reject_bad_inputs(case: tuple) -> None:
    name, value, message = case
    args = _valid() | {name: value}
    with pytest.raises(KernelInputError, match=message):
        softmax_cross_entropy_grad(args["X"], args["y"], args["W"], args["b"])
    with pytest.raises(KernelInputError, match=message):
        order = np.arange(4, dtype=np.int64)
        softmax_sgd_epoch(args["X"], args["y"], args["W"], args["b"], order, 2, 0.1)
    if name != "y":
        with pytest.raises(KernelInputError, match=message):
            softmax_predict_proba(args["X"], args["W"], args["b"])


@pytest.mark.parametrize(
    ("order", "batch_size", "lr", "message"),
    [
        (np.array([0, 1, 4], np.int64), 2, 0.1, "order values"),
        (np.array([0, 1], np.int32), 2, 0.1, "dtype int64"),
        (np.arange(4, dtype=np.int64), 0, 0.1, "batch_size"),
        (np.arange(4, dtype=np.int64), 2.5, 0.1, "batch_size"),
        (np.arange(4, dtype=np.int64), 2, float("nan"), "lr"),
    ],
)
def test_sgd_epoch_rejects_bad_order_and_hyperparameters(
    order: np.ndarray, batch_size: int, lr: float, message: str
) -> None:
    a = _valid()
    with pytest.raises(KernelInputError, match=message):
        softmax_sgd_epoch(a["X"], a["y"], a["W"], a["b"], order, batch_size, lr)


def test_sgd_epoch_rejects_read_only_weights() -> None:
    a = _valid()
    a["W"].setflags(write=False)
    with pytest.raises(KernelInputError, match="writeable"):
        softmax_sgd_epoch(a["X"], a["y"], a["W"], a["b"], np.arange(4, dtype=np.int64), 2, 0.1)


def test_kernel_input_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        softmax_predict_proba(
            np.zeros((1, 2)), np.zeros((2, 2), np.float32), np.zeros(2, np.float32)
        )
