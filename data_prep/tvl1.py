"""Batched TV-L1 optical flow in `keras.ops`, compiled with XLA.

The model and its numerics follow OpenCV's `cv2.optflow.DualTVL1OpticalFlow`
(opencv_contrib, modules/optflow/src/tvl1flow.cpp) at its defaults, which in
turn follows

* C. Zach, T. Pock, H. Bischof, "A Duality Based Approach for Realtime TV-L1
  Optical Flow", DAGM 2007 (the model: an L1 data term linearised around the
  current warp, total variation of the flow, split by a quadratic coupling
  with weight 1/theta into a pointwise thresholding step for v and
  Chambolle's dual projection for u);
* J. Sánchez Pérez, E. Meinhardt-Llopis, G. Facciolo, "TV-L1 Optical Flow
  Estimation", Image Processing On Line 3 (2013), pp. 137-150 (the reference
  implementation: coarse-to-fine pyramid, warps per scale, the stopping test
  on the squared update, boundary conditions of the difference operators).

What is reproduced, per pair (all in float32 on 0..255 grey levels):

* pyramid: each level is the previous one resized by ``scale_step`` with
  OpenCV's `resize(INTER_LINEAR)` (half-pixel centres, replicated border, no
  antialiasing), sizes rounded to nearest; levels stop before a side < 16;
* per scale: the dual variables restart at zero; the next frame's centred
  gradient is taken once (one-sided half differences at the border);
* per warp: the next frame and its gradient are warped by the current flow
  with OpenCV's `remap(INTER_CUBIC, BORDER_CONSTANT 0)`: Keys' cubic with
  a = -0.75 at the exact float positions (OpenCV 5's remap; OpenCV 4
  rounded them to 1/32 px), taps outside the frame read as 0. Written with
  one gather of 4 rows x 4 taps (`keras.ops.image.map_coordinates` stops
  at bilinear);
* iterations: up to 10 outer x 30 inner, 5x5 median filter of the flow
  (replicated border) at the start of each outer iteration; after each inner
  iteration the pair stops once sum((u - u_prev)^2) <= epsilon^2 * H * W;
* between scales the flow is resized linearly to the finer size and
  multiplied by 1 / scale_step.

Batching: a batch is B pairs of one size. Every loop is a `while_loop` that
runs while any pair of the batch is still moving; a pair that has met the
stopping test is frozen by a mask, so its result does not depend on its
batch-mates. The function compiles once per exact (B, H, W) (never padded:
padding would change the pyramid and the borders) with
`tf.function(jit_compile=True)` on TensorFlow and `jax.jit` on JAX.

Speed notes (340x256, a shared 2-core CPU, OpenCV and this module timed in
turns pair by pair): one pair at a time ran 2.9-3.2x OpenCV's pairs/s on the
TensorFlow backend, and 0.7-0.8x on JAX (jaxlib 0.10's XLA:CPU spends about
twice TensorFlow's CPU seconds on the same graph, by getrusage: its code, not
its threading). A masked batch costs its slowest pair times the batch size
(31 % useful work on the `known_flow.accuracy_set` mix), so on a CPU a batch
is solved pair by pair (``chunk``). On the TF backend, tf.function's default
autograph doubled tracing time for nothing (it is off), and `ops.pad` in
"edge" mode is refused (borders are replicated by concatenation). Compiling
one (B, H, W) takes ~20 s at 340x256.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Callable

import numpy as np

_CUBIC_A = -0.75       # OpenCV's bicubic kernel parameter
_FLT_EPSILON = float(np.finfo(np.float32).eps)
_MIN_LEVEL_SIDE = 16   # OpenCV stops adding levels before a side drops below this


@dataclasses.dataclass(frozen=True)
class TVL1Params:
    """TV-L1 settings; the defaults are OpenCV's DualTVL1OpticalFlow defaults."""

    tau: float = 0.25
    lambda_: float = 0.15
    theta: float = 0.3
    gamma: float = 0.0
    nscales: int = 5
    scale_step: float = 0.8
    warps: int = 5
    epsilon: float = 0.01
    inner_iterations: int = 30
    outer_iterations: int = 10
    median_filtering: int = 5

    def validate(self) -> "TVL1Params":
        from mat_effnet.errors import bad_argument

        if self.gamma != 0:
            raise bad_argument("gamma", self.gamma, "only 0 (no illumination term) is implemented")
        if self.median_filtering not in (0, 1, 5):
            raise bad_argument("median_filtering", self.median_filtering,
                               "only 5 (OpenCV's default) or 0/1 (off) are implemented")
        for name in ("nscales", "warps", "inner_iterations", "outer_iterations"):
            if int(getattr(self, name)) < 1:
                raise bad_argument(name, getattr(self, name), "must be >= 1")
        if not 0 < self.scale_step < 1:
            raise bad_argument("scale_step", self.scale_step, "must be in (0, 1)")
        for name in ("tau", "lambda_", "theta"):
            if not getattr(self, name) > 0:
                raise bad_argument(name, getattr(self, name), "must be > 0")
        if self.epsilon < 0:
            raise bad_argument("epsilon", self.epsilon, "must be >= 0")
        return self


