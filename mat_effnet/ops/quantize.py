"""Flow stored in 8 bits: clip each component to ±bound pixels, map it to 0..255.

The convention of the two-stream literature (TSN, denseflow):
q = round((v + bound) * 255 / (2 * bound)), with one of three roundings
(``rounding``):

* ``half_up`` -- this project's: floor(s + 0.5), so v = 0 (s = 127.5) maps to 128;
* ``cvround`` -- denseflow's ``convertFlowToImage`` (OpenCV's ``cvRound``,
  round half to even under the default FP mode), so v = 0 maps to 128 too
  (127.5 rounds to the even 128);
* ``truncate`` -- mmaction2's ``tools/misc/flow_extraction.py`` (``astype(uint8)``
  after scaling): floor(s).

Written once, against ``keras.ops``, in float32: the exported TensorFlow
graph and the JAX GPU check run it on their tensors, and preparation on numpy
arrays through numpy functions of the same names and semantics (`_HostOps`).
Every float32 value gets exactly the code that the float64 formula gives it
(`_edges`), so the three agree with each other and with data prepared before.
"""

from __future__ import annotations

import functools
import math

import numpy as np

ROUNDINGS = ("cvround", "truncate", "half_up")


def _check_bound(bound: float) -> float:
    bound = float(bound)
    if not math.isfinite(bound) or bound <= 0:
        raise ValueError(f"bound must be a positive finite number, got {bound}")
    return bound


def check_rounding(rounding: str) -> str:
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding={rounding}: expected one of {', '.join(ROUNDINGS)}")
    return rounding


class _HostOps:
    """The few ``keras.ops`` functions used here, with their names and semantics, on numpy.

    Preparation quantizes numpy arrays field by field; through a Keras
    backend each call would pay a round trip and an eager dispatch per op
    (about 10x numpy's time per 340x256 field, measured). The arithmetic
    below is written once against this interface and runs on either.
    """

    convert_to_tensor = staticmethod(lambda x, dtype=None: np.asarray(x, dtype))
    convert_to_numpy = staticmethod(np.asarray)
    cast = staticmethod(lambda x, dtype: np.asarray(x).astype(dtype))
    where, isnan, clip = staticmethod(np.where), staticmethod(np.isnan), staticmethod(np.clip)
    floor, take = staticmethod(np.floor), staticmethod(np.take)
    round = staticmethod(np.round)  # half to even, as keras.ops.round


def _ops(x):
    """numpy's stand-in for numpy arrays and Python values (numpy out), else keras.ops."""
    if isinstance(x, (np.ndarray, np.generic, int, float, list, tuple)):
        return _HostOps
    from keras import ops

    return ops


def _codes_float64(v: np.ndarray, bound: float, rounding: str) -> np.ndarray:
    """The codes' definition, in float64 (numpy): what the float32 path reproduces."""
    v = np.clip(np.nan_to_num(np.asarray(v, np.float64), nan=0.0), -bound, bound)
    if rounding == "half_up":
        q = np.floor((v / bound + 1.0) * 127.5 + 0.5)
    else:
        s = 255.0 * (v + bound) / (2.0 * bound)
        q = np.rint(s) if rounding == "cvround" else np.floor(s)
    return np.clip(q, 0, 255).astype(np.int64)


def _key(x: np.ndarray) -> np.ndarray:
    """float32 -> int64 keys in the same order (adjacent floats: adjacent keys)."""
    bits = np.asarray(x, np.float32).view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)


def _float(key: np.ndarray) -> np.ndarray:
    bits = np.where(key < 0, (-key) | 0x80000000, key).astype(np.uint32)
    return bits.view(np.float32)


@functools.lru_cache(maxsize=64)
def _edges(bound: float, rounding: str) -> np.ndarray:
    """(257,) float32: entry k is the smallest float32 v whose code is >= k (∓inf at the ends).

    A float32 evaluation of the formula rounds v / bound, and near a rounding
    edge that can move a value to the neighbouring code; comparing v with
    these edges instead gives every float32 input exactly the float64 code.
    Each edge is found by bisection over the float32 numbers (the float64
    codes are monotone in v).
    """
    k = np.arange(1, 256)
    lo = np.full(k.shape, _key(np.float32(-2 * bound)))  # code 0 < k
    hi = np.full(k.shape, _key(np.float32(2 * bound)))   # code 255 >= k
    while np.any(hi - lo > 1):
        mid = (lo + hi) // 2
        reached = _codes_float64(_float(mid), bound, rounding) >= k
        hi, lo = np.where(reached, mid, hi), np.where(reached, lo, mid)
    return np.concatenate([[-np.inf], _float(hi), [np.inf]]).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _centres(bound: float, rounding: str) -> np.ndarray:
    """(256,) float32: the value each code stands for (computed in float64)."""
    offset = 0.5 if rounding == "truncate" else 0.0  # a truncated code covers [q, q + 1)
    return ((np.arange(256) + offset) * (2.0 * bound / 255.0) - bound).astype(np.float32)


def quantize_flow(component, bound: float, rounding: str = "half_up"):
    """Flow values (pixels) -> uint8 codes: round((clip(v, ±bound) / bound + 1) * 127.5).

    ``rounding``: ``half_up``, ``cvround`` or ``truncate`` (module docstring).
    The step is 2*bound/255; values beyond ±bound (±inf included) saturate at
    0 / 255; NaN maps to the code of v = 0 (no motion) rather than to an
    undefined integer. Computed in float32: the code by the formula, then
    checked against the two edges around it (`_edges`), so every float32
    value gets the code of the float64 formula. Numpy in, numpy out; a
    backend tensor (a TF tensor inside a tf.function, a JAX array) in, the
    same backend's tensor out.
    """
    bound = _check_bound(bound)
    check_rounding(rounding)
    ops = _ops(component)
    v = ops.convert_to_tensor(component, "float32")
    v = ops.where(ops.isnan(v), 0.0, v)
    s = (ops.clip(v, -bound, bound) / bound + 1.0) * 127.5
    if rounding == "half_up":
        q = ops.floor(s + 0.5)
    elif rounding == "cvround":
        q = ops.round(s)  # half to even, as cvRound
    else:
        q = ops.floor(s)
    q = ops.cast(ops.clip(q, 0.0, 255.0), "int32")
    edges = ops.convert_to_tensor(_edges(bound, rounding))
    q = (q - ops.cast(v < ops.take(edges, q), "int32")
         + ops.cast(v >= ops.take(edges, q + 1), "int32"))
    q = ops.cast(ops.clip(q, 0, 255), "uint8")  # +inf is past the last edge too
    return q


def dequantize_flow(q, bound: float, rounding: str = "half_up"):
    """Inverse of `quantize_flow`: codes 0..255 -> the centre of each code's interval, float32.

    ``half_up`` and ``cvround`` codes stand for v = q * 2*bound/255 - bound; a
    ``truncate`` code covers [q, q + 1) steps, so it is read half a step
    higher. For |v| <= bound the round trip error is at most half a step,
    bound/255. Numpy in, numpy out; a backend tensor in (a tf.data graph), a
    tensor out.
    """
    bound = _check_bound(bound)
    check_rounding(rounding)
    ops = _ops(q)
    codes = ops.cast(ops.clip(ops.convert_to_tensor(q), 0, 255), "int32")
    v = ops.take(ops.convert_to_tensor(_centres(bound, rounding)), codes)
    return v
