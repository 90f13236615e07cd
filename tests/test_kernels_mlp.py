"""MLP kernels against the numpy references in tests/naive_models.py."""

# X (data matrix) and W (weights) are the field's own names.

from __future__ import annotations

import naive_models as naive
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fedbus.broker.errors import KernelInputError
from fedbus.kernels import mlp
from fedbus.kernels.mlp import mlp_forward, mlp_loss_grad, mlp_sgd_epoch

RTOL = 1e-4
ATOL = 1e-5


def _network(
    rng: np.random.Generator, widths: list[int], scale: float | None = None
) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Layers for widths [n_features, hidden..., n_classes]; He-scaled unless ``scale``."""
    layers = []
    for n_in, n_out in zip(widths[:-1], widths[1:], strict=True):
        std = scale if scale is not None else np.sqrt(2.0 / max(n_in, 1))
        W = rng.normal(0, std, (n_in, n_out)).astype(np.float32)
        b = rng.normal(0, 0.1 if scale is None else scale, n_out).astype(np.float32)
        layers.append((W, b))
    return tuple(layers)


@st.composite
def problems(draw: st.DrawFn, min_rows: int = 0, scale: float | None = None) -> tuple:
    """Random (X, y, layers), one or two hidden layers, edge sizes included."""
    n_rows = draw(st.sampled_from([min_rows, 1, 2, 13]) | st.integers(min_rows, 25))
    n_features = draw(st.sampled_from([0, 1, 31]) | st.integers(1, 10))
    hidden = draw(st.lists(st.sampled_from([1, 2, 9]) | st.integers(1, 12), min_size=1, max_size=2))
    n_classes = draw(st.sampled_from([1, 2, 10]) | st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    X = rng.normal(0, 1, (n_rows, n_features)).astype(np.float32)
    y = rng.integers(0, n_classes, n_rows).astype(np.int64)
    return X, y, _network(rng, [n_features, *hidden, n_classes], scale)


def _assert_grads_close(grads: tuple, ref: list, atol: float = ATOL) -> None:
    assert len(grads) == len(ref)
    for (gW, gb), (rW, rb) in zip(grads, ref, strict=True):
        assert gW.dtype == np.float32 and gb.dtype == np.float32
        assert gW.shape == rW.shape and gb.shape == rb.shape
        np.testing.assert_allclose(gW, rW, rtol=RTOL, atol=atol)
        np.testing.assert_allclose(gb, rb, rtol=RTOL, atol=atol)


@settings(max_examples=150, deadline=None)
@given(problems())
def test_loss_and_grad_match_reference(problem: tuple) -> None:
    X, y, layers = problem
    loss, grads = mlp_loss_grad(X, y, layers)
    ref_loss, ref_grads = naive.mlp_loss_grad(X, y, layers)
    assert loss == pytest.approx(ref_loss, rel=RTOL, abs=ATOL)
    _assert_grads_close(grads, ref_grads)


def test_three_hidden_layers_also_work() -> None:
    rng = np.random.default_rng(4)
    X = rng.normal(size=(9, 5)).astype(np.float32)
    y = rng.integers(0, 3, 9)
    layers = _network(rng, [5, 6, 4, 7, 3])
    loss, grads = mlp_loss_grad(X, y, layers)
    ref_loss, ref_grads = naive.mlp_loss_grad(X, y, layers)
    assert loss == pytest.approx(ref_loss, rel=RTOL)
    _assert_grads_close(grads, ref_grads)
    np.testing.assert_allclose(mlp_forward(X, layers), naive.mlp_proba(X, layers), atol=ATOL)


def test_empty_input_gives_zero_loss_and_grads() -> None:
    layers = _network(np.random.default_rng(0), [4, 3, 2])
    loss, grads = mlp_loss_grad(np.empty((0, 4), np.float32), np.empty(0, np.int64), layers)
    assert loss == 0.0
    assert all(not gW.any() and not gb.any() for gW, gb in grads)
    assert mlp_forward(np.empty((0, 4), np.float32), layers).shape == (0, 2)


def test_dead_units_get_no_gradient() -> None:
    # every hidden unit is switched off by a large negative bias
    rng = np.random.default_rng(2)
    X = rng.normal(size=(6, 3)).astype(np.float32)
    (W1, _), (W2, b2) = _network(rng, [3, 4, 2])
    layers = ((W1, np.full(4, -100.0, np.float32)), (W2, b2))
    _, ((gW1, gb1), (gW2, gb2)) = mlp_loss_grad(X, np.array([0, 1, 0, 1, 1, 0]), layers)
    assert not gW1.any() and not gb1.any() and not gW2.any()
    assert gb2.any()


@settings(max_examples=50, deadline=None)
@given(problems(min_rows=1, scale=30.0))
def test_extreme_logits_stay_finite(problem: tuple) -> None:
    X, y, layers = problem
    loss, grads = mlp_loss_grad(X, y, layers)
    proba = mlp_forward(X, layers)
    assert np.isfinite(loss) and np.isfinite(proba).all()
    assert all(np.isfinite(gW).all() and np.isfinite(gb).all() for gW, gb in grads)
    ref_loss, ref_grads = naive.mlp_loss_grad(X, y, layers)
    assert loss == pytest.approx(ref_loss, rel=1e-3, abs=1e-2)
    # the output bias gradient is a mean of probabilities minus one-hots: bounded by 1
    np.testing.assert_allclose(grads[-1][1], ref_grads[-1][1], atol=1e-2)


def test_huge_logit_gap_gives_exact_probabilities() -> None:
    X = np.ones((1, 1), np.float32)
    layers = (
        (np.ones((1, 1), np.float32), np.zeros(1, np.float32)),
        (np.array([[1e4, -1e4]], np.float32), np.zeros(2, np.float32)),
    )
    np.testing.assert_array_equal(mlp_forward(X, layers), [[1.0, 0.0]])
    loss, grads = mlp_loss_grad(X, np.array([1]), layers)
    assert loss == pytest.approx(2e4)
    np.testing.assert_allclose(grads[1][1], [1.0, -1.0])


@settings(max_examples=25, deadline=None)
@given(problems(min_rows=1))
def test_gradient_matches_finite_differences_in_float64(problem: tuple) -> None:
    # The private kernel runs the same body on a float64 buffer, so the check is tight.
    X, y, layers = problem
    X = X.astype(np.float64)
    sizes = np.array([X.shape[1]] + [W.shape[1] for W, _ in layers], np.int64)
    params = np.concatenate([a.ravel() for pair in layers for a in pair]).astype(np.float64)

    def loss_and_grad(params: np.ndarray) -> tuple[float, np.ndarray]:
        grad = np.empty_like(params)
        return mlp._loss_grad_kernel(X, y, params, sizes, grad), grad

    # a ReLU input within eps of its kink would make the difference quotient meaningless
    h = X
    for W, b in layers[:-1]:
        z = h @ W + b
        assume(not (np.abs(z) < 1e-4).any())
        h = np.maximum(z, 0.0)
    _, grad = loss_and_grad(params)
    eps = 1e-6
    numeric = np.empty_like(params)
    for i in range(params.size):
        saved = params[i]
        params[i] = saved + eps
        up = loss_and_grad(params)[0]
        params[i] = saved - eps
        down = loss_and_grad(params)[0]
        params[i] = saved
        numeric[i] = (up - down) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


@settings(max_examples=150, deadline=None)
@given(problems())
def test_forward_matches_reference(problem: tuple) -> None:
    X, _, layers = problem
    proba = mlp_forward(X, layers)
    assert proba.dtype == np.float32 and proba.shape == (X.shape[0], layers[-1][0].shape[1])
    np.testing.assert_allclose(proba, naive.mlp_proba(X, layers), rtol=RTOL, atol=ATOL)


@settings(max_examples=100, deadline=None)
@given(
    problems(),
    st.integers(1, 12),
    st.sampled_from([0.0, 0.01, 0.1]),
    st.integers(0, 2**32 - 1),
)
def test_sgd_epoch_matches_numpy_loop(
    problem: tuple, batch_size: int, lr: float, seed: int
) -> None:
    X, y, layers = problem
    order = np.random.default_rng(seed).permutation(len(X))
    ref_loss, ref_layers = naive.mlp_sgd_epoch(X, y, layers, order, batch_size, lr)
    X_before, y_before = X.copy(), y.copy()
    arrays_before = [a for pair in layers for a in pair]
    loss = mlp_sgd_epoch(X, y, layers, batch_size, lr, np.random.default_rng(seed))
    assert loss == pytest.approx(ref_loss, rel=RTOL, abs=ATOL)
    for (W, b), (rW, rb) in zip(layers, ref_layers, strict=True):
        np.testing.assert_allclose(W, rW, rtol=RTOL, atol=1e-4)
        np.testing.assert_allclose(b, rb, rtol=RTOL, atol=1e-4)
    # the caller's own arrays were updated, not replaced
    assert all(a is b for a, b in zip(arrays_before, [a for p in layers for a in p], strict=True))
    np.testing.assert_array_equal(X, X_before)
    np.testing.assert_array_equal(y, y_before)


def _xor_toy(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four Gaussian blobs at the corners of a square, labelled by XOR: not linearly separable."""
    rng = np.random.default_rng(seed)
    corners = rng.integers(0, 2, (160, 2))
    X = (2.0 * corners - 1.0 + rng.normal(0, 0.15, (160, 2))).astype(np.float32)
    y = (corners[:, 0] ^ corners[:, 1]).astype(np.int64)
    return X, y


