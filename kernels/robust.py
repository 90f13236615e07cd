"""Coordinate-wise median and trimmed mean of K update rows (Byzantine-robust aggregation).

Yin et al. (2018, "Byzantine-robust distributed learning") replace the mean
of K client updates by a per-coordinate median or a per-coordinate trimmed
mean: a minority of arbitrary (malicious or broken) rows then moves each
coordinate only within the range of the honest values. The aggregator's
buffer holds the rows as a C-contiguous float32 array of shape (K, d).

Why a sorting network over column blocks
    ``np.median(rows, axis=0)`` costs tens to hundreds of plain means: it
    selects along the strided axis, one column at a time. Here the columns
    are cut into blocks of B; a K x B block is copied into a scratch that
    stays in the L1 or L2 cache, and a fixed list of comparators (i, j) is
    applied to it. A comparator puts, column by column, the smaller of rows
    i and j into row i and the larger into row j: B independent
    compare-and-swaps on contiguous memory, which the compiler turns into
    vector compare and blend instructions. After the last comparator every
    column of the scratch is sorted, and the median or the trimmed mean is
    read off its rows. The rows are read once, so the kernels stay within a
    few plain means.

    A comparator on the scratch costs two vector loads and two stores per
    vector of columns, and those stores bound the comparator loop (the
    compare itself is cheap). So the first comparators are run while
    loading: rows are loaded 8 at a time (then 4 if 4 or more are left),
    each group sorted in registers by Batcher's 19 (or 5) comparators, and
    stored once. For K = 20 that takes 43 of the 103 comparators off the
    scratch. Larger groups (16 rows) spill registers and were slower.

    Measured at K = 20, d = 1e6 on one core (bench/robust.py): the median
    costs about 2 plain means (numpy's ``rows.mean(axis=0)``), the trimmed
    mean 2.5 to 3, ``np.median`` about 90.

The comparator list
    Batcher's odd-even merge sort for the next power of two P >= K, keeping
    only comparators whose two rows are both < K. Dropping the others is
    valid because the network sorts any input of P rows, in particular one
    whose rows K..P-1 are +inf; such a row is never exchanged (a comparator
    swaps only when its upper row is strictly smaller), so every dropped
    comparator would have done nothing. A compare-and-swap exchanges values
    rather than forming min and max, so each sorted column is a permutation
    of its input column: values are never created or lost. The median uses
    a shorter list: only the comparators that can move a value into or out
    of the middle row(s).

Rounding
    - Median: odd K gives the middle value exactly. Even K gives
      float32(0.5 * a + 0.5 * b) of the two middle values a <= b, formed in
      float64, which cannot overflow for finite float32 values (3e38 + 3e38
      would in float32) and is the same number as float32 of numpy's float64
      median.
    - Trimmed mean: after sorting, ``trim`` values are dropped at each end;
      the K - 2 * trim left are summed in float64 in ascending order, divided
      by K - 2 * trim and rounded once to float32.
    - ``row_mean``: the rows summed in float64 in row order, divided by K,
      rounded once to float32 (the benchmark's reference, built in the same
      blocked style).

Non-finite values
    +-inf sort as numpy sorts them, so the results match numpy's for them
    (inf - inf in a mean gives NaN, as in numpy). With NaN in a column the
    result for that column is unspecified; nothing is refused, because the
    aggregator validates finiteness before it aggregates. The sign of a zero
    result is also unspecified when the column holds both 0.0 and -0.0.
"""

from __future__ import annotations

import functools
import math
import numbers

import numpy as np
from numba import njit

from fedbus.broker.errors import KernelInputError
from fedbus.kernels.config import JIT_OPTIONS

__all__ = ["coordinate_median", "row_mean", "sorting_network", "trim_count", "trimmed_mean"]


_MAX_BLOCK = 2048
_SCRATCH_BYTES = 256 * 1024


