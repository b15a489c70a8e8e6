"""Which frames and which crop box a clip uses: TSN segment sampling and per-clip seeds.

Index arithmetic only: no frame is read or decoded here (`mat_effnet.data.clips`
does that).  MAT-EffNet (Sect. 3, Fig. 1) feeds RGB frames to its spatial
stream and stacked optical flow to its temporal stream; Sect. 4.2 trains on
random 224x224 crops with horizontal flips (p = 0.5).  The frame sampling
follows the temporal segment network (TSN, Wang et al., ECCV 2016, ref. [13]
of the paper), which the two-stream literature the paper compares with uses:

* Training: the valid range of a video is split into K segments and one
  random position is drawn inside each (sparse sampling).  The spatial stream
  takes ``rgb[p]``; the temporal stream takes the L consecutive flow fields
  ``flow[p .. p+L-1]`` (`frame_indices`).
* Testing: N positions at the centres of N equal segments of the valid
  range (TSN tests with N = 25).

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

Training crop boxes (`train_box`): a plain S x S window, or TSN's multi-scale
crop (`multiscale_crop_box`, after TSN's GroupMultiScaleCrop).

Every random choice of a clip (positions, crop, flip) comes from one
stateless seed per clip, so a clip is a pure function of (frames, seed).
`clip_seed` keys that seed to (video id, chunk, epoch, global seed), not to
the record's place in the stream, so any split of the records over tf.data
service workers draws the same clips as one local pipeline.

The functions are TensorFlow, not NumPy: they run inside the tf.data graph
on tensor frame counts and stateless seeds, and `sample_positions` on
plain ints works eagerly too.  `PipelineConfig`, the settings of the whole
input pipeline, lives here because this is the bottom of the pipeline's
imports (`clips` and `input_pipeline` both build on this module).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import tensorflow as tf

from mat_effnet.common.errors import MatEffNetError

STREAMS = ("spatial", "temporal")
CROPS = (1, 3, 10)
CLIP_DTYPES = ("uint8", "float32")
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

def as_seed(seed):
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
    u = tf.random.stateless_uniform([k_count], as_seed(seed))
    offset = tf.cast(tf.floor(u * tf.cast(width, tf.float32)), tf.int32)
    # float rounding could give u * width == width; stay inside the segment.
    return lo + tf.minimum(offset, width - 1)


def frame_indices(count, positions, cfg: PipelineConfig):
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


# ---------------------------------------------------------------------------
# Seeds and crop boxes
# ---------------------------------------------------------------------------

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


def train_box(h, w, cfg: PipelineConfig, s_crop):
    """The training crop box on an (h, w) frame: multi-scale, or a plain S x S window."""
    if cfg.multiscale:
        return multiscale_crop_box(h, w, cfg, s_crop)
    s_y, s_x = tf.unstack(tf.random.experimental.stateless_split(s_crop, 2))
    size = cfg.image_size
    return _uniform_int(s_y, h - size + 1), _uniform_int(s_x, w - size + 1), size, size