@pytest.mark.parametrize("hidden", [[16], [12, 8]], ids=["one hidden", "two hidden"])
def test_sgd_epochs_learn_xor(hidden: list[int]) -> None:
    X, y = _xor_toy()
    layers = _network(np.random.default_rng(1), [2, *hidden, 2])
    start, _ = mlp_loss_grad(X, y, layers)
    rng = np.random.default_rng(9)
    epoch_losses = [mlp_sgd_epoch(X, y, layers, 8, 0.1, rng) for _ in range(40)]
    end, _ = mlp_loss_grad(X, y, layers)
    assert epoch_losses[-1] < epoch_losses[0]
    assert end < 0.2 * start
    assert np.mean(mlp_forward(X, layers).argmax(axis=1) == y) >= 0.98


def test_seeded_epochs_are_bit_identical_and_seeds_matter() -> None:
    X, y = _xor_toy()
    runs = []
    for seed in (7, 7, 8):
        layers = _network(np.random.default_rng(1), [2, 6, 5, 2])
        rng = np.random.default_rng(seed)
        losses = [mlp_sgd_epoch(X, y, layers, 10, 0.1, rng) for _ in range(3)]
        runs.append((losses, [a for pair in layers for a in pair]))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(runs[0][1][0], runs[2][1][0])


