"""First-order optimizer steps, in place on float32 vectors (server optimizers, FedOpt).

SGD with momentum (FedAvgM), Adam (FedAdam) and Yogi (FedYogi), as in Reddi
et al., "Adaptive Federated Optimization", ICLR 2021. ``grad`` is the
pseudo-gradient the aggregator derives from the averaged client deltas
(``grad = -aggregated_delta``), so a step with ``lr = 1`` and no momentum
applies the average delta as it is.

Each element is read as float32, updated in float64 and rounded to float32
once per stored array, so compiled and ``NUMBA_DISABLE_JIT=1`` runs give the
same bits and the state carries no float32 intermediate rounding.

Adam and Yogi apply bias correction as Kingma & Ba describe at the end of
their Section 2: the step size becomes ``lr * sqrt(1 - beta2**step) / (1 -
beta1**step)`` and ``eps`` is added to ``sqrt(v)`` uncorrected (TensorFlow's
"epsilon hat"). With FedOpt's large eps (tau, typically 1e-3) this differs
from adding eps to ``sqrt(v / (1 - beta2**step))`` during the first steps.
"""

from __future__ import annotations

import math
import numbers
import operator

import numpy as np
from numba import njit

from fedbus.broker.errors import KernelInputError
from fedbus.kernels.config import JIT_OPTIONS

__all__ = ["adam_step", "sgd_momentum_step", "yogi_step"]


@njit(**JIT_OPTIONS)
def _momentum_kernel(w, grad, velocity, lr, momentum):
    for i in range(w.shape[0]):
        u = momentum * np.float64(velocity[i]) + np.float64(grad[i])
        velocity[i] = np.float32(u)
        w[i] = np.float32(np.float64(w[i]) - lr * u)


@njit(**JIT_OPTIONS)
def _adaptive_kernel(w, grad, m, v, rate, beta1, beta2, eps, yogi):
    """Adam (yogi False) or Yogi (yogi True); ``rate`` already holds the bias correction."""
    for i in range(w.shape[0]):
        g = np.float64(grad[i])
        g2 = g * g
        mi = beta1 * np.float64(m[i]) + (1.0 - beta1) * g
        vi = np.float64(v[i])
        vi = (
            vi - (1.0 - beta2) * g2 * np.sign(vi - g2)  # Yogi: additive, towards g^2
            if yogi
            else beta2 * vi + (1.0 - beta2) * g2  # Adam: exponential moving average
        )
        m[i] = np.float32(mi)
        v[i] = np.float32(vi)
        w[i] = np.float32(np.float64(w[i]) - rate * mi / (np.sqrt(vi) + eps))


def _check_vectors(writeable: tuple[str, ...], **arrays: object) -> None:
    """Every array 1-D float32 C-contiguous and of one shape; no two share memory."""
    shape = None
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray):
            raise KernelInputError(f"{name} must be a numpy array, got {type(array).__name__}")
        if array.dtype != np.float32:
            raise KernelInputError(f"{name} must have dtype float32, got {array.dtype}")
        if array.ndim != 1:
            raise KernelInputError(f"{name} must be 1-D, got shape {array.shape}")
        if not array.flags.c_contiguous:
            raise KernelInputError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
        if name in writeable and not array.flags.writeable:
            raise KernelInputError(f"{name} must be writeable: the step updates it in place")
        if shape is not None and array.shape != shape:
            raise KernelInputError(f"{name} has shape {array.shape}, expected {shape}")
        shape = array.shape
    items = list(arrays.items())
    for j, (name, array) in enumerate(items):
        for other, other_array in items[j + 1 :]:
            if np.may_share_memory(array, other_array):
                raise KernelInputError(f"{name} and {other} must not share memory")


def _finite(name: str, value: object) -> float:
    if not isinstance(value, numbers.Real):
        raise KernelInputError(f"{name} must be a real number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise KernelInputError(f"{name} must be finite, got {value}")
    return number


def _decay(name: str, value: object) -> float:
    number = _finite(name, value)
    if not 0.0 <= number < 1.0:
        raise KernelInputError(f"{name} must be in [0, 1), got {value}")
    return number


def sgd_momentum_step(
    w: np.ndarray, grad: np.ndarray, velocity: np.ndarray, lr: float, momentum: float
) -> None:
    """Heavy-ball step in place: ``velocity = momentum * velocity + grad; w -= lr * velocity``.

    ``lr`` and ``momentum`` must be finite. With ``momentum = 0`` this is plain
    SGD (and ``velocity`` ends up holding ``grad``).
    """
    _check_vectors(("w", "velocity"), w=w, grad=grad, velocity=velocity)
    lr = _finite("lr", lr)
    momentum = _finite("momentum", momentum)
    _momentum_kernel(w, grad, velocity, lr, momentum)


def _adaptive_step(
    w: np.ndarray,
    grad: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    hyper: tuple[float, float, float, float],
    step: int,
    yogi: bool,
) -> None:
    _check_vectors(("w", "m", "v"), w=w, grad=grad, m=m, v=v)
    lr = _finite("lr", hyper[0])
    beta1 = _decay("beta1", hyper[1])
    beta2 = _decay("beta2", hyper[2])
    eps = _finite("eps", hyper[3])
    if not eps > 0:
        raise KernelInputError(f"eps must be > 0, got {hyper[3]}")
    try:
        step = operator.index(step)
    except TypeError:
        raise KernelInputError(f"step must be an int, got {step!r}") from None
    if step < 1:
        raise KernelInputError(f"step must be >= 1 (it counts from 1), got {step}")
    rate = lr * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)
    _adaptive_kernel(w, grad, m, v, rate, beta1, beta2, eps, yogi)


def adam_step(
    w: np.ndarray,
    grad: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    step: int,
) -> None:
    """One Adam step in place on ``w``, ``m`` and ``v``; ``step`` counts from 1.

    ``m = beta1 m + (1 - beta1) g``, ``v = beta2 v + (1 - beta2) g**2``,
    ``w -= lr sqrt(1 - beta2**step) / (1 - beta1**step) * m / (sqrt(v) + eps)``.
    Needs finite ``lr``, betas in [0, 1) and ``eps > 0``. The step on ``w``
    is formed from the unrounded float64 ``m`` and ``v``, so it stays finite,
    but the stored float32 ``v`` overflows to inf where ``(1 - beta2) g**2``
    exceeds 3.4e38 (``|g|`` above about 1.8e20 for beta2 = 0.99), and such a
    coordinate then stops moving; bound update norms upstream.
    """
    _adaptive_step(w, grad, m, v, (lr, beta1, beta2, eps), step, yogi=False)


def yogi_step(
    w: np.ndarray,
    grad: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    step: int,
) -> None:
    """One Yogi step (Zaheer et al., NeurIPS 2018): Adam with an additive ``v`` update.

    ``v = v - (1 - beta2) g**2 sign(v - g**2)``: v moves towards g**2 by a
    fixed fraction of g**2 rather than of their gap. Everything else, bias
    correction included, is as in :func:`adam_step`.
    """
    _adaptive_step(w, grad, m, v, (lr, beta1, beta2, eps), step, yogi=True)
