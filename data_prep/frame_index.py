"""Frames that carry their own index, for tests of frame order, gaps and resizing.

Frame i shows i in binary as a 3 x 4 grid of black and white cells, which
survives MJPG and mp4v coding and resizing; `decode_index` reads it back
from a frame of any size. Written as video with `data_prep.synthetic.write_video`.
"""

from __future__ import annotations

import numpy as np


# The frame is divided into a 3 x 4 grid of cells; each cell is one bit of the
# index (most significant bit top-left, row-major), black for 0 and white for
# 1. A flat gray level per index would allow only ~36 frames with a safe step,
# and mp4v's inter-frame coding shifts flat levels by several units; full
# black/white cells leave a margin of ~127 levels, and decoding samples only
# the middle of each cell so JPEG ringing and resize blur at the cell edges do
# not matter.
_INDEX_ROWS, _INDEX_COLS = 3, 4
_INDEX_BITS = _INDEX_ROWS * _INDEX_COLS
MAX_INDEX_FRAMES = 2 ** _INDEX_BITS  # 4096: indices 0..4095
_BIT_LEVEL = (16, 240)


def _cell_edges(n: int, cells: int) -> np.ndarray:
    return np.floor(np.linspace(0, n, cells + 1) + 0.5).astype(int)


def index_frames(num_frames: int, height: int = 64, width: int = 80) -> list[np.ndarray]:
    """Returns `num_frames` uint8 RGB frames; frame i encodes i (see `decode_index`).

    Supports up to MAX_INDEX_FRAMES (4096) frames. The code survives MJPG and
    mp4v coding and resizing as long as each of the 3 x 4 cells stays at least
    about 4 pixels on a side (so frames down to ~12 x 16 pixels).
    """
    if not 0 <= num_frames <= MAX_INDEX_FRAMES:
        raise ValueError(f"num_frames must be in 0..{MAX_INDEX_FRAMES}, got {num_frames}")
    if height < 2 * _INDEX_ROWS or width < 2 * _INDEX_COLS:
        raise ValueError(f"frames of {height}x{width} are too small to hold the index grid")
    rows, cols = _cell_edges(height, _INDEX_ROWS), _cell_edges(width, _INDEX_COLS)
    frames = []
    for i in range(num_frames):
        frame = np.empty((height, width, 3), np.uint8)
        for bit in range(_INDEX_BITS):
            r, c = divmod(bit, _INDEX_COLS)
            on = (i >> (_INDEX_BITS - 1 - bit)) & 1
            frame[rows[r]:rows[r + 1], cols[c]:cols[c + 1]] = _BIT_LEVEL[on]
        frames.append(frame)
    return frames


def decode_index(frame: np.ndarray) -> int:
    """Recovers the index written by `index_frames`, at any frame size."""
    frame = np.asarray(frame, dtype=np.float32)
    if frame.ndim == 3:
        frame = frame.mean(axis=2)
    height, width = frame.shape
    rows, cols = _cell_edges(height, _INDEX_ROWS), _cell_edges(width, _INDEX_COLS)
    threshold = (_BIT_LEVEL[0] + _BIT_LEVEL[1]) / 2
    value = 0
    for bit in range(_INDEX_BITS):
        r, c = divmod(bit, _INDEX_COLS)
        y0, y1, x0, x1 = rows[r], rows[r + 1], cols[c], cols[c + 1]
        # Middle half of the cell, at least one pixel.
        cy0, cy1 = y0 + (y1 - y0) // 4, max(y0 + (y1 - y0) // 4 + 1, y1 - (y1 - y0) // 4)
        cx0, cx1 = x0 + (x1 - x0) // 4, max(x0 + (x1 - x0) // 4 + 1, x1 - (x1 - x0) // 4)
        on = frame[cy0:cy1, cx0:cx1].mean() > threshold
        value = (value << 1) | int(on)
    return value
