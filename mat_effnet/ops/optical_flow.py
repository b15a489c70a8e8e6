"""Dense optical flow between consecutive frames, and its 8-bit storage format.

`create_flow` returns a function computing the flow field (dx, dy in pixels)
from one grayscale frame to the next with TV-L1 (the two-stream standard,
Zach, Pock & Bischof 2007), DIS (much faster, somewhat less accurate) or
"none" (all zeros; for pipeline tests that do not care about motion).
`create_batch_flow` returns the same computation over a batch of pairs.
TV-L1 has two implementations of the same model: OpenCV's (one pair at a
time on one core) and `mat_effnet.ops.tvl1`, written in ``keras.ops`` and
compiled, which runs batches of pairs wherever the Keras backend runs (a
GPU when there is one). Flow components are stored as uint8
images like in the two-stream literature: `quantize` clips each component to
±bound and maps it linearly onto 0..255, `dequantize` inverts that.
"""

from __future__ import annotations

import threading
from typing import Callable

import cv2
import numpy as np


from mat_effnet.common.errors import MatEffNetError, bad_argument

ALGORITHMS = ("tvl1", "dis", "none")
# Implementations of an algorithm compute the same model; data made with
# either is the same kind of data. Only TV-L1 has a second one so far.
IMPLEMENTATIONS = ("opencv", "keras")
# Pairs per compiled call of the Keras TV-L1 unless told otherwise.
DEFAULT_BATCH = 8

FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
BatchFlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """Converts a uint8 RGB (H, W, 3) frame to uint8 grayscale (H, W).

    Uses OpenCV's ITU-R BT.601 luma weights (0.299 R + 0.587 G + 0.114 B).
    A frame that is already 2-D (or (H, W, 1)) is returned as 2-D unchanged.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        return rgb
    if rgb.ndim == 3 and rgb.shape[2] == 1:
        return rgb[:, :, 0]
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise MatEffNetError(f"rgb: expected an (H, W, 3) RGB frame, got shape {rgb.shape}")
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def _check_pair(prev_gray: np.ndarray, next_gray: np.ndarray, ndim: int = 2) -> None:
    what = "2-D" if ndim == 2 else "(B, H, W)"
    for name, img in (("prev_gray", prev_gray), ("next_gray", next_gray)):
        if img.ndim != ndim or img.dtype != np.uint8:
            raise MatEffNetError(f"{name}: must be a {what} uint8 array, got {img.dtype} {img.shape}")
    if prev_gray.shape != next_gray.shape:
        raise MatEffNetError(f"next_gray: shape {next_gray.shape} differs from prev_gray's "
                             f"{prev_gray.shape}")


def check_implementation(algorithm: str, implementation: str) -> None:
    """Raises MatEffNetError unless `implementation` of `algorithm` exists."""
    if algorithm not in ALGORITHMS:
        raise bad_argument("flow", algorithm, f"expected one of {', '.join(ALGORITHMS)}")
    if implementation not in IMPLEMENTATIONS:
        raise bad_argument("flow_implementation", implementation,
                           f"expected one of {', '.join(IMPLEMENTATIONS)}")
    if implementation == "keras" and algorithm != "tvl1":
        raise bad_argument("flow_implementation", implementation,
                           f"only flow=tvl1 has a keras implementation, not flow={algorithm}")


def _opencv_solver(algorithm: str):
    if algorithm == "tvl1":
        # OpenCV defaults: tau=0.25 (time step), lambda=0.15 (data-term
        # weight), theta=0.3 (coupling), nscales=5 pyramid levels with
        # scaleStep=0.8, warps=5 per level, epsilon=0.01 stopping threshold,
        # innerIterations=30, outerIterations=10, gamma=0 (no illumination
        # term), medianFiltering=5, useInitialFlow=false. These are the
        # settings most two-stream flow extractors use as-is.
        return cv2.optflow.DualTVL1OpticalFlow_create()
    if algorithm == "dis":
        return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return None


def create_flow(algorithm: str, implementation: str = "opencv") -> FlowFn:
    """Returns flow(prev_gray, next_gray) -> float32 (H, W, 2) (dx, dy) in pixels.

    prev_gray and next_gray are uint8 (H, W) images of equal size; the flow at
    a pixel of prev_gray points to where that content is in next_gray.
    ``implementation="keras"`` (TV-L1 only) is `mat_effnet.ops.tvl1`, the same
    model as OpenCV's, run as a batch of one. Each OpenCV function owns one
    OpenCV object (building it allocates buffers), so reuse the function
    across frame pairs, and do not share one function between threads:
    OpenCV's flow objects are not thread-safe.
    """
    check_implementation(algorithm, implementation)
    if implementation == "keras":
        batch = create_batch_flow(algorithm, implementation, batch_size=1)

        def flow(prev_gray: np.ndarray, next_gray: np.ndarray) -> np.ndarray:
            prev_gray, next_gray = np.asarray(prev_gray), np.asarray(next_gray)
            _check_pair(prev_gray, next_gray)
            return batch(prev_gray[None], next_gray[None])[0]
    else:
        solver = _opencv_solver(algorithm)

        def flow(prev_gray: np.ndarray, next_gray: np.ndarray) -> np.ndarray:
            prev_gray = np.asarray(prev_gray)
            next_gray = np.asarray(next_gray)
            _check_pair(prev_gray, next_gray)
            if solver is None:
                return np.zeros(prev_gray.shape + (2,), np.float32)
            out = solver.calc(np.ascontiguousarray(prev_gray), np.ascontiguousarray(next_gray),
                              None)
            return np.asarray(out, dtype=np.float32)

    flow.algorithm = algorithm  # type: ignore[attr-defined]  # for logs and metadata
    flow.implementation = implementation  # type: ignore[attr-defined]
    return flow


def _keras_tvl1():
    """The process's compiled Keras TV-L1, made once.

    Compiling is the expensive part (about a minute per batch shape on a
    2-core CPU), and `mat_effnet.ops.tvl1.batch_tvl1` caches its programs per
    function, so every caller in a process shares one function.
    """
    from mat_effnet.ops import tvl1

    with _KERAS_LOCK:
        fn = _KERAS_FNS.get(tvl1.batch_tvl1)  # keyed by the factory: tests replace it
        if fn is None:
            fn = _KERAS_FNS[tvl1.batch_tvl1] = tvl1.batch_tvl1()
    return fn


_KERAS_FNS: dict = {}
_KERAS_LOCK = threading.Lock()


def create_batch_flow(algorithm: str, implementation: str = "opencv",
                      batch_size: int | None = None) -> BatchFlowFn:
    """Returns fn(prev (B, H, W) uint8, next (B, H, W) uint8) -> (B, H, W, 2) float32.

    Pair b of the result is what `create_flow(algorithm, implementation)`
    returns for pair b, for every algorithm and implementation: OpenCV's are
    a loop over the pairs, the Keras TV-L1 runs them as compiled batches of
    exactly ``batch_size`` pairs (any B is accepted; a short last batch is
    filled by repeating a pair, so one program is compiled per frame size). ``fn.batch_size`` is the number of pairs a caller that
    streams frames should hand over per call: 1 for OpenCV (no buffering),
    ``batch_size`` (default `DEFAULT_BATCH`) for Keras.
    """
    check_implementation(algorithm, implementation)
    if batch_size is not None and batch_size < 1:
        raise bad_argument("flow_batch", batch_size, "must be >= 1")
    if implementation == "keras":
        compiled = _keras_tvl1()
        size = batch_size or DEFAULT_BATCH

        def fn(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
            prev, nxt = np.asarray(prev), np.asarray(nxt)
            _check_pair(prev, nxt, ndim=3)
            out = np.empty(prev.shape + (2,), np.float32)
            for start in range(0, len(prev), size):
                p, n = prev[start:start + size], nxt[start:start + size]
                count = len(p)
                if count < size:
                    # A short batch is filled up by repeating its last pair
                    # (never by padding frames): one compiled program per
                    # frame size, and each pair stops on its own, so the
                    # repeats do not change the others' flow.
                    fill = np.repeat(np.arange(count), [1] * (count - 1) + [size - count + 1])
                    p, n = p[fill], n[fill]
                out[start:start + count] = compiled(np.ascontiguousarray(p),
                                                    np.ascontiguousarray(n))[:count]
            return out
    else:
        pairwise = create_flow(algorithm, implementation)
        size = 1

        def fn(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
            prev, nxt = np.asarray(prev), np.asarray(nxt)
            _check_pair(prev, nxt, ndim=3)
            out = np.empty(prev.shape + (2,), np.float32)
            for b in range(len(prev)):
                out[b] = pairwise(prev[b], nxt[b])
            return out

    fn.algorithm = algorithm  # type: ignore[attr-defined]
    fn.implementation = implementation  # type: ignore[attr-defined]
    fn.batch_size = size  # type: ignore[attr-defined]
    return fn


def accelerators() -> int:
    """How many GPUs the Keras backend of this process sees (0 on CPU-only machines)."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return sum(d.platform == "gpu" for d in jax.devices())
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def default_implementation(algorithm: str) -> str:
    """The faster implementation of `algorithm`, which ``--flow_implementation=auto`` picks.

    TV-L1: the Keras one, with or without a GPU. Both compute the same model
    (0.003 px mean end-point error between them), so the choice is speed
    alone, and measured on a 2-core CPU the compiled, batched Keras TV-L1
    beat OpenCV's run in every ``--workers`` process: 3.2x the pairs/s at
    340x256, and 3.2x the videos/s of ``mat-effnet-prep --workers=2`` on the
    demo set (short side 64) with its compilation (11 s) counted, 3.8x
    without. With a GPU, the batched flow is what it was written for. Other
    algorithms have only OpenCV's.
    """
    return "keras" if algorithm == "tvl1" else "opencv"

