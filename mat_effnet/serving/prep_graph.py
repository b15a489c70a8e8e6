"""The export's graph pieces: prep's steps on frames, in TensorFlow ops (`mat_effnet.serving.saved_model_export`).

Each mirrors one step of ``data_prep`` on a video, so a SavedModel can do
what ``mat-effnet-prep`` does before the models (quantization is prep's own
`mat_effnet.ops.quantize.quantize_flow`, which runs on graph tensors):

* `resize_short_side` -- `mat_effnet.ops.video.resized_size`'s rounding; TF's area
  resize when shrinking (OpenCV's ``INTER_AREA`` averages the same footprint;
  measured within 1 grey level), bilinear with half-pixel centres when
  enlarging (``INTER_LINEAR``);
* `to_grey` -- OpenCV 5's fixed-point BT.601 weights, bit-exact with
  ``cv2.cvtColor(RGB2GRAY)``;
* `FlowAtSizes` -- `mat_effnet.ops.tvl1`'s graph traced once per working size,
  and the dispatch of a frame to the nearest aspect (stretching x and y for
  the flow only, then undoing the stretch per axis);
* `jpeg_round_trip` -- the JPEG prep stores frames as.
"""

from __future__ import annotations

import math

# ---------------------------------------------------------------------------
# Graph pieces (TensorFlow); each mirrors one step of data_prep
# ---------------------------------------------------------------------------

def resize_short_side(frames, short_side: int):
    """(T, H, W, C) uint8 -> frames whose short side is ``short_side`` (0: kept).

    `mat_effnet.ops.video.resized_size`'s rounding: long = floor(long * S / short + 0.5).
    """
    import tensorflow as tf

    if short_side <= 0:
        return frames
    h, w = tf.shape(frames)[1], tf.shape(frames)[2]
    short = tf.minimum(h, w)
    s = tf.constant(short_side, tf.int32)

    def scaled(side):
        return tf.maximum(1, tf.cast(tf.floor(tf.cast(side, tf.float64) * short_side
                                              / tf.cast(short, tf.float64) + 0.5), tf.int32))

    nh = tf.where(h <= w, s, scaled(h))
    nw = tf.where(h <= w, scaled(w), s)

    def shrink():
        return tf.image.resize(frames, tf.stack([nh, nw]), method="area")

    def enlarge():
        return tf.image.resize(frames, tf.stack([nh, nw]), method="bilinear")

    def same():
        return tf.cast(frames, tf.float32)

    out = tf.cond(tf.logical_and(tf.equal(nh, h), tf.equal(nw, w)), same,
                  lambda: tf.cond(short > s, shrink, enlarge))
    return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)


def to_grey(frames):
    """(T, H, W, 3) uint8 RGB -> (T, H, W) uint8, bit-exact with cv2's RGB2GRAY
    (`mat_effnet.ops.image_ops.rgb_to_grey`, on the graph's tensors)."""
    from mat_effnet.ops import image_ops

    return image_ops.rgb_to_grey(frames)


def jpeg_round_trip(frames, quality: int):
    """Each (H, W, C) uint8 frame through JPEG at ``quality``, as prep stores it."""
    import tensorflow as tf

    channels = frames.shape[-1]
    fmt = "rgb" if channels == 3 else "grayscale"

    def one(frame):
        data = tf.io.encode_jpeg(frame, format=fmt, quality=quality)
        return tf.io.decode_jpeg(data, channels=channels)

    return tf.map_fn(one, frames, fn_output_signature=tf.TensorSpec(
        [None, None, channels], tf.uint8))


class FlowAtSizes:
    """TV-L1 traced once per working size; dispatch by the nearest aspect."""

    def __init__(self, sizes: list[tuple[int, int]]):
        import tensorflow as tf

        from mat_effnet.ops import tvl1

        self.sizes = sizes
        params = tvl1.TVL1Params()
        self.functions = []
        for h, w in sizes:
            spec = tf.TensorSpec([1, h, w], tf.uint8)
            fn = tf.function(lambda p, n: tvl1.flow_graph(p, n, params),
                             input_signature=[spec, spec], jit_compile=True, autograph=False)
            self.functions.append(fn)

    def nearest(self, h, w):
        """Index of the working size whose aspect is nearest (in log ratio)."""
        import tensorflow as tf

        aspect = tf.math.log(tf.cast(w, tf.float32) / tf.cast(h, tf.float32))
        logs = tf.constant([math.log(sw / sh) for sh, sw in self.sizes], tf.float32)
        return tf.cast(tf.argmin(tf.abs(logs - aspect)), tf.int32)

    def __call__(self, prev, nxt):
        """(P, h, w) uint8 pairs -> (P, h, w, 2) float32 flow at the frames' size."""
        import tensorflow as tf

        h, w = tf.shape(prev)[1], tf.shape(prev)[2]

        def branch(k):
            sh, sw = self.sizes[k]
            fn = self.functions[k]

            def solve(p, n):
                def one(i):
                    return fn(p[i:i + 1], n[i:i + 1])[0]
                return tf.map_fn(one, tf.range(tf.shape(p)[0]),
                                 fn_output_signature=tf.TensorSpec([sh, sw, 2], tf.float32))

            def exact():
                return solve(tf.reshape(prev, [-1, sh, sw]), tf.reshape(nxt, [-1, sh, sw]))

            def stretched():
                def fit(x):
                    y = tf.image.resize(x[..., None], [sh, sw], method="bilinear")[..., 0]
                    return tf.cast(tf.clip_by_value(tf.round(y), 0, 255), tf.uint8)
                flow = tf.image.resize(solve(fit(prev), fit(nxt)), tf.stack([h, w]),
                                       method="bilinear")
                # Undo the stretch per axis: a pixel of the working frame is
                # w / sw pixels of the real frame in x and h / sh in y.
                scale = tf.stack([tf.cast(w, tf.float32) / sw, tf.cast(h, tf.float32) / sh])
                return flow * scale

            return lambda: tf.cond(tf.logical_and(tf.equal(h, sh), tf.equal(w, sw)),
                                   exact, stretched)

        if len(self.sizes) == 1:
            return branch(0)()
        return tf.switch_case(self.nearest(h, w), [branch(k) for k in range(len(self.sizes))])


