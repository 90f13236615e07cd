"""First-order optimizer steps, in place on float32 vectors (server optimizers, FedOpt).

SGD with momentum (FedAvgM), Adam (FedAdam) and Yogi (FedYogi), as in Reddi
et al., "Adaptive Federated Optimization", ICLR 2021. `grad` is the
pseudo-gradient the aggregator derives from the averaged client deltas.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from fedbus.broker.errors import KernelInputError
from fedbus.kernels.config import JIT_OPTIONS

__all__ = ["adam_step", "sgd_momentum_step", "yogi_step"]


@njit(**JIT_OPTIONS)
def _momentum_kernel(w, grad, velocity, lr, momentum):
    for i in range(w.shape[0]):
        velocity[i] = np.float32(momentum) * velocity[i] + grad[i]
        w[i] -= np.float32(lr) * velocity[i]


@njit(**JIT_OPTIONS)
def _adaptive_kernel(w, grad, m, v, lr, beta1, beta2, eps, step, yogi):
    b1 = np.float32(beta1)
    b2 = np.float32(beta2)
    correction1 = 1.0 - beta1**step
    correction2 = 1.0 - beta2**step
    rate = np.float32(lr * math.sqrt(correction2) / correction1)
    for i in range(w.shape[0]):
        g = grad[i]
        m[i] = b1 * m[i] + (np.float32(1.0) - b1) * g
        g2 = g * g
        if yogi:
            v[i] = v[i] - (np.float32(1.0) - b2) * g2 * np.sign(v[i] - g2)
        else:
            v[i] = b2 * v[i] + (np.float32(1.0) - b2) * g2
        w[i] -= rate * m[i] / (np.sqrt(v[i]) + np.float32(eps))


def _check(**arrays: np.ndarray) -> None:
    shape = None
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray) or array.dtype != np.float32 or array.ndim != 1:
            raise KernelInputError(f"{name} must be a 1-D float32 array")
        if not array.flags.c_contiguous:
            raise KernelInputError(f"{name} must be C-contiguous")
        if shape is not None and array.shape != shape:
            raise KernelInputError(f"{name} has shape {array.shape}, expected {shape}")
        shape = array.shape


def _finite(**values: float) -> None:
    for name, value in values.items():
        if not math.isfinite(value):
            raise KernelInputError(f"{name} must be finite, got {value}")


def sgd_momentum_step(
    w: np.ndarray, grad: np.ndarray, velocity: np.ndarray, lr: float, momentum: float
) -> None:
    """velocity = momentum * velocity + grad; w -= lr * velocity."""
    _check(w=w, grad=grad, velocity=velocity)
    _finite(lr=lr, momentum=momentum)
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
    lr, beta1, beta2, eps = hyper
    _check(w=w, grad=grad, m=m, v=v)
    _finite(lr=lr, beta1=beta1, beta2=beta2, eps=eps)
    if step < 1:
        raise KernelInputError(f"step must be >= 1, got {step}")
    _adaptive_kernel(w, grad, m, v, lr, beta1, beta2, eps, step, yogi)


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
    """Adam with bias correction; `step` counts from 1."""
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
    """Yogi: like Adam, but v moves by (1 - beta2) g^2 sign(v - g^2), never past g^2."""
    _adaptive_step(w, grad, m, v, (lr, beta1, beta2, eps), step, yogi=True)
