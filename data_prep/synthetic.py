"""Synthetic videos for the demo and the tests.

* `write_video` writes RGB frames to .avi (MJPG) or .mp4 (mp4v), atomically.
* `generate_ucf101_like` writes a small action data set in the exact UCF101
  layout (UCF-101/<Class>/v_<Class>_gXX_cXX.avi plus ucfTrainTestlist/ with
  classInd.txt, trainlist01.txt, testlist01.txt), split by group.

The sample classes are built so that each stream of a two-stream network has
something only it can see (see `CLASSES`): a spatial (RGB) model alone tops
out near 4/6 of the classes, a temporal (flow) model alone near 4/6 as well,
and only their fusion can separate all six. The objects carry a surface
texture that moves with them, as real objects do, so optical flow is found
inside them and not only at their edges (the aperture problem).
"""

from __future__ import annotations

import math
import os
from typing import Iterable

import cv2
import numpy as np

from mat_effnet.common import atomic

# ---------------------------------------------------------------------------
# Writing videos

_FOURCC = {".avi": "MJPG", ".mp4": "mp4v"}


def write_video(path: str, frames: Iterable[np.ndarray], fps: float = 25.0) -> int:
    """Writes uint8 RGB (H, W, 3) frames (or (H, W) gray) to `path`; returns the count.

    The codec follows the extension: .avi -> MJPG, .mp4 -> mp4v (case
    insensitive); anything else raises ValueError. All frames must share the
    first frame's size. The video is written with `mat_effnet.common.atomic` (a
    temporary file in the same folder that keeps the extension, which picks
    the container, then renamed), so `path` never holds a half-written video. Frames are consumed lazily, so a
    generator of any length needs memory for one frame only.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1]
    fourcc = _FOURCC.get(ext.lower())
    if fourcc is None:
        raise ValueError(f"unsupported video extension {ext!r} in {path!r}; use one of {sorted(_FOURCC)}")
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be positive, got {fps}")
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise ValueError("no frames to write")
    first = _check_frame(np.asarray(first), None)
    height, width = first.shape[:2]

    api = cv2.CAP_FFMPEG if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else cv2.CAP_ANY
    count = 0
    # The temporary file keeps the extension: OpenCV picks the container from it.
    with atomic.replacing(path, suffix=ext) as tmp:
        writer = cv2.VideoWriter(tmp, api, cv2.VideoWriter_fourcc(*fourcc), float(fps),
                                 (width, height))
        try:
            if not writer.isOpened():
                raise OSError(f"OpenCV cannot open a {fourcc} writer for {path!r}")
            frame = first
            while frame is not None:
                writer.write(_rgb_to_bgr(frame))
                count += 1
                nxt = next(it, None)
                frame = None if nxt is None else _check_frame(np.asarray(nxt), (height, width))
        finally:
            writer.release()
    return count


def _check_frame(frame: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if frame.dtype != np.uint8 or not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 3)):
        raise ValueError(f"frames must be uint8 (H, W, 3) RGB or (H, W) gray, got {frame.dtype} {frame.shape}")
    if size is not None and frame.shape[:2] != size:
        raise ValueError(f"frame size {frame.shape[:2]} differs from the first frame's {size}")
    return frame


def _rgb_to_bgr(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR)


# ---------------------------------------------------------------------------
# UCF101-like sample data set

# Alphabetical, like UCF101's classInd.txt. The three "...SquareRight" classes
# share shape and motion and differ only in colour, which optical flow (computed
# on grayscale, and the colours are chosen with about equal luma) cannot see;
# RedSquareRight/RedSquareDown and PurpleCrossGrow/PurpleCrossSpin share
# appearance and differ only in motion, which a single RGB frame cannot show.
# The motion pair is right vs down, not right vs left: training flips clips
# horizontally (TSN, paper Sect. 4.2), which turns "right" into "left" and
# would make a left/right pair indistinguishable by construction.
CLASSES = [
    "BlueSquareRight",
    "GreenSquareRight",
    "PurpleCrossGrow",
    "PurpleCrossSpin",
    "RedSquareDown",
    "RedSquareRight",
]

# Base colours (RGB), each with luma (0.299 R + 0.587 G + 0.114 B) near 100 so
# the flow stream gets the same contrast against the (brighter) background for
# every colour; per-video jitter is added on top.
_COLOURS = {
    "Red": (220, 50, 50),
    "Green": (40, 140, 40),
    "Blue": (80, 80, 255),
    "Purple": (170, 60, 200),
}

# class -> (shape, colour, motion)
_CLASS_SPEC = {
    "BlueSquareRight": ("square", "Blue", "right"),
    "GreenSquareRight": ("square", "Green", "right"),
    "PurpleCrossGrow": ("cross", "Purple", "grow"),
    "PurpleCrossSpin": ("cross", "Purple", "spin"),
    "RedSquareDown": ("square", "Red", "down"),
    "RedSquareRight": ("square", "Red", "right"),
}



def motion_pairs() -> list[tuple[str, str]]:
    """The pairs of `CLASSES` that share shape and colour: only motion tells them apart."""
    return [(a, b) for i, a in enumerate(CLASSES) for b in CLASSES[i + 1:]
            if _CLASS_SPEC[a][:2] == _CLASS_SPEC[b][:2]]


_CLIPS_PER_GROUP = 2
_TRAIN_FRACTION = 0.7
_SUBPIXEL_BITS = 4  # cv2 drawing with 1/16-pixel vertex precision: smooth motion


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A static, smooth random texture, brighter than the objects."""
    coarse = rng.uniform(-1.0, 1.0, size=(height // 8 + 2, width // 8 + 2)).astype(np.float32)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    fine = rng.uniform(-1.0, 1.0, size=(height, width)).astype(np.float32)
    fine = cv2.GaussianBlur(fine, (0, 0), 1.0)
    base = rng.uniform(155.0, 185.0)
    gray = base + 28.0 * smooth + 20.0 * fine
    tint = rng.uniform(-8.0, 8.0, size=3).astype(np.float32)  # not perfectly gray
    return gray[:, :, None] + tint[None, None, :]


def _colour(rng: np.random.Generator, name: str) -> tuple[int, int, int]:
    base = np.array(_COLOURS[name], np.float32)
    jittered = np.clip(base + rng.uniform(-15.0, 15.0, size=3), 0, 255)
    return tuple(int(v) for v in jittered)


# A pose places an object's unit shape in the frame: centre (x, y) in
# pixels, size in pixels (half side of a square, arm length of a cross) and
# rotation angle in radians.
_Pose = tuple[float, float, float, float]


def _square_outline() -> np.ndarray:
    return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)


def _cross_outline() -> np.ndarray:
    a = 0.32  # half the bar thickness, in arm lengths
    return np.array([
        [a, 1], [a, a], [1, a], [1, -a], [a, -a], [a, -1],
        [-a, -1], [-a, -a], [-1, -a], [-1, a], [-a, a], [-a, 1],
    ], np.float64)


_OUTLINES = {"square": _square_outline, "cross": _cross_outline}


def _rotation(angle: float) -> np.ndarray:
    """R such that a unit-shape point u lands at centre + size * R @ u."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _place(outline: np.ndarray, pose: _Pose) -> np.ndarray:
    x, y, size, angle = pose
    return size * outline @ _rotation(angle).T + np.array([x, y])


def _trajectory(rng: np.random.Generator, cls: str, num_frames: int, height: int, width: int):
    """Per-frame poses, the shape name and the colour of one video."""
    if cls not in _CLASS_SPEC:
        raise ValueError(f"unknown synthetic class {cls!r}; known: {', '.join(CLASSES)}")
    shape, colour_name, motion = _CLASS_SPEC[cls]
    colour = _colour(rng, colour_name)
    short = min(height, width)
    steps = max(num_frames - 1, 1)
    t = np.arange(num_frames, dtype=np.float64)
    if motion in ("right", "down"):
        # Translation along x ("right") or y ("down"): `along` is the moving
        # axis's length, `across` the other one's.
        along, across = (width, height) if motion == "right" else (height, width)
        half = rng.uniform(0.075, 0.115) * short
        margin = half * 1.5 + 2.0
        room = along - 2 * margin
        # A few pixels per frame at 160 px (scaled with the frame), so the
        # motion is still ~1-2 px per frame after downscaling to 64-96 px, but
        # never so fast that the square leaves the frame.
        speed = min(rng.uniform(0.0125, 0.022) * width, room / steps)
        travel = speed * steps
        start = margin + rng.uniform(0.0, max(room - travel, 0.0))  # rounding can go below 0
        main = start + speed * t
        c0 = rng.uniform(margin, across - margin)
        # Slight drift across the motion, limited so the square stays inside.
        lo = max(-0.3, (margin - c0) / steps)
        hi = min(0.3, (across - margin - c0) / steps)
        cross_axis = c0 + rng.uniform(lo, hi) * t
        xs, ys = (main, cross_axis) if motion == "right" else (cross_axis, main)
        angle = math.radians(rng.uniform(-15.0, 15.0))
        return [(x, y, half, angle) for x, y in zip(xs, ys)], shape, colour
    if motion == "grow":
        arm0 = rng.uniform(0.06, 0.09) * short
        arm1 = rng.uniform(0.22, 0.28) * short
        arms = arm0 + (arm1 - arm0) * t / steps
        margin = arm1 * 1.1 + 2.0
        cx, cy = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
        angle = rng.uniform(0.0, math.pi / 2)  # the cross has 90-degree symmetry
        return [(cx, cy, arm, angle) for arm in arms], shape, colour
    # motion == "spin". The size range overlaps the growing cross's, so a
    # single frame does not tell the two apart; arm tips move ~1-4 px per frame.
    arm = rng.uniform(0.10, 0.22) * short
    margin = arm * 1.1 + 2.0
    cx, cy = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
    omega = math.radians(rng.uniform(5.0, 9.0)) * rng.choice([-1.0, 1.0])
    angle0 = rng.uniform(0.0, math.pi / 2)
    return [(cx, cy, arm, angle0 + omega * k) for k in t], shape, colour


# The object's surface texture: smooth noise of this many grey levels (std),
# added equally to R, G and B so the hue (and the colour masks of the tests)
# stays the class's; its grain, in texture pixels, where one texture pixel is
# one frame pixel at the object's largest size.
_TEXTURE_LEVELS = 28.0
_TEXTURE_GRAIN = 1.2


def _surface(rng: np.random.Generator, poses: list[_Pose]) -> tuple[np.ndarray, float]:
    """A texture painted on the object, and its pixels per unit of the shape.

    The texture moves, turns and scales with the object (`_texture_at`), as
    the surface of a real object does: flat-coloured objects give optical
    flow only at their edges (the aperture problem), a textured one inside
    as well.
    """
    per_unit = max(pose[2] for pose in poses)
    side = int(math.ceil(2 * 1.5 * per_unit)) + 3  # covers the unit shape at any angle
    noise = cv2.GaussianBlur(rng.standard_normal((side, side)).astype(np.float32), (0, 0),
                             _TEXTURE_GRAIN)
    noise /= max(float(noise.std()), 1e-6)
    return _TEXTURE_LEVELS * noise, per_unit


def _texture_at(texture: np.ndarray, per_unit: float, pose: _Pose, height: int,
                width: int) -> np.ndarray:
    """The texture as it lies in the frame for `pose` ((height, width) float32)."""
    x, y, size, angle = pose
    centre = (texture.shape[0] - 1) / 2.0
    # Frame point p -> unit shape u = R^T (p - c) / size -> texture pixel
    # per_unit * u + centre: the inverse map warpAffine takes.
    inverse = (per_unit / size) * _rotation(angle).T
    offset = centre - inverse @ np.array([x, y])
    matrix = np.hstack([inverse, offset[:, None]]).astype(np.float64)
    return cv2.warpAffine(texture, matrix, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT)


def render_clip(cls: str, rng: np.random.Generator, num_frames: int = 32,
                height: int = 120, width: int = 160, texture: bool = True) -> list[np.ndarray]:
    """Renders one video of class `cls` as a list of uint8 RGB frames.

    `texture`: the object carries a moving surface texture (default), or is
    flat-coloured.
    """
    background = _background(rng, height, width)
    poses, shape, colour = _trajectory(rng, cls, num_frames, height, width)
    surface = _surface(rng, poses) if texture else None
    outline = _OUTLINES[shape]()
    scale = 1 << _SUBPIXEL_BITS
    paint = np.array(colour, np.float32)
    frames = []
    for pose in poses:
        # Fresh sensor noise every frame, as in a real camera.
        noisy = background + rng.normal(0.0, 2.5, size=background.shape).astype(np.float32)
        # Antialiased coverage of the object, 0..1 per pixel.
        cover = np.zeros((height, width), np.uint8)
        pts = np.round(_place(outline, pose) * scale).astype(np.int32)
        cv2.fillPoly(cover, [pts], 255, lineType=cv2.LINE_AA, shift=_SUBPIXEL_BITS)
        alpha = (cover.astype(np.float32) / 255.0)[:, :, None]
        if surface is None:
            obj = paint[None, None, :]
        else:
            obj = paint[None, None, :] + _texture_at(*surface, pose, height, width)[:, :, None]
        frame = noisy * (1.0 - alpha) + obj * alpha
        frames.append(np.clip(frame + 0.5, 0, 255).astype(np.uint8))
    return frames


def _video_name(cls: str, group: int, clip: int) -> str:
    return f"v_{cls}_g{group:02d}_c{clip:02d}.avi"


def generate_ucf101_like(root: str, videos_per_class: int = 10, num_frames: int = 32,
                         height: int = 120, width: int = 160, seed: int = 0,
                         texture: bool = True, train_fraction: float = _TRAIN_FRACTION) -> dict:
    """Writes a UCF101-layout sample data set of `CLASSES` under `root`.

    Layout: root/UCF-101/<Class>/v_<Class>_gXX_cXX.avi and
    root/ucfTrainTestlist/{classInd.txt, trainlist01.txt, testlist01.txt} in
    the official formats ("1 Class"; "Class/v_Class_g01_c01.avi 1" with the
    1-based label; "Class/v_Class_g01_c01.avi"). Videos of a class form groups
    of 2 clips (g01 c01, g01 c02, g02 c01, ...); as in UCF101 the split is by
    group, so clips of one group never straddle train and test: the first
    round(train_fraction * groups) groups are train (at least 1, and at least one group
    left for test when there are 2 or more groups). Every video is rendered
    from its own generator seeded with (seed, class, group, clip), so the
    output is identical for the same arguments. `texture`: see
    `render_clip`. Existing files are
    overwritten. Returns a summary dict.
    """
    if videos_per_class < 1 or num_frames < 2:
        raise ValueError("need videos_per_class >= 1 and num_frames >= 2")
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction={train_fraction}: must be in (0, 1)")
    video_root = os.path.join(root, "UCF-101")
    split_dir = os.path.join(root, "ucfTrainTestlist")
    os.makedirs(split_dir, exist_ok=True)

    groups = math.ceil(videos_per_class / _CLIPS_PER_GROUP)
    train_groups = int(math.floor(train_fraction * groups + 0.5))
    train_groups = max(1, min(train_groups, groups - 1)) if groups > 1 else 1

    train_lines, test_lines = [], []
    per_class = {}
    for label, cls in enumerate(CLASSES, start=1):
        os.makedirs(os.path.join(video_root, cls), exist_ok=True)
        counts = {"train": 0, "test": 0}
        for k in range(videos_per_class):
            group, clip = k // _CLIPS_PER_GROUP + 1, k % _CLIPS_PER_GROUP + 1
            name = _video_name(cls, group, clip)
            rng = np.random.default_rng([seed, label, group, clip])
            write_video(os.path.join(video_root, cls, name),
                        render_clip(cls, rng, num_frames, height, width, texture))
            rel = f"{cls}/{name}"
            if group <= train_groups:
                train_lines.append(f"{rel} {label}")
                counts["train"] += 1
            else:
                test_lines.append(rel)
                counts["test"] += 1
        per_class[cls] = counts

    # The official files use Windows line endings; plain "\n" is written here
    # and parsers are expected to accept both.
    _write_lines(os.path.join(split_dir, "classInd.txt"),
                 [f"{i} {c}" for i, c in enumerate(CLASSES, start=1)])
    _write_lines(os.path.join(split_dir, "trainlist01.txt"), train_lines)
    _write_lines(os.path.join(split_dir, "testlist01.txt"), test_lines)
    return {
        "root": root,
        "video_root": video_root,
        "split_dir": split_dir,
        "classes": list(CLASSES),
        "num_videos": len(CLASSES) * videos_per_class,
        "train": len(train_lines),
        "test": len(test_lines),
        "per_class": per_class,
        "num_frames": num_frames,
        "height": height,
        "width": width,
        "seed": seed,
    }


def _write_lines(path: str, lines: list[str]) -> None:
    atomic.write_text(path, "".join(line + "\n" for line in lines))
