"""A small multilayer perceptron: ReLU hidden layers, softmax cross-entropy output.

A network is a sequence of ``(W_i, b_i)`` float32 pairs, ``W_i`` of shape
(n_in, n_out) and ``b_i`` of shape (n_out,)::

    h_0 = x
    h_i = relu(h_{i-1} @ W_i + b_i)        for each hidden layer
    p   = softmax(h_last @ W_out + b_out)

One or two hidden layers are the intended use (fedbus's edge models); the
kernels are written once for any depth, so a deeper network also works. Labels
are int64 class indices in [0, n_classes), as for the softmax kernels, and the
loss is the mean cross-entropy over rows. The derivative of ReLU at 0 is taken
as 0.

Layout: numba cannot index a tuple of arrays with a loop variable, so the
wrappers copy the layers into one flat float32 buffer, each ``W_i`` row-major
followed by its ``b_i``, described by an int64 array of layer widths
``sizes = [n_features, n_hidden_1, ..., n_classes]``. That is also the order in
which the layers travel as one vector. The private kernels work on that
buffer; :func:`mlp_sgd_epoch` copies the result back into the caller's arrays
once per epoch.

Private ``_kernel`` functions run under numba and trust their inputs; the
public wrappers check dtype, shape, layout and label range first and raise
:class:`~fedbus.broker.errors.KernelInputError`.
"""

# X (data matrix) and W (weights) are the field's own names.

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numpy as np
from numba import njit

from fedbus.broker.errors import KernelInputError
from fedbus.kernels.config import JIT_OPTIONS

__all__ = ["Layers", "mlp_forward", "mlp_loss_grad", "mlp_sgd_epoch"]

Layers = Sequence[tuple[np.ndarray, np.ndarray]]
"""``((W_1, b_1), ..., (W_out, b_out))``, all float32 and C-contiguous."""


@njit(**JIT_OPTIONS)
def _layout_kernel(sizes):
    """Offsets of every W_i and b_i in the flat buffer and of every h_i in the scratch.

    Returns ``(w_offsets, b_offsets, h_offsets, n_params, n_activations)``;
    ``h_offsets`` has one entry per layer width, the input included.
    """
    n_layers = sizes.shape[0] - 1
    w_offsets = np.empty(n_layers, dtype=np.int64)
    b_offsets = np.empty(n_layers, dtype=np.int64)
    h_offsets = np.empty(n_layers + 1, dtype=np.int64)
    position = 0
    for i in range(n_layers):
        w_offsets[i] = position
        position += sizes[i] * sizes[i + 1]
        b_offsets[i] = position
        position += sizes[i + 1]
    width = 0
    for i in range(n_layers + 1):
        h_offsets[i] = width
        width += sizes[i]
    return w_offsets, b_offsets, h_offsets, position, width


@njit(**JIT_OPTIONS)
def _row_logits_kernel(x, params, sizes, w_offsets, b_offsets, h_offsets, h):
    """Run one row through the network; every layer's output lands in ``h``.

    The last layer's slice of ``h`` holds the logits (no softmax applied yet).
    """
    n_layers = sizes.shape[0] - 1
    for j in range(sizes[0]):
        h[j] = x[j]
    for i in range(n_layers):
        n_in = sizes[i]
        n_out = sizes[i + 1]
        w = w_offsets[i]
        src = h_offsets[i]
        dst = h_offsets[i + 1]
        for c in range(n_out):
            h[dst + c] = params[b_offsets[i] + c]
        for j in range(n_in):
            hj = h[src + j]
            if hj == 0.0:
                continue  # ReLU zeros are common; they add nothing
            row = w + j * n_out
            for c in range(n_out):
                h[dst + c] += hj * params[row + c]
        if i < n_layers - 1:
            for c in range(n_out):
                if h[dst + c] < 0.0:
                    h[dst + c] = 0.0


@njit(**JIT_OPTIONS)
def _softmax_inplace_kernel(scores):
    """Turn logits into probabilities in place; return (log-normalizer, max logit)."""
    top = scores.max()
    norm = 0.0
    for c in range(scores.shape[0]):
        scores[c] = np.exp(scores[c] - top)
        norm += scores[c]
    for c in range(scores.shape[0]):
        scores[c] /= norm
    return np.log(norm), top