def _block_width(k: int) -> int:
    """Columns per block for k rows: a power of two <= 2048 whose K x B scratch fits 256 KiB.

    Measured with bench/robust.py, against the first guess of an
    L1-resident scratch: each comparator pays a fixed cost per block (its
    row indices, the set-up and remainder of its vector loop), while its
    loads and stores are served about as fast from L2 as from L1. So long
    blocks win until the scratch outgrows L2: at K = 20 on an AMD EPYC
    (Zen 4) the median cost 2.9 plain means with B = 128 (10 KiB) and 2.0
    with B = 2048 (160 KiB); K = 41 was also best near 160-330 KiB.
    64 columns at least.
    """
    width = _MAX_BLOCK
    while width > 64 and 4 * k * width > _SCRATCH_BYTES:
        width //= 2
    return width


# ---------------------------------------------------------------------------
# The comparator list (plain Python, cached per K)


def _batcher_pairs(size: int) -> list[tuple[int, int]]:
    """Comparators of Batcher's odd-even merge sort of ``size`` (a power of two) rows."""
    pairs: list[tuple[int, int]] = []

    def merge(first: int, length: int, stride: int) -> None:
        # Merge the two sorted halves of rows first, first + stride, ...
        # (length rows spaced by stride): merge the even- and odd-indexed
        # subsequences, then fix neighbours that may still be out of order.
        double = 2 * stride
        if double < length:
            merge(first, length, double)
            merge(first + stride, length, double)
            for i in range(first + stride, first + length - stride, double):
                pairs.append((i, i + stride))
        else:
            pairs.append((first, first + stride))

    def sort(first: int, length: int) -> None:
        if length > 1:
            half = length // 2
            sort(first, half)
            sort(first + half, half)
            merge(first, length, 1)

    sort(0, size)
    return pairs


def _array(pairs: list[tuple[int, int]]) -> np.ndarray:
    network = np.array(pairs, dtype=np.int64).reshape(len(pairs), 2)
    network.setflags(write=False)  # shared by every caller through the caches
    return network


@functools.lru_cache(maxsize=64)
def _network(k: int) -> np.ndarray:
    size = 1 << max(0, k - 1).bit_length()
    return _array([(i, j) for i, j in _batcher_pairs(size) if j < k])


def _register_groups(k: int) -> list[tuple[int, int]]:
    """(first row, size) of the row groups the kernel sorts in registers as it loads them."""
    groups = [(first, 8) for first in range(0, k - k % 8, 8)]
    if k % 8 >= 4:
        groups.append((k - k % 8, 4))
    return groups


@functools.lru_cache(maxsize=128)
def _kernel_network(k: int, median_only: bool) -> np.ndarray:
    """The comparators the kernels still run after their in-register group sorts.

    In Batcher's network the first comparators that touch an aligned group
    of 8 (or 4) rows are exactly the sort of that group (``_batcher_pairs(8)``
    shifted), and no other comparator touches those rows before them, so
    sorting the groups first and dropping those comparators leaves every
    later comparator the same input. This is checked here, not assumed.

    With ``median_only`` the list is also cut to the comparators that can
    change the middle row(s): walking it backwards from the rows the median
    reads, a comparator matters if it touches a row that matters, and then
    both its rows matter before it. The rest only finish sorting the outer
    rows. For K = 20: 103 comparators, 43 of them in the group sorts, 60
    left, 41 of those for the median.
    """
    pairs = [(int(i), int(j)) for i, j in _network(k)]
    dropped: set[int] = set()
    for first, size in _register_groups(k):
        group = range(first, first + size)
        touching = [p for p, (i, j) in enumerate(pairs) if i in group or j in group]
        expected = [(first + i, first + j) for i, j in _batcher_pairs(size)]
        head = touching[: len(expected)]
        if [pairs[p] for p in head] != expected:  # pragma: no cover - a broken network
            raise AssertionError(f"rows {first}..{first + size - 1} do not start with a sort")
        dropped.update(head)
    rest = [pair for p, pair in enumerate(pairs) if p not in dropped]
    if not median_only:
        return _array(rest)
    middle = k // 2
    wanted = {middle, middle - 1} if k % 2 == 0 else {middle}
    kept: list[tuple[int, int]] = []
    for i, j in reversed(rest):
        if i in wanted or j in wanted:
            kept.append((i, j))
            wanted.update((i, j))
    return _array(kept[::-1])


def sorting_network(k: int) -> np.ndarray:
    """Comparators (i, j), i < j, that sort any k values when applied in order.

    An int64 array of shape (m, 2), read-only (it is cached). Applying
    comparator (i, j) means: if value j < value i, exchange them. Built from
    Batcher's odd-even merge sort for the next power of two, pruned to
    comparators within the first k rows (see the module docstring); m is 0
    for k = 1 and, for example, 63 for k = 16.
    """
    return _network(_positive_int("k", k))


