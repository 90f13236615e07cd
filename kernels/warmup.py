"""Load (or compile) every kernel once, before the first model arrives.

numba compiles on the first call, or loads the cached machine code; on a
small device either can take longer than a local training run. A node calls
`warm_up()` while it connects so that the first update is not the slowest.
"""

from __future__ import annotations

import numpy as np

from fedbus.kernels.norms import l2_norm
from fedbus.kernels.quantize import dequantize, quantize
from fedbus.kernels.softmax import (
    softmax_cross_entropy_grad,
    softmax_predict_proba,
    softmax_sgd_epoch,
)
from fedbus.kernels.sparsify import topk_with_feedback


def warm_up() -> None:
    features = np.zeros((2, 2), dtype=np.float32)
    labels = np.zeros(2, dtype=np.int64)
    weights = np.zeros((2, 2), dtype=np.float32)
    bias = np.zeros(2, dtype=np.float32)
    softmax_cross_entropy_grad(features, labels, weights, bias)
    softmax_sgd_epoch(features, labels, weights, bias, np.arange(2, dtype=np.int64), 1, 0.1)
    softmax_predict_proba(features, weights, bias)
    # Update compression (node/compression.py): the codecs' encode paths.
    values = np.ones(4, dtype=np.float32)
    for bits in (8, 4):
        scales, codes = quantize(values, bits, 2, 0)
        dequantize(scales, codes, bits, 2, 4)
    topk_with_feedback(values, np.zeros(4, dtype=np.float32), 2)
    l2_norm(values)