def test_sgd_epoch_last_batch_may_be_smaller_and_no_rows_is_a_no_op() -> None:
    X = np.ones((5, 2), np.float32)
    y = np.array([0, 1, 1, 0, 1], np.int64)
    layers = (
        (np.ones((2, 3), np.float32), np.zeros(3, np.float32)),
        (np.zeros((3, 2), np.float32), np.zeros(2, np.float32)),
    )
    # lr 0 keeps the output layer at zero, so each batch (2, 2, 1 rows) has loss log(2)
    loss = mlp_sgd_epoch(X, y, layers, 2, 0.0, np.random.default_rng(0))
    assert loss == pytest.approx(np.log(2), rel=1e-6)
    empty, no_labels = np.empty((0, 2), np.float32), np.empty(0, np.int64)
    assert mlp_sgd_epoch(empty, no_labels, layers, 4, 0.5, np.random.default_rng(0)) == 0.0
    assert not layers[1][0].any() and (layers[0][0] == 1).all()


def test_layers_may_be_a_list_of_lists() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3, 2)).astype(np.float32)
    layers = [list(pair) for pair in _network(rng, [2, 3, 2])]
    np.testing.assert_allclose(mlp_forward(X, layers), naive.mlp_proba(X, layers), atol=ATOL)  # type: ignore[arg-type]


def _valid() -> dict:
    return {
        "X": np.zeros((4, 3), np.float32),
        "y": np.array([0, 1, 2, 1], np.int64),
        "layers": (
            (np.zeros((3, 5), np.float32), np.zeros(5, np.float32)),
            (np.zeros((5, 3), np.float32), np.zeros(3, np.float32)),
        ),
    }


