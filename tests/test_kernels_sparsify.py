"""Top-k selection, error feedback and the checked sparse scatter, against tests/naive_sparse.py."""

from __future__ import annotations

import naive_sparse
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbus.broker.errors import KernelInputError
from fedbus.kernels.sparsify import scatter_accumulate, topk_indices, topk_with_feedback

U32 = 2.0**-24  # float32 unit roundoff: |fl(x) - x| <= U32 |fl(x)| for normal results
TINY32 = 2.0**-149  # smallest float32 subnormal; bounds the absolute error of a subnormal sum

sizes = st.sampled_from([0, 1, 2, 3, 7, 255, 256, 257]) | st.integers(0, 700)
kinds = st.sampled_from(["normal", "ties", "zeros", "huge", "tiny", "subnormal", "signed zeros"])


def make_vector(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    """float32 vectors that stress ordering: ties, zeros, 3e38, 1e-38 and subnormals."""
    if kind == "ties":
        return rng.integers(-3, 4, n).astype(np.float32)
    if kind == "zeros":
        return np.zeros(n, np.float32)
    if kind == "signed zeros":
        return np.where(rng.random(n) < 0.5, -0.0, 0.0).astype(np.float32)
    scale = {"normal": 1.0, "huge": 3e38, "tiny": 1e-38, "subnormal": 1e-44}[kind]
    return (rng.uniform(-1.0, 1.0, n) * scale).astype(np.float32)


@st.composite
def vectors(draw: st.DrawFn) -> np.ndarray:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return make_vector(rng, draw(sizes), draw(kinds))


@settings(max_examples=300, deadline=None)
@given(values=vectors(), k=st.integers(-2, 710))
def test_topk_indices_match_stable_sort(values: np.ndarray, k: int) -> None:
    before = values.copy()
    indices = topk_indices(values, k)
    assert indices.dtype == np.uint32 and indices.shape == (max(0, min(k, len(values))),)
    np.testing.assert_array_equal(indices, naive_sparse.topk_indices(values, k))
    np.testing.assert_array_equal(values, before)


def test_ties_go_to_the_lower_position() -> None:
    values = np.float32([1, -2, 2, -1, 2, 0, -0.0, 0])
    assert topk_indices(values, 1).tolist() == [1]
    assert topk_indices(values, 2).tolist() == [1, 2]
    assert topk_indices(values, 4).tolist() == [0, 1, 2, 4]
    assert topk_indices(values, 6).tolist() == [0, 1, 2, 3, 4, 5]
    assert topk_indices(np.zeros(5, np.float32), 3).tolist() == [0, 1, 2]


def test_infinity_and_nan_rank_above_every_finite_value() -> None:
    values = np.float32([3e38, -np.inf, 1, np.nan, -3e38])
    assert topk_indices(values, 1).tolist() == [3]
    assert topk_indices(values, 2).tolist() == [1, 3]
    assert topk_indices(values, 3).tolist() == [0, 1, 3]


def test_k_is_clipped_and_empty_input_gives_nothing() -> None:
    values = np.float32([3, -5, 1])
    assert topk_indices(values, 0).tolist() == []
    assert topk_indices(values, -4).tolist() == []
    assert topk_indices(values, 3).tolist() == [0, 1, 2]
    assert topk_indices(values, 10**12).tolist() == [0, 1, 2]
    assert topk_indices(np.zeros(0, np.float32), 5).shape == (0,)


def test_keys_that_differ_only_in_the_last_bits() -> None:
    # Consecutive float32 values: the radix select's last digit decides everything.
    rng = np.random.default_rng(7)
    ladder = np.float32(1.0) + np.arange(4096, dtype=np.float32) * np.spacing(np.float32(1.0))
    values = (rng.permutation(ladder) * rng.choice([-1, 1], 4096)).astype(np.float32)
    for k in (1, 255, 256, 257, 4095):
        np.testing.assert_array_equal(topk_indices(values, k), naive_sparse.topk_indices(values, k))


def test_large_input_with_many_ties_matches_reference() -> None:
    rng = np.random.default_rng(3)
    values = rng.integers(-50, 51, 100_003).astype(np.float32) * np.float32(0.125)
    for k in (1, 997, 50_000, 100_002):
        np.testing.assert_array_equal(topk_indices(values, k), naive_sparse.topk_indices(values, k))


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=sizes, kind=kinds, k=st.integers(0, 710))
def test_feedback_sends_top_k_and_keeps_the_rest(seed: int, n: int, kind: str, k: int) -> None:
    rng = np.random.default_rng(seed)
    delta = make_vector(rng, n, kind)
    residual = make_vector(rng, n, "normal" if kind == "huge" else kind)
    if kind == "huge":
        residual *= np.float32(1e-3)  # 3e38 + 3e38 would overflow to inf
    delta_before, residual_before = delta.copy(), residual.copy()
    ref_indices, ref_sent, ref_left = naive_sparse.topk_with_feedback(delta, residual, k)

    indices, sent = topk_with_feedback(delta, residual, k)

    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_array_equal(sent, ref_sent)
    np.testing.assert_array_equal(residual, ref_left)
    np.testing.assert_array_equal(delta, delta_before)
    assert sent.dtype == np.float32 and indices.dtype == np.uint32
    # Nothing is lost in one step: sent + residual is delta + old residual, bit for bit.
    rebuilt = residual.copy()
    scatter_accumulate(rebuilt, 1.0, indices, sent)
    np.testing.assert_array_equal(rebuilt, delta_before + residual_before)


