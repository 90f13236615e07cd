"""Server optimizer steps (FedAvgM, FedAdam, FedYogi) against tests/naive_sparse.py."""

from __future__ import annotations

from collections.abc import Callable

import naive_sparse
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbus.broker.errors import KernelInputError
from fedbus.kernels.optimizers import adam_step, sgd_momentum_step, yogi_step

sizes = st.sampled_from([0, 1, 2, 3, 7, 255, 256, 257]) | st.integers(0, 600)
scales = st.sampled_from([1e-30, 1e-3, 1.0, 1e3, 1e15])
ADAPTIVE = {"adam": (adam_step, False), "yogi": (yogi_step, True)}


def assert_rounded_once(actual: np.ndarray, exact: np.ndarray, scale: np.ndarray) -> None:
    """``actual`` (float32) is ``exact`` (float64) rounded once, give or take.

    The kernel evaluates the reference's float64 formula in the same order
    and rounds it to float32 once, so it lies within one float32 ulp of the
    exact value; ``1e-12 * scale`` (scale: the magnitudes that went into the
    formula) absorbs any float64 difference in libm or operation order.
    """
    assert actual.dtype == np.float32
    gap = np.abs(actual.astype(np.float64) - exact)
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    assert (gap <= ulp + 1e-12 * scale).all(), float((gap - ulp).max())


def vectors(seed: int, n: int, scale: float, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(n) * scale).astype(np.float32) for _ in range(count)]


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=sizes,
    scale=scales,
    lr=st.sampled_from([0.0, 0.01, 1.0, 3.0]),
    momentum=st.sampled_from([0.0, 0.5, 0.9, 0.99]),
    steps=st.integers(1, 5),
)
def test_sgd_momentum_matches_reference_step_by_step(
    seed: int, n: int, scale: float, lr: float, momentum: float, steps: int
) -> None:
    w, velocity = vectors(seed, n, 1.0, 2)
    for grad in vectors(seed + 1, n, scale, steps):
        ref_w, ref_velocity = naive_sparse.sgd_momentum_step(w, grad, velocity, lr, momentum)
        grad_before = grad.copy()
        sgd_momentum_step(w, grad, velocity, lr, momentum)
        size = np.abs(ref_velocity) + np.abs(grad)
        assert_rounded_once(velocity, ref_velocity, size)
        assert_rounded_once(w, ref_w, np.abs(ref_w) + lr * size)
        np.testing.assert_array_equal(grad, grad_before)


def test_momentum_zero_is_plain_sgd_and_velocity_accumulates() -> None:
    rng = np.random.default_rng(0)
    w0, grad = rng.standard_normal((2, 33)).astype(np.float32)
    w, velocity = w0.copy(), np.zeros(33, np.float32)
    sgd_momentum_step(w, grad, velocity, 0.1, 0.0)
    np.testing.assert_array_equal(w, (w0 - 0.1 * grad.astype(np.float64)).astype(np.float32))
    np.testing.assert_array_equal(velocity, grad)
    velocity[:] = 0
    w = w0.copy()
    for _ in range(3):
        sgd_momentum_step(w, grad, velocity, 0.1, 0.9)
    np.testing.assert_allclose(velocity, grad * (1 + 0.9 + 0.81), rtol=1e-6)
    np.testing.assert_allclose(w, w0 - 0.1 * grad * (1 + 1.9 + 2.71), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ADAPTIVE)
