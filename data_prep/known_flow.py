"""Frame pairs whose optical flow is known exactly, for checking flow accuracy.

A pair is rendered from a procedural texture: a band-limited sum of plane
waves with a 1/f amplitude spectrum (the statistics of natural images), so
the texture has a value at every real coordinate and needs no interpolation.
``prev`` samples it on the pixel grid; ``next`` samples it at the grid mapped
back through the motion, so the flow of every visible pixel is exactly the
motion's displacement, with sub-pixel motion rendered as such (no resampling
of ``prev``). The highest frequency is kept below a third of a cycle per pixel
so neither frame aliases, even after a zoom.

Kinds (``magnitude`` is the largest displacement in the frame, in pixels):

* ``translation``: one shift (dx, dy) of the whole frame;
* ``rotation``: rotation about the frame centre; magnitude is reached at the
  corners;
* ``zoom``: scaling about the frame centre; magnitude is reached at the
  corners;
* ``two_objects``: a textured ellipse and a textured rectangle, each with its
  own texture and translation, over a textured background that itself pans
  slowly. Object edges are anti-aliased (a one-pixel alpha ramp).

Mask rule (``known_flow_pair(..., return_mask=True)``): a pixel of ``prev``
counts in the end-point error when its destination lies inside the frame
(0 <= x + dx <= W - 1, same for y), its surface is still the visible one
there in ``next`` (not occluded by an object), and it is at least 1.5 px
away from every object edge in both frames (where the anti-aliased edge
mixes two motions).
"""

from __future__ import annotations

import math

import numpy as np

KINDS = ("translation", "rotation", "zoom", "two_objects")

_MAX_FREQ = 0.3   # cycles per pixel: below Nyquist even after a 10 % zoom-in
_MIN_FREQ = 0.01


class _Texture:
    """A smooth random texture T(x, y) in 0..255, defined on the whole plane."""

    def __init__(self, rng: np.random.Generator, waves: int = 80, contrast: float = 60.0,
                 mean: float = 128.0):
        # Log-uniform frequencies with 1/f amplitudes: as much structure at
        # coarse scales (what the pyramid sees) as at fine ones.
        f = np.exp(rng.uniform(math.log(_MIN_FREQ), math.log(_MAX_FREQ), waves))
        angle = rng.uniform(0, 2 * math.pi, waves)
        self.kx = 2 * math.pi * f * np.cos(angle)
        self.ky = 2 * math.pi * f * np.sin(angle)
        self.phase = rng.uniform(0, 2 * math.pi, waves)
        amp = 1.0 / f
        self.amp = amp / math.sqrt(0.5 * float(np.sum(amp ** 2)))  # unit variance
        self.contrast = contrast
        self.mean = mean

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        acc = np.zeros(np.broadcast(x, y).shape, np.float64)
        for kx, ky, ph, a in zip(self.kx, self.ky, self.phase, self.amp):
            acc += a * np.sin(kx * x + ky * y + ph)
        # tanh keeps the range inside 0..255 without clipping kinks.
        return self.mean + self.contrast * np.tanh(acc / 1.5) * 1.5


def _grid(height: int, width: int):
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    return x, y


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _inside(x, y, height, width):
    return (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)


def _check(kind, height, width, magnitude):
    from mat_effnet.common.errors import bad_argument

    if kind not in KINDS:
        raise bad_argument("kind", kind, f"unknown; accepted: {', '.join(KINDS)}")
    if height < 16 or width < 16:
        raise bad_argument("height x width", f"{height}x{width}", "must be at least 16x16")
    if magnitude is not None and not (0 <= magnitude <= min(height, width) / 4):
        raise bad_argument("magnitude", magnitude, "must be in 0..min(height, width)/4 pixels")


