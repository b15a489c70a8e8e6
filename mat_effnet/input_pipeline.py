"""tf.data input pipeline: TSN-style segment sampling, cropping and flipping.

MAT-EffNet (Sect. 3, Fig. 1) feeds RGB frames to its spatial stream and
stacked optical flow to its temporal stream; Sect. 4.2 trains on random
224x224 crops with horizontal flips (p = 0.5).  The frame sampling follows
the temporal segment network (TSN, Wang et al., ECCV 2016, ref. [13] of the
paper), which the two-stream literature the paper compares with uses:

* Training: the valid range of a video is split into K segments and one
  random position is drawn inside each (sparse sampling).  The spatial stream
  takes ``rgb[p]``; the temporal stream takes the L consecutive flow fields
  ``flow[p .. p+L-1]`` with x/y interleaved into 2L channels
  (channel ``2j`` = ``flow_x[p+j]``, channel ``2j+1`` = ``flow_y[p+j]``).
* Testing: N positions at the centres of N equal segments of the valid
  range (TSN tests with N = 25), and 1 centre crop, 3 crops along the long
  side, or TSN's 10 crops (4 corners + centre and their mirror images).

Position rules (``sample_positions``), with T = ``num_frames`` RGB frames:

* valid range V: spatial stream ``V = T`` (positions ``0..T-1``); temporal
  stream ``V = max(T - L, 1)`` (starts ``0..(T-1)-L``, so that the L flow
  fields ``p..p+L-1`` exist; flow has T-1 fields).  A video with fewer than
  L flow fields has the single start 0 and its flow indices are clamped to
  the last flow field, i.e. the last field is repeated.
* training segment k (0-based) covers ``[floor(k*V/K), floor((k+1)*V/K))``
  and its position is uniform inside; an empty segment (V < K) gives
  ``floor(k*V/K)``, so positions repeat.
* testing: ``p_k = floor(V * (k + 0.5) / N)``.
* RGB/flow alignment (TSN convention): ``rgb[p]`` goes with
  ``flow[p .. p+L-1]``.  With ``align_to_flow=True`` the spatial stream
  samples from the temporal stream's valid range, so that the same seed gives
  the same positions in both streams.

Every random choice of a clip (positions, crop, flip) comes from one
stateless seed per clip, so a clip is a pure function of (record, seed):
the crop and flip are drawn once and applied to all segments and all frames
of the clip.  In `build_dataset` a clip's seed is keyed to (video id, chunk,
epoch, global seed) (`clip_seed`), not to the record's place in the stream,
so any split of the records over tf.data service workers draws the same
clips as one local pipeline.

Throughput (issue 10).  The crop window and the positions are fixed before
anything is decoded, so each sampled flow JPEG is decoded only inside the
window (``tf.io.decode_and_crop_jpeg``; colour frames would need an 8-pixel
margin, because libjpeg's chroma upsampling at a window edge differs from a
full decode, and measured faster decoded whole, see ``_WINDOW_COLOUR``), each
distinct frame once (a training clip decodes its K x L frames with one op
each, so a short video's repeated frame is decoded twice), and only the
record features the stream needs are parsed.  Clips stay uint8 in 0..255
until the model: the models normalize inside (Keras' EfficientNet expects 0..255
pixels) and Keras casts inputs on entry; a resize (multi-scale crop, upscaling,
3 crops) is rounded back to uint8.  ``PipelineConfig.clip_dtype="float32"``
restores float clips.

What a clip reads (`mat_effnet.records`): from version-2 data, its group's
header and then only the frame records it uses (`make_clip_from_group`):
one read per spatial frame, one run of consecutive flow fields per temporal
segment.  A version-1 record is read and parsed whole, which for a 3-frame
spatial clip of a 90-frame video costs more CPU than its three decodes.
"""

from __future__ import annotations

import dataclasses
import random
import sys
from typing import Sequence

import numpy as np
import tensorflow as tf

from mat_effnet import records
from mat_effnet.errors import MatEffNetError

STREAMS = ("spatial", "temporal")
CROPS = (1, 3, 10)
CLIP_DTYPES = ("uint8", "float32")
# TSN's multi-scale crop scales and the tolerance (pixels) within which a
# crop side snaps to the input size (TSN's GroupMultiScaleCrop).
TSN_SCALES = (1.0, 0.875, 0.75, 0.66)
_SNAP_PIXELS = 3
# Extra pixels decoded around a colour window: libjpeg's fancy chroma
# upsampling treats a window edge as an image edge, so the outer pixels of a
# cropped decode differ from a full decode; 8 pixels of context (half a 4:2:0
# MCU) made every tested window exact.  Grayscale (flow) needs none.
_COLOUR_MARGIN = 8
# Switches for the benchmark's lever-by-lever measurements (always on in use):
# decode only the window; one decode op per frame for training clips.
_WINDOW = True
_UNROLL = True
# Colour frames are decoded whole and then cropped: with the 8-pixel margin a
# 224 window of a 340x256 frame is about 70 % of it, and the extra shape
# read and copy made windowed colour decoding 4-5 % slower per clip
# (BENCHMARKS.md, lever "colour_window").  Grayscale flow has no margin and
# gains 15 %.
_WINDOW_COLOUR = False


