"""Linear regression kernels against the numpy references in tests/naive_models.py."""

# X (data matrix), W (weights) and Y (2-D targets) are the field's own names.

from __future__ import annotations

import naive_models as naive
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbus.broker.errors import KernelInputError
from fedbus.kernels import linear
from fedbus.kernels.linear import linear_mse_grad, linear_predict, linear_sgd_epoch

RTOL = 1e-4
ATOL = 1e-4


@st.composite
def problems(draw: st.DrawFn, scale: float = 1.0, min_rows: int = 0) -> tuple:
    """Random (X, y, W, b) with edge sizes: 0/1 rows, 0/1/63 features, 1-D or 2-D y."""
    n_rows = draw(st.sampled_from([min_rows, 1, 2, 17]) | st.integers(min_rows, 40))
    n_features = draw(st.sampled_from([0, 1, 63]) | st.integers(1, 20))
    n_targets = draw(st.sampled_from([1, 2, 7]) | st.integers(1, 10))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    X = rng.normal(0, 1, (n_rows, n_features)).astype(np.float32)
    y = rng.normal(0, scale, (n_rows, n_targets)).astype(np.float32)
    if n_targets == 1 and draw(st.booleans()):
        y = y[:, 0].copy()
    W = rng.normal(0, scale, (n_features, n_targets)).astype(np.float32)
    b = rng.normal(0, scale, n_targets).astype(np.float32)
    return X, y, W, b


@settings(max_examples=200, deadline=None)
@given(problems())
def test_loss_and_grad_match_reference(problem: tuple) -> None:
    X, y, W, b = problem
    loss, grad_W, grad_b = linear_mse_grad(X, y, W, b)
    ref_loss, ref_W, ref_b = naive.linear_mse_grad(X, y, W, b)
    assert loss == pytest.approx(ref_loss, rel=RTOL, abs=ATOL)
    assert grad_W.dtype == np.float32 and grad_W.shape == W.shape
    assert grad_b.dtype == np.float32 and grad_b.shape == b.shape
    np.testing.assert_allclose(grad_W, ref_W, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad_b, ref_b, rtol=RTOL, atol=ATOL)


def test_loss_is_half_the_mean_squared_error_per_row() -> None:
    X = np.array([[1.0], [2.0]], np.float32)
    y = np.array([[0.0, 0.0], [0.0, 0.0]], np.float32)
    W = np.array([[1.0, 2.0]], np.float32)
    b = np.zeros(2, np.float32)
    # residuals (1, 2) and (2, 4): 0.5 * (5 + 20) / 2 rows
    loss, grad_W, grad_b = linear_mse_grad(X, y, W, b)
    assert loss == pytest.approx(6.25)
    np.testing.assert_allclose(grad_W, [[2.5, 5.0]])
    np.testing.assert_allclose(grad_b, [1.5, 3.0])


def test_empty_input_gives_zero_loss_and_grads() -> None:
    W = np.ones((5, 3), np.float32)
    loss, grad_W, grad_b = linear_mse_grad(
        np.empty((0, 5), np.float32), np.empty((0, 3), np.float32), W, np.ones(3, np.float32)
    )
    assert loss == 0.0
    assert not grad_W.any() and not grad_b.any()


@settings(max_examples=50, deadline=None)
@given(problems(scale=1e3, min_rows=1))
def test_large_values_stay_finite_and_accurate(problem: tuple) -> None:
    X, y, W, b = problem
    loss, grad_W, grad_b = linear_mse_grad(X, y, W, b)
    ref_loss, ref_W, ref_b = naive.linear_mse_grad(X, y, W, b)
    assert np.isfinite(loss) and np.isfinite(grad_W).all() and np.isfinite(grad_b).all()
    assert loss == pytest.approx(ref_loss, rel=1e-3)
    scale = max(1.0, float(np.abs(ref_W).max(initial=0.0)), float(np.abs(ref_b).max()))
    np.testing.assert_allclose(grad_W, ref_W, atol=1e-4 * scale)
    np.testing.assert_allclose(grad_b, ref_b, atol=1e-4 * scale)


