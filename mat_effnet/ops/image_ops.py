"""Image operators in `keras.ops` that reproduce OpenCV's, on (B, H, W) float32.

Grey levels as `cv2.cvtColor(RGB2GRAY)` (`rgb_to_grey`, uint8 RGB in); linear
resize as `cv2.resize(INTER_LINEAR)` (half-pixel centres, replicated border,
no antialiasing), centred and forward differences with the boundary
conditions of Sanchez et al. (IPOL 2013), a 5x5 median by a Batcher
sorting network, and bicubic remap as `cv2.remap(INTER_CUBIC, BORDER_CONSTANT 0)`
(Keys' cubic, a = -0.75, at exact float positions). The TV-L1 solver
(`mat_effnet.ops.tvl1`) is built from them.
"""

from __future__ import annotations

import numpy as np

CUBIC_A = -0.75  # OpenCV's bicubic kernel parameter


def linear_taps(src: int, dst: int, scale: float):
    """Indices and weights of OpenCV's INTER_LINEAR resize along one axis."""
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5
    i0 = np.floor(pos).astype(np.int64)
    frac = (pos - i0).astype(np.float32)
    frac[i0 < 0] = 0
    frac[i0 >= src - 1] = 0
    i0 = np.clip(i0, 0, src - 1)
    i1 = np.minimum(i0 + 1, src - 1)
    return i0.astype(np.int32), i1.astype(np.int32), frac


def keras_ops():
    from keras import ops
    return ops


# OpenCV 5's RGB2GRAY: BT.601 weights in 15-bit fixed point, rounded.
GREY_WEIGHTS = (9798, 19235, 3735)
GREY_SHIFT = 15


def rgb_to_grey(frames):
    """(..., 3) uint8 RGB -> (...) uint8, bit-exact with ``cv2.cvtColor(RGB2GRAY)``.

    ``(9798 R + 19235 G + 3735 B + 2^14) >> 15``, in int32 (any backend tensor,
    a TensorFlow graph's included).
    """
    ops = keras_ops()
    x = ops.cast(frames, "int32")
    r, g, b = GREY_WEIGHTS
    y = x[..., 0] * r + x[..., 1] * g + x[..., 2] * b + (1 << (GREY_SHIFT - 1))
    return ops.cast(ops.right_shift(y, GREY_SHIFT), "uint8")


def resize_linear(x, dst_hw, scale_hw=None):
    """OpenCV resize(INTER_LINEAR) of (B, H, W); scale defaults to src/dst."""
    ops = keras_ops()
    _, h, w = x.shape
    dh, dw = dst_hw
    sy = scale_hw[0] if scale_hw else h / dh
    sx = scale_hw[1] if scale_hw else w / dw
    y0, y1, fy = linear_taps(h, dh, sy)
    x0, x1, fx = linear_taps(w, dw, sx)
    fy = ops.convert_to_tensor(fy.reshape(1, dh, 1))
    fx = ops.convert_to_tensor(fx.reshape(1, 1, dw))
    # Horizontal pass first, like OpenCV (it matters only in the last bits).
    a = ops.take(x, x0, axis=2)
    b = ops.take(x, x1, axis=2)
    x = a + (b - a) * fx
    a = ops.take(x, y0, axis=1)
    b = ops.take(x, y1, axis=1)
    return a + (b - a) * fy


def shift_clamped(x, axis, step):
    """x shifted by `step` (+1: value of the next pixel) with replicated border."""
    ops = keras_ops()
    if axis == 1:
        if step > 0:
            return ops.concatenate([x[:, step:], ops.repeat(x[:, -1:], step, axis=1)], axis=1)
        return ops.concatenate([ops.repeat(x[:, :1], -step, axis=1), x[:, :step]], axis=1)
    if step > 0:
        return ops.concatenate([x[:, :, step:], ops.repeat(x[:, :, -1:], step, axis=2)], axis=2)
    return ops.concatenate([ops.repeat(x[:, :, :1], -step, axis=2), x[:, :, :step]], axis=2)


def centered_gradient(x):
    """OpenCV's centeredGradient: half central differences, one-sided at the border."""
    gx = 0.5 * (shift_clamped(x, 2, 1) - shift_clamped(x, 2, -1))
    gy = 0.5 * (shift_clamped(x, 1, 1) - shift_clamped(x, 1, -1))
    return gx, gy


def forward_gradient(x):
    """Forward differences, 0 on the last column (x) / last row (y)."""
    ops = keras_ops()
    gx = ops.concatenate([x[:, :, 1:] - x[:, :, :-1], ops.zeros_like(x[:, :, :1])], axis=2)
    gy = ops.concatenate([x[:, 1:] - x[:, :-1], ops.zeros_like(x[:, :1])], axis=1)
    return gx, gy


def divergence(px, py):
    """Backward differences with zero outside (the adjoint of `forward_gradient`)."""
    ops = keras_ops()
    dx = px - ops.concatenate([ops.zeros_like(px[:, :, :1]), px[:, :, :-1]], axis=2)
    dy = py - ops.concatenate([ops.zeros_like(py[:, :1]), py[:, :-1]], axis=1)
    return dx + dy