# ---------------------------------------------------------------------------
# Kernels


@njit(inline="always")
def _exchange(a, b):
    """One comparator on two values: (smaller, larger), swapped only if b < a."""
    swap = b < a
    return (b if swap else a), (a if swap else b)


@njit(**JIT_OPTIONS)
def _load_sorted_8(rows, first, start, width, scratch):
    """Copy 8 rows' columns into scratch, each column of the 8 sorted on the way.

    The 19 comparators are Batcher's sort of 8 (``_batcher_pairs(8)``), run
    on values held in registers: one load and one store per value instead of
    two of each per comparator, which is what bounds the comparator loop.
    """
    s0 = rows[first, start : start + width]
    s1 = rows[first + 1, start : start + width]
    s2 = rows[first + 2, start : start + width]
    s3 = rows[first + 3, start : start + width]
    s4 = rows[first + 4, start : start + width]
    s5 = rows[first + 5, start : start + width]
    s6 = rows[first + 6, start : start + width]
    s7 = rows[first + 7, start : start + width]
    t0 = scratch[first]
    t1 = scratch[first + 1]
    t2 = scratch[first + 2]
    t3 = scratch[first + 3]
    t4 = scratch[first + 4]
    t5 = scratch[first + 5]
    t6 = scratch[first + 6]
    t7 = scratch[first + 7]
    for c in range(width):
        x0, x1 = _exchange(s0[c], s1[c])
        x2, x3 = _exchange(s2[c], s3[c])
        x0, x2 = _exchange(x0, x2)
        x1, x3 = _exchange(x1, x3)
        x1, x2 = _exchange(x1, x2)
        x4, x5 = _exchange(s4[c], s5[c])
        x6, x7 = _exchange(s6[c], s7[c])
        x4, x6 = _exchange(x4, x6)
        x5, x7 = _exchange(x5, x7)
        x5, x6 = _exchange(x5, x6)
        x0, x4 = _exchange(x0, x4)
        x2, x6 = _exchange(x2, x6)
        x2, x4 = _exchange(x2, x4)
        x1, x5 = _exchange(x1, x5)
        x3, x7 = _exchange(x3, x7)
        x3, x5 = _exchange(x3, x5)
        x1, x2 = _exchange(x1, x2)
        x3, x4 = _exchange(x3, x4)
        x5, x6 = _exchange(x5, x6)
        t0[c] = x0
        t1[c] = x1
        t2[c] = x2
        t3[c] = x3
        t4[c] = x4
        t5[c] = x5
        t6[c] = x6
        t7[c] = x7


@njit(**JIT_OPTIONS)
def _load_sorted_4(rows, first, start, width, scratch):
    """As ``_load_sorted_8`` for 4 rows: Batcher's 5 comparators for 4 values."""
    s0 = rows[first, start : start + width]
    s1 = rows[first + 1, start : start + width]
    s2 = rows[first + 2, start : start + width]
    s3 = rows[first + 3, start : start + width]
    t0 = scratch[first]
    t1 = scratch[first + 1]
    t2 = scratch[first + 2]
    t3 = scratch[first + 3]
    for c in range(width):
        x0, x1 = _exchange(s0[c], s1[c])
        x2, x3 = _exchange(s2[c], s3[c])
        x0, x2 = _exchange(x0, x2)
        x1, x3 = _exchange(x1, x3)
        x1, x2 = _exchange(x1, x2)
        t0[c] = x0
        t1[c] = x1
        t2[c] = x2
        t3[c] = x3