# ---------------------------------------------------------------------------
# Static geometry (numpy, at trace time)

def pyramid_sizes(height: int, width: int, params: TVL1Params) -> list[tuple[int, int]]:
    """(H, W) of each level, finest first, as OpenCV builds them."""
    sizes = [(height, width)]
    for _ in range(1, params.nscales):
        h, w = sizes[-1]
        # cvRound: round half to even, as Python's round.
        nh, nw = round(h * params.scale_step), round(w * params.scale_step)
        if nh < _MIN_LEVEL_SIDE or nw < _MIN_LEVEL_SIDE:
            break
        sizes.append((nh, nw))
    return sizes


def _linear_taps(src: int, dst: int, scale: float):
    """Indices and weights of OpenCV's INTER_LINEAR resize along one axis."""
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5
    i0 = np.floor(pos).astype(np.int64)
    frac = (pos - i0).astype(np.float32)
    frac[i0 < 0] = 0
    frac[i0 >= src - 1] = 0
    i0 = np.clip(i0, 0, src - 1)
    i1 = np.minimum(i0 + 1, src - 1)
    return i0.astype(np.int32), i1.astype(np.int32), frac


# ---------------------------------------------------------------------------
# Image operators (keras.ops, on (B, H, W) float32)

def _ops():
    from keras import ops
    return ops


def _resize_linear(x, dst_hw, scale_hw=None):
    """OpenCV resize(INTER_LINEAR) of (B, H, W); scale defaults to src/dst."""
    ops = _ops()
    _, h, w = x.shape
    dh, dw = dst_hw
    sy = scale_hw[0] if scale_hw else h / dh
    sx = scale_hw[1] if scale_hw else w / dw
    y0, y1, fy = _linear_taps(h, dh, sy)
    x0, x1, fx = _linear_taps(w, dw, sx)
    fy = ops.convert_to_tensor(fy.reshape(1, dh, 1))
    fx = ops.convert_to_tensor(fx.reshape(1, 1, dw))
    # Horizontal pass first, like OpenCV (it matters only in the last bits).
    a = ops.take(x, x0, axis=2)
    b = ops.take(x, x1, axis=2)
    x = a + (b - a) * fx
    a = ops.take(x, y0, axis=1)
    b = ops.take(x, y1, axis=1)
    return a + (b - a) * fy