def known_flow_pair(kind: str, height: int = 256, width: int = 340, seed: int = 0,
                    magnitude: float | None = None, return_mask: bool = False):
    """Renders one pair with exact flow.

    Returns ``(prev, next, flow)``: uint8 (H, W), uint8 (H, W), float32
    (H, W, 2) (dx, dy) from prev to next; with ``return_mask`` also the bool
    (H, W) mask of pixels the flow is checkable at (module docstring).
    ``magnitude`` (pixels, the largest displacement in the frame) defaults to
    a seed-drawn value in 0.3..15, so sub-pixel and large motions both occur.
    """
    _check(kind, height, width, magnitude)
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    if magnitude is None:
        magnitude = float(rng.uniform(0.3, 15.0))
    x, y = _grid(height, width)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    corner = math.hypot(cx, cy)
    bg = _Texture(rng)
    edge_band = np.zeros((height, width), bool)
    occluded = np.zeros((height, width), bool)

    if kind == "translation":
        a = rng.uniform(0, 2 * math.pi)
        dx, dy = magnitude * math.cos(a), magnitude * math.sin(a)
        fx, fy = np.full_like(x, dx), np.full_like(y, dy)
        prev_img, nxt = bg(x, y), bg(x - dx, y - dy)
    elif kind in ("rotation", "zoom"):
        if kind == "rotation":
            # Largest chord at the corner: 2 r sin(a / 2) = magnitude.
            a = 2 * math.asin(min(1.0, magnitude / (2 * corner))) * rng.choice([-1, 1])
            m = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        else:
            s = 1 + magnitude / corner * rng.choice([-1, 1])
            m = np.array([[s, 0.0], [0.0, s]])
        px, py = x - cx, y - cy
        fx = m[0, 0] * px + m[0, 1] * py + cx - x
        fy = m[1, 0] * px + m[1, 1] * py + cy - y
        inv = np.linalg.inv(m)
        prev_img = bg(x, y)
        nxt = bg(inv[0, 0] * px + inv[0, 1] * py + cx, inv[1, 0] * px + inv[1, 1] * py + cy)
    else:
        prev_img, nxt, fx, fy, edge_band, occluded = _two_objects(rng, bg, x, y, magnitude)

    flow = np.stack([fx, fy], -1).astype(np.float32)
    mask = _inside(x + fx, y + fy, height, width) & ~occluded & ~edge_band
    out = (_to_u8(prev_img), _to_u8(nxt), flow)
    return out + (mask,) if return_mask else out


def _sdf_ellipse(x, y, cx, cy, ax, ay):
    """Approximate signed distance (px) to an axis-aligned ellipse, < 0 inside."""
    r = np.hypot((x - cx) / ax, (y - cy) / ay)
    return (r - 1.0) * min(ax, ay)


