"""Basic-block ResNet-18 / ResNet-34 (He et al., CVPR 2016), Keras functional.

Paper: Zhou et al., "MAT-EffNet", Multimedia Systems 2022, Sect. 4.2-4.3:
ResNet-18 and ResNet-34 are two of the four baseline backbones of the
ablations in Tables 2 and 3 (with and without the multi-head attention
layer). ``keras.applications`` has no 18/34-layer ResNets, so they are built
here, following He et al. 2016, Table 1 (v1, post-activation):

* stem: 7x7 conv, 64 filters, stride 2 -> BN -> ReLU -> 3x3 max-pool, stride 2;
* stages conv2..conv5 with 64/128/256/512 filters and [2, 2, 2, 2]
  (ResNet-18) or [3, 4, 6, 3] (ResNet-34) basic blocks;
* basic block: 3x3 conv (stride 2 in the first block of conv3..conv5) -> BN
  -> ReLU -> 3x3 conv -> BN, added to the shortcut, then ReLU;
* shortcut: identity, or a projection (1x1 conv with the block's stride ->
  BN) where the shape changes (option B of the paper);
* optional top: global average pooling -> 1000-way fc -> softmax.

Choices where He et al. leave freedom, made so that torchvision-style
ImageNet weights (the usual source for these two nets) map one-to-one:
convolutions have no bias (each is followed by BN), BN epsilon is 1e-5,
and padding is explicit and symmetric (``ZeroPadding2D`` + ``valid``), because
Keras ``padding="same"`` pads strided convolutions asymmetrically. Layer names
follow ``keras.applications.ResNet50`` (``conv1_conv``, ``conv2_block1_1_conv``,
``conv3_block1_0_conv`` for the projection, ...), so the cross-modality
initialisation in :mod:`mat_effnet.modeling.models` finds the stem as ``conv1_conv``
for every ResNet.

Resulting sizes (checked in ``tests/test_models.py``): with the 1000-way top
ResNet-18 has 11,689,512 trainable parameters and ResNet-34 21,797,672, the
numbers of He et al. / torchvision; Keras also counts the BN moving mean and
variance (2 x 4,800 and 2 x 8,512 non-trainable values).
"""

from __future__ import annotations

import keras
from keras import layers

__all__ = ["RESNET_STAGE_BLOCKS", "resnet_features", "ResNet18", "ResNet34"]

#: Basic blocks per stage (conv2_x .. conv5_x), He et al. 2016, Table 1.
RESNET_STAGE_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
_STAGE_FILTERS = (64, 128, 256, 512)
# torchvision's BatchNorm2d defaults; Keras momentum 0.9 == torch momentum 0.1.
_BN_EPSILON = 1e-5
_BN_MOMENTUM = 0.9


def _bn(x, name, momentum):
    return layers.BatchNormalization(
        axis=-1, epsilon=_BN_EPSILON, momentum=momentum, name=name
    )(x)


def _conv(x, filters, kernel, stride, name):
    # Symmetric explicit padding (k // 2 on each side) as in the reference
    # implementations; "same" would pad only bottom/right for stride 2.
    pad = kernel // 2
    if pad:
        x = layers.ZeroPadding2D(padding=pad, name=name.replace("_conv", "_pad"))(x)
    return layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="valid",
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )(x)


def _basic_block(x, filters, stride, name, momentum):
    """One basic block; projection shortcut when stride or width changes."""
    in_channels = x.shape[-1]
    if stride != 1 or in_channels != filters:
        shortcut = _conv(x, filters, 1, stride, f"{name}_0_conv")
        shortcut = _bn(shortcut, f"{name}_0_bn", momentum)
    else:
        shortcut = x
    y = _conv(x, filters, 3, stride, f"{name}_1_conv")
    y = _bn(y, f"{name}_1_bn", momentum)
    y = layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = _conv(y, filters, 3, 1, f"{name}_2_conv")
    y = _bn(y, f"{name}_2_bn", momentum)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def resnet_features(x, depth="resnet18", bn_momentum=_BN_MOMENTUM):
    """Apply the convolutional trunk (stem + conv2..conv5) to tensor ``x``.

    Returns the last feature map (stride 32, 512 channels). ``depth`` is
    ``"resnet18"`` or ``"resnet34"``.
    """
    if depth not in RESNET_STAGE_BLOCKS:
        raise ValueError(
            f"depth must be one of {sorted(RESNET_STAGE_BLOCKS)}, got {depth!r}"
        )
    x = _conv(x, 64, 7, 2, "conv1_conv")
    x = _bn(x, "conv1_bn", bn_momentum)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(padding=1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for stage, (blocks, filters) in enumerate(
        zip(RESNET_STAGE_BLOCKS[depth], _STAGE_FILTERS), start=2
    ):
        for block in range(1, blocks + 1):
            # conv2_x keeps the resolution (the max-pool already halved it);
            # conv3_x..conv5_x halve it in their first block.
            stride = 2 if (block == 1 and stage > 2) else 1
            x = _basic_block(
                x, filters, stride, f"conv{stage}_block{block}", bn_momentum
            )
    return x


def _resnet(depth, include_top, input_shape, input_tensor, pooling, classes, name):
    if input_tensor is None:
        inputs = layers.Input(shape=input_shape, name="input")
        x = inputs
    else:
        inputs = keras.utils.get_source_inputs(input_tensor)
        x = input_tensor
    x = resnet_features(x, depth)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(classes, activation="softmax", name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    elif pooling is not None:
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    return keras.Model(inputs, x, name=name)


def ResNet18(
    include_top=False,
    input_shape=(224, 224, 3),
    input_tensor=None,
    pooling=None,
    classes=1000,
    name="resnet18",
):
    """ResNet-18 (basic blocks [2, 2, 2, 2]), randomly initialised.

    Takes already-normalised images; no preprocessing is built in (the
    stream builder in :mod:`mat_effnet.modeling.models` adds it). There are no Keras
    ImageNet weights for this net; load converted ones with ``load_weights``.
    """
    return _resnet("resnet18", include_top, input_shape, input_tensor, pooling,
                   classes, name)


def ResNet34(
    include_top=False,
    input_shape=(224, 224, 3),
    input_tensor=None,
    pooling=None,
    classes=1000,
    name="resnet34",
):
    """ResNet-34 (basic blocks [3, 4, 6, 3]); see :func:`ResNet18`."""
    return _resnet("resnet34", include_top, input_shape, input_tensor, pooling,
                   classes, name)