@dataclasses.dataclass
class PipelineConfig:
    """Everything the pipeline needs; plain values, validated on creation.

    stream: "spatial" (RGB, 3 channels) or "temporal" (stacked flow, 2L).
    num_segments: K, training segments per clip (TSN uses 3).
    image_size: S, side of the square crops fed to the model.
    flow_length: L, consecutive flow fields per segment (TSN uses 5-10).
    training: training sampling/augmentation, or test sampling/cropping.
    test_segments: N, positions per video at test time (TSN uses 25).
    crops: test-time views per position: 1 (centre), 3 or 10.
    multiscale: TSN's multi-scale crop in training (else plain random crop).
    flip: random horizontal flip with p = 0.5 in training.
    shuffle_buffer: record shuffle buffer, in clips (never the whole set);
        version-1 data only (version 2 reads a full permutation per epoch).
    seed: makes file order, record order and the clips' random draws
        reproducible; None draws fresh randomness.
    scales, max_distort, fixed_offsets: the multi-scale crop's parameters
        (TSN: scales (1, .875, .75, .66), max distortion 1, fixed offsets).
    align_to_flow: spatial stream only: sample positions from the temporal
        stream's valid range so rgb[p] and flow p..p+L-1 align per seed.
    clip_dtype: "uint8" (default: 4x fewer bytes through the host and the
        host-to-device copy) or "float32"; values are 0..255 either way.
    """

    stream: str
    num_segments: int = 3
    image_size: int = 224
    flow_length: int = 10
    training: bool = True
    test_segments: int = 25
    crops: int = 1
    multiscale: bool = False
    flip: bool = True
    shuffle_buffer: int = 64
    seed: int | None = None
    scales: Sequence[float] = TSN_SCALES
    max_distort: int = 1
    fixed_offsets: bool = True
    align_to_flow: bool = False
    clip_dtype: str = "uint8"

    def __post_init__(self):
        if self.stream not in STREAMS:
            raise MatEffNetError(f"stream={self.stream!r}: expected one of {STREAMS}")
        if self.crops not in CROPS:
            raise MatEffNetError(f"crops={self.crops!r}: expected one of {CROPS}")
        if self.clip_dtype not in CLIP_DTYPES:
            raise MatEffNetError(f"clip_dtype={self.clip_dtype!r}: expected one of {CLIP_DTYPES}")
        for name, minimum in (("num_segments", 1), ("flow_length", 1), ("image_size", 8),
                              ("test_segments", 1), ("shuffle_buffer", 1), ("max_distort", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise MatEffNetError(f"{name}={value!r}: must be an integer >= {minimum}")
        self.scales = tuple(float(s) for s in self.scales)
        if not self.scales or not all(0.0 < s <= 1.0 for s in self.scales):
            raise MatEffNetError(f"scales={self.scales!r}: need at least one scale in (0, 1]")

    @property
    def channels(self) -> int:
        """Channels of one frame of a clip: 3 (RGB) or 2L (x/y flow interleaved)."""
        return 3 if self.stream == "spatial" else 2 * self.flow_length

    @property
    def views(self) -> int:
        """Crops per position: 1 in training, ``crops`` at test time."""
        return 1 if self.training else self.crops

    @property
    def segments(self) -> int:
        """Positions per clip: K in training, N at test time."""
        return self.num_segments if self.training else self.test_segments


# ---------------------------------------------------------------------------
# Positions
# ---------------------------------------------------------------------------

def _as_seed(seed):
    """A shape-[2] stateless seed from an int, a [2] tensor, or None (fresh)."""
    if seed is None:
        return tf.random.uniform([2], 0, 2**31 - 1, dtype=tf.int32)
    if isinstance(seed, int):
        return tf.constant([seed, 0], tf.int64)
    return seed


def valid_positions(num_frames, cfg: PipelineConfig):
    """V, the number of valid positions (spatial: T; temporal: max(T - L, 1))."""
    t = tf.cast(num_frames, tf.int32)
    if cfg.stream == "temporal" or cfg.align_to_flow:
        # Starts 0..(T-1)-L keep flow p..p+L-1 inside the T-1 flow fields;
        # shorter videos keep start 0 and repeat their last flow field.
        return tf.maximum(t - cfg.flow_length, 1)
    return tf.maximum(t, 1)


def sample_positions(num_frames, cfg: PipelineConfig, training: bool | None = None,
                     seed=None):
    """The K (training) or N (testing) int32 positions of a video of T frames.

    See the module docstring for the exact rules.  ``seed`` (an int or a
    shape-[2] integer tensor) makes training draws reproducible; test
    positions are deterministic and ignore it.  Works eagerly and in graphs.
    """
    training = cfg.training if training is None else training
    v = valid_positions(num_frames, cfg)
    if not training:
        n = cfg.test_segments
        k = tf.range(n, dtype=tf.int32)
        # floor(V * (k + 0.5) / N) in exact integer arithmetic.
        return (v * (2 * k + 1)) // (2 * n)
    k_count = cfg.num_segments
    k = tf.range(k_count, dtype=tf.int32)
    lo = (k * v) // k_count
    hi = ((k + 1) * v) // k_count
    width = tf.maximum(hi - lo, 1)  # an empty segment (V < K) keeps lo
    u = tf.random.stateless_uniform([k_count], _as_seed(seed))
    offset = tf.cast(tf.floor(u * tf.cast(width, tf.float32)), tf.int32)
    # float rounding could give u * width == width; stay inside the segment.
    return lo + tf.minimum(offset, width - 1)


# ---------------------------------------------------------------------------
# Decoding only the sampled frames, only inside the window
# ---------------------------------------------------------------------------

def _decode_one(jpeg, channels: int, window):
    """One JPEG -> (h, w, channels) uint8: whole, or only ``window`` (oy, ox, h, w)."""
    if window is None:
        return tf.io.decode_jpeg(jpeg, channels=channels)
    oy, ox, ch, cw = window
    if not _WINDOW or (channels == 3 and not _WINDOW_COLOUR):
        return tf.io.decode_jpeg(jpeg, channels=channels)[oy:oy + ch, ox:ox + cw]
    if channels == 1:
        return tf.io.decode_and_crop_jpeg(jpeg, tf.stack([oy, ox, ch, cw]), channels=1)
    # Decode with a margin of context, then drop it (see _COLOUR_MARGIN).
    shape = tf.io.extract_jpeg_shape(jpeg)
    y0 = tf.maximum(oy - _COLOUR_MARGIN, 0)
    x0 = tf.maximum(ox - _COLOUR_MARGIN, 0)
    y1 = tf.minimum(oy + ch + _COLOUR_MARGIN, shape[0])
    x1 = tf.minimum(ox + cw + _COLOUR_MARGIN, shape[1])
    wide = tf.io.decode_and_crop_jpeg(jpeg, tf.stack([y0, x0, y1 - y0, x1 - x0]), channels=3)
    return wide[oy - y0:oy - y0 + ch, ox - x0:ox - x0 + cw]


def _gather_decode(frames, indices, channels: int, window=None):
    """Frames ``indices`` (any shape, flattened) decoded -> (n, h, w, channels) uint8.

    Repeated indices (short videos, overlapping flow windows, 25 test
    positions) are decoded once: only the unique byte strings are gathered.
    """
    unique, inverse = tf.unique(tf.reshape(indices, [-1]))
    return tf.gather(_decode_all(tf.gather(frames, unique), channels, window), inverse)


def _decode_all(jpegs, channels: int, window=None):
    """A 1-D string tensor of same-size JPEGs -> (n, h, w, channels) uint8."""
    return tf.map_fn(lambda b: _decode_one(b, channels, window), jpegs,
                     fn_output_signature=tf.TensorSpec([None, None, channels], tf.uint8))


def _num_frames(parsed: dict):
    """T, the RGB frame count (the stored count when RGB was not parsed)."""
    if records.RGB in parsed:
        return tf.size(parsed[records.RGB])
    return tf.cast(parsed[records.NUM_FRAMES], tf.int32)


def _frame_indices(count, positions, cfg: PipelineConfig):
    """The frames a clip needs: RGB (P,) or flow (P, L) indices, checked and clamped.

    ``count``: the video's RGB frames (spatial) or flow fields (temporal).
    """
    if cfg.stream == "spatial":
        with tf.control_dependencies([tf.debugging.assert_positive(
                count, message="record has no RGB frames")]):
            return tf.minimum(positions, count - 1)
    with tf.control_dependencies([tf.debugging.assert_positive(
            count, message="temporal stream: record has no flow frames "
                              "(prepared with --flow=none, or a 1-frame video)")]):
        idx = positions[:, None] + tf.range(cfg.flow_length, dtype=tf.int32)[None, :]
        # Too few flow fields: repeat the last one (documented clamp).
        return tf.minimum(idx, count - 1)


def _first_jpeg(parsed: dict, cfg: PipelineConfig, indices):
    """A JPEG the clip uses (its header gives the frame size before any decode)."""
    key = records.RGB if cfg.stream == "spatial" else records.FLOW_X
    # Through the checked indices, so an empty record fails with their message.
    return tf.gather(parsed[key], tf.reshape(indices, [-1])[0])


def _interleave_flow(planes, p, length: int):
    """(P * 2L, h, w, 1) planes in channel order -> (P, h, w, 2L).

    One batched 2-D transpose per segment; concatenating along the last axis
    instead costs 4x more (a copy per byte).
    """
    h, w = tf.shape(planes)[1], tf.shape(planes)[2]
    flat = tf.transpose(tf.reshape(planes, [p, 2 * length, h * w]), [0, 2, 1])
    return tf.reshape(flat, [p, h, w, 2 * length])


def _load_frames_unrolled(parsed: dict, indices, cfg: PipelineConfig, window):
    """`_load_frames` with one decode op per frame, for a static, small frame count.

    Training clips (K x L frames, K and L static) pay no loop overhead this
    way; a repeated index (short video) is decoded twice, which only short
    videos pay.
    """
    if cfg.stream == "spatial":
        rgb = parsed[records.RGB]
        return tf.stack([_decode_one(tf.gather(rgb, indices[k]), 3, window)
                         for k in range(indices.shape[0])])
    fx, fy = parsed[records.FLOW_X], parsed[records.FLOW_Y]
    planes = []
    for k in range(indices.shape[0]):
        for j in range(indices.shape[1]):  # channel 2j = x of p+j, 2j+1 = y of p+j
            planes.append(_decode_one(tf.gather(fx, indices[k, j]), 1, window))
            planes.append(_decode_one(tf.gather(fy, indices[k, j]), 1, window))
    return _interleave_flow(tf.stack(planes), indices.shape[0], cfg.flow_length)


def _load_frames(parsed: dict, indices, cfg: PipelineConfig, window=None):
    """(P, h, w, C) uint8 frames at ``indices``: RGB, or 2L flow channels."""
    if cfg.training and window is not None and indices.shape.is_fully_defined() and _UNROLL:
        return _load_frames_unrolled(parsed, indices, cfg, window)
    if cfg.stream == "spatial":
        return _gather_decode(parsed[records.RGB], indices, 3, window)
    # x and y share their indices: decode each distinct field once, then one
    # gather puts the planes in channel order x_p, y_p, x_p+1, ... (channel
    # 2j = x of p+j, 2j+1 = y of p+j), with no copy of the full clip between.
    unique, inverse = tf.unique(tf.reshape(indices, [-1]))
    fx = _decode_all(tf.gather(parsed[records.FLOW_X], unique), 1, window)  # (U, h, w, 1)
    fy = _decode_all(tf.gather(parsed[records.FLOW_Y], unique), 1, window)
    h, w = tf.shape(fx)[1], tf.shape(fx)[2]
    pairs = tf.reshape(tf.stack([fx, fy], axis=1), [-1, h, w, 1])  # x_u at 2u, y_u at 2u+1
    order = tf.reshape(2 * inverse[:, None] + tf.constant([[0, 1]], inverse.dtype), [-1])
    return _interleave_flow(tf.gather(pairs, order), tf.shape(indices)[0], cfg.flow_length)


# ---------------------------------------------------------------------------
# Spatial transforms on a whole clip (P, H, W, C)
# ---------------------------------------------------------------------------

def _resize(frames, height, width):
    return tf.image.resize(tf.cast(frames, tf.float32), tf.stack([height, width]),
                           method="bilinear")


def _to_uint8(frames):
    """Rounds resized 0..255 floats back to uint8 (the one allowed rounding)."""
    return tf.cast(tf.clip_by_value(tf.round(frames), 0.0, 255.0), tf.uint8)


def _upscaled_size(h, w, size: int):
    short = tf.minimum(h, w)
    # ceil so both sides end >= size; the short side lands exactly on size.
    return (h * size + short - 1) // short, (w * size + short - 1) // short


def _ensure_min_short_side(frames, size: int, rounded: bool = True):
    """Frames upscaled (aspect kept) when the short side is below ``size``.

    ``rounded``: uint8 out; else float32 out, for a caller that resizes again
    and rounds once at the end.
    """
    h, w = tf.shape(frames)[1], tf.shape(frames)[2]

    def upscale():
        nh, nw = _upscaled_size(h, w, size)
        resized = _resize(frames, nh, nw)
        return _to_uint8(resized) if rounded else resized

    keep = (lambda: frames) if rounded else (lambda: tf.cast(frames, tf.float32))
    return tf.cond(tf.minimum(h, w) < size, upscale, keep)


def _crop(frames, oy, ox, ch, cw):
    return frames[:, oy:oy + ch, ox:ox + cw, :]


def _flip(frames, stream: str):
    """Mirrors uint8 frames left/right; x-flow changes sign, i.e. q -> 255 - q (TSN).

    Measured per clip (3 x 224 x 224): for 3-byte RGB pixels tf.reverse
    costs 0.31 ms and a gather of reversed columns 0.54; for 20-byte flow
    stacks the gather wins (0.67 ms against 1.20), and an XOR
    (255 ^ q == 255 - q for uint8) inverts x-flow for a third of
    tf.where's cost.
    """
    if stream == "spatial":
        return tf.reverse(frames, [2])
    w = tf.shape(frames)[2]
    frames = tf.gather(frames, tf.range(w - 1, -1, -1), axis=2)
    if stream == "temporal":
        c = tf.shape(frames)[-1]
        # 255 on even channels (flow_x), 0 on odd ones (flow_y).
        mask = tf.cast(255 * (1 - tf.range(c) % 2), tf.uint8)
        frames = tf.bitwise.bitwise_xor(frames, mask)
    return frames


def _uniform_int(seed, maxval):
    """Uniform int32 in [0, maxval) from a stateless seed."""
    return tf.random.stateless_uniform([], seed, minval=0, maxval=maxval, dtype=tf.int32)


def multiscale_crop_box(height, width, cfg: PipelineConfig, seed):
    """TSN's multi-scale crop box: (offset_y, offset_x, crop_h, crop_w) int32.

    The base is the short side; crop height and width are base x scale with
    independent scales whose indices in ``cfg.scales`` differ by at most
    ``max_distort`` (uniform over the allowed pairs); a side within 3 pixels
    of ``image_size`` snaps to it.  The offset is one of 5 fixed positions
    (4 corners and centre, on a grid of quarter steps) or uniform.
    """
    size = cfg.image_size
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    base = tf.cast(tf.minimum(height, width), tf.float32)
    sides = tf.cast(base * tf.constant(cfg.scales, tf.float32), tf.int32)
    sides = tf.where(tf.abs(sides - size) < _SNAP_PIXELS, size, sides)
    sides = tf.maximum(sides, 1)
    n = len(cfg.scales)
    pairs = [(i, j) for i in range(n) for j in range(n) if abs(i - j) <= cfg.max_distort]
    s_pair, s_off_y, s_off_x = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    pair = tf.gather(tf.constant(pairs, tf.int32), _uniform_int(s_pair, len(pairs)))
    ch = tf.minimum(tf.gather(sides, pair[0]), height)
    cw = tf.minimum(tf.gather(sides, pair[1]), width)
    if cfg.fixed_offsets:
        hs, ws = (height - ch) // 4, (width - cw) // 4
        offsets = tf.stack([tf.stack([0, 0]), tf.stack([0, 4 * ws]), tf.stack([4 * hs, 0]),
                            tf.stack([4 * hs, 4 * ws]), tf.stack([2 * hs, 2 * ws])])
        oy, ox = tf.unstack(tf.gather(offsets, _uniform_int(s_off_y, 5)))
    else:
        oy = _uniform_int(s_off_y, height - ch + 1)
        ox = _uniform_int(s_off_x, width - cw + 1)
    return oy, ox, ch, cw


def _train_box(h, w, cfg: PipelineConfig, s_crop):
    """The training crop box on an (h, w) frame: multi-scale, or a plain S x S window."""
    if cfg.multiscale:
        return multiscale_crop_box(h, w, cfg, s_crop)
    s_y, s_x = tf.unstack(tf.random.experimental.stateless_split(s_crop, 2))
    size = cfg.image_size
    return _uniform_int(s_y, h - size + 1), _uniform_int(s_x, w - size + 1), size, size


def _train_clip(parsed, indices, cfg: PipelineConfig, seed):
    """One crop and one flip decision for the whole clip (all segments).

    Frames whose short side reaches S are decoded inside the crop box only;
    smaller frames are decoded whole and upscaled first, as TSN does.
    """
    size = cfg.image_size
    s_crop, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.io.extract_jpeg_shape(_first_jpeg(parsed, cfg, indices))
    h, w = shape[0], shape[1]

    # A multi-scale crop is resized at the end: stay float until then, so
    # that upscaled frames are rounded once, not twice.
    def windowed():
        oy, ox, ch, cw = _train_box(h, w, cfg, s_crop)
        frames = _load_frames(parsed, indices, cfg, (oy, ox, ch, cw))
        return tf.cast(frames, tf.float32) if cfg.multiscale else frames

    def upscaled():
        frames = _ensure_min_short_side(_load_frames(parsed, indices, cfg), size,
                                        rounded=not cfg.multiscale)
        fh, fw = tf.shape(frames)[1], tf.shape(frames)[2]
        oy, ox, ch, cw = _train_box(fh, fw, cfg, s_crop)
        return _crop(frames, oy, ox, ch, cw)

    frames = tf.cond(tf.minimum(h, w) >= size, windowed, upscaled)
    if cfg.multiscale:
        frames = _to_uint8(_resize(frames, size, size))
    if cfg.flip:
        do_flip = tf.random.stateless_uniform([], s_flip) < 0.5
        frames = tf.cond(do_flip, lambda: _flip(frames, cfg.stream), lambda: frames)
    return frames


def _test_views(parsed, indices, cfg: PipelineConfig):
    """(crops, P, S, S, C): centre; 3 along the long side; or TSN's 10 crops."""
    size = cfg.image_size
    if cfg.crops == 3:
        # Short side resized to S, then 3 squares at the start, centre and end
        # of the long side: each sees the whole short side, as mmaction2's
        # ThreeCrop (crop = short side), at the model's input size.
        frames = _load_frames(parsed, indices, cfg)
        h, w = tf.shape(frames)[1], tf.shape(frames)[2]
        short = tf.minimum(h, w)
        nh = tf.where(h == short, size, (2 * h * size + short) // (2 * short))
        nw = tf.where(h == short, (2 * w * size + short) // (2 * short), size)
        frames = _to_uint8(_resize(frames, nh, nw))
        ly, lx = nh - size, nw - size  # one of them is 0
        boxes = [(0, 0), (ly // 2, lx // 2), (ly, lx)]
        return tf.stack([_crop(frames, oy, ox, size, size) for oy, ox in boxes])
    if cfg.crops == 1:
        shape = tf.io.extract_jpeg_shape(_first_jpeg(parsed, cfg, indices))
        h, w = shape[0], shape[1]

        def centre_window():
            window = ((h - size) // 2, (w - size) // 2, size, size)
            return _load_frames(parsed, indices, cfg, window)

        def centre_of_upscaled():
            frames = _ensure_min_short_side(_load_frames(parsed, indices, cfg), size)
            fh, fw = tf.shape(frames)[1], tf.shape(frames)[2]
            return _crop(frames, (fh - size) // 2, (fw - size) // 2, size, size)

        return tf.cond(tf.minimum(h, w) >= size, centre_window, centre_of_upscaled)[None]
    # TSN's oversampling: 4 corners + centre, then the same 5 mirrored; the
    # corners cover (nearly) the whole frame, so it is decoded whole.  The
    # frame is mirrored once: the mirror of the window at x = ox is the
    # window of the mirrored frame at x = w - ox - S (5x less flipping).
    frames = _ensure_min_short_side(_load_frames(parsed, indices, cfg), size)
    mirrored = _flip(frames, cfg.stream)
    h, w = tf.shape(frames)[1], tf.shape(frames)[2]
    ly, lx = h - size, w - size
    boxes = ((0, 0), (0, lx), (ly, 0), (ly, lx), (ly // 2, lx // 2))
    five = [_crop(frames, oy, ox, size, size) for oy, ox in boxes]
    flipped = [_crop(mirrored, oy, lx - ox, size, size) for oy, ox in boxes]
    return tf.stack(five + flipped)


# ---------------------------------------------------------------------------
# Clips and seeds
# ---------------------------------------------------------------------------

def _clip_of(frames: dict, indices, cfg: PipelineConfig, seed):
    """The clip of the frames at ``indices`` of ``frames`` (the stream's JPEG lists)."""
    size, c = cfg.image_size, cfg.channels
    if cfg.training:
        clip = tf.ensure_shape(_train_clip(frames, indices, cfg, seed),
                               [cfg.num_segments, size, size, c])
    else:
        clip = tf.ensure_shape(_test_views(frames, indices, cfg),
                               [cfg.crops, cfg.test_segments, size, size, c])
    return tf.cast(clip, cfg.clip_dtype)


def make_clip(parsed: dict, cfg: PipelineConfig, seed=None):
    """One parsed record -> (clip uint8 (or ``cfg.clip_dtype``) in 0..255, label int32).

    Training: clip (K, S, S, C).  Testing: clip (crops, N, S, S, C).
    C = 3 (spatial) or 2L (temporal).  ``seed`` (int or shape-[2] tensor)
    fixes the training draws; None draws fresh ones.  Graph-mode safe.
    ``parsed`` needs the stream's frames (RGB, or flow x and y) and the label;
    without RGB the stored ``num_frames`` gives T.
    """
    seed = _as_seed(seed)
    s_pos, s_aug = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    positions = sample_positions(_num_frames(parsed), cfg, cfg.training, s_pos)
    key = records.RGB if cfg.stream == "spatial" else records.FLOW_X
    indices = _frame_indices(tf.size(parsed[key]), positions, cfg)
    return (_clip_of(parsed, indices, cfg, s_aug),
            tf.cast(parsed[records.LABEL], tf.int32))


# Reading one more record of a run costs about a sixth of starting a read
# (measured: ~10 against ~60 CPU-us), so a span of up to 6 frames per frame
# needed is read whole.
_SPAN_PER_READ = 6


def _read_frames(group: records.Group, indices, cfg: PipelineConfig):
    """Reads only the JPEGs at ``indices``: (the stream's JPEG lists, indices into them).

    Training: spatial clips read each of their K frames, temporal clips each
    segment's L consecutive fields as one run.  Testing (positions spread
    over the whole video): one run from the first to the last frame or
    field any position needs (spatial: unless a video is long enough that
    separate reads cost less).  The indices
    come back with their static shape, so training clips keep one decode op
    per frame.
    """
    if cfg.stream == "spatial":
        if cfg.training:  # K distinct-or-not frames: K single reads
            return {records.RGB: group.rgb(indices)}, tf.range(cfg.num_segments)
        # N positions over the whole video: one run of every frame between
        # the first and the last, unless that is more than _SPAN_PER_READ
        # frames per distinct frame (long videos), then one read each.
        lo, hi = tf.reduce_min(indices), tf.reduce_max(indices)
        unique, inverse = tf.unique(indices)
        return tf.cond(
            hi - lo + 1 <= _SPAN_PER_READ * tf.size(unique),
            lambda: ({records.RGB: group.rgb_span(lo, hi)}, indices - lo),
            lambda: ({records.RGB: group.rgb(unique)}, inverse))
    if cfg.training:
        first, last = indices[:, 0], indices[:, -1]
        counts = last - first + 1  # < L where the clamp repeats the last field
        fx, fy = group.flow(first, counts)
        base = tf.cumsum(counts, exclusive=True)
        return ({records.FLOW_X: fx, records.FLOW_Y: fy},
                base[:, None] + (indices - first[:, None]))
    lo, hi = tf.reduce_min(indices), tf.reduce_max(indices)
    fx, fy = group.flow(lo[None], (hi - lo + 1)[None])
    return {records.FLOW_X: fx, records.FLOW_Y: fy}, indices - lo


def make_clip_from_group(group: records.Group, cfg: PipelineConfig, seed=None):
    """`make_clip` for a version-2 record group: reads only the frames the clip uses.

    The same positions, crop, flip and pixels as `make_clip` on the same
    video's version-1 record with the same seed.
    """
    seed = _as_seed(seed)
    s_pos, s_aug = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    positions = sample_positions(group.num_frames, cfg, cfg.training, s_pos)
    count = group.num_frames if cfg.stream == "spatial" else group.num_flow
    frames, local = _read_frames(group, _frame_indices(count, positions, cfg), cfg)
    return (_clip_of(frames, local, cfg, s_aug),
            tf.cast(group.header[records.LABEL], tf.int32))


def clip_seed(video_id, chunk_index, epoch, seed: int):
    """The stateless seed (shape [2] int64) of one clip: (video, chunk, epoch, global seed).

    The video id enters through its 64-bit FarmHash fingerprint
    (``tf.strings.to_hash_bucket_fast``), which is the same on every machine
    and process, so a clip does not depend on where or in which order its
    record is read: a tf.data service worker draws the clip a local pipeline
    draws.  Chunks of one long video share the id and differ by chunk index.
    """
    h = tf.strings.to_hash_bucket_fast(video_id, 2**63 - 1)
    s = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), h)
    s = tf.random.experimental.stateless_fold_in(s, tf.cast(chunk_index, tf.int64))
    return tf.random.experimental.stateless_fold_in(s, tf.cast(epoch, tf.int64))


def check_data(meta: dict, cfg: PipelineConfig) -> None:
    """Raises MatEffNetError when the prepared data cannot feed this stream."""
    algorithm = meta.get("flow", {}).get("algorithm")
    if cfg.stream == "temporal" and algorithm == "none":
        raise MatEffNetError("stream='temporal' needs optical flow, but this dataset was "
                             "prepared with --flow=none (no flow frames); re-run "
                             "mat-effnet-prep with --flow=tvl1 or use stream='spatial'")


def _parse_for(cfg: PipelineConfig):
    """A parser of only the features this stream's clips use (no copies of the rest)."""
    spec = records.feature_spec()
    keys = [records.VIDEO_ID, records.LABEL, records.NUM_FRAMES, records.CHUNK_INDEX]
    keys += [records.RGB] if cfg.stream == "spatial" else [records.FLOW_X, records.FLOW_Y]
    subset = {k: spec[k] for k in keys}
    return lambda serialized: tf.io.parse_single_example(serialized, subset)


# ---------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------

# The tf.data service splits the source range of (epoch, file) pairs between
# its workers on demand (see build_dataset).
SHARDING_POLICY = "DYNAMIC"


def _training_files(files: Sequence[str], seed: int, epochs: int | None):
    """Dataset of (file, epoch): every epoch visits all files in its own order.

    The order of epoch e is a stateless permutation of (seed, e), computed from
    a plain range, so the tf.data service can hand out its elements to
    workers dynamically and each file of each epoch is read exactly once.
    """
    n = len(files)
    names = tf.constant(list(files))
    total = sys.maxsize if epochs is None else epochs * n

    def pick(i):
        epoch = i // n
        order = tf.argsort(tf.random.stateless_uniform(
            [n], tf.random.experimental.stateless_fold_in(tf.constant([seed, 1], tf.int64),
                                                          epoch)))
        return tf.gather(names, tf.gather(order, i % n)), epoch

    return tf.data.Dataset.range(total).map(pick)


def _group_table(files: Sequence[str]):
    """(n, 3) int64 rows (file number, byte offset, header length) of every group.

    Reads the shards' index files on a few threads: on a network file system
    each is a round trip.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(16, len(files))) as pool:
        indexes = list(pool.map(records.read_index, files))
    rows = [np.concatenate([np.full((len(ix), 1), i, np.int64), ix], axis=1)
            for i, ix in enumerate(indexes)]
    return np.concatenate(rows, axis=0) if rows else np.zeros((0, 3), np.int64)


def _training_groups(table, seed: int, epochs: int | None):
    """Dataset of (row, epoch): every epoch visits every group once, in its own order.

    A version-2 group can be read wherever it lies, so the order is a full
    permutation of (seed, epoch) (`tf.random.experimental.index_shuffle`, a
    stateless bijection computed per element), not a file order plus a
    shuffle buffer.  The source is a plain range, which the tf.data service
    hands out to workers dynamically, as for version 1.
    """
    n = len(table)
    rows = tf.constant(table)
    total = sys.maxsize if epochs is None else epochs * n

    def pick(i):
        epoch = i // n
        key = tf.random.experimental.stateless_fold_in(tf.constant([seed, 2], tf.int64), epoch)
        j = tf.random.experimental.index_shuffle(i % n, key, n - 1)
        return tf.gather(rows, j), epoch

    return tf.data.Dataset.range(total).map(pick)


def _options(threads: int | None) -> tf.data.Options:
    options = tf.data.Options()
    # One op thread per element: parallelism comes from many elements at once,
    # not from ops fighting over the cores inside one element.
    options.threading.max_intra_op_parallelism = 1
    if threads is not None:
        options.threading.private_threadpool_size = threads
    return options


def build_dataset(data_dir: str, split: str, cfg: PipelineConfig, batch_size: int, *,
                  files: Sequence[str] | None = None, with_ids: bool = False,
                  epochs: int | None = None, data_service: str | None = None,
                  threads: int | None = None, meta: dict | None = None) -> tf.data.Dataset:
    """The batched dataset of one split.

    Training (``cfg.training``): endless (or ``epochs`` passes), shuffled;
    elements ``(clips (B, K, S, S, C), labels (B,) int32)``, full batches
    only.  Version-2 data (`mat_effnet.records`) is read group by group,
    each clip reading its header and its frames only, in a full permutation
    per epoch (``shuffle_buffer`` is not used); version-1 records are read
    whole, files in a per-epoch order, through the shuffle buffer.  Testing:
    one pass in file order; elements
    ``(clips (B, crops, N, S, S, C), labels (B,) int32)``, the last batch may
    be smaller.  Clips are ``cfg.clip_dtype`` (uint8 by default).
    ``with_ids`` appends ``video_ids (B,) string`` (chunks of one long video
    share their id).  ``files`` overrides the split's shard list (metadata is
    still read from ``data_dir``).

    ``data_service`` (e.g. ``"grpc://host:5050"``): the pipeline runs on the
    tf.data service workers of that dispatcher (the record files must be
    readable there, e.g. on a shared file system or GCS) with sharding policy
    DYNAMIC: the dispatcher hands each worker splits of the source range
    (version 2: (epoch, video); version 1: (epoch, file)) on demand, so every
    video of an epoch is read once by whichever worker is free
    (OFF would make every worker run every epoch, i.e. repeat each clip once
    per worker; the static FILE/DATA policies fix the worker count and let
    the slowest worker set the pace).  Clip seeds depend on the video and the
    epoch only, so the service delivers the clips of a local run, in another
    order.  Batches are formed on the workers.  ``threads``: a private
    tf.data thread pool of that many threads (default: TF's shared pool).
    ``meta``: the folder's metadata when the caller has read it already.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise MatEffNetError(f"batch_size={batch_size!r}: must be an integer >= 1")
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
        raise MatEffNetError(f"epochs={epochs!r}: must be an integer >= 1 or None (endless)")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise MatEffNetError(f"threads={threads!r}: must be an integer >= 1 or None")
    if data_service is not None and (not isinstance(data_service, str) or
                                     "://" not in data_service):
        raise MatEffNetError(f"data_service={data_service!r}: expected PROTOCOL://HOST:PORT, "
                             "e.g. grpc://localhost:5050")
    meta = records.read_metadata(data_dir) if meta is None else meta
    check_data(meta, cfg)
    files = list(records.split_files(data_dir, meta, split) if files is None else files)
    if not files:
        raise MatEffNetError(f"{data_dir}: split {split!r} has no shard files")
    autotune = tf.data.AUTOTUNE
    # Unordered parallelism is faster; a seed asks for reproducible batches.
    deterministic = not cfg.training or cfg.seed is not None
    if meta.get("schema_version", 1) == 1:
        ds = _version1_clips(files, cfg, epochs, with_ids, deterministic)
    else:
        ds = _version2_clips(files, cfg, epochs, with_ids, deterministic)
    ds = ds.batch(batch_size, drop_remainder=cfg.training)
    ds = ds.with_options(_options(threads))
    if data_service is not None:
        ds = ds.apply(tf.data.experimental.service.distribute(
            processing_mode=getattr(tf.data.experimental.service.ShardingPolicy, SHARDING_POLICY),
            service=data_service))
    return ds.prefetch(autotune)


def _global_seed(cfg: PipelineConfig) -> int:
    if not cfg.training:
        return 0
    return random.SystemRandom().randrange(2**31) if cfg.seed is None else cfg.seed


def _version2_clips(files, cfg: PipelineConfig, epochs, with_ids: bool, deterministic: bool):
    """Unbatched clips from version-2 shards: each reads its header and its frames only."""
    table = _group_table(files)
    if not len(table):
        raise MatEffNetError(f"{files[0]}...: the split's shard indexes list no videos")
    seed = _global_seed(cfg)
    if cfg.training:
        ds = _training_groups(table, seed, epochs)
    else:
        ds = tf.data.Dataset.from_tensor_slices(table).map(
            lambda row: (row, tf.constant(0, tf.int64)))
    names = tf.constant(list(files))

    def to_example(row, epoch):
        group = records.Group.read(tf.gather(names, row[0]), row[1], row[2])
        header = group.header
        key = clip_seed(header[records.VIDEO_ID], header[records.CHUNK_INDEX], epoch, seed)
        clip, label = make_clip_from_group(group, cfg, key)
        return (clip, label, header[records.VIDEO_ID]) if with_ids else (clip, label)

    return ds.map(to_example, num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=deterministic)


def _version1_clips(files, cfg: PipelineConfig, epochs, with_ids: bool, deterministic: bool):
    """Unbatched clips from version-1 shards: whole records, streamed and shuffled."""
    autotune = tf.data.AUTOTUNE
    parse = _parse_for(cfg)
    seed = _global_seed(cfg)
    if cfg.training:
        ds = _training_files(files, seed, epochs)
        ds = ds.interleave(
            lambda name, epoch: tf.data.TFRecordDataset(name).map(lambda s: (s, epoch)),
            cycle_length=min(len(files), 8), num_parallel_calls=autotune,
            deterministic=deterministic)
        # The buffer holds serialized records (undecoded JPEGs), never the whole set.
        ds = ds.shuffle(cfg.shuffle_buffer, seed=seed)
    else:
        ds = tf.data.TFRecordDataset(files).map(lambda s: (s, tf.constant(0, tf.int64)))

    def to_example(serialized, epoch):
        parsed = parse(serialized)
        key = clip_seed(parsed[records.VIDEO_ID], parsed[records.CHUNK_INDEX], epoch, seed)
        clip, label = make_clip(parsed, cfg, key)
        if with_ids:
            return clip, label, parsed[records.VIDEO_ID]
        return clip, label

    return ds.map(to_example, num_parallel_calls=autotune, deterministic=deterministic)
