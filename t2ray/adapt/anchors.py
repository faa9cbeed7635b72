"""The fixed members every mixture search starts with (numpy only: the few-shot driver reads it
without importing Ray Tune)."""

from __future__ import annotations

import numpy as np


def anchor_members(n_experts: int, dim: int) -> np.ndarray:
    """alpha = 0 (the base: sigmoid(0) keeps every singular value), each expert alone, and the
    uniform mix. With per-matrix alpha (dim = K x matrices, expert-major, as `alpha_mixture`
    reads it) "an expert alone" sets every matrix of that expert to 1."""
    one_hot = np.repeat(np.eye(n_experts), dim // n_experts, axis=1)
    return np.vstack([np.zeros((1, dim)), one_hot, np.full((1, dim), 1.0 / n_experts)])
