"""A frozen, simpler input pipeline: the oracle for `mat_effnet.data`'s clips.

It reads version-1 records only, decodes whole frames and crops float32
clips, none of the pipeline's speed-ups.  `tests/test_clips.py` checks that
the pipeline's clips equal this one's for the same record and seed.  Do not
improve it: an oracle that follows the code it checks stops checking
anything.  Its own description follows.

tf.data input pipeline: TSN-style segment sampling, cropping and flipping.

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
of the clip.  Pixel values are float32 in 0..255; the models normalize
inside (Keras' EfficientNet expects 0..255 pixels).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import tensorflow as tf

from mat_effnet import records

STREAMS = ("spatial", "temporal")
CROPS = (1, 3, 10)
# TSN's multi-scale crop scales and the tolerance (pixels) within which a
# crop side snaps to the input size (TSN's GroupMultiScaleCrop).
TSN_SCALES = (1.0, 0.875, 0.75, 0.66)
_SNAP_PIXELS = 3


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
    shuffle_buffer: record shuffle buffer, in clips (never the whole set).
    seed: makes file order, record order and the clips' random draws
        reproducible; None draws fresh randomness.
    scales, max_distort, fixed_offsets: the multi-scale crop's parameters
        (TSN: scales (1, .875, .75, .66), max distortion 1, fixed offsets).
    align_to_flow: spatial stream only: sample positions from the temporal
        stream's valid range so rgb[p] and flow p..p+L-1 align per seed.
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

    def __post_init__(self):
        if self.stream not in STREAMS:
            raise ValueError(f"stream={self.stream!r}: expected one of {STREAMS}")
        if self.crops not in CROPS:
            raise ValueError(f"crops={self.crops!r}: expected one of {CROPS}")
        for name, minimum in (("num_segments", 1), ("flow_length", 1), ("image_size", 8),
                              ("test_segments", 1), ("shuffle_buffer", 1), ("max_distort", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"{name}={value!r}: must be an integer >= {minimum}")
        self.scales = tuple(float(s) for s in self.scales)
        if not self.scales or not all(0.0 < s <= 1.0 for s in self.scales):
            raise ValueError(f"scales={self.scales!r}: need at least one scale in (0, 1]")

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
# Decoding only the sampled frames
# ---------------------------------------------------------------------------

def _decode(jpegs, channels: int):
    """Decodes a 1-D string tensor of same-size JPEGs into (n, H, W, channels) uint8.

    Repeated indices (short videos, overlapping flow windows) are decoded
    once: the caller gathers the unique byte strings only.
    """
    return tf.map_fn(lambda b: tf.io.decode_jpeg(b, channels=channels), jpegs,
                     fn_output_signature=tf.TensorSpec([None, None, channels], tf.uint8))


def _gather_decode(frames, indices, channels: int):
    flat = tf.reshape(indices, [-1])
    unique, inverse = tf.unique(flat)
    decoded = _decode(tf.gather(frames, unique), channels)
    return tf.gather(decoded, inverse)


def _load_frames(parsed: dict, positions, cfg: PipelineConfig):
    """(P, H, W, C) uint8 frames of the P positions: RGB, or 2L flow channels."""
    rgb = parsed[records.RGB]
    if cfg.stream == "spatial":
        t = tf.size(rgb)
        with tf.control_dependencies([tf.debugging.assert_positive(
                t, message="record has no RGB frames")]):
            positions = tf.minimum(positions, t - 1)
        return _gather_decode(rgb, positions, 3)
    flow_x, flow_y = parsed[records.FLOW_X], parsed[records.FLOW_Y]
    num_flow = tf.size(flow_x)
    with tf.control_dependencies([tf.debugging.assert_positive(
            num_flow, message="temporal stream: record has no flow frames "
                              "(prepared with --flow=none, or a 1-frame video)")]):
        length = cfg.flow_length
        idx = positions[:, None] + tf.range(length, dtype=tf.int32)[None, :]
        # Too few flow fields: repeat the last one (documented clamp).
        idx = tf.minimum(idx, num_flow - 1)
    p = tf.shape(positions)[0]
    fx = _gather_decode(flow_x, idx, 1)  # (P*L, H, W, 1)
    fy = _gather_decode(flow_y, idx, 1)
    h, w = tf.shape(fx)[1], tf.shape(fx)[2]
    xy = tf.concat([fx, fy], axis=-1)  # (P*L, H, W, 2): [x, y] per flow field
    xy = tf.reshape(xy, [p, length, h, w, 2])
    # (P, H, W, L, 2) -> 2L channels: 2j = x of p+j, 2j+1 = y of p+j.
    xy = tf.transpose(xy, [0, 2, 3, 1, 4])
    return tf.reshape(xy, [p, h, w, 2 * length])


# ---------------------------------------------------------------------------
# Spatial transforms on a whole clip (P, H, W, C)
# ---------------------------------------------------------------------------

def _resize(frames, height, width):
    return tf.image.resize(tf.cast(frames, tf.float32), tf.stack([height, width]),
                           method="bilinear")


def _ensure_min_short_side(frames, size: int):
    """Upscales (aspect kept) when the short side is below ``size``; else unchanged."""
    h, w = tf.shape(frames)[1], tf.shape(frames)[2]
    short = tf.minimum(h, w)

    def upscale():
        # ceil so both sides end >= size; the short side lands exactly on size.
        return _resize(frames, (h * size + short - 1) // short, (w * size + short - 1) // short)

    return tf.cond(short < size, upscale, lambda: tf.cast(frames, tf.float32))


def _crop(frames, oy, ox, ch, cw):
    return frames[:, oy:oy + ch, ox:ox + cw, :]


def _flip(frames, stream: str):
    """Mirrors left/right; x-flow changes sign, i.e. q -> 255 - q (TSN)."""
    frames = tf.reverse(frames, axis=[2])
    if stream == "temporal":
        c = tf.shape(frames)[-1]
        is_x = tf.equal(tf.range(c) % 2, 0)  # even channels hold flow_x
        frames = tf.where(is_x, 255.0 - frames, frames)
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


def _train_transform(frames, cfg: PipelineConfig, seed):
    """One crop and one flip decision for the whole clip (all segments)."""
    size = cfg.image_size
    frames = _ensure_min_short_side(frames, size)
    h, w = tf.shape(frames)[1], tf.shape(frames)[2]
    s_crop, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if cfg.multiscale:
        oy, ox, ch, cw = multiscale_crop_box(h, w, cfg, s_crop)
        frames = _resize(_crop(frames, oy, ox, ch, cw), size, size)
    else:
        s_y, s_x = tf.unstack(tf.random.experimental.stateless_split(s_crop, 2))
        oy = _uniform_int(s_y, h - size + 1)
        ox = _uniform_int(s_x, w - size + 1)
        frames = _crop(frames, oy, ox, size, size)
    if cfg.flip:
        do_flip = tf.random.stateless_uniform([], s_flip) < 0.5
        frames = tf.cond(do_flip, lambda: _flip(frames, cfg.stream), lambda: frames)
    return frames


def _test_views(frames, cfg: PipelineConfig):
    """(crops, P, S, S, C): centre; 3 along the long side; or TSN's 10 crops."""
    size = cfg.image_size
    if cfg.crops == 3:
        # Short side resized to S, then 3 squares at the start, centre and end
        # of the long side: each sees the whole short side, as mmaction2's
        # ThreeCrop (crop = short side), at the model's input size.
        h, w = tf.shape(frames)[1], tf.shape(frames)[2]
        short = tf.minimum(h, w)
        nh = tf.where(h == short, size, (2 * h * size + short) // (2 * short))
        nw = tf.where(h == short, (2 * w * size + short) // (2 * short), size)
        frames = _resize(frames, nh, nw)
        ly, lx = nh - size, nw - size  # one of them is 0
        boxes = [(0, 0), (ly // 2, lx // 2), (ly, lx)]
        return tf.stack([_crop(frames, oy, ox, size, size) for oy, ox in boxes])
    frames = _ensure_min_short_side(frames, size)
    h, w = tf.shape(frames)[1], tf.shape(frames)[2]
    ly, lx = h - size, w - size
    centre = _crop(frames, ly // 2, lx // 2, size, size)
    if cfg.crops == 1:
        return centre[None]
    # TSN's oversampling: 4 corners + centre, then the same 5 mirrored.
    corners = [_crop(frames, oy, ox, size, size) for oy, ox in ((0, 0), (0, lx), (ly, 0), (ly, lx))]
    five = corners + [centre]
    return tf.stack(five + [_flip(v, cfg.stream) for v in five])


# ---------------------------------------------------------------------------
# Clips and datasets
# ---------------------------------------------------------------------------

def make_clip(parsed: dict, cfg: PipelineConfig, seed=None):
    """One parsed record -> (clip float32 in 0..255, label int32).

    Training: clip (K, S, S, C).  Testing: clip (crops, N, S, S, C).
    C = 3 (spatial) or 2L (temporal).  ``seed`` (int or shape-[2] tensor)
    fixes the training draws; None draws fresh ones.  Graph-mode safe.
    """
    seed = _as_seed(seed)
    s_pos, s_aug = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    num_frames = tf.size(parsed[records.RGB])
    positions = sample_positions(num_frames, cfg, cfg.training, s_pos)
    frames = _load_frames(parsed, positions, cfg)
    size, c = cfg.image_size, cfg.channels
    if cfg.training:
        clip = tf.ensure_shape(_train_transform(frames, cfg, s_aug),
                               [cfg.num_segments, size, size, c])
    else:
        clip = tf.ensure_shape(_test_views(frames, cfg),
                               [cfg.crops, cfg.test_segments, size, size, c])
    return tf.cast(clip, tf.float32), tf.cast(parsed[records.LABEL], tf.int32)


def check_data(meta: dict, cfg: PipelineConfig) -> None:
    """Raises ValueError when the prepared data cannot feed this stream."""
    algorithm = meta.get("flow", {}).get("algorithm")
    if cfg.stream == "temporal" and algorithm == "none":
        raise ValueError("stream='temporal' needs optical flow, but this dataset was "
                         "prepared with --flow=none (no flow frames); re-run "
                         "mat-effnet-prep with --flow=tvl1 or use stream='spatial'")


def build_dataset(data_dir: str, split: str, cfg: PipelineConfig, batch_size: int, *,
                  files: Sequence[str] | None = None, with_ids: bool = False) -> tf.data.Dataset:
    """The batched dataset of one split.

    Training (``cfg.training``): endless, shuffled; elements
    ``(clips (B, K, S, S, C) float32, labels (B,) int32)``, full batches only.
    Testing: one pass in file order; elements
    ``(clips (B, crops, N, S, S, C) float32, labels (B,) int32)``, the last
    batch may be smaller.  ``with_ids`` appends ``video_ids (B,) string``
    (chunks of one long video share their id).  ``files`` overrides the
    split's shard list (metadata is still read from ``data_dir``).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: must be an integer >= 1")
    meta = records.read_metadata(data_dir)
    check_data(meta, cfg)
    files = list(records.split_files(data_dir, meta, split) if files is None else files)
    if not files:
        raise ValueError(f"split {split!r} of {data_dir} has no shard files")
    autotune = tf.data.AUTOTUNE
    # Unordered parallelism is faster; a seed asks for reproducible batches.
    deterministic = not cfg.training or cfg.seed is not None

    if cfg.training:
        ds = tf.data.Dataset.from_tensor_slices(files)
        ds = ds.shuffle(len(files), seed=cfg.seed, reshuffle_each_iteration=True)
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
                           num_parallel_calls=autotune, deterministic=deterministic)
    else:
        ds = tf.data.TFRecordDataset(files)
    ds = ds.map(records.parse, num_parallel_calls=autotune, deterministic=deterministic)

    if cfg.training:
        # The buffer holds parsed records (undecoded JPEGs), never the whole set.
        ds = ds.shuffle(cfg.shuffle_buffer, seed=cfg.seed, reshuffle_each_iteration=True)
        ds = ds.repeat()
        # One stateless seed per clip, attached before the parallel map so a
        # clip's draws do not depend on the map's completion order.
        seed = None if cfg.seed is None else cfg.seed + 1
        seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)
        ds = tf.data.Dataset.zip((ds, seeds))
    else:
        ds = ds.map(lambda parsed: (parsed, tf.zeros([2], tf.int64)))

    def to_example(parsed, clip_seed):
        clip, label = make_clip(parsed, cfg, clip_seed)
        if with_ids:
            return clip, label, parsed[records.VIDEO_ID]
        return clip, label

    ds = ds.map(to_example, num_parallel_calls=autotune, deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=cfg.training)
    return ds.prefetch(autotune)