def _shift_clamped(x, axis, step):
    """x shifted by `step` (+1: value of the next pixel) with replicated border."""
    ops = _ops()
    if axis == 1:
        if step > 0:
            return ops.concatenate([x[:, step:], ops.repeat(x[:, -1:], step, axis=1)], axis=1)
        return ops.concatenate([ops.repeat(x[:, :1], -step, axis=1), x[:, :step]], axis=1)
    if step > 0:
        return ops.concatenate([x[:, :, step:], ops.repeat(x[:, :, -1:], step, axis=2)], axis=2)
    return ops.concatenate([ops.repeat(x[:, :, :1], -step, axis=2), x[:, :, :step]], axis=2)


def _centered_gradient(x):
    """OpenCV's centeredGradient: half central differences, one-sided at the border."""
    gx = 0.5 * (_shift_clamped(x, 2, 1) - _shift_clamped(x, 2, -1))
    gy = 0.5 * (_shift_clamped(x, 1, 1) - _shift_clamped(x, 1, -1))
    return gx, gy


def _forward_gradient(x):
    """Forward differences, 0 on the last column (x) / last row (y)."""
    ops = _ops()
    gx = ops.concatenate([x[:, :, 1:] - x[:, :, :-1], ops.zeros_like(x[:, :, :1])], axis=2)
    gy = ops.concatenate([x[:, 1:] - x[:, :-1], ops.zeros_like(x[:, :1])], axis=1)
    return gx, gy


def _divergence(px, py):
    """Backward differences with zero outside (the adjoint of `_forward_gradient`)."""
    ops = _ops()
    dx = px - ops.concatenate([ops.zeros_like(px[:, :, :1]), px[:, :, :-1]], axis=2)
    dy = py - ops.concatenate([ops.zeros_like(py[:, :1]), py[:, :-1]], axis=1)
    return dx + dy


def _batcher_pairs(n: int) -> list[tuple[int, int]]:
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