def batcher_pairs(n: int) -> list[tuple[int, int]]:
    """Comparators of Batcher's odd-even merge sort for n inputs (min goes to i)."""
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


def median_network(n: int) -> list[tuple[int, int]]:
    """The comparators of a sorting network that the middle output depends on."""
    pairs = batcher_pairs(n)
    needed = {n // 2}
    kept = []
    for i, j in reversed(pairs):
        if i in needed or j in needed:
            kept.append((i, j))
            needed |= {i, j}
    return kept[::-1]


MEDIAN25 = median_network(25)


def median5x5(x):
    """5x5 median with replicated border (OpenCV's medianBlur for float, ksize 5).

    A min/max selection network: XLA fuses it into one elementwise kernel,
    where extract_patches + a sort is about 25x slower.
    """
    ops = keras_ops()
    rows = [shift_clamped(x, 1, -2), shift_clamped(x, 1, -1), x,
            shift_clamped(x, 1, 1), shift_clamped(x, 1, 2)]
    v = []
    for r in rows:
        v += [shift_clamped(r, 2, -2), shift_clamped(r, 2, -1), r,
              shift_clamped(r, 2, 1), shift_clamped(r, 2, 2)]
    for i, j in MEDIAN25:
        lo, hi = ops.minimum(v[i], v[j]), ops.maximum(v[i], v[j])
        v[i], v[j] = lo, hi
    return v[12]


def cubic_weights(t):
    """Keys' cubic weights (a = -0.75) for the 4 taps around a fraction t in [0, 1)."""
    a = CUBIC_A
    t1 = t + 1.0
    w0 = ((a * t1 - 5 * a) * t1 + 8 * a) * t1 - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    s = 1.0 - t
    w2 = ((a + 2) * s - (a + 3)) * s * s + 1
    w3 = 1.0 - w0 - w1 - w2
    return (w0, w1, w2, w3)


def unfold_for_cubic(stack):
    """The 4 horizontal cubic taps of every start column, zero outside the frame.

    stack (B, H, W, C) -> (B * (H + 2) * (W + 5), 4 * C): row (b, 1 + y, 4 + s)
    holds the C values at columns s .. s + 3 of row y, for starts s in -4..W,
    and zeros for rows -1 and H. Clamping a start into -4..W and a row into
    -1..H then reproduces remap's BORDER_CONSTANT 0 exactly, so a warp needs
    one gather (4 rows of 4 taps) and no masks. Built once per scale.
    """
    ops = keras_ops()
    b, h, w, c = stack.shape
    padded = ops.pad(stack, [[0, 0], [1, 1], [4, 4], [0, 0]])
    taps = ops.concatenate([padded[:, :, k:k + w + 5] for k in range(4)], axis=-1)
    return ops.reshape(taps, (b * (h + 2) * (w + 5), 4 * c))


def remap_cubic(stack, u1, u2, unfolded=None):
    """remap(INTER_CUBIC, BORDER_CONSTANT 0) of C images at (x + u1, y + u2).

    stack: (B, H, W, C); u1, u2: (B, H, W). Returns (B, H, W, C).
    ``unfolded`` is `unfold_for_cubic(stack)`, if already built.
    """
    ops = keras_ops()
    b, h, w, c = stack.shape
    if unfolded is None:
        unfolded = unfold_for_cubic(stack)
    xs = ops.reshape(ops.arange(w, dtype="float32"), (1, 1, w)) + u1
    ys = ops.reshape(ops.arange(h, dtype="float32"), (1, h, 1)) + u2
    fx = ops.floor(xs)
    fy = ops.floor(ys)
    wx = ops.expand_dims(ops.stack(cubic_weights(xs - fx), axis=-1), -1)  # (B, H, W, 4, 1)
    wy = ops.expand_dims(ops.stack(cubic_weights(ys - fy), axis=-1), -1)  # (B, H, W, 4, 1)
    col = ops.clip(ops.cast(fx, "int32") - 1, -4, w) + 4
    iy = ops.expand_dims(ops.cast(fy, "int32"), -1) + ops.arange(-1, 3, dtype="int32")
    rows = ops.clip(iy, -1, h) + 1  # (B, H, W, 4)
    base = ops.reshape(ops.arange(b, dtype="int32") * ((h + 2) * (w + 5)), (b, 1, 1)) + col
    # One gather of the 4 x 4 taps (separate per-row gathers were miscompiled
    # by jaxlib 0.10's XLA:CPU at batch 1).
    idx = ops.expand_dims(base, -1) + rows * (w + 5)
    val = ops.take(unfolded, ops.reshape(idx, (-1,)), axis=0)
    val = ops.reshape(val, (b, h, w, 4, 4, c))  # (.., tap row, tap column, C)
    val = ops.sum(val * ops.expand_dims(wx, 3), axis=4)  # horizontal pass: (B, H, W, 4, C)
    return ops.sum(val * wy, axis=3)
