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
* Testing (`_test_clip`, the one implementation of test views): 1 centre
  crop, 3 crops along the long side, or TSN's 10 crops (4 corners + centre
  and their mirror images), at each of the N positions.  `make_clip` makes
  them from a record, `eval_clip_from_frames` from already decoded frames
  (an exported model, streaming prediction).

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
from mat_effnet.common.errors import MatEffNetError
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
        frames = _ensure_min_short_side(_load_frames(parsed, indices, cfg), size,
                                        rounded=not cfg.multiscale)
        fh, fw = tf.shape(frames)[1], tf.shape(frames)[2]
        oy, ox, ch, cw = train_box(fh, fw, cfg, s_crop)
        return _crop(frames, oy, ox, ch, cw)

    frames = tf.cond(tf.minimum(h, w) >= size, windowed, upscaled)
    if cfg.multiscale:
        frames = _to_uint8(_resize(frames, size, size))
    if cfg.flip:
        do_flip = tf.random.stateless_uniform([], s_flip) < 0.5
        frames = tf.cond(do_flip, lambda: _flip(frames, cfg.stream), lambda: frames)
    return frames


def _test_clip(load, frame_size, cfg: PipelineConfig):
    """The test-time clip (crops, P, S, S, C) in ``cfg.clip_dtype``: centre; 3 along
    the long side; or TSN's 10 crops.

    The one implementation of test views, for records and decoded frames
    alike.  ``load(window=None)``: the clip's (P, h, w, C) uint8 frames, whole
    or only inside ``window`` (oy, ox, h, w) (a record decodes only that
    window; decoded frames are sliced); ``frame_size()``: (h, w) of a whole
    frame, asked only where the window is chosen before loading.
    """
    size = cfg.image_size
    if cfg.crops == 3:
        # Short side resized to S, then 3 squares at the start, centre and end
        # of the long side: each sees the whole short side, as mmaction2's
        # ThreeCrop (crop = short side), at the model's input size.
        frames = load()
        h, w = tf.shape(frames)[1], tf.shape(frames)[2]
        short = tf.minimum(h, w)
        nh = tf.where(h == short, size, (2 * h * size + short) // (2 * short))
        nw = tf.where(h == short, (2 * w * size + short) // (2 * short), size)
        frames = _to_uint8(_resize(frames, nh, nw))
        ly, lx = nh - size, nw - size  # one of them is 0
        boxes = [(0, 0), (ly // 2, lx // 2), (ly, lx)]
        views = tf.stack([_crop(frames, oy, ox, size, size) for oy, ox in boxes])
    elif cfg.crops == 1:
        h, w = frame_size()

        def centre_window():
            return load(((h - size) // 2, (w - size) // 2, size, size))

        def centre_of_upscaled():
            frames = _ensure_min_short_side(load(), size)
            fh, fw = tf.shape(frames)[1], tf.shape(frames)[2]
            return _crop(frames, (fh - size) // 2, (fw - size) // 2, size, size)

        views = tf.cond(tf.minimum(h, w) >= size, centre_window, centre_of_upscaled)[None]
    else:
        # TSN's oversampling: 4 corners + centre, then the same 5 mirrored; the
        # corners cover (nearly) the whole frame, so it is decoded whole.  The
        # frame is mirrored once: the mirror of the window at x = ox is the
        # window of the mirrored frame at x = w - ox - S (5x less flipping).
        frames = _ensure_min_short_side(load(), size)
        mirrored = _flip(frames, cfg.stream)
        h, w = tf.shape(frames)[1], tf.shape(frames)[2]
        ly, lx = h - size, w - size
        boxes = ((0, 0), (0, lx), (ly, 0), (ly, lx), (ly // 2, lx // 2))
        five = [_crop(frames, oy, ox, size, size) for oy, ox in boxes]
        flipped = [_crop(mirrored, oy, lx - ox, size, size) for oy, ox in boxes]
        views = tf.stack(five + flipped)
    views = tf.ensure_shape(views, [cfg.crops, cfg.test_segments, size, size, cfg.channels])
    return tf.cast(views, cfg.clip_dtype)


def eval_clip_from_frames(frames, cfg: PipelineConfig):
    """`make_clip`'s test-time clip from a video's decoded frames instead of a record.

    ``frames``: spatial stream: the RGB frames, uint8 (T, H, W, 3); temporal
    stream: the quantized flow, uint8 (T-1, H, W, 2), planes x then y (what
    a record stores as flow_x and flow_y).  Returns the clip
    (crops, N, S, S, C) in ``cfg.clip_dtype`` that `make_clip` returns for
    a record of the same frames: the same positions, crops and values.
    T, H and W may be unknown until run time (a tf.function with a
    None-shaped input signature, as in an exported model).
    """
    if cfg.training:
        raise MatEffNetError("cfg.training=True: eval_clip_from_frames makes test-time views; "
                             "pass a PipelineConfig with training=False")
    frames = tf.convert_to_tensor(frames)
    if frames.dtype != tf.uint8:
        raise MatEffNetError(f"frames dtype={frames.dtype.name}: expected uint8 "
                             "(RGB, or flow quantized as the records store it)")
    planes = 3 if cfg.stream == "spatial" else 2
    frames = tf.ensure_shape(frames, [None, None, None, planes])
    count = tf.shape(frames)[0]
    # A video of T frames has T - 1 flow fields; positions count frames.
    num_frames = count if cfg.stream == "spatial" else count + 1
    indices = frame_indices(count, sample_positions(num_frames, cfg, False), cfg)
    if cfg.stream == "spatial":
        picked = tf.gather(frames, indices)
    else:
        # (P, L, H, W, 2) -> (P, H, W, L, 2) -> (P, H, W, 2L): channel 2j = x
        # of p+j, 2j+1 = y of p+j, as `_load_frames` stacks them.
        stacks = tf.transpose(tf.gather(frames, indices), [0, 2, 3, 1, 4])
        shape = tf.shape(stacks)
        picked = tf.reshape(stacks, [shape[0], shape[1], shape[2], cfg.channels])

    def load(window=None):
        return picked if window is None else _crop(picked, *window)

    return _test_clip(load, lambda: (tf.shape(frames)[1], tf.shape(frames)[2]), cfg)


# ---------------------------------------------------------------------------
# Clips from records
# ---------------------------------------------------------------------------

def _clip_of(frames: dict, indices, cfg: PipelineConfig, seed):
    """The clip of the frames at ``indices`` of ``frames`` (the stream's JPEG lists)."""
    if not cfg.training:
        def frame_size():
            shape = tf.io.extract_jpeg_shape(_first_jpeg(frames, cfg, indices))
            return shape[0], shape[1]

        return _test_clip(lambda window=None: _load_frames(frames, indices, cfg, window),
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