def _median_network(n: int) -> list[tuple[int, int]]:
    """The comparators of a sorting network that the middle output depends on."""
    pairs = _batcher_pairs(n)
    needed = {n // 2}
    kept = []
    for i, j in reversed(pairs):
        if i in needed or j in needed:
            kept.append((i, j))
            needed |= {i, j}
    return kept[::-1]


_MEDIAN25 = _median_network(25)


def _median5x5(x):
    """5x5 median with replicated border (OpenCV's medianBlur for float, ksize 5).

    A min/max selection network: XLA fuses it into one elementwise kernel,
    where extract_patches + a sort is about 25x slower.
    """
    ops = _ops()
    rows = [_shift_clamped(x, 1, -2), _shift_clamped(x, 1, -1), x,
            _shift_clamped(x, 1, 1), _shift_clamped(x, 1, 2)]
    v = []
    for r in rows:
        v += [_shift_clamped(r, 2, -2), _shift_clamped(r, 2, -1), r,
              _shift_clamped(r, 2, 1), _shift_clamped(r, 2, 2)]
    for i, j in _MEDIAN25:
        lo, hi = ops.minimum(v[i], v[j]), ops.maximum(v[i], v[j])
        v[i], v[j] = lo, hi
    return v[12]


def _cubic_weights(t):
    """Keys' cubic weights (a = -0.75) for the 4 taps around a fraction t in [0, 1)."""
    a = _CUBIC_A
    t1 = t + 1.0
    w0 = ((a * t1 - 5 * a) * t1 + 8 * a) * t1 - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    s = 1.0 - t
    w2 = ((a + 2) * s - (a + 3)) * s * s + 1
    w3 = 1.0 - w0 - w1 - w2
    return (w0, w1, w2, w3)


def _unfold_for_cubic(stack):
    """The 4 horizontal cubic taps of every start column, zero outside the frame.

    stack (B, H, W, C) -> (B * (H + 2) * (W + 5), 4 * C): row (b, 1 + y, 4 + s)
    holds the C values at columns s .. s + 3 of row y, for starts s in -4..W,
    and zeros for rows -1 and H. Clamping a start into -4..W and a row into
    -1..H then reproduces remap's BORDER_CONSTANT 0 exactly, so a warp needs
    one gather (4 rows of 4 taps) and no masks. Built once per scale.
    """
    ops = _ops()
    b, h, w, c = stack.shape
    padded = ops.pad(stack, [[0, 0], [1, 1], [4, 4], [0, 0]])
    taps = ops.concatenate([padded[:, :, k:k + w + 5] for k in range(4)], axis=-1)
    return ops.reshape(taps, (b * (h + 2) * (w + 5), 4 * c))


def _remap_cubic(stack, u1, u2, unfolded=None):
    """remap(INTER_CUBIC, BORDER_CONSTANT 0) of C images at (x + u1, y + u2).

    stack: (B, H, W, C); u1, u2: (B, H, W). Returns (B, H, W, C).
    ``unfolded`` is `_unfold_for_cubic(stack)`, if already built.
    """
    ops = _ops()
    b, h, w, c = stack.shape
    if unfolded is None:
        unfolded = _unfold_for_cubic(stack)
    xs = ops.reshape(ops.arange(w, dtype="float32"), (1, 1, w)) + u1
    ys = ops.reshape(ops.arange(h, dtype="float32"), (1, h, 1)) + u2
    fx = ops.floor(xs)
    fy = ops.floor(ys)
    wx = ops.expand_dims(ops.stack(_cubic_weights(xs - fx), axis=-1), -1)  # (B, H, W, 4, 1)
    wy = ops.expand_dims(ops.stack(_cubic_weights(ys - fy), axis=-1), -1)  # (B, H, W, 4, 1)
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


# ---------------------------------------------------------------------------
# The solver

def _solve_scale(i0, i1, u1, u2, params: TVL1Params):
    """All warps at one scale. Returns (u1, u2, iterations (B, warps) int32)."""
    ops = _ops()
    b, h, w = i0.shape
    l_t = float(np.float32(params.lambda_ * params.theta))
    taut = float(np.float32(params.tau / params.theta))
    theta = float(np.float32(params.theta))
    scaled_eps = float(np.float32(params.epsilon * params.epsilon * h * w))
    inner_max, outer_max = int(params.inner_iterations), int(params.outer_iterations)
    median = params.median_filtering > 1

    i1x, i1y = _centered_gradient(i1)
    i1_stack = ops.stack([i1, i1x, i1y], axis=-1)
    unfolded = _unfold_for_cubic(i1_stack)
    zeros = ops.zeros_like(i0)

    def warp_body(k, state):
        u1, u2, p11, p12, p21, p22, counts = state
        warped = _remap_cubic(i1_stack, u1, u2, unfolded)
        i1w, i1wx, i1wy = warped[..., 0], warped[..., 1], warped[..., 2]
        rho_c = i1w - i1wx * u1 - i1wy * u2 - i0

        def inner_step(u1, u2, p11, p12, p21, p22, active):
            # |grad I1w|^2 is recomputed rather than stored: 3 FLOPs are cheaper
            # than 4 more bytes per pixel and iteration on a memory-bound device.
            grad = i1wx * i1wx + i1wy * i1wy
            lt_grad = l_t * grad
            rho = rho_c + i1wx * u1 + i1wy * u2
            # TH step: -l_t*grad I, +l_t*grad I, or the projection -rho/|grad I|^2 grad I.
            proj = ops.where(grad > _FLT_EPSILON, -rho / ops.maximum(grad, _FLT_EPSILON), 0.0)
            f = ops.where(rho < -lt_grad, l_t, ops.where(rho > lt_grad, -l_t, proj))
            v1 = u1 + f * i1wx
            v2 = u2 + f * i1wy
            n1 = v1 + theta * _divergence(p11, p12)
            n2 = v2 + theta * _divergence(p21, p22)
            d1, d2 = n1 - u1, n2 - u2
            err = ops.sum(d1 * d1 + d2 * d2, axis=(1, 2))
            u1x, u1y = _forward_gradient(n1)
            u2x, u2y = _forward_gradient(n2)
            ng1 = 1.0 + taut * ops.sqrt(u1x * u1x + u1y * u1y)
            ng2 = 1.0 + taut * ops.sqrt(u2x * u2x + u2y * u2y)
            m = ops.reshape(active, (b, 1, 1))
            return (ops.where(m, n1, u1), ops.where(m, n2, u2),
                    ops.where(m, (p11 + taut * u1x) / ng1, p11),
                    ops.where(m, (p12 + taut * u1y) / ng1, p12),
                    ops.where(m, (p21 + taut * u2x) / ng2, p21),
                    ops.where(m, (p22 + taut * u2y) / ng2, p22),
                    ops.logical_and(active, err > scaled_eps))

        def inner_cond(n, u1, u2, p11, p12, p21, p22, active, count):
            return ops.logical_and(n < inner_max, ops.any(active))

        def inner_body(n, u1, u2, p11, p12, p21, p22, active, count):
            count = count + ops.cast(active, "int32")
            out = inner_step(u1, u2, p11, p12, p21, p22, active)
            return (n + 1,) + out + (count,)

        def outer_cond(n, u1, u2, p11, p12, p21, p22, active, count):
            return ops.logical_and(n < outer_max, ops.any(active))

        def outer_body(n, u1, u2, p11, p12, p21, p22, active, count):
            if median:
                # One network for both components: half the graph to compile.
                med = _median5x5(ops.concatenate([u1, u2], axis=0))
                m = ops.reshape(active, (b, 1, 1))
                u1 = ops.where(m, med[:b], u1)
                u2 = ops.where(m, med[b:], u2)
            res = ops.while_loop(inner_cond, inner_body,
                                 (ops.convert_to_tensor(0, "int32"), u1, u2, p11, p12, p21, p22,
                                  active, count))
            return (n + 1,) + tuple(res[1:])

        active = ops.ones((b,), dtype="bool")
        count = ops.zeros((b,), dtype="int32")
        res = ops.while_loop(outer_cond, outer_body,
                             (ops.convert_to_tensor(0, "int32"), u1, u2, p11, p12, p21, p22,
                              active, count))
        u1, u2, p11, p12, p21, p22, _, count = res[1:]
        onehot = ops.cast(ops.equal(ops.arange(params.warps, dtype="int32"), k), "int32")
        counts = counts + ops.expand_dims(count, 1) * ops.expand_dims(onehot, 0)
        return (u1, u2, p11, p12, p21, p22, counts)

    counts = ops.zeros((b, params.warps), dtype="int32")
    state = ops.fori_loop(0, params.warps, warp_body,
                          (u1, u2, zeros, zeros, zeros, zeros, counts))
    return state[0], state[1], state[6]


def _tvl1_graph(prev, nxt, params: TVL1Params):
    """(B, H, W) uint8 pair batch -> ((B, H, W, 2) flow, (B, scales, warps) iterations)."""
    ops = _ops()
    b, h, w = prev.shape
    sizes = pyramid_sizes(h, w, params)
    i0s = [ops.cast(prev, "float32")]
    i1s = [ops.cast(nxt, "float32")]
    step = 1.0 / params.scale_step
    for size in sizes[1:]:
        i0s.append(_resize_linear(i0s[-1], size, (step, step)))
        i1s.append(_resize_linear(i1s[-1], size, (step, step)))
    u1 = ops.zeros((b,) + sizes[-1], dtype="float32")
    u2 = ops.zeros((b,) + sizes[-1], dtype="float32")
    counts = [None] * len(sizes)
    for s in range(len(sizes) - 1, -1, -1):
        u1, u2, counts[s] = _solve_scale(i0s[s], i1s[s], u1, u2, params)
        if s:
            u1 = _resize_linear(u1, sizes[s - 1]) * float(np.float32(step))
            u2 = _resize_linear(u2, sizes[s - 1]) * float(np.float32(step))
    return ops.stack([u1, u2], axis=-1), ops.stack(counts, axis=1)


def flow_graph(prev, nxt, params: TVL1Params):
    """(B, H, W) uint8 pair batch -> (B, H, W, 2) float32 flow, as a traceable graph.

    For graphs that embed TV-L1 (`mat_effnet.export`): the same computation
    as `batch_tvl1`, uncompiled, for the caller to trace at a static size.
    """
    return _tvl1_graph(prev, nxt, params)[0]


def _check_batch(prev, nxt) -> tuple[np.ndarray, np.ndarray]:
    from mat_effnet.errors import bad_argument

    prev = np.asarray(prev)
    nxt = np.asarray(nxt)
    for name, a in (("prev", prev), ("next", nxt)):
        value = f"<{a.dtype} array {a.shape}>"
        if a.dtype != np.uint8:
            raise bad_argument(name, value, "need uint8 frames")
        if a.ndim != 3 or a.shape[0] < 1 or a.shape[1] < 3 or a.shape[2] < 3:
            raise bad_argument(name, value, "need a (B, H, W) batch, B >= 1, frames >= 3x3")
    if prev.shape != nxt.shape:
        raise bad_argument("next", f"<{nxt.dtype} array {nxt.shape}>",
                           f"shape differs from prev's {prev.shape}")
    return np.ascontiguousarray(prev), np.ascontiguousarray(nxt)


def _on_accelerator(backend: str) -> bool:
    """Whether the Keras backend will run on a GPU/TPU rather than the CPU."""
    if backend == "tensorflow":
        import tensorflow as tf
        return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))
    import jax
    return jax.default_backend() != "cpu"


