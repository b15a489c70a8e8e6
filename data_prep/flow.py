"""Dense optical flow between consecutive frames, and its 8-bit storage format.

`create_flow` returns a function computing the flow field (dx, dy in pixels)
from one grayscale frame to the next with TV-L1 (the two-stream standard),
DIS (much faster, somewhat less accurate) or "none" (all zeros; for pipeline
tests that do not care about motion). Flow components are stored as uint8
images like in the two-stream literature: `quantize` clips each component to
±bound and maps it linearly onto 0..255, `dequantize` inverts that.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from mat_effnet import records

ALGORITHMS = ("tvl1", "dis", "none")

FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


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
        raise ValueError(f"expected an (H, W, 3) RGB frame, got shape {rgb.shape}")
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def _check_pair(prev_gray: np.ndarray, next_gray: np.ndarray) -> None:
    for name, img in (("prev_gray", prev_gray), ("next_gray", next_gray)):
        if img.ndim != 2 or img.dtype != np.uint8:
            raise ValueError(f"{name} must be a 2-D uint8 image, got {img.dtype} {img.shape}")
    if prev_gray.shape != next_gray.shape:
        raise ValueError(f"frame shapes differ: {prev_gray.shape} vs {next_gray.shape}")


def create_flow(algorithm: str) -> FlowFn:
    """Returns flow(prev_gray, next_gray) -> float32 (H, W, 2) (dx, dy) in pixels.

    prev_gray and next_gray are uint8 (H, W) images of equal size; the flow at
    a pixel of prev_gray points to where that content is in next_gray.
    Each returned function owns one OpenCV object (building it allocates
    buffers), so reuse the function across frame pairs, and do not share one
    function between threads: OpenCV's flow objects are not thread-safe.
    """
    if algorithm == "tvl1":
        # OpenCV defaults: tau=0.25 (time step), lambda=0.15 (data-term
        # weight), theta=0.3 (coupling), nscales=5 pyramid levels with
        # scaleStep=0.8, warps=5 per level, epsilon=0.01 stopping threshold,
        # innerIterations=30, outerIterations=10, gamma=0 (no illumination
        # term), medianFiltering=5, useInitialFlow=false. These are the
        # settings most two-stream flow extractors use as-is.
        solver = cv2.optflow.DualTVL1OpticalFlow_create()
    elif algorithm == "dis":
        solver = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    elif algorithm == "none":
        solver = None
    else:
        raise ValueError(f"unknown flow algorithm {algorithm!r}; accepted: {', '.join(ALGORITHMS)}")

    def flow(prev_gray: np.ndarray, next_gray: np.ndarray) -> np.ndarray:
        prev_gray = np.asarray(prev_gray)
        next_gray = np.asarray(next_gray)
        _check_pair(prev_gray, next_gray)
        if solver is None:
            return np.zeros(prev_gray.shape + (2,), np.float32)
        out = solver.calc(np.ascontiguousarray(prev_gray), np.ascontiguousarray(next_gray), None)
        return np.asarray(out, dtype=np.float32)

    flow.algorithm = algorithm  # type: ignore[attr-defined]  # for logs and metadata
    return flow


# Quantization is part of the record schema, so it lives with the schema.
quantize = records.quantize_flow
dequantize = records.dequantize_flow
