"""Test-time clips in ``keras.ops``: TSN's test positions, the frames they read, the views.

The test protocol of the temporal segment network (TSN, Wang et al., ECCV
2016, ref. [13] of the paper; MAT-EffNet Sect. 4): N positions at the centres
of N equal segments of a video's valid range, and at each of them 1 centre
crop, 3 crops along the long side, or TSN's 10 crops (4 corners + centre and
their mirror images). The rules (`mat_effnet.data.sampling`'s docstring) are
written here once, with the crop, resize and flip helpers that training clips
use as well (`mat_effnet.data.clips`).

Written in ``keras.ops`` and importing no TensorFlow, so that one code path
serves every backend and caller: the tf.data pipeline (graph tensors whose
sizes are known only at run time: a size that is a tensor goes through
``ops.cond`` / ``ops.where``), eager prediction on numpy frames, the exported
TensorFlow graph, and the GPU check under JAX (where every size is a Python
int and the branches are plain ``if``).
"""

from __future__ import annotations

import numpy as np


def _ops():
    from keras import ops

    return ops


def _static(*values) -> bool:
    """All of ``values`` are known now (Python or numpy ints/bools, numpy arrays)."""
    return all(isinstance(v, (int, bool, np.integer, np.bool_, np.ndarray)) for v in values)


def _xp(*values):
    """numpy for known values, keras.ops for tensors: both spell these functions alike."""
    return np if _static(*values) else _ops()


def _if(pred, then, otherwise):
    """``then()`` if ``pred`` else ``otherwise()``: a Python branch when ``pred`` is known."""
    if _static(pred):
        return then() if pred else otherwise()
    return _ops().cond(pred, then, otherwise)


def _select(pred, a, b):
    return (a if pred else b) if _static(pred) else _ops().where(pred, a, b)


def _shape(x) -> tuple:
    """The dimensions of ``x``: ints where known, scalar tensors where not."""
    return tuple(x.shape) if isinstance(x, np.ndarray) else tuple(_ops().shape(x))


# ---------------------------------------------------------------------------
# Which frames (index arithmetic)
# ---------------------------------------------------------------------------

def valid_positions(num_frames, cfg):
    """V, the number of valid positions (spatial: T; temporal: max(T - L, 1)).

    Starts 0..(T-1)-L keep flow p..p+L-1 inside the T-1 flow fields; shorter
    videos keep start 0 and repeat their last flow field.
    """
    xp = _xp(num_frames)
    if cfg.stream == "temporal" or cfg.align_to_flow:
        return xp.maximum(num_frames - cfg.flow_length, 1)
    return xp.maximum(num_frames, 1)


def test_positions(num_frames, cfg):
    """The N test positions of a video of ``num_frames`` RGB frames: floor(V (k + 0.5) / N).

    int32, in exact integer arithmetic; numpy for a known count, a backend
    tensor for a tensor count.
    """
    v = valid_positions(num_frames, cfg)
    xp = _xp(v)
    n = cfg.test_segments
    k = xp.arange(n, dtype="int32")
    return (xp.asarray(v, "int32") if xp is np else _ops().cast(v, "int32")) * (2 * k + 1) \
        // (2 * n)


def frame_indices(count, positions, cfg):
    """The frames a clip reads: RGB (P,) or flow (P, L) indices, clamped to ``count`` - 1.

    ``count``: the video's RGB frames (spatial) or flow fields (temporal). A
    video with fewer than L flow fields repeats its last one.
    """
    xp = _xp(count, positions)
    if cfg.stream == "spatial":
        return xp.minimum(positions, count - 1)
    idx = positions[:, None] + xp.arange(cfg.flow_length, dtype="int32")[None, :]
    return xp.minimum(idx, count - 1)


def fields_needed(num_frames: int, cfg) -> np.ndarray:
    """The flow fields (i: frame i -> i + 1) a temporal test clip reads, sorted, each once.

    A field depends on its two frames alone, so a caller that computes flow
    (the export graph, the GPU check) computes these and no others.
    """
    positions = test_positions(num_frames, cfg)
    idx = frame_indices(num_frames - 1, positions, cfg)
    if _static(idx):
        return np.unique(idx)
    # Sizes unknown until run time: only a TensorFlow graph has those.
    import tensorflow as tf

    return tf.sort(tf.unique(tf.reshape(idx, [-1]))[0])


