"""Small serializable Keras layers used by the MAT-EffNet streams.

Paper: Zhou et al., "MAT-EffNet", Multimedia Systems 2022.

* Sect. 3.3 / Fig. 5: every stream runs one 2D backbone on each sampled
  segment (shared weights) and feeds the per-segment features to the
  multi-head self-attention layer as a set of tokens ("Y is an L x N matrix",
  Sect. 3.2, Eq. 2). :class:`FoldSegments` and :class:`SegmentsToTokens` do
  the reshapes between the clip layout ``(batch, segments, H, W, C)`` and the
  image batch ``(batch * segments, H, W, C)`` the backbone expects.
* Sect. 4.2 / Table 2-3 backbones: :class:`ChannelStandardization` puts the
  input normalisation of the ResNet backbones inside the model so that every
  stream takes raw 0..255 pixels (or 0..255 quantised optical flow).
* Sect. 3.3 / Fig. 1: :class:`LateFusion` is the late (weighted) average
  fusion of the two streams' softmax scores.

All layers implement ``get_config`` and are registered under the
``mat_effnet`` package, so ``.keras`` files load with ``safe_mode=True``
(no ``Lambda`` layers anywhere).
"""

from __future__ import annotations

import math

import keras
from keras import ops

from mat_effnet.common import checks
from mat_effnet.common.errors import bad_argument

__all__ = [
    "FoldSegments",
    "SegmentsToTokens",
    "ChannelStandardization",
    "LateFusion",
]


@keras.saving.register_keras_serializable(package="mat_effnet")
class FoldSegments(keras.layers.Layer):
    """``(batch, segments, *rest)`` -> ``(batch * segments, *rest)``.

    Folding the segment axis into the batch axis lets one backbone process all
    segments of a clip with shared weights (TSN-style segment consensus,
    Sect. 3.3). Segment ``s`` of clip ``b`` ends up at row ``b * segments + s``;
    :class:`SegmentsToTokens` relies on that order to undo the fold.
    ``keras.layers.Reshape`` cannot do this because it never touches the batch
    axis, hence this layer.
    """

    def call(self, inputs):
        # -1 keeps the batch size dynamic (serving with any batch size);
        # the non-batch dims are static, as the model input fixes them.
        return ops.reshape(inputs, (-1,) + tuple(inputs.shape[2:]))

    def compute_output_shape(self, input_shape):
        batch, segments = input_shape[0], input_shape[1]
        folded = None if batch is None or segments is None else batch * segments
        return (folded,) + tuple(input_shape[2:])


@keras.saving.register_keras_serializable(package="mat_effnet")
class SegmentsToTokens(keras.layers.Layer):
    """Undo :class:`FoldSegments` and lay the features out as attention tokens.

    Input ``(batch * segments, F)`` (one pooled vector per segment) gives
    ``(batch, segments, F)``: one token per segment, the paper's setting.
    Input ``(batch * segments, h, w, F)`` (the last feature map) gives
    ``(batch, segments * h * w, F)``: one token per spatial position of every
    segment, used for Fig. 9-style attention maps. Token index
    ``t = s * h * w + i * w + j`` for segment ``s``, row ``i``, column ``j``
    (row-major, segment-major), which is plain C-order reshaping of the folded
    batch.
    """

    def __init__(self, num_segments=None, **kwargs):
        super().__init__(**kwargs)
        if num_segments is not None and int(num_segments) < 1:
            raise ValueError(
                f"num_segments must be None or an integer >= 1, got {num_segments!r}"
            )
        self.num_segments = None if num_segments is None else int(num_segments)

    def _tokens_per_segment(self, shape):
        return int(math.prod(shape[1:-1])) if len(shape) > 2 else 1

    def call(self, inputs):
        if isinstance(inputs, (list, tuple)):
            # num_segments=None: the clip count comes from the unfolded clips
            # (second input), so one model takes any number of segments
            # (3 in training, 25 at test time, as in TSN).
            features, clips = inputs
            return ops.reshape(features, (ops.shape(clips)[0], -1, features.shape[-1]))
        tokens = self.num_segments * self._tokens_per_segment(inputs.shape)
        return ops.reshape(inputs, (-1, tokens, inputs.shape[-1]))

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (list, tuple)):
            features, clips = input_shape
            segments = clips[1]
            tokens = None if segments is None else segments * self._tokens_per_segment(features)
            return (clips[0], tokens, features[-1])
        tokens = self.num_segments * self._tokens_per_segment(input_shape)
        batch = input_shape[0]
        batch = None if batch is None else batch // self.num_segments
        return (batch, tokens, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config["num_segments"] = self.num_segments
        return config


@keras.saving.register_keras_serializable(package="mat_effnet")
class ChannelStandardization(keras.layers.Layer):
    """``y = (x[..., order] - mean) / std`` per channel, with constant stats.

    ``reverse_channels=True`` flips the channel axis first (RGB -> BGR), which
    together with ``mean = (103.939, 116.779, 123.68)`` and ``std = 1`` is
    exactly ``keras.applications.resnet50.preprocess_input`` ("caffe" mode),
    the preprocessing Keras's ImageNet ResNet-50 weights were trained with.
    The statistics are constructor arguments (stored in the config, not as
    weights), so a weights file can never silently overwrite them.
    """

    def __init__(self, mean, std, reverse_channels=False, **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        if len(self.mean) != len(self.std):
            raise ValueError(
                "mean and std must have the same length, got "
                f"{len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        self.reverse_channels = bool(reverse_channels)

    def build(self, input_shape):
        if input_shape[-1] != len(self.mean):
            raise ValueError(
                f"{self.name}: input has {input_shape[-1]} channels but "
                f"{len(self.mean)} means/stds were given"
            )
        self.built = True

    def call(self, inputs):
        x = inputs
        if self.reverse_channels:
            x = ops.flip(x, axis=-1)
        mean = ops.convert_to_tensor(self.mean, dtype=x.dtype)
        # Multiply by the reciprocal: one op per element instead of a divide.
        inv_std = ops.convert_to_tensor([1.0 / s for s in self.std], dtype=x.dtype)
        return (x - mean) * inv_std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            mean=list(self.mean),
            std=list(self.std),
            reverse_channels=self.reverse_channels,
        )
        return config


@keras.saving.register_keras_serializable(package="mat_effnet")
class LateFusion(keras.layers.Layer):
    """Weighted average of per-stream class scores (Sect. 3.3, Fig. 1).

    The paper averages the two softmax outputs ("late average fusion"), i.e.
    ``fusion_weights = (1, 1)``. Other weights (e.g. the 1:1.5 RGB:flow ratio
    common in two-stream work) are normalised to sum to 1 so the fused output
    is still a probability distribution. Runs in float32 so the fused scores
    stay float32 under a mixed-precision policy.
    """

    def __init__(self, fusion_weights=(1.0, 1.0), **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        weights = list(fusion_weights)
        if len(weights) < 2:
            raise bad_argument("fusion_weights", weights, "needs >= 2 weights, one per stream")
        self.fusion_weights = checks.normalize_fusion_weights(weights, len(weights)).tolist()

    def call(self, inputs):
        if len(inputs) != len(self.fusion_weights):
            raise ValueError(
                f"{self.name}: got {len(inputs)} inputs for "
                f"{len(self.fusion_weights)} fusion weights"
            )
        fused = inputs[0] * self.fusion_weights[0]
        for x, w in zip(inputs[1:], self.fusion_weights[1:]):
            fused = fused + x * w
        return fused

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = super().get_config()
        config["fusion_weights"] = list(self.fusion_weights)
        return config