def test_k_zero_keeps_everything_and_k_n_sends_everything() -> None:
    delta = np.float32([1, -2, 3])
    residual = np.float32([0.5, 0.5, -3])
    indices, sent = topk_with_feedback(delta, residual, 0)
    assert indices.size == 0 and sent.size == 0
    np.testing.assert_array_equal(residual, [1.5, -1.5, 0])
    indices, sent = topk_with_feedback(delta, residual, 3)
    assert indices.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(sent, [2.5, -3.5, 3])
    np.testing.assert_array_equal(residual, [0, 0, 0])


@settings(max_examples=120, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 300),
    steps=st.integers(1, 30),
    fraction=st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0]),
    scale=st.sampled_from([1e-44, 1e-30, 1.0, 1e6, 1e36]),
)
def test_error_feedback_loses_no_mass_over_many_steps(
    seed: int, n: int, steps: int, fraction: float, scale: float
) -> None:
    """sum of everything sent (scattered into a float32 buffer) + final residual == sum of deltas.

    Tolerance, per element: step t rounds once in the node's ``delta_t +
    residual`` (error <= U32 |corrected_t|) and once in the aggregator's
    float32 ``acc += sent_t`` (error <= U32 |acc_t|); every other operation is
    exact (sent and kept entries are copied, coefficient 1.0 multiplies
    exactly). Summing those per-step bounds gives the tolerance below, plus one
    smallest subnormal per rounding for gradual underflow and float64 slack
    for the reference sum. |values| stay below steps * 1e36 <= 3e37, far from
    float32 overflow.
    """
    rng = np.random.default_rng(seed)
    k = int(round(fraction * n))
    residual = np.zeros(n, np.float32)
    acc = np.zeros(n, np.float32)
    total = np.zeros(n, np.float64)
    bound = np.zeros(n, np.float64)
    for _ in range(steps):
        delta = (rng.standard_normal(n) * scale).astype(np.float32)
        total += delta
        bound += np.abs((delta + residual).astype(np.float64))
        indices, sent = topk_with_feedback(delta, residual, k)
        scatter_accumulate(acc, 1.0, indices, sent)
        bound += np.abs(acc.astype(np.float64))
    tolerance = U32 * bound + 2 * steps * TINY32 + 1e-15 * np.abs(total).sum()
    error = np.abs(acc.astype(np.float64) + residual - total)
    assert (error <= tolerance).all(), float((error - tolerance).max())


def test_error_feedback_is_exact_when_no_sum_rounds() -> None:
    # Small integers add exactly in float32, so conservation holds bit for bit.
    rng = np.random.default_rng(11)
    residual = np.zeros(1001, np.float32)
    acc = np.zeros(1001, np.float32)
    total = np.zeros(1001, np.float32)
    for _ in range(200):
        delta = rng.integers(-1000, 1001, 1001).astype(np.float32)
        total += delta
        indices, sent = topk_with_feedback(delta, residual, 37)
        scatter_accumulate(acc, 1.0, indices, sent)
    np.testing.assert_array_equal(acc + residual, total)


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=sizes,
    density=st.floats(0.0, 1.0),
    coefficient=st.sampled_from([0.0, 1.0, -0.5, 0.3, 1e-20, 1e20]),
)
def test_scatter_accumulate_matches_reference(
    seed: int, n: int, density: float, coefficient: float
) -> None:
    rng = np.random.default_rng(seed)
    acc = rng.standard_normal(n).astype(np.float32)
    indices = np.flatnonzero(rng.random(n) < density).astype(np.uint32)
    values = rng.standard_normal(indices.size).astype(np.float32)
    expected = naive_sparse.scatter_accumulate(acc, coefficient, indices, values)
    scatter_accumulate(acc, coefficient, indices, values)
    np.testing.assert_array_equal(acc, expected)


def test_scatter_accepts_read_only_wire_buffers() -> None:
    indices = np.frombuffer(np.uint32([1, 3]).tobytes(), dtype=np.uint32)
    values = np.frombuffer(np.float32([2, -1]).tobytes(), dtype=np.float32)
    acc = np.zeros(4, np.float32)
    scatter_accumulate(acc, 0.5, indices, values)
    np.testing.assert_array_equal(acc, [0, 1, 0, -0.5])