def _sdf_rect(x, y, cx, cy, hx, hy):
    qx, qy = np.abs(x - cx) - hx, np.abs(y - cy) - hy
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _two_objects(rng, bg, x, y, magnitude):
    height, width = x.shape
    a0 = rng.uniform(0, 2 * math.pi)
    bg_d = 0.15 * magnitude * np.array([math.cos(a0), math.sin(a0)])
    a1 = rng.uniform(0, 2 * math.pi)
    a2 = a1 + rng.uniform(0.6, 1.4) * math.pi  # clearly different directions
    d1 = magnitude * np.array([math.cos(a1), math.sin(a1)])
    d2 = 0.6 * magnitude * np.array([math.cos(a2), math.sin(a2)])
    tex1 = _Texture(rng, mean=110.0, contrast=70.0)
    tex2 = _Texture(rng, mean=150.0, contrast=70.0)
    # Objects sit in the middle so their motion stays in frame.
    e = (width * rng.uniform(0.3, 0.45), height * rng.uniform(0.35, 0.65),
         width * 0.16, height * 0.2)
    r = (width * rng.uniform(0.55, 0.7), height * rng.uniform(0.35, 0.65),
         width * 0.12, height * 0.16)

    def sdfs(shift1, shift2):
        s1 = _sdf_ellipse(x - shift1[0], y - shift1[1], *e)
        s2 = _sdf_rect(x - shift2[0], y - shift2[1], *r)
        return s1, s2

    def compose(s1, s2, sh0, sh1, sh2):
        # Back to front: background, ellipse, rectangle (on top).
        al1 = np.clip(0.5 - s1, 0, 1)
        al2 = np.clip(0.5 - s2, 0, 1)
        img = bg(x - sh0[0], y - sh0[1])
        img = img * (1 - al1) + tex1(x - sh1[0], y - sh1[1]) * al1
        return img * (1 - al2) + tex2(x - sh2[0], y - sh2[1]) * al2

    zero = np.zeros(2)
    p1, p2 = sdfs(zero, zero)
    n1, n2 = sdfs(d1, d2)
    prev = compose(p1, p2, zero, zero, zero)
    nxt = compose(n1, n2, bg_d, d1, d2)

    # Which surface each prev pixel shows (2 on top), and its motion.
    layer = np.where(p2 < 0, 2, np.where(p1 < 0, 1, 0))
    disp = np.stack([bg_d, d1, d2])[layer]
    fx, fy = disp[..., 0], disp[..., 1]
    # At the destination, which surface is visible in next?
    tx, ty = x + fx, y + fy
    t1 = _sdf_ellipse(tx - d1[0], ty - d1[1], *e)
    t2 = _sdf_rect(tx - d2[0], ty - d2[1], *r)
    layer_next = np.where(t2 < 0, 2, np.where(t1 < 0, 1, 0))
    occluded = layer_next != layer
    edge_band = (np.abs(p1) < 1.5) | (np.abs(p2) < 1.5) | (np.abs(t1) < 1.5) | (np.abs(t2) < 1.5)
    return prev, nxt, fx, fy, edge_band, occluded


# The fixed accuracy mix: sub-pixel to the ±15 px extreme, each kind.
_ACCURACY_MIX = (("translation", 0.4), ("translation", 3.3), ("translation", 14.5),
                 ("rotation", 4.0), ("rotation", 10.0), ("zoom", 4.0), ("zoom", 10.0),
                 ("two_objects", 6.0), ("two_objects", 12.0))


def accuracy_set(height: int = 256, width: int = 340, seed: int = 0, with_masks: bool = False):
    """The fixed mix of known-flow pairs used to compare flow implementations.

    Returns a list of ``(name, prev, next, flow)`` (``name`` like
    "translation@3.3px"); with ``with_masks`` each tuple also carries its
    `known_flow_pair` mask.
    """
    out = []
    for i, (kind, mag) in enumerate(_ACCURACY_MIX):
        mag = min(mag, min(height, width) / 4)
        prev, nxt, flow, mask = known_flow_pair(kind, height, width, seed=seed * 1000 + i,
                                                magnitude=mag, return_mask=True)
        item = (f"{kind}@{mag:g}px", prev, nxt, flow)
        out.append(item + (mask,) if with_masks else item)
    return out


def endpoint_error(flow_a, flow_b, mask=None) -> float:
    """Mean end-point error: the mean over pixels of ||flow_a - flow_b||_2 (px).

    Both are (..., H, W, 2) arrays of equal shape; ``mask`` (bool, the shape
    without the last axis) restricts the mean to its True pixels (an empty
    mask gives NaN).
    """
    from mat_effnet.common.errors import bad_argument

    a = np.asarray(flow_a, np.float64)
    b = np.asarray(flow_b, np.float64)
    if a.ndim < 3 or a.shape[-1] != 2:
        raise bad_argument("flow_a", f"<array {a.shape}>", "need an (..., H, W, 2) flow")
    if a.shape != b.shape:
        raise bad_argument("flow_b", f"<array {b.shape}>", f"shape differs from flow_a's {a.shape}")
    err = np.sqrt(np.sum((a - b) ** 2, axis=-1))
    if mask is None:
        return float(err.mean())
    mask = np.asarray(mask, bool)
    if mask.shape != err.shape:
        raise bad_argument("mask", f"<array {mask.shape}>", f"need the flow's shape {err.shape}")
    return float(err[mask].mean()) if mask.any() else float("nan")