@njit(**JIT_OPTIONS)
def _batch_loss_grad_kernel(
    X, y, rows, params, sizes, w_offsets, b_offsets, h_offsets, grad, h, delta, delta_prev
):
    """Mean cross-entropy over ``X[rows]``; its gradient (flat layout) goes into ``grad``.

    ``h`` (all layer widths summed) and ``delta``, ``delta_prev`` (the widest
    layer) are scratch buffers, passed in so that the SGD loop allocates
    nothing per batch. Returns 0.0 for an empty ``rows``.
    """
    grad[:] = 0.0
    if rows.shape[0] == 0:
        return 0.0
    n_layers = sizes.shape[0] - 1
    out = h_offsets[n_layers]
    n_classes = sizes[n_layers]
    total = 0.0  # float64: the loss sum over a batch should not lose digits
    zero = params.dtype.type(0.0)  # backprop sums stay in the parameters' dtype
    for r in rows:
        label = y[r]
        _row_logits_kernel(X[r], params, sizes, w_offsets, b_offsets, h_offsets, h)
        label_logit = h[out + label]
        log_norm, top = _softmax_inplace_kernel(h[out : out + n_classes])
        total += np.float64(log_norm) + np.float64(top) - np.float64(label_logit)
        for c in range(n_classes):
            delta[c] = h[out + c]
        delta[label] -= 1.0  # d(CE)/d(logits) = p - onehot(y)
        for i in range(n_layers - 1, -1, -1):
            n_out = sizes[i + 1]
            src = h_offsets[i]
            for c in range(n_out):
                grad[b_offsets[i] + c] += delta[c]
            for j in range(sizes[i]):
                hj = h[src + j]
                row = w_offsets[i] + j * n_out
                if hj != 0.0:
                    for c in range(n_out):
                        grad[row + c] += hj * delta[c]
                # ReLU'(z) is 1 where the unit fired (h > 0), else 0; the input needs none
                if i > 0:
                    back = zero
                    if hj > 0.0:
                        for c in range(n_out):
                            back += params[row + c] * delta[c]
                    delta_prev[j] = back
            delta, delta_prev = delta_prev, delta
    scale = 1.0 / rows.shape[0]
    grad *= scale
    return total / rows.shape[0]


@njit(**JIT_OPTIONS)
def _sgd_epoch_kernel(X, y, params, sizes, order, batch_size, lr):
    """Minibatch SGD over ``order`` in place on ``params``; returns the mean batch loss."""
    w_offsets, b_offsets, h_offsets, n_params, n_activations = _layout_kernel(sizes)
    grad = np.empty(n_params, dtype=params.dtype)
    h = np.empty(n_activations, dtype=params.dtype)
    delta = np.empty(sizes.max(), dtype=params.dtype)
    delta_prev = np.empty(sizes.max(), dtype=params.dtype)
    step = np.float32(lr)
    total = 0.0
    n_batches = 0
    for start in range(0, order.shape[0], batch_size):
        rows = order[start : start + batch_size]
        total += _batch_loss_grad_kernel(
            X, y, rows, params, sizes, w_offsets, b_offsets, h_offsets, grad, h, delta, delta_prev
        )
        for k in range(n_params):
            params[k] -= step * grad[k]
        n_batches += 1
    if n_batches == 0:
        return 0.0
    return total / n_batches


@njit(**JIT_OPTIONS)
def _loss_grad_kernel(X, y, params, sizes, grad):
    """Mean cross-entropy over all rows of X; gradient (flat layout) into ``grad``."""
    w_offsets, b_offsets, h_offsets, _, n_activations = _layout_kernel(sizes)
    h = np.empty(n_activations, dtype=params.dtype)
    delta = np.empty(sizes.max(), dtype=params.dtype)
    delta_prev = np.empty(sizes.max(), dtype=params.dtype)
    rows = np.arange(X.shape[0])
    return _batch_loss_grad_kernel(
        X, y, rows, params, sizes, w_offsets, b_offsets, h_offsets, grad, h, delta, delta_prev
    )


@njit(**JIT_OPTIONS)
def _forward_kernel(X, params, sizes, out):
    """Class probabilities of every row of X into ``out`` (n_rows, n_classes)."""
    w_offsets, b_offsets, h_offsets, _, n_activations = _layout_kernel(sizes)
    h = np.empty(n_activations, dtype=params.dtype)
    last = h_offsets[sizes.shape[0] - 1]
    for r in range(X.shape[0]):
        _row_logits_kernel(X[r], params, sizes, w_offsets, b_offsets, h_offsets, h)
        _softmax_inplace_kernel(h[last : last + out.shape[1]])
        for c in range(out.shape[1]):
            out[r, c] = h[last + c]


def _check_array(name: str, a: object, dtype: type, ndim: int) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise KernelInputError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise KernelInputError(f"{name} must have dtype {np.dtype(dtype)}, got {a.dtype}")
    if a.ndim != ndim:
        raise KernelInputError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise KernelInputError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
    return a


