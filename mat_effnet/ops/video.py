"""Streaming video decoding with OpenCV.

`probe` reads a video's container metadata, `iter_frames` decodes it one
frame at a time (so memory stays bounded whatever the video length) and
resizes each frame so that its short side has a given length
(`resize_frame`, with `resized_size` the size arithmetic), and
`iter_timed_frames` adds each frame's decoder timestamp, and
`iter_frame_runs` decodes past damaged regions, numbering the runs of
consecutive frames between them. Every failure that is the
video's fault (missing, empty, not a video, nothing decodable) surfaces as
`VideoError` with a short machine-readable `reason`, so that a dataset build
can log and skip the video instead of crashing.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Iterator

import cv2
import numpy as np

from mat_effnet.common.errors import MatEffNetError

# Standard `VideoError.reason` strings. Callers (e.g. the dataset builder)
# group failures by reason, so they are kept short and stable.
REASON_MISSING = "missing file"
REASON_ZERO_BYTE = "zero-byte file"
REASON_CANNOT_OPEN = "cannot open (not a video or unsupported codec)"
REASON_ZERO_SIZE = "zero frame size"
REASON_NO_FRAMES = "no decodable frames"
# Not raised here: a single decoded frame is a valid video for the RGB stream;
# code that needs frame pairs (optical flow) raises it.
REASON_ONE_FRAME = "only 1 frame"

# Used when the container does not report a usable frame rate.
DEFAULT_FPS = 25.0


class VideoError(MatEffNetError):
    """A video that cannot be used; `reason` says why in a few words."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """Container metadata of a video.

    `frame_count` is what the container reports; it can be wrong (too high for
    truncated files) or 0 when unknown, so only decoding gives the true count.
    """

    fps: float
    width: int
    height: int
    frame_count: int
    # The container's rotation (degrees, CAP_PROP_ORIENTATION_META: a phone
    # video's display matrix); frames are decoded upright (see `_open`).
    rotation: int = 0


def _open(path: str) -> cv2.VideoCapture:
    # Prefer FFmpeg explicitly: with CAP_ANY, OpenCV may hand a path that
    # contains '%' to its image-sequence backend, which would treat it as a
    # file-name pattern rather than a video.
    api = cv2.CAP_FFMPEG if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else cv2.CAP_ANY
    cap = cv2.VideoCapture(path, api)
    # Upright frames whatever OpenCV's default (it changed between releases,
    # opencv #22088, #26795): apply the container's rotation when decoding.
    cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
    return cap


def _check_file(path: str) -> None:
    if not os.path.isfile(path):
        raise VideoError(path, REASON_MISSING)
    if os.path.getsize(path) == 0:
        raise VideoError(path, REASON_ZERO_BYTE)


def probe(path: str) -> VideoInfo:
    """Returns the container metadata of `path`; raises `VideoError` if unusable."""
    path = os.fspath(path)
    _check_file(path)
    cap = _open(path)
    try:
        if not cap.isOpened():
            raise VideoError(path, REASON_CANNOT_OPEN)
        fps = cap.get(cv2.CAP_PROP_FPS)
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        rotation = cap.get(cv2.CAP_PROP_ORIENTATION_META)
    finally:
        cap.release()
    if width <= 0 or height <= 0:
        raise VideoError(path, REASON_ZERO_SIZE)
    if not math.isfinite(fps) or fps <= 0:
        fps = DEFAULT_FPS
    # OpenCV reports -1 (or NaN) when the container has no frame count.
    frame_count = int(count) if math.isfinite(count) and count > 0 else 0
    rotation = int(rotation) % 360 if math.isfinite(rotation) else 0
    return VideoInfo(fps=float(fps), width=width, height=height, frame_count=frame_count,
                     rotation=rotation)


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Returns (width, height) scaled so that the short side equals `short_side`.

    The aspect ratio is kept by rounding the long side to the nearest integer
    (at least 1). Sides are NOT forced to be even: frames are stored as
    images, not re-encoded as video, so no codec constraint applies, and
    forcing evenness would break `short side == short_side` for odd values.
    `short_side <= 0` returns the original size. A square frame scales both
    sides to `short_side`.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    if short_side <= 0:
        return width, height
    if width <= height:
        long_side = max(1, int(math.floor(height * short_side / width + 0.5)))
        return short_side, long_side
    long_side = max(1, int(math.floor(width * short_side / height + 0.5)))
    return long_side, short_side


def _to_rgb(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def resize_frame(frame: np.ndarray, short_side: int) -> np.ndarray:
    """One decoded frame resized as `iter_frames` resizes it (short side ``short_side``).

    cv2.INTER_AREA when shrinking, cv2.INTER_LINEAR when enlarging; the same
    array back when the size is already right (or ``short_side <= 0``).
    Channel order does not matter (each channel is resized alone), so
    `mat_effnet.serving.streaming` resizes a caller's RGB frames with it.
    """
    h, w = frame.shape[:2]
    out_w, out_h = resized_size(w, h, short_side)
    if (out_w, out_h) == (w, h):
        return frame
    # INTER_AREA averages source pixels when shrinking (no aliasing);
    # it degenerates to nearest-like output when enlarging, where
    # bilinear is the better choice.
    interp = cv2.INTER_AREA if out_w * out_h < w * h else cv2.INTER_LINEAR
    return cv2.resize(frame, (out_w, out_h), interpolation=interp)


# After a failed read, how many more reads `iter_frame_runs` tries when the
# container announces no frame count (with one: up to what it announces).
MAX_READS_PAST_DAMAGE = 64


def _generate(path: str, short_side: int, timed: bool = False,
              past_damage: bool = False) -> Iterator:
    cap = _open(path)
    try:
        if not cap.isOpened():
            raise VideoError(path, REASON_CANNOT_OPEN)
        announced = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        announced = int(announced) if math.isfinite(announced) and announced > 0 else 0
        produced = failed = run = 0
        while True:
            ok, frame = cap.read()
            if not ok or frame is None or frame.size == 0:
                # Without past_damage a read failure ends the usable stream. With
                # it, reading goes on (FFmpeg resyncs at the next good packet,
                # e.g. the next intact MJPEG frame) while frames may remain; the
                # frames after the damage start a new run.
                failed += 1
                limit = (announced - produced) if announced else MAX_READS_PAST_DAMAGE
                if not past_damage or failed > limit:
                    break
                continue
            if failed and produced:
                run += 1
            failed = 0
            if frame.dtype != np.uint8:
                # Some backends return 16-bit frames for high-bit-depth video.
                frame = (frame >> 8).astype(np.uint8) if frame.dtype == np.uint16 else frame.astype(np.uint8)
            produced += 1
            rgb = _to_rgb(resize_frame(frame, short_side))
            # After a read, POS_MSEC is the presentation time of the frame just
            # read (checked on variable-frame-rate files: each frame's own pts).
            if past_damage:
                yield run, rgb
            else:
                yield (cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0, rgb) if timed else rgb
        if produced == 0:
            raise VideoError(path, REASON_NO_FRAMES)
    finally:
        cap.release()


def iter_frames(path: str, short_side: int = 256) -> Iterator[np.ndarray]:
    """Yields the frames of `path` one at a time as uint8 RGB (H, W, 3) arrays.

    Each frame is resized so that its short side is `short_side` (see
    `resized_size`; `short_side <= 0` keeps the decoded size), with
    cv2.INTER_AREA when shrinking and cv2.INTER_LINEAR when enlarging.
    Decoding stops at the first read failure, so a truncated file yields the
    frames before the damage. The file is checked when this is called
    (missing, zero-byte, cannot open: `VideoError` at once); decoding is lazy
    and a video with no decodable frame raises `VideoError` during iteration.
    """
    path = os.fspath(path)
    # Eager checks, so a bad path fails at the call site rather than at the
    # first next(); the decoding itself is the lazy generator below.
    probe(path)
    return _generate(path, short_side)


def iter_frame_runs(path: str, short_side: int = 256) -> Iterator[tuple[int, np.ndarray]]:
    """`iter_frames`, decoding past damaged regions: yields (run, RGB frame).

    Where a read fails before the container's announced frame count, reading
    goes on, and the frames after the damage belong to the next run (0, 1,
    ...): frames of two runs are not consecutive, so no flow may join them.
    For data preparation (`mat_effnet.encoding.encode`), which starts a new chunk at
    each run.
    """
    path = os.fspath(path)
    probe(path)
    return _generate(path, short_side, past_damage=True)


def iter_timed_frames(path: str, short_side: int = 256) -> Iterator[tuple[float, np.ndarray]]:
    """`iter_frames` with each frame's decoder timestamp: yields (seconds, RGB frame).

    The timestamp is the container's presentation time of the frame
    (OpenCV's CAP_PROP_POS_MSEC after the read), so a variable-frame-rate
    video gets its real times, not ``index / fps``.
    """
    path = os.fspath(path)
    probe(path)
    return _generate(path, short_side, timed=True)
