"""Flow stored in 8 bits: clip each component to ±bound pixels, map it to 0..255.

The convention of the two-stream literature (TSN, denseflow):
q = round((v + bound) * 255 / (2 * bound)).
"""

from __future__ import annotations

import math

import numpy as np


def _check_bound(bound: float) -> float:
    bound = float(bound)
    if not math.isfinite(bound) or bound <= 0:
        raise ValueError(f"bound must be a positive finite number, got {bound}")
    return bound


def quantize_flow(component: np.ndarray, bound: float) -> np.ndarray:
    """Maps flow values to uint8: q = round((clip(v, ±bound) + bound) * 255 / (2 bound)).

    Rounding is half up, so v = 0 lands exactly on 127.5 and maps to 128.
    The step is 2*bound/255; values beyond ±bound saturate at 0 / 255. NaN
    maps to 128 (no motion) rather than to an undefined integer.
    """
    bound = _check_bound(bound)
    v = np.nan_to_num(np.asarray(component, dtype=np.float64), nan=0.0)
    v = np.clip(v, -bound, bound)
    # (v/bound + 1) * 127.5 is the formula rearranged so that v = 0 gives
    # exactly 127.5 in floating point (bound*255/(2*bound) can land a hair
    # below .5 and flip the rounding).
    q = np.floor((v / bound + 1.0) * 127.5 + 0.5)
    return np.clip(q, 0, 255).astype(np.uint8)


def dequantize_flow(q, bound: float):
    """Inverse of `quantize_flow`: v = q * 2*bound/255 - bound (float32).

    For |v| <= bound the round trip error is at most half a step, bound/255.
    Works on numpy arrays and on TF tensors (inside tf.data graphs) alike.
    """
    bound = _check_bound(bound)
    scale = 2.0 * bound / 255.0
    if isinstance(q, (np.ndarray, np.generic, int, float, list)):
        return (np.asarray(q, np.float64) * scale - bound).astype(np.float32)
    import tensorflow as tf  # only readers of tensors need TF

    return tf.cast(q, tf.float32) * scale - bound