@njit(**JIT_OPTIONS)
def _load_and_sort_block(rows, start, width, network, scratch):
    """Copy columns start .. start + width of rows into scratch and sort each column.

    Rows are loaded in groups of 8 (then one of 4 if 4 or more are left),
    each group sorted in registers; ``network`` holds the comparators that
    remain (see ``_kernel_network``). Columns of scratch past ``width``
    (a short last block) are neither written nor read.
    """
    k = rows.shape[0]
    first = 0
    while first + 8 <= k:
        _load_sorted_8(rows, first, start, width, scratch)
        first += 8
    if first + 4 <= k:
        _load_sorted_4(rows, first, start, width, scratch)
        first += 4
    for r in range(first, k):
        source = rows[r, start : start + width]
        target = scratch[r]
        for c in range(width):
            target[c] = source[c]
    for p in range(network.shape[0]):
        lower = scratch[network[p, 0]]
        upper = scratch[network[p, 1]]
        for c in range(width):
            lower[c], upper[c] = _exchange(lower[c], upper[c])


@njit(**JIT_OPTIONS)
def _median_kernel(rows, network, block, out):
    """Sort the middle row(s) of each block into place, then read them off."""
    k, d = rows.shape
    scratch = np.zeros((k, block), dtype=np.float32)
    middle = k // 2
    for start in range(0, d, block):
        width = min(block, d - start)
        _load_and_sort_block(rows, start, width, network, scratch)
        high = scratch[middle]
        target = out[start : start + width]
        if k % 2 == 1:
            for c in range(width):
                target[c] = high[c]
        else:
            low = scratch[middle - 1]
            for c in range(width):
                target[c] = np.float32(0.5 * np.float64(low[c]) + 0.5 * np.float64(high[c]))


@njit(**JIT_OPTIONS)
def _add_rows(matrix, first, stop, start, width, total):
    """total[c] += matrix[r, start + c] for r = first .. stop - 1 in order, in float64.

    Four rows per pass over the columns: total is loaded and stored once per
    four additions instead of once per addition (that traffic, not the
    adds, bounded the single-row loop). The additions still happen one row
    after another, so the result is the plain sequential sum, bit for bit.
    """
    r = first
    while r + 4 <= stop:
        x0 = matrix[r, start : start + width]
        x1 = matrix[r + 1, start : start + width]
        x2 = matrix[r + 2, start : start + width]
        x3 = matrix[r + 3, start : start + width]
        for c in range(width):
            partial = total[c] + np.float64(x0[c])
            partial += np.float64(x1[c])
            partial += np.float64(x2[c])
            total[c] = partial + np.float64(x3[c])
        r += 4
    while r < stop:
        x0 = matrix[r, start : start + width]
        for c in range(width):
            total[c] += np.float64(x0[c])
        r += 1


@njit(**JIT_OPTIONS)
def _trimmed_mean_kernel(rows, network, trim, block, out):
    """Sort each block, then add the kept rows in ascending order, one float64 total per column."""
    k, d = rows.shape
    scratch = np.zeros((k, block), dtype=np.float32)
    total = np.zeros(block, dtype=np.float64)
    count = np.float64(k - 2 * trim)
    for start in range(0, d, block):
        width = min(block, d - start)
        _load_and_sort_block(rows, start, width, network, scratch)
        total[:] = 0.0
        _add_rows(scratch, trim, k - trim, 0, width, total)
        target = out[start : start + width]
        for c in range(width):
            target[c] = np.float32(total[c] / count)


@njit(**JIT_OPTIONS)
def _row_mean_kernel(rows, block, out):
    """Plain mean by the same blocks: a float64 total per column that stays in cache."""
    k, d = rows.shape
    total = np.zeros(block, dtype=np.float64)
    for start in range(0, d, block):
        width = min(block, d - start)
        total[:] = 0.0
        _add_rows(rows, 0, k, start, width, total)
        target = out[start : start + width]
        for c in range(width):
            target[c] = np.float32(total[c] / k)


# ---------------------------------------------------------------------------
# Public wrappers


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise KernelInputError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise KernelInputError(f"{name} must be >= 1, got {value}")
    return int(value)


def _rows(rows: object) -> np.ndarray:
    if not isinstance(rows, np.ndarray):
        raise KernelInputError(f"rows must be a numpy array, got {type(rows).__name__}")
    if rows.dtype != np.float32:
        raise KernelInputError(f"rows must have dtype float32, got {rows.dtype}")
    if rows.ndim != 2:
        raise KernelInputError(f"rows must be 2-D (K, d), got shape {rows.shape}")
    if not rows.flags.c_contiguous:
        raise KernelInputError("rows must be C-contiguous (use np.ascontiguousarray)")
    if rows.shape[0] == 0:
        raise KernelInputError("rows must hold at least one row (K >= 1), got K = 0")
    return rows