# ---------------------------------------------------------------------------
# Pixels: crops, resizes, flips of a whole clip (P, H, W, C)
# ---------------------------------------------------------------------------

def crop(frames, oy, ox, ch, cw):
    return frames[:, oy:oy + ch, ox:ox + cw, :]


def resize(frames, height, width):
    """Bilinear, half-pixel centres, no antialiasing; float32 out."""
    ops = _ops()
    frames = ops.cast(frames, "float32")
    if _static(height, width):
        return ops.image.resize(frames, (int(height), int(width)), interpolation="bilinear",
                                antialias=False)
    # A size known only at run time (a TensorFlow graph): keras.ops.image.resize
    # takes ints, and its TensorFlow backend calls this same op.
    import tensorflow as tf

    return tf.image.resize(frames, tf.stack([height, width]), method="bilinear")


def to_uint8(frames):
    """Rounds resized 0..255 floats back to uint8 (the one allowed rounding)."""
    ops = _ops()
    return ops.cast(ops.clip(ops.round(frames), 0.0, 255.0), "uint8")


def upscaled_size(h, w, size: int):
    """(h, w) scaled so that the short side is ``size``; ceil, so both sides end >= size."""
    short = min(h, w) if _static(h, w) else _ops().minimum(h, w)
    return (h * size + short - 1) // short, (w * size + short - 1) // short


def ensure_min_short_side(frames, size: int, rounded: bool = True):
    """Frames upscaled (aspect kept) when the short side is below ``size``.

    ``rounded``: uint8 out; else float32 out, for a caller that resizes again
    and rounds once at the end.
    """
    ops = _ops()
    _, h, w, _ = _shape(frames)

    def upscale():
        nh, nw = upscaled_size(h, w, size)
        resized = resize(frames, nh, nw)
        return to_uint8(resized) if rounded else resized

    def keep():
        return ops.convert_to_tensor(frames) if rounded else ops.cast(frames, "float32")

    short = min(h, w) if _static(h, w) else ops.minimum(h, w)
    return _if(short < size, upscale, keep)


def flip(frames, stream: str):
    """Mirrors uint8 frames left/right; x-flow changes sign, i.e. q -> 255 - q (TSN).

    Measured per clip (3 x 224 x 224) under TensorFlow: for 3-byte RGB pixels
    a reverse costs 0.31 ms and a gather of reversed columns 0.54; for 20-byte
    flow stacks the gather wins (0.67 ms against 1.20), and an XOR
    (255 ^ q == 255 - q for uint8) inverts x-flow for a third of a select's cost.
    """
    ops = _ops()
    if stream == "spatial":
        return ops.flip(frames, axis=2)
    _, _, w, c = _shape(frames)
    columns = np.arange(w)[::-1] if _static(w) else w - 1 - ops.arange(w)
    frames = ops.take(frames, columns, axis=2)
    if stream == "temporal":
        # 255 on even channels (flow_x), 0 on odd ones (flow_y).
        mask = ops.convert_to_tensor((255 * (1 - np.arange(c) % 2)).astype(np.uint8))
        frames = ops.bitwise_xor(frames, mask)
    return frames


# ---------------------------------------------------------------------------
# The test views
# ---------------------------------------------------------------------------