@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=sizes,
    scale=scales,
    hyper=st.sampled_from(
        [
            (0.01, 0.9, 0.99, 1e-3),
            (1.0, 0.9, 0.999, 1e-8),
            (0.1, 0.0, 0.0, 1e-3),
            (0.0, 0.5, 0.5, 1),
        ]
    ),
    first_step=st.sampled_from([1, 2, 10, 10_000]),
    steps=st.integers(1, 5),
)
def test_adaptive_steps_match_reference_step_by_step(
    name: str,
    seed: int,
    n: int,
    scale: float,
    hyper: tuple[float, float, float, float],
    first_step: int,
    steps: int,
) -> None:
    step_fn, yogi = ADAPTIVE[name]
    w, m = vectors(seed, n, 1.0, 2)
    v = np.abs(vectors(seed + 2, n, scale, 1)[0] * scale).astype(np.float32)
    for t, grad in enumerate(vectors(seed + 1, n, scale, steps), start=first_step):
        ref_w, ref_m, ref_v = naive_sparse.adaptive_step(w, grad, m, v, hyper, t, yogi)
        step_fn(w, grad, m, v, *hyper, t)
        assert_rounded_once(m, ref_m, np.abs(ref_m) + np.abs(grad))
        assert_rounded_once(v, ref_v, np.abs(ref_v) + grad.astype(np.float64) ** 2)
        assert (v >= 0).all()  # Yogi, like Adam, keeps v non-negative
        # The step itself is at most lr * sqrt(1 - beta2**t) / (1 - beta1**t) * |m| / eps.
        lr, beta1, beta2, eps = hyper
        rate = lr * np.sqrt(1 - beta2**t) / (1 - beta1**t)
        assert_rounded_once(w, ref_w, np.abs(ref_w) + rate * np.abs(ref_m) / eps)


def test_adam_first_step_from_zero_state_has_closed_form() -> None:
    # m = (1-b1) g, v = (1-b2) g^2, so the step is lr * g / (|g| + eps / sqrt(1-b2)):
    # eps is added to the uncorrected sqrt(v) (Kingma & Ba, end of Section 2).
    grad = np.float32([1e-4, -1e-3, 0.02, -5.0, 0.0])
    for step_fn in (adam_step, yogi_step):
        w, m, v = np.zeros(5, np.float32), np.zeros(5, np.float32), np.zeros(5, np.float32)
        step_fn(w, grad, m, v, 0.1, 0.9, 0.99, 1e-3, 1)
        g = grad.astype(np.float64)
        np.testing.assert_allclose(w, -0.1 * g / (np.abs(g) + 1e-3 / 0.1), rtol=1e-6)


def test_yogi_first_step_from_zero_state_equals_adams() -> None:
    grad = np.random.default_rng(5).standard_normal(101).astype(np.float32)
    states = []
    for step_fn in (adam_step, yogi_step):
        w, m, v = np.ones(101, np.float32), np.zeros(101, np.float32), np.zeros(101, np.float32)
        step_fn(w, grad, m, v, 0.01, 0.9, 0.99, 1e-3, 1)
        states.append((w, m, v))
    for adam_array, yogi_array in zip(*states, strict=True):
        np.testing.assert_array_equal(adam_array, yogi_array)


def test_yogi_moves_v_by_a_fixed_fraction_of_g_squared() -> None:
    grad = np.float32([1, 1, 1, 2])
    v = np.float32([4, 1, 0.5, 0])
    m, w = np.zeros(4, np.float32), np.zeros(4, np.float32)
    yogi_step(w, grad, m, v, 0.1, 0.9, 0.9, 1e-3, 3)
    # v > g^2 shrinks by 0.1 g^2; v == g^2 stays; v < g^2 grows by 0.1 g^2.
    np.testing.assert_allclose(v, [3.9, 1.0, 0.6, 0.4], rtol=1e-7)


# Without the JIT, numpy warns when the float32 store of v = 0.01 * (3e38)^2 overflows.
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_extreme_gradients_give_finite_weights() -> None:
    grad = np.float32([3e38, -3e38, 1e-45, -1e-38, 0])
    for step_fn in (adam_step, yogi_step):
        w, m, v = np.zeros(5, np.float32), np.zeros(5, np.float32), np.zeros(5, np.float32)
        step_fn(w, grad, m, v, 0.01, 0.9, 0.99, 1e-3, 1)
        assert np.isfinite(w).all() and np.isfinite(m).all()
        # The documented limit: v itself overflows once (1 - beta2) g^2 > 3.4e38.
        assert np.isinf(v[:2]).all() and np.isfinite(v[2:]).all()
        assert np.abs(w).max() <= 0.01 * (1 + 1e-6)  # |step| <= lr for bias-corrected Adam
    w, velocity = np.zeros(5, np.float32), np.zeros(5, np.float32)
    sgd_momentum_step(w, grad, velocity, 1.0, 0.9)
    np.testing.assert_array_equal(w, -grad)


