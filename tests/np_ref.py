"""Float64 NumPy references shared by the model tests (LayerNorm, exact and tanh GELU)."""

import numpy as np
from scipy.special import erf


def layer_norm(x, p, eps):
    """LayerNorm over the last axis with params {'scale', 'bias'}."""
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * p["scale"] + p["bias"]


def gelu(x, exact=True):
    """erf GELU (torch nn.GELU()) or, with exact=False, the tanh approximation."""
    if exact:
        return 0.5 * x * (1 + erf(x / np.sqrt(2)))
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
