"""Clips from frames: JPEG decoding, crops and flips, from either record layout.

Given the positions and crop box `mat_effnet.data.sampling` chose, this module
reads and decodes the frames a clip uses and makes the clip (MAT-EffNet
Sect. 4.2: random 224x224 crops and horizontal flips with p = 0.5 in
training; TSN's test views, Wang et al., ECCV 2016, ref. [13]):

* Training (`_train_clip`): one crop box and one flip decision for the whole
  clip, all segments and frames.  The temporal stream stacks the L flow
  fields of a position with x/y interleaved into 2L channels (channel
  ``2j`` = ``flow_x[p+j]``, channel ``2j+1`` = ``flow_y[p+j]``); a flip
  mirrors both and inverts x (q -> 255 - q).
* Testing: 1 centre crop, 3 crops along the long side, or TSN's 10 crops (4
  corners + centre and their mirror images), at each of the N positions:
  `mat_effnet.data.views.test_views`, the one implementation of test views
  (keras.ops), which `make_clip` feeds from a record and
  `mat_effnet.data.views.views_from_frames` from already decoded frames.

Throughput.  The crop window and the positions are fixed before
anything is decoded, so each sampled flow JPEG is decoded only inside the
window (``tf.io.decode_and_crop_jpeg``; colour frames would need an 8-pixel
margin, because libjpeg's chroma upsampling at a window edge differs from a
full decode, and measured faster decoded whole, see ``_WINDOW_COLOUR``), each
distinct frame once (a training clip decodes its K x L frames with one op
each, so a short video's repeated frame is decoded twice).  Clips stay uint8
in 0..255 until the model: the models normalize inside (Keras' EfficientNet
expects 0..255 pixels) and Keras casts inputs on entry; a resize
(multi-scale crop, upscaling, 3 crops) is rounded back to uint8.
``PipelineConfig.clip_dtype="float32"`` restores float clips.

What a clip reads (`mat_effnet.records`): from version-2 data, its group's
header and then only the frame records it uses (`make_clip_from_group`,
`_read_frames`): one read per spatial frame, one run of consecutive flow
fields per temporal segment.  A version-1 record is parsed whole
(`make_clip`), which for a 3-frame spatial clip of a 90-frame video costs
more CPU than its three decodes.  Both give the same clip for one seed.
"""

from __future__ import annotations

import tensorflow as tf

from mat_effnet import records
from mat_effnet.data import views
from mat_effnet.data.sampling import (PipelineConfig, as_seed, frame_indices, sample_positions,
                                 train_box)

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
        oy, ox, ch, cw = train_box(h, w, cfg, s_crop)
        frames = _load_frames(parsed, indices, cfg, (oy, ox, ch, cw))
        return tf.cast(frames, tf.float32) if cfg.multiscale else frames

    def upscaled():
        frames = views.ensure_min_short_side(_load_frames(parsed, indices, cfg), size,
                                        rounded=not cfg.multiscale)
        fh, fw = tf.shape(frames)[1], tf.shape(frames)[2]
        oy, ox, ch, cw = train_box(fh, fw, cfg, s_crop)
        return views.crop(frames, oy, ox, ch, cw)

    frames = tf.cond(tf.minimum(h, w) >= size, windowed, upscaled)
    if cfg.multiscale:
        frames = views.to_uint8(views.resize(frames, size, size))
    if cfg.flip:
        do_flip = tf.random.stateless_uniform([], s_flip) < 0.5
        frames = tf.cond(do_flip, lambda: views.flip(frames, cfg.stream), lambda: frames)
    return frames


# ---------------------------------------------------------------------------
# Clips from records
# ---------------------------------------------------------------------------

def _clip_of(frames: dict, indices, cfg: PipelineConfig, seed):
    """The clip of the frames at ``indices`` of ``frames`` (the stream's JPEG lists)."""
    if not cfg.training:
        def frame_size():
            shape = tf.io.extract_jpeg_shape(_first_jpeg(frames, cfg, indices))
            return shape[0], shape[1]

        return views.test_views(lambda window=None: _load_frames(frames, indices, cfg, window),
                                frame_size, cfg)
    size = cfg.image_size
    clip = tf.ensure_shape(_train_clip(frames, indices, cfg, seed),
                           [cfg.num_segments, size, size, cfg.channels])
    return tf.cast(clip, cfg.clip_dtype)


def make_clip(parsed: dict, cfg: PipelineConfig, seed=None):
    """One parsed record -> (clip uint8 (or ``cfg.clip_dtype``) in 0..255, label int32).

    Training: clip (K, S, S, C).  Testing: clip (crops, N, S, S, C).
    C = 3 (spatial) or 2L (temporal).  ``seed`` (int or shape-[2] tensor)
    fixes the training draws; None draws fresh ones.  Graph-mode safe.
    ``parsed`` needs the stream's frames (RGB, or flow x and y) and the label;
    without RGB the stored ``num_frames`` gives T.
    """
    seed = as_seed(seed)
    s_pos, s_aug = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    positions = sample_positions(_num_frames(parsed), cfg, cfg.training, s_pos)
    key = records.RGB if cfg.stream == "spatial" else records.FLOW_X
    indices = frame_indices(tf.size(parsed[key]), positions, cfg)
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
    seed = as_seed(seed)
    s_pos, s_aug = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    positions = sample_positions(group.num_frames, cfg, cfg.training, s_pos)
    count = group.num_frames if cfg.stream == "spatial" else group.num_flow
    frames, local = _read_frames(group, frame_indices(count, positions, cfg), cfg)
    return (_clip_of(frames, local, cfg, s_aug),
            tf.cast(group.header[records.LABEL], tf.int32))