@settings(max_examples=30, deadline=None)
@given(problems(min_rows=1))
def test_gradient_matches_finite_differences_in_float64(problem: tuple) -> None:
    # The private kernel runs the same body on float64 arrays, so the check is tight.
    X, y, W, b = (a.astype(np.float64) for a in problem)
    Y = y.reshape(len(X), -1)
    rows = np.arange(len(X), dtype=np.int64)
    scratch = np.empty_like(b)

    def loss_and_grad(W: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        grad_W, grad_b = np.empty_like(W), np.empty_like(b)
        loss = linear._batch_loss_grad_kernel(X, Y, rows, W, b, grad_W, grad_b, scratch)
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
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6)


@settings(max_examples=200, deadline=None)
@given(problems())
def test_predict_matches_reference(problem: tuple) -> None:
    X, _, W, b = problem
    out = linear_predict(X, W, b)
    assert out.dtype == np.float32 and out.shape == (X.shape[0], W.shape[1])
    ref = X.astype(np.float64) @ W.astype(np.float64) + b
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)


@settings(max_examples=150, deadline=None)
@given(
    problems(),
    st.integers(1, 20),
    st.sampled_from([0.0, 0.01, 0.05]),
    st.integers(0, 2**32 - 1),
)
def test_sgd_epoch_matches_numpy_loop(
    problem: tuple, batch_size: int, lr: float, seed: int
) -> None:
    X, y, W, b = problem
    order = np.random.default_rng(seed).permutation(len(X))
    ref_loss, ref_W, ref_b = naive.linear_sgd_epoch(X, y, W, b, order, batch_size, lr)
    X_before, y_before = X.copy(), y.copy()
    loss = linear_sgd_epoch(X, y, W, b, batch_size, lr, np.random.default_rng(seed))
    assert loss == pytest.approx(ref_loss, rel=RTOL, abs=ATOL)
    np.testing.assert_allclose(W, ref_W, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(b, ref_b, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(X, X_before)
    np.testing.assert_array_equal(y, y_before)


def _linear_toy(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(300, 6)).astype(np.float32)
    true_W = rng.normal(size=(6, 2))
    y = (X @ true_W + [0.5, -1.0]).astype(np.float32)
    return X, y, np.zeros((6, 2), np.float32), np.zeros(2, np.float32)


def test_sgd_epochs_fit_a_noise_free_linear_problem() -> None:
    X, y, W, b = _linear_toy()
    start, _, _ = linear_mse_grad(X, y, W, b)
    rng = np.random.default_rng(3)
    epoch_losses = [linear_sgd_epoch(X, y, W, b, 16, 0.05, rng) for _ in range(30)]
    end, _, _ = linear_mse_grad(X, y, W, b)
    assert epoch_losses[-1] < epoch_losses[0]
    assert end < 1e-4 * start
    np.testing.assert_allclose(b, [0.5, -1.0], atol=1e-2)


def test_seeded_epochs_are_bit_identical_and_seeds_matter() -> None:
    runs = []
    for seed in (7, 7, 8):
        X, y, W, b = _linear_toy()
        rng = np.random.default_rng(seed)
        losses = [linear_sgd_epoch(X, y, W, b, 10, 0.01, rng) for _ in range(3)]
        runs.append((losses, W, b))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    np.testing.assert_array_equal(runs[0][2], runs[1][2])
    assert not np.array_equal(runs[0][1], runs[2][1])


def test_sgd_epoch_last_batch_may_be_smaller_and_no_rows_is_a_no_op() -> None:
    X = np.ones((5, 1), np.float32)
    y = np.full(5, 2.0, np.float32)
    W, b = np.zeros((1, 1), np.float32), np.zeros(1, np.float32)
    # lr 0 keeps predictions at 0, so each batch (2, 2, 1 rows) has loss 0.5 * 2^2
    assert linear_sgd_epoch(X, y, W, b, 2, 0.0, np.random.default_rng(0)) == pytest.approx(2.0)
    empty = np.empty((0, 1), np.float32)
    no_targets = np.empty(0, np.float32)
    assert linear_sgd_epoch(empty, no_targets, W, b, 4, 0.5, np.random.default_rng(0)) == 0.0
    assert not W.any() and not b.any()


def _valid() -> dict:
    return {
        "X": np.zeros((4, 3), np.float32),
        "y": np.zeros((4, 2), np.float32),
        "W": np.zeros((3, 2), np.float32),
        "b": np.zeros(2, np.float32),
    }


BAD_INPUTS = {
    "X float64": ("X", np.zeros((4, 3), np.float64), "dtype float32"),
    "y float64": ("y", np.zeros((4, 2), np.float64), "dtype float32"),
    "y int64": ("y", np.zeros((4, 2), np.int64), "dtype float32"),
    "W float16": ("W", np.zeros((3, 2), np.float16), "dtype float32"),
    "X 1-D": ("X", np.zeros(12, np.float32), "2-D"),
    "y 3-D": ("y", np.zeros((4, 2, 1), np.float32), "1-D or 2-D"),
    "y 1-D for two targets": ("y", np.zeros(4, np.float32), "1-D but W has 2"),
    "X list": ("X", [[0.0] * 3] * 4, "numpy array"),
    "X features": ("X", np.zeros((4, 5), np.float32), "features"),
    "b shape": ("b", np.zeros(3, np.float32), "b must have shape"),
    "y rows": ("y", np.zeros((3, 2), np.float32), "y must have shape"),
    "y targets": ("y", np.zeros((4, 3), np.float32), "y must have shape"),
    "W no target": ("W", np.zeros((3, 0), np.float32), "target column"),
    "X fortran": ("X", np.asfortranarray(np.zeros((4, 3), np.float32)), "C-contiguous"),
    "y strided": ("y", np.zeros((4, 4), np.float32)[:, ::2], "C-contiguous"),
    "W strided": ("W", np.zeros((3, 4), np.float32)[:, ::2], "C-contiguous"),
}


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_wrappers_reject_bad_inputs(case: tuple) -> None:
    name, value, message = case
    args = _valid() | {name: value}
    with pytest.raises(KernelInputError, match=message):
        linear_mse_grad(args["X"], args["y"], args["W"], args["b"])
    with pytest.raises(KernelInputError, match=message):
        linear_sgd_epoch(
            args["X"], args["y"], args["W"], args["b"], 2, 0.1, np.random.default_rng(0)
        )
    if name != "y":
        with pytest.raises(KernelInputError, match=message):
            linear_predict(args["X"], args["W"], args["b"])


@pytest.mark.parametrize(
    ("batch_size", "lr", "rng", "message"),
    [
        (0, 0.1, np.random.default_rng(0), "batch_size"),
        (2.5, 0.1, np.random.default_rng(0), "batch_size"),
        (2, float("nan"), np.random.default_rng(0), "lr"),
        (2, "fast", np.random.default_rng(0), "lr"),
        (2, 0.1, 0, "Generator"),
        (2, 0.1, np.random.RandomState(0), "Generator"),
    ],
)
def test_sgd_epoch_rejects_bad_hyperparameters(
    batch_size: int, lr: float, rng: np.random.Generator, message: str
) -> None:
    a = _valid()
    with pytest.raises(KernelInputError, match=message):
        linear_sgd_epoch(a["X"], a["y"], a["W"], a["b"], batch_size, lr, rng)


def test_sgd_epoch_rejects_read_only_weights() -> None:
    a = _valid()
    a["b"].setflags(write=False)
    with pytest.raises(KernelInputError, match="writeable"):
        linear_sgd_epoch(a["X"], a["y"], a["W"], a["b"], 2, 0.1, np.random.default_rng(0))
