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
import threading
from typing import Callable

import numpy as np

from mat_effnet.ops import image_ops

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
        from mat_effnet.common.errors import bad_argument

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


# ---------------------------------------------------------------------------
# The solver

def _solve_scale(i0, i1, u1, u2, params: TVL1Params):
    """All warps at one scale. Returns (u1, u2, iterations (B, warps) int32)."""
    ops = image_ops.keras_ops()
    b, h, w = i0.shape
    l_t = float(np.float32(params.lambda_ * params.theta))
    taut = float(np.float32(params.tau / params.theta))
    theta = float(np.float32(params.theta))
    scaled_eps = float(np.float32(params.epsilon * params.epsilon * h * w))
    inner_max, outer_max = int(params.inner_iterations), int(params.outer_iterations)
    median = params.median_filtering > 1

    i1x, i1y = image_ops.centered_gradient(i1)
    i1_stack = ops.stack([i1, i1x, i1y], axis=-1)
    unfolded = image_ops.unfold_for_cubic(i1_stack)
    zeros = ops.zeros_like(i0)

    def warp_body(k, state):
        u1, u2, p11, p12, p21, p22, counts = state
        warped = image_ops.remap_cubic(i1_stack, u1, u2, unfolded)
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
            n1 = v1 + theta * image_ops.divergence(p11, p12)
            n2 = v2 + theta * image_ops.divergence(p21, p22)
            d1, d2 = n1 - u1, n2 - u2
            err = ops.sum(d1 * d1 + d2 * d2, axis=(1, 2))
            u1x, u1y = image_ops.forward_gradient(n1)
            u2x, u2y = image_ops.forward_gradient(n2)
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
                med = image_ops.median5x5(ops.concatenate([u1, u2], axis=0))
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
    ops = image_ops.keras_ops()
    b, h, w = prev.shape
    sizes = pyramid_sizes(h, w, params)
    i0s = [ops.cast(prev, "float32")]
    i1s = [ops.cast(nxt, "float32")]
    step = 1.0 / params.scale_step
    for size in sizes[1:]:
        i0s.append(image_ops.resize_linear(i0s[-1], size, (step, step)))
        i1s.append(image_ops.resize_linear(i1s[-1], size, (step, step)))
    u1 = ops.zeros((b,) + sizes[-1], dtype="float32")
    u2 = ops.zeros((b,) + sizes[-1], dtype="float32")
    counts = [None] * len(sizes)
    for s in range(len(sizes) - 1, -1, -1):
        u1, u2, counts[s] = _solve_scale(i0s[s], i1s[s], u1, u2, params)
        if s:
            u1 = image_ops.resize_linear(u1, sizes[s - 1]) * float(np.float32(step))
            u2 = image_ops.resize_linear(u2, sizes[s - 1]) * float(np.float32(step))
    return ops.stack([u1, u2], axis=-1), ops.stack(counts, axis=1)


def flow_graph(prev, nxt, params: TVL1Params):
    """(B, H, W) uint8 pair batch -> (B, H, W, 2) float32 flow, as a traceable graph.

    For graphs that embed TV-L1 (`mat_effnet.serving.saved_model_export`): the same computation
    as `batch_tvl1`, uncompiled, for the caller to trace at a static size.
    """
    return _tvl1_graph(prev, nxt, params)[0]


def _check_batch(prev, nxt) -> tuple[np.ndarray, np.ndarray]:
    from mat_effnet.common.errors import bad_argument

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
    from mat_effnet.common.errors import bad_argument

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