def _output(out: object, rows: np.ndarray) -> np.ndarray:
    d = rows.shape[1]
    if out is None:
        return np.empty(d, dtype=np.float32)
    if not isinstance(out, np.ndarray):
        raise KernelInputError(f"out must be a numpy array, got {type(out).__name__}")
    if out.dtype != np.float32 or out.shape != (d,):
        raise KernelInputError(
            f"out must be a float32 array of shape ({d},), got {out.dtype} {out.shape}"
        )
    if not out.flags.c_contiguous:
        raise KernelInputError("out must be C-contiguous (use np.ascontiguousarray)")
    if not out.flags.writeable:
        raise KernelInputError("out must be writeable: the result is written into it")
    if np.may_share_memory(out, rows):
        # A block's output would overwrite columns of rows not yet read.
        raise KernelInputError("out must not overlap rows")
    return out


def coordinate_median(rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The median of each column of ``rows`` (float32, shape (K, d)), as float32 (d,).

    Odd K: the middle value, exactly. Even K: the mean of the two middle
    values formed in float64 and rounded once, so it equals float32 of
    ``np.median(rows.astype(np.float64), axis=0)``. Written into ``out`` when
    given (float32, shape (d,), not overlapping ``rows``), which is returned.
    Raises :class:`~fedbus.broker.errors.KernelInputError` for a bad array or
    K = 0. NaN input gives unspecified values in its columns.
    """
    rows = _rows(rows)
    out = _output(out, rows)
    k = rows.shape[0]
    _median_kernel(rows, _kernel_network(k, True), _block_width(k), out)
    return out


def trimmed_mean(rows: np.ndarray, trim: int, out: np.ndarray | None = None) -> np.ndarray:
    """Mean of each column of ``rows`` after dropping its ``trim`` smallest and largest values.

    ``rows`` is float32 of shape (K, d); ``trim`` counts the values dropped at
    EACH end, so 0 <= 2 * trim < K is required (``trim_count`` turns a
    fraction into it). The K - 2 * trim kept values are summed in float64 in
    ascending order and divided, then rounded once to float32. ``trim = 0``
    is the plain mean (summed in sorted order). Written into ``out`` when
    given, as in :func:`coordinate_median`. Raises
    :class:`~fedbus.broker.errors.KernelInputError` for a bad array, K = 0 or
    a bad ``trim``. NaN input gives unspecified values in its columns.
    """
    rows = _rows(rows)
    k = rows.shape[0]
    if isinstance(trim, bool) or not isinstance(trim, numbers.Integral):
        raise KernelInputError(f"trim must be an int, got {trim!r}")
    if not 0 <= 2 * int(trim) < k:
        raise KernelInputError(f"trim must satisfy 0 <= 2 * trim < K = {k}, got trim = {trim}")
    out = _output(out, rows)
    _trimmed_mean_kernel(rows, _kernel_network(k, False), int(trim), _block_width(k), out)
    return out


def trim_count(k: int, beta: float) -> int:
    """Values to drop at each end when trimming a fraction ``beta`` of k: floor(beta * k).

    Requires k >= 1 and 0 <= beta < 0.5, so that at least one value is kept
    (the result always satisfies 2 * trim < k).
    """
    k = _positive_int("k", k)
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
        raise KernelInputError(f"beta must be a real number, got {beta!r}")
    fraction = float(beta)
    if not (math.isfinite(fraction) and 0.0 <= fraction < 0.5):
        raise KernelInputError(f"beta must satisfy 0 <= beta < 0.5, got {beta}")
    # min(): beta * k rounds up to k / 2 only for k beyond 2**52; keep the guarantee anyway.
    return min(math.floor(fraction * k), (k - 1) // 2)


def row_mean(rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Plain mean of the rows, float32 (d,): float64 sums in row order, divided by K, rounded once.

    The non-robust baseline in the same blocked layout as the robust kernels,
    so the benchmark can tell the cost of sorting from the cost of reading
    the rows. Same argument rules as :func:`coordinate_median`.
    """
    rows = _rows(rows)
    out = _output(out, rows)
    _row_mean_kernel(rows, _block_width(rows.shape[0]), out)
    return out