_W2, _b2 = np.zeros((5, 3), np.float32), np.zeros(3, np.float32)
_F32 = np.float32


def _first_layer(W: object, b: object) -> tuple:
    """The valid network's layers with the first (W, b) replaced."""
    return ((W, b), (_W2, _b2))


BAD_INPUTS = {
    "X float64": ("X", np.zeros((4, 3), np.float64), "dtype float32"),
    "y int32": ("y", np.array([0, 1, 2, 1], np.int32), "dtype int64"),
    "X 1-D": ("X", np.zeros(12, _F32), "2-D"),
    "X list": ("X", [[0.0] * 3] * 4, "numpy array"),
    "X fortran": ("X", np.asfortranarray(np.zeros((4, 3), _F32)), "C-contiguous"),
    "y length": ("y", np.array([0, 1], np.int64), "entries"),
    "label too big": ("y", np.array([0, 1, 3, 1], np.int64), "range"),
    "label negative": ("y", np.array([0, -1, 2, 1], np.int64), "range"),
    "X features": ("X", np.zeros((4, 4), _F32), "W_0 expects 3 inputs but X has 4"),
    "no hidden layer": ("layers", ((np.zeros((3, 3), _F32), _b2),), "at least one hidden"),
    "layers dict": ("layers", {"W": 1}, "tuple of"),
    "not a pair": ("layers", ((np.zeros((3, 5), _F32),), (_W2, _b2)), r"layers\[0\]"),
    "W float64": ("layers", _first_layer(np.zeros((3, 5)), np.zeros(5, _F32)), "W_0"),
    "b 2-D": ("layers", _first_layer(np.zeros((3, 5), _F32), np.zeros((1, 5), _F32)), "b_0"),
    "b length": (
        "layers",
        _first_layer(np.zeros((3, 5), _F32), np.zeros(4, _F32)),
        "b_0 must have shape",
    ),
    "chain break": (
        "layers",
        _first_layer(np.zeros((3, 4), _F32), np.zeros(4, _F32)),
        "W_1 expects 5 inputs but layer 0 outputs 4",
    ),
    "no units": (
        "layers",
        _first_layer(np.zeros((3, 0), _F32), np.zeros(0, _F32)),
        "at least one output unit",
    ),
    "W strided": (
        "layers",
        _first_layer(np.zeros((3, 10), _F32)[:, ::2], np.zeros(5, _F32)),
        "C-contiguous",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_wrappers_reject_bad_inputs(case: tuple) -> None:
    name, value, message = case
    args = _valid() | {name: value}
    with pytest.raises(KernelInputError, match=message):
        mlp_loss_grad(args["X"], args["y"], args["layers"])
    with pytest.raises(KernelInputError, match=message):
        mlp_sgd_epoch(args["X"], args["y"], args["layers"], 2, 0.1, np.random.default_rng(0))
    if name != "y":
        with pytest.raises(KernelInputError, match=message):
            mlp_forward(args["X"], args["layers"])


@pytest.mark.parametrize(
    ("batch_size", "lr", "rng", "message"),
    [
        (0, 0.1, np.random.default_rng(0), "batch_size"),
        (2.5, 0.1, np.random.default_rng(0), "batch_size"),
        (2, float("nan"), np.random.default_rng(0), "lr"),
        (2, 0.1, 42, "Generator"),
    ],
)
def test_sgd_epoch_rejects_bad_hyperparameters(
    batch_size: int, lr: float, rng: np.random.Generator, message: str
) -> None:
    a = _valid()
    with pytest.raises(KernelInputError, match=message):
        mlp_sgd_epoch(a["X"], a["y"], a["layers"], batch_size, lr, rng)


def test_sgd_epoch_rejects_read_only_weights() -> None:
    a = _valid()
    a["layers"][1][1].setflags(write=False)
    with pytest.raises(KernelInputError, match="writeable"):
        mlp_sgd_epoch(a["X"], a["y"], a["layers"], 2, 0.1, np.random.default_rng(0))