def batch_tvl1(params: TVL1Params | None = None,
               chunk: int | None = None) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Returns fn(prev (B,H,W) uint8, next (B,H,W) uint8) -> (B,H,W,2) float32 flow.

    The flow at a pixel of prev points to where its content is in next
    (dx, dy in pixels), as OpenCV's. Compiles once per exact (chunk, H, W)
    and caches the compiled function (`tf.function(jit_compile=True)` on the
    TensorFlow backend, `jax.jit` on JAX); never pads.

    ``chunk`` is how many pairs one compiled call solves together (0: the
    whole batch). A masked
    batch keeps iterating until its slowest pair has stopped, which costs
    nothing extra where the device has parallelism to spare (GPU) but is pure
    waste on a CPU, whose cores are already busy with one pair. So by default
    (None) a batch runs whole on an accelerator and pair by pair on the CPU;
    the result is the same either way (pairs stop independently).

    ``fn.last_stats`` holds, after each call, ``{"iterations": int array
    (B, scales, warps)}``: the inner iterations each pair ran per scale
    (0 = finest) and warp before its stopping test held.
    """
    import keras
    from mat_effnet.errors import bad_argument

    params = (params or TVL1Params()).validate()
    if chunk is not None and int(chunk) < 0:
        raise bad_argument("chunk", chunk, "must be >= 1, 0 (whole batch) or None (automatic)")
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax"):
        raise bad_argument("KERAS_BACKEND", backend, "batch_tvl1 needs tensorflow or jax")
    cache: dict = {}
    lock = threading.Lock()
    state = {"chunk": chunk}

    def compiled(shape):
        with lock:
            fn = cache.get(shape)
            if fn is None:
                graph = lambda p, n: _tvl1_graph(p, n, params)  # noqa: E731
                if backend == "tensorflow":
                    import tensorflow as tf
                    # autograph=False: the loops are keras.ops loops already, and
                    # autograph's rewriting only adds tracing time.
                    fn = tf.function(graph, jit_compile=True, autograph=False)
                else:
                    import jax
                    fn = jax.jit(graph)
                cache[shape] = fn
            return fn

    def flow(prev, nxt):
        prev, nxt = _check_batch(prev, nxt)
        if state["chunk"] is None:
            state["chunk"] = 0 if _on_accelerator(backend) else 1
        size = state["chunk"] or prev.shape[0]
        outs, iters = [], []
        for start in range(0, prev.shape[0], size):
            p, n = prev[start:start + size], nxt[start:start + size]
            out, it = compiled(p.shape)(p, n)
            outs.append(np.asarray(out, dtype=np.float32))
            iters.append(np.asarray(it))
        flow.last_stats = {"iterations": np.concatenate(iters)}
        return np.concatenate(outs) if len(outs) > 1 else outs[0]

    flow.last_stats = None
    flow.params = params
    flow.backend = backend
    return flow


# ---------------------------------------------------------------------------
# Roofline

def cost_per_pair(height: int, width: int, params: TVL1Params | None = None,
                  iterations: dict | None = None) -> dict:
    """FLOPs and bytes moved per pair, for a roofline bound.

    Counts per pixel, float32: an inner iteration does ~68 FLOPs (|grad I|^2
    and TH step 14, v 4, two divergences 6, u update 4, error 6, forward
    gradients 4, dual update with two norms and four divisions 24, the
    per-pair masks 6) and, fully fused, reads 9 arrays (u1, u2, p11, p12,
    p21, p22, and the warp constants i1wx, i1wy, rho_c) and writes 6: 60
    bytes. XLA does not fuse a whole iteration into one kernel (the stencils
    and the per-pair error reduction split it), so real traffic is higher and
    the figures are a bound, not a prediction. A warp (bicubic gather of 3 images, 16 taps)
    costs ~190 FLOPs and ~100 bytes per pixel; a 5x5 median of u1 and u2
    ~2 x 2 x 100 min/max per pixel and 16 bytes. ``iterations``, if given, is either a
    `batch_tvl1` fn's ``last_stats`` or ``{"mean_per_warp": [per scale,
    finest first]}`` (mean inner iterations per warp); the "measured" entry
    then prices what the epsilon-stop actually ran (medians: one per 30
    inner iterations, rounded up). The worst case runs every iteration.
    """
    params = (params or TVL1Params()).validate()
    sizes = pyramid_sizes(height, width, params)
    flop_iter, byte_iter = 68.0, 60.0
    flop_warp, byte_warp = 190.0, 100.0
    flop_med, byte_med = 400.0, 16.0

    def total(iters_per_warp):
        flops = bytes_ = 0.0
        for (h, w), it in zip(sizes, iters_per_warp):
            px = h * w
            meds = math.ceil(it / params.inner_iterations) if params.median_filtering > 1 else 0
            flops += params.warps * px * (flop_warp + it * flop_iter + meds * flop_med)
            bytes_ += params.warps * px * (byte_warp + it * byte_iter + meds * byte_med)
        return {"flops": flops, "bytes": bytes_, "intensity": flops / bytes_}

    worst = [params.inner_iterations * params.outer_iterations] * len(sizes)
    out = {"height": height, "width": width, "levels": [list(s) for s in sizes],
           "worst_case": total(worst)}
    if iterations is not None:
        if "iterations" in iterations:  # a batch_tvl1 fn.last_stats: (B, scales, warps)
            per = np.asarray(iterations["iterations"], float).mean(axis=(0, 2)).tolist()
        else:
            per = list(iterations["mean_per_warp"])[:len(sizes)]
        out["measured"] = total(per)
        out["measured"]["mean_per_warp"] = per
    return out


def roofline_pairs_per_s(cost: dict, bandwidth_bytes_s: float = 3.35e12,
                         flops_s: float = 67e12) -> float:
    """Upper bound on pairs/s for a device, from a `cost_per_pair` entry."""
    return 1.0 / max(cost["bytes"] / bandwidth_bytes_s, cost["flops"] / flops_s)
