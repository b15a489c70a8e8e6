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
plain ints works eagerly too.  The test-time rules (valid range, test
positions, the clamp of `frame_indices`) are `mat_effnet.data.views`', which
prediction also runs without TensorFlow; `PipelineConfig`, the settings of
the whole input pipeline, is `mat_effnet.data.pipeline_config`'s.
"""

from __future__ import annotations

import tensorflow as tf

from mat_effnet.data import views
from mat_effnet.data.pipeline_config import (  # noqa: F401  (the pipeline's settings, here as before)
    CLIP_DTYPES, CROPS, STREAMS, TSN_SCALES, PipelineConfig)

# The tolerance (pixels) within which a multi-scale crop side snaps to the
# input size (TSN's GroupMultiScaleCrop).
_SNAP_PIXELS = 3


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
    return views.valid_positions(tf.cast(num_frames, tf.int32), cfg)


def sample_positions(num_frames, cfg: PipelineConfig, training: bool | None = None,
                     seed=None):
    """The K (training) or N (testing) int32 positions of a video of T frames.

    See the module docstring for the exact rules.  ``seed`` (an int or a
    shape-[2] integer tensor) makes training draws reproducible; test
    positions are deterministic and ignore it.  Works eagerly and in graphs.
    """
    training = cfg.training if training is None else training
    if not training:
        return views.test_positions(tf.cast(num_frames, tf.int32), cfg)
    v = valid_positions(num_frames, cfg)
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
    The clamp is `mat_effnet.data.views.frame_indices`'; an empty record fails here.
    """
    message = ("record has no RGB frames" if cfg.stream == "spatial" else
               "temporal stream: record has no flow frames "
               "(prepared with --flow=none, or a 1-frame video)")
    with tf.control_dependencies([tf.debugging.assert_positive(count, message=message)]):
        return tf.identity(views.frame_indices(count, positions, cfg))


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