def _check_network(X: object, layers: object) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Check X and the layers; return X, the arrays in flat order, and the layer widths."""
    X = _check_array("X", X, np.float32, 2)
    if not isinstance(layers, (tuple, list)):
        raise KernelInputError(
            f"layers must be a tuple of (W, b) pairs, got {type(layers).__name__}"
        )
    if len(layers) < 2:
        raise KernelInputError(
            f"layers must hold at least one hidden and one output layer, got {len(layers)}"
        )
    arrays: list[np.ndarray] = []
    sizes = [X.shape[1]]
    for i, pair in enumerate(layers):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise KernelInputError(f"layers[{i}] must be a (W, b) pair")
        W = _check_array(f"W_{i}", pair[0], np.float32, 2)
        b = _check_array(f"b_{i}", pair[1], np.float32, 1)
        if W.shape[0] != sizes[-1]:
            source = "X has" if i == 0 else f"layer {i - 1} outputs"
            raise KernelInputError(
                f"W_{i} expects {W.shape[0]} inputs but {source} {sizes[-1]} features"
            )
        if W.shape[1] < 1:
            raise KernelInputError(f"W_{i} must have at least one output unit, got {W.shape}")
        if b.shape != (W.shape[1],):
            raise KernelInputError(
                f"b_{i} must have shape ({W.shape[1]},) to match W_{i}, got {b.shape}"
            )
        arrays += [W, b]
        sizes.append(W.shape[1])
    return X, arrays, np.array(sizes, dtype=np.int64)


def _check_labels(y: object, n_rows: int, n_classes: int) -> np.ndarray:
    y = _check_array("y", y, np.int64, 1)
    if y.shape[0] != n_rows:
        raise KernelInputError(f"y has {y.shape[0]} entries, X has {n_rows} rows")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise KernelInputError(
            f"y values must lie in [0, {n_classes}), got range [{y.min()}, {y.max()}]"
        )
    return y


def _pack(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([a.ravel() for a in arrays])


def _unpack(flat: np.ndarray, like: list[np.ndarray]) -> list[np.ndarray]:
    """Views of ``flat`` shaped like ``like``, in order."""
    views = []
    position = 0
    for a in like:
        views.append(flat[position : position + a.size].reshape(a.shape))
        position += a.size
    return views


def mlp_forward(X: np.ndarray, layers: Layers) -> np.ndarray:
    """Class probabilities, shape (n_rows, n_classes) float32; each row sums to 1."""
    X, arrays, sizes = _check_network(X, layers)
    out = np.empty((X.shape[0], sizes[-1]), dtype=np.float32)
    _forward_kernel(X, _pack(arrays), sizes, out)
    return out


def mlp_loss_grad(
    X: np.ndarray, y: np.ndarray, layers: Layers
) -> tuple[float, tuple[tuple[np.ndarray, np.ndarray], ...]]:
    """Mean cross-entropy of labels ``y`` under the network, and its gradient.

    Returns ``(loss, ((grad_W_1, grad_b_1), ..., (grad_W_out, grad_b_out)))``,
    each gradient shaped like its parameter; zero rows give loss 0 and zero
    gradients.
    """
    X, arrays, sizes = _check_network(X, layers)
    y = _check_labels(y, X.shape[0], int(sizes[-1]))
    params = _pack(arrays)
    grad = np.empty_like(params)
    loss = _loss_grad_kernel(X, y, params, sizes, grad)
    views = _unpack(grad, arrays)
    return float(loss), tuple(zip(views[0::2], views[1::2], strict=True))


def mlp_sgd_epoch(
    X: np.ndarray,
    y: np.ndarray,
    layers: Layers,
    batch_size: int,
    lr: float,
    rng: np.random.Generator,
) -> float:
    """One epoch of minibatch SGD on the mean cross-entropy, updating every W_i, b_i in place.

    Rows are visited in the order ``rng.permutation(len(X))`` (one draw from
    ``rng`` per epoch, so a seeded generator gives the same epoch bit for bit)
    in consecutive batches of ``batch_size``, the last one possibly smaller.
    Each batch takes the step ``-lr * gradient of its mean loss``. Returns the
    mean of the batch losses, each measured before its own step (0.0 when X
    has no rows).
    """
    X, arrays, sizes = _check_network(X, layers)
    y = _check_labels(y, X.shape[0], int(sizes[-1]))
    if not all(a.flags.writeable for a in arrays):
        raise KernelInputError("every W_i and b_i must be writeable: the epoch updates them")
    try:
        batch_size = operator.index(batch_size)
    except TypeError:
        raise KernelInputError(f"batch_size must be an int, got {batch_size!r}") from None
    if batch_size < 1:
        raise KernelInputError(f"batch_size must be at least 1, got {batch_size}")
    try:
        lr = float(lr)
    except (TypeError, ValueError):
        raise KernelInputError(f"lr must be a number, got {lr!r}") from None
    if not math.isfinite(lr):
        raise KernelInputError(f"lr must be finite, got {lr}")
    if not isinstance(rng, np.random.Generator):
        raise KernelInputError(
            f"rng must be a numpy Generator (np.random.default_rng), got {type(rng).__name__}"
        )
    order = rng.permutation(X.shape[0]).astype(np.int64, copy=False)
    params = _pack(arrays)
    loss = _sgd_epoch_kernel(X, y, params, sizes, order, batch_size, lr)
    for target, trained in zip(arrays, _unpack(params, arrays), strict=True):
        target[...] = trained
    return float(loss)