def test_empty_arrays_are_a_no_op() -> None:
    empty = [np.zeros(0, np.float32) for _ in range(4)]
    adam_step(*empty, 0.1, 0.9, 0.99, 1e-3, 1)
    yogi_step(*empty, 0.1, 0.9, 0.99, 1e-3, 1)
    sgd_momentum_step(*empty[:3], 0.1, 0.9)


def _arrays(n: int = 4) -> list[np.ndarray]:
    return [np.zeros(n, np.float32) for _ in range(4)]


Step = Callable[..., None]


@pytest.mark.parametrize(
    ("hyper", "step", "message"),
    [
        ((float("nan"), 0.9, 0.99, 1e-3), 1, "lr"),
        ((float("inf"), 0.9, 0.99, 1e-3), 1, "lr"),
        ((0.1, 1.0, 0.99, 1e-3), 1, "beta1"),
        ((0.1, -0.1, 0.99, 1e-3), 1, "beta1"),
        ((0.1, 0.9, 1.0, 1e-3), 1, "beta2"),
        ((0.1, 0.9, float("nan"), 1e-3), 1, "beta2"),
        ((0.1, 0.9, 0.99, 0.0), 1, "eps"),
        ((0.1, 0.9, 0.99, float("inf")), 1, "eps"),
        ((0.1, 0.9, 0.99, "1e-3"), 1, "eps"),
        ((0.1, 0.9, 0.99, 1e-3), 0, "step"),
        ((0.1, 0.9, 0.99, 1e-3), -3, "step"),
        ((0.1, 0.9, 0.99, 1e-3), 1.5, "step"),
    ],
)
@pytest.mark.parametrize("step_fn", [adam_step, yogi_step])
def test_adaptive_steps_refuse_bad_hyperparameters(
    step_fn: Step, hyper: tuple, step: object, message: str
) -> None:
    w, grad, m, v = _arrays()
    grad[:] = 1
    with pytest.raises(KernelInputError, match=message):
        step_fn(w, grad, m, v, *hyper, step)
    assert not (w.any() or m.any() or v.any())


@pytest.mark.parametrize(("lr", "momentum"), [(float("nan"), 0.9), (0.1, float("inf")), (None, 0)])
def test_sgd_momentum_refuses_bad_hyperparameters(lr: float, momentum: float) -> None:
    w, grad, velocity, _ = _arrays()
    with pytest.raises(KernelInputError, match="lr|momentum"):
        sgd_momentum_step(w, grad, velocity, lr, momentum)


def test_optimizers_refuse_bad_arrays() -> None:
    good = _arrays()
    frozen = np.zeros(4, np.float32)
    frozen.setflags(write=False)
    replacements = [
        (np.zeros(4), "dtype float32"),
        (np.zeros(5, np.float32), "shape"),
        (np.zeros((2, 2), np.float32), "1-D"),
        (np.zeros(8, np.float32)[::2], "C-contiguous"),
        ([0.0] * 4, "numpy array"),
    ]
    for position in range(4):
        for bad, message in replacements:
            args = good.copy()
            args[position] = bad
            with pytest.raises(KernelInputError, match=message):
                adam_step(*args, 0.1, 0.9, 0.99, 1e-3, 1)
            if position < 3:
                with pytest.raises(KernelInputError, match=message):
                    sgd_momentum_step(*args[:3], 0.1, 0.9)
    for position in (0, 2, 3):  # w, m, v are written; grad may be read-only
        args = good.copy()
        args[position] = frozen
        with pytest.raises(KernelInputError, match="writeable"):
            yogi_step(*args, 0.1, 0.9, 0.99, 1e-3, 1)
    w, grad, m, v = good
    adam_step(w, frozen, m, v, 0.1, 0.9, 0.99, 1e-3, 1)
    with pytest.raises(KernelInputError, match="share memory"):
        adam_step(w, grad, m, m, 0.1, 0.9, 0.99, 1e-3, 1)
    with pytest.raises(KernelInputError, match="share memory"):
        sgd_momentum_step(w, w, v, 0.1, 0.9)