BAD_SCATTER = {
    "index == len": (np.uint32([0, 10]), np.float32([1, 1]), 1.0, "out of range"),
    "index 2**32-1": (np.uint32([2**32 - 1]), np.float32([1]), 1.0, "out of range"),
    "decreasing": (np.uint32([3, 1]), np.float32([1, 1]), 1.0, "strictly increasing"),
    "repeated": (np.uint32([2, 2]), np.float32([1, 1]), 1.0, "strictly increasing"),
    "late repeat": (np.uint32([0, 4, 9, 9]), np.float32([1, 1, 1, 1]), 1.0, "increasing"),
    "fewer indices": (np.uint32([1]), np.float32([1, 1]), 1.0, "1 indices for 2 values"),
    "more indices": (np.uint32([1, 2]), np.float32([1]), 1.0, "2 indices for 1 values"),
    "int64 indices": (np.int64([1, 2]), np.float32([1, 1]), 1.0, "dtype uint32"),
    "int32 indices": (np.int32([-1, 2]), np.float32([1, 1]), 1.0, "dtype uint32"),
    "float64 values": (np.uint32([1, 2]), np.float64([1, 1]), 1.0, "dtype float32"),
    "2-D indices": (np.uint32([[1, 2]]), np.float32([1, 1]), 1.0, "1-D"),
    "strided values": (np.uint32([1, 2]), np.float32([1, 0, 1, 0])[::2], 1.0, "C-contiguous"),
    "list indices": ([1, 2], np.float32([1, 1]), 1.0, "numpy array"),
    "nan coefficient": (np.uint32([1]), np.float32([1]), float("nan"), "finite"),
    "coefficient overflows float32": (np.uint32([1]), np.float32([1]), 1e300, "finite"),
    "text coefficient": (np.uint32([1]), np.float32([1]), "1", "real number"),
}


@pytest.mark.parametrize("case", BAD_SCATTER.values(), ids=BAD_SCATTER.keys())
def test_malformed_scatter_inputs_raise_and_leave_acc_alone(case: tuple) -> None:
    indices, values, coefficient, message = case
    acc = np.arange(10, dtype=np.float32)
    with pytest.raises(KernelInputError, match=message):
        scatter_accumulate(acc, coefficient, indices, values)
    np.testing.assert_array_equal(acc, np.arange(10, dtype=np.float32))


def test_scatter_refuses_bad_accumulators() -> None:
    indices, values = np.uint32([1]), np.float32([1])
    read_only = np.zeros(4, np.float32)
    read_only.setflags(write=False)
    with pytest.raises(KernelInputError, match="writeable"):
        scatter_accumulate(read_only, 1.0, indices, values)
    with pytest.raises(KernelInputError, match="dtype float32"):
        scatter_accumulate(np.zeros(4), 1.0, indices, values)
    with pytest.raises(KernelInputError, match="C-contiguous"):
        scatter_accumulate(np.zeros(8, np.float32)[::2], 1.0, indices, values)
    shared = np.zeros(4, np.float32)
    with pytest.raises(KernelInputError, match="share memory"):
        scatter_accumulate(shared, 1.0, indices, shared[2:3])
    with pytest.raises(KernelInputError, match="out of range"):
        scatter_accumulate(np.zeros(0, np.float32), 1.0, np.uint32([0]), values)


def test_topk_refuses_bad_inputs_before_touching_the_residual() -> None:
    delta = np.float32([1, 2, 3])
    residual = np.float32([1, 1, 1])
    cases = [
        (delta, residual, 1.5, "k must be an int"),
        (delta, residual, "2", "k must be an int"),
        (delta.astype(np.float64), residual, 1, "dtype float32"),
        (delta, np.float32([1, 1]), 1, "differ"),
        (np.float32([1, 0, 2, 0, 3, 0])[::2], residual, 1, "C-contiguous"),
        (residual, residual, 1, "share memory"),
        (delta.reshape(1, 3), residual, 1, "1-D"),
    ]
    for d, r, k, message in cases:
        with pytest.raises(KernelInputError, match=message):
            topk_with_feedback(d, r, k)
        np.testing.assert_array_equal(residual, [1, 1, 1])
    frozen = residual.copy()
    frozen.setflags(write=False)
    with pytest.raises(KernelInputError, match="writeable"):
        topk_with_feedback(delta, frozen, 1)
    with pytest.raises(KernelInputError, match="dtype float32"):
        topk_indices(np.zeros(3, np.float16), 1)
    with pytest.raises(KernelInputError, match="k must be an int"):
        topk_indices(delta, None)  # type: ignore[arg-type]
