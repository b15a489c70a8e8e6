"""The paper's backbones as one table: input size, feature size, normalisation.

Paper: Zhou et al., "MAT-EffNet: multi-head attention-based two-stream
EfficientNet for video action recognition", Multimedia Systems 2022,
Sect. 4.2 (input sizes) and Sect. 4.3, Tables 2-3 (the ablation backbones
``efficientnet_b0``, ``resnet50``, ``resnet18``, ``resnet34``).

Inputs are raw 0..255 values for every backbone; the normalisation is the
backbone sub-model's first layer(s) (`mat_effnet.modeling.models.build_backbone`):

  ============  =============================  ==============================
  backbone      RGB (spatial stream)           flow (temporal stream)
  ============  =============================  ==============================
  EfficientNet  (x/255 - mean_in) / std_in     (x - 127.5) / 127.5
  ResNet-50     BGR order, x - (103.939,       x - 127.5  (caffe: centred,
                116.779, 123.68)  (caffe)      not scaled, like its RGB input)
  ResNet-18/34  (x/255 - mean_in) / std_in     (x - 127.5) / 127.5
  ============  =============================  ==============================

with ImageNet ``mean_in = (0.485, 0.456, 0.406)``,
``std_in = (0.229, 0.224, 0.225)``. Flow fields are assumed quantised to
0..255 with zero motion at 127.5 (the TSN/denseflow convention), so the
temporal input is centred at 0 with the same scale family as the RGB input
the copied filters were trained on.

This module imports neither TensorFlow nor Keras, so the training
configuration (`mat_effnet.training.config`) reads the table without starting them.
"""

from __future__ import annotations

import dataclasses

from mat_effnet.common.checks import check_choice, is_int
from mat_effnet.common.errors import MatEffNetError

__all__ = [
    "STREAMS",
    "BackboneSpec",
    "BACKBONE_SPECS",
    "BACKBONES",
    "PAPER_INPUT_SIZE",
    "FEATURE_DIM",
    "backbone_spec",
    "check_image_size",
]

#: The two inputs the table normalises: RGB frames (spatial stream) and
#: stacks of optical flow (temporal stream).
STREAMS = ("spatial", "temporal")
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
#: keras.applications.resnet50.preprocess_input ("caffe"): BGR means.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
#: Quantised flow: 0..255 with zero displacement at the centre.
FLOW_CENTER = 127.5
FLOW_SCALE = 127.5


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """The paper's facts about one backbone, and how it takes raw 0..255 input.

    ``rgb_mean`` / ``rgb_std`` / ``flow_mean`` / ``flow_std`` are in units of
    the raw input (0..255), per channel for RGB and one value for every flow
    channel: the backbone's first layer computes ``(x - mean) / std``
    (``rgb_reverse_channels``: on BGR, the caffe convention of ResNet-50).
    """

    name: str
    #: Input resolution the paper used (Sect. 4.2): ``image_size=None``.
    paper_input_size: int
    #: Channels of the last feature map (= pooled feature size).
    feature_dim: int
    rgb_mean: tuple
    rgb_std: tuple
    flow_mean: float
    flow_std: float
    rgb_reverse_channels: bool = False
    #: Every backbone has stride 32 (and 32 px is the smallest input
    #: keras.applications accepts): smaller inputs leave no feature map.
    min_image_size: int = 32
    #: The ``keras.applications`` builder (None: :mod:`mat_effnet.modeling.resnet`);
    #: Keras ships ImageNet weights for exactly these (``weights="imagenet"``).
    keras_application: str | None = None
    #: The Keras builder normalises its input itself (Rescaling +
    #: Normalization layers, set from this table) instead of a
    #: ChannelStandardization in front.
    builtin_normalization: bool = False

    def input_statistics(self, channels):
        """Per-channel (mean, std, reverse_channels) of raw input with ``channels``."""
        if channels == 3:
            return list(self.rgb_mean), list(self.rgb_std), self.rgb_reverse_channels
        return [self.flow_mean] * channels, [self.flow_std] * channels, False


_IMAGENET_RGB_255 = dict(rgb_mean=tuple(255.0 * m for m in IMAGENET_MEAN_RGB),
                         rgb_std=tuple(255.0 * s for s in IMAGENET_STD_RGB),
                         flow_mean=FLOW_CENTER, flow_std=FLOW_SCALE)

#: One row per backbone of Sect. 4.3 (Tables 2-3), in the paper's order.
BACKBONE_SPECS = {
    spec.name: spec for spec in (
        BackboneSpec("efficientnet_b0", 224, 1280, keras_application="EfficientNetB0",
                     builtin_normalization=True, **_IMAGENET_RGB_255),
        # Caffe-style input: BGR, centred, not scaled; flow likewise centred only.
        BackboneSpec("resnet50", 224, 2048, rgb_mean=CAFFE_MEAN_BGR,
                     rgb_std=(1.0, 1.0, 1.0), rgb_reverse_channels=True,
                     flow_mean=FLOW_CENTER, flow_std=1.0, keras_application="ResNet50"),
        BackboneSpec("resnet18", 112, 512, **_IMAGENET_RGB_255),
        BackboneSpec("resnet34", 168, 512, **_IMAGENET_RGB_255),
    )
}

#: Accepted ``backbone`` values (Sect. 4.3, Tables 2-3).
BACKBONES = tuple(BACKBONE_SPECS)
#: Derived views of the table, for readers of the older names.
PAPER_INPUT_SIZE = {n: s.paper_input_size for n, s in BACKBONE_SPECS.items()}
FEATURE_DIM = {n: s.feature_dim for n, s in BACKBONE_SPECS.items()}


def backbone_spec(backbone) -> BackboneSpec:
    """The :class:`BackboneSpec` of ``backbone``; ValueError naming the choices."""
    return BACKBONE_SPECS[check_choice("backbone", backbone, BACKBONES)]


def check_image_size(image_size, backbone):
    """``(height, width)`` of ``image_size`` (None: the paper's size) for ``backbone``."""
    spec = backbone_spec(backbone)
    if image_size is None:
        image_size = spec.paper_input_size
    if is_int(image_size):
        size = (int(image_size), int(image_size))
    elif (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(is_int(s) for s in image_size)
    ):
        size = (int(image_size[0]), int(image_size[1]))
    else:
        size = None
    least = spec.min_image_size
    if size is None or min(size) < least:
        raise MatEffNetError(
            f"image_size must be None (paper size), an integer >= {least} or a pair "
            f"(height, width) of integers >= {least}; got {image_size!r}"
        )
    return size