def test_views(load, frame_size, cfg):
    """The test-time clip (crops, P, S, S, C) in ``cfg.clip_dtype``: centre; 3 along
    the long side; or TSN's 10 crops.

    The one implementation of test views, for records and decoded frames
    alike. ``load(window=None)``: the clip's (P, h, w, C) uint8 frames, whole
    or only inside ``window`` (oy, ox, h, w) (a record decodes only that
    window; decoded frames are sliced); ``frame_size()``: (h, w) of a whole
    frame, asked only where the window is chosen before loading.
    """
    ops = _ops()
    size = cfg.image_size
    if cfg.crops == 3:
        # Short side resized to S, then 3 squares at the start, centre and end
        # of the long side: each sees the whole short side, as mmaction2's
        # ThreeCrop (crop = short side), at the model's input size.
        frames = load()
        _, h, w, _ = _shape(frames)
        short = min(h, w) if _static(h, w) else ops.minimum(h, w)
        nh = _select(h == short, size, (2 * h * size + short) // (2 * short))
        nw = _select(h == short, (2 * w * size + short) // (2 * short), size)
        frames = to_uint8(resize(frames, nh, nw))
        ly, lx = nh - size, nw - size  # one of them is 0
        boxes = [(0, 0), (ly // 2, lx // 2), (ly, lx)]
        views = ops.stack([crop(frames, oy, ox, size, size) for oy, ox in boxes])
    elif cfg.crops == 1:
        h, w = frame_size()

        def centre_window():
            return ops.convert_to_tensor(load(((h - size) // 2, (w - size) // 2, size, size)))

        def centre_of_upscaled():
            frames = ensure_min_short_side(load(), size)
            _, fh, fw, _ = _shape(frames)
            return crop(frames, (fh - size) // 2, (fw - size) // 2, size, size)

        short = min(h, w) if _static(h, w) else ops.minimum(h, w)
        views = ops.expand_dims(_if(short >= size, centre_window, centre_of_upscaled), 0)
    else:
        # TSN's oversampling: 4 corners + centre, then the same 5 mirrored; the
        # corners cover (nearly) the whole frame, so it is decoded whole.  The
        # frame is mirrored once: the mirror of the window at x = ox is the
        # window of the mirrored frame at x = w - ox - S (5x less flipping).
        frames = ensure_min_short_side(load(), size)
        mirrored = flip(frames, cfg.stream)
        _, h, w, _ = _shape(frames)
        ly, lx = h - size, w - size
        boxes = ((0, 0), (0, lx), (ly, 0), (ly, lx), (ly // 2, lx // 2))
        five = [crop(frames, oy, ox, size, size) for oy, ox in boxes]
        flipped = [crop(mirrored, oy, lx - ox, size, size) for oy, ox in boxes]
        views = ops.stack(five + flipped)
    views = ops.reshape(views, (cfg.crops, cfg.test_segments, size, size, cfg.channels))
    return ops.cast(views, cfg.clip_dtype)


def views_from_frames(frames, cfg):
    """The test-time clip (crops, N, S, S, C) of a video's decoded frames.

    ``frames``: spatial stream: the RGB frames, uint8 (T, H, W, 3); temporal
    stream: the quantized flow, uint8 (T-1, H, W, 2), planes x then y (what a
    record stores as flow_x and flow_y). Either an array (numpy or a backend
    tensor; T, H and W may be unknown until run time, as in an exported
    graph) or an object with ``len()`` and ``frames_at(indices)`` that gives
    the frames at an integer array of indices (any shape) on demand (a
    record's JPEGs, decoded only where the positions fall). The clip is
    `mat_effnet.data.clips.make_clip`'s for a record of the same frames: the
    same positions, crops and values.
    """
    import keras

    from mat_effnet.common.errors import MatEffNetError

    if cfg.training:
        raise MatEffNetError("cfg.training=True: test views need a PipelineConfig with "
                             "training=False")
    ops = _ops()
    lazy = hasattr(frames, "frames_at")
    if not lazy and keras.backend.standardize_dtype(frames.dtype) != "uint8":
        raise MatEffNetError(f"frames dtype={keras.backend.standardize_dtype(frames.dtype)}: "
                             "expected uint8 (RGB, or flow quantized as the records store it)")
    count = len(frames) if lazy else _shape(frames)[0]
    # A video of T frames has T - 1 flow fields; positions count frames.
    num_frames = count if cfg.stream == "spatial" else count + 1
    indices = frame_indices(count, test_positions(num_frames, cfg), cfg)
    picked = frames.frames_at(indices) if lazy else ops.take(frames, indices, axis=0)
    if cfg.stream != "spatial":
        # (P, L, H, W, 2) -> (P, H, W, L, 2) -> (P, H, W, 2L): channel 2j = x
        # of p+j, 2j+1 = y of p+j, as a record's clip stacks them.
        stacks = ops.transpose(picked, (0, 2, 3, 1, 4))
        p, h, w = _shape(stacks)[:3]
        picked = ops.reshape(stacks, (p, h, w, cfg.channels))

    def load(window=None):
        return picked if window is None else crop(picked, *window)

    return test_views(load, lambda: _shape(picked)[1:3], cfg)
