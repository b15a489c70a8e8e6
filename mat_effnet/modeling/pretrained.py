"""A stream's backbone sub-model and where its weights come from.

Paper: Zhou et al., "MAT-EffNet", Multimedia Systems 2022, Sect. 3.3 / 4.2
(ImageNet initialisation of both streams) and the TSN cross-modality
initialisation of the temporal stream (Wang et al., "Temporal Segment
Networks", ECCV 2016, Sect. 3.2: the RGB stem kernel averaged over its
channels and repeated for the ``2L`` flow channels).

Owns: the bare backbone (``keras.applications`` or `mat_effnet.modeling.resnet`) with
its input normalisation set from the table of `mat_effnet.modeling.backbones` (raw
0..255 in); the weight sources (``"imagenet"``, a ``.keras`` /
``.weights.h5`` / ``.h5`` file, a ``keras.Model``); the copy of a source's
learned layers by name, with the stem going from 3 to ``2L`` channels
(:func:`cross_modality_init`). `mat_effnet.modeling.models` builds streams on top.

Arguments are taken as checked (by `mat_effnet.modeling.stream_spec.StreamSpec` or
`mat_effnet.modeling.models.build_backbone`); backbones are passed as their row of
the table (:class:`mat_effnet.modeling.backbones.BackboneSpec`).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import keras
from keras import layers

from mat_effnet.modeling.backbones import BACKBONE_SPECS
from mat_effnet.common.errors import MatEffNetError
from mat_effnet.modeling.model_identity import (
    StreamModel,
    TwoStreamModel,
    find_backbone,
    identity,
    infer_backbone,
)
from mat_effnet.modeling.layers import ChannelStandardization
from mat_effnet.modeling.resnet import resnet_features

__all__ = ["backbone_model", "cross_modality_init"]

# Input normalisation layers: never copied between backbones.
_PREPROCESSING_TYPES = (layers.Normalization, ChannelStandardization)


def backbone_model(row, height, width, channels, weights, name):
    """The backbone ``row`` (raw 0..255 in, last feature map out), initialised.

    ``weights``: None (random), ``"imagenet"``, a path or a ``keras.Model``
    (see `mat_effnet.modeling.models.build_backbone`); RGB weights go into a flow
    backbone by cross-modality initialisation.
    """
    model = _bare_backbone(row, height, width, channels, name)
    if weights is not None:
        source = _source_backbone(weights, row, height, width, channels, "weights")
        _copy_backbone_weights(model, source, "weights")
    return model


def _set_keras_normalization(layer, mean, variance):
    # keras.layers.Normalization built without explicit statistics keeps them
    # in non-trainable variables and caches constant copies; finalize_state()
    # refreshes that cache after the assignment.
    layer.adapt_mean.assign(np.asarray(mean, dtype="float32"))
    layer.adapt_variance.assign(np.asarray(variance, dtype="float32"))
    layer.finalize_state()


def _keras_application(row, inputs, channels):
    """``keras.applications``' builder of backbone ``row`` on the tensor ``inputs``."""
    height, width = inputs.shape[1:3]
    with warnings.catch_warnings():
        # Keras warns about inputs that are not 1 or 3 channels; 2L flow
        # channels are intended here.
        warnings.filterwarnings("ignore", message=".*input channels.*")
        return getattr(keras.applications, row.keras_application)(
            include_top=False, weights=None, input_tensor=inputs,
            input_shape=(height, width, channels),
        )


def _set_builtin_normalization(model, row, channels):
    rescaling = [l for l in model.layers if isinstance(l, layers.Rescaling)]
    norm = [l for l in model.layers if isinstance(l, layers.Normalization)]
    # weights=None builds exactly one Rescaling(1/255) and one Normalization;
    # give them stable names (Keras auto-numbers them per session).
    rescaling[0].name = "input_rescaling"
    norm[0].name = "input_normalization"
    # The table is in raw 0..255 units; Keras's layer runs after its x / 255.
    mean, std, _ = row.input_statistics(channels)
    _set_keras_normalization(norm[0], [m / 255.0 for m in mean],
                             [(s / 255.0) ** 2 for s in std])


def _standardization(row, channels):
    mean, std, reverse = row.input_statistics(channels)
    return ChannelStandardization(mean, std, reverse_channels=reverse,
                                  name="input_standardization")


def _bare_backbone(row, height, width, channels, name):
    """Randomly initialised backbone (raw 0..255 in, last feature map out)."""
    inputs = layers.Input(shape=(height, width, channels), name="image")
    if row.builtin_normalization:
        features = _keras_application(row, inputs, channels).output
    else:
        x = _standardization(row, channels)(inputs)
        if row.keras_application:
            features = _keras_application(row, x, channels).output
        else:
            features = resnet_features(x, row.name)
    # Re-wrapped so the model's input is a single tensor rather than the
    # one-element list Keras builds from input_tensor.
    model = keras.Model(inputs, features, name=name)
    if row.builtin_normalization:
        _set_builtin_normalization(model, row, channels)
    return model


def _imagenet_backbone(row, height, width):
    """Keras's own ImageNet backbone (downloads on first use)."""
    application = row.keras_application
    if application is None:
        raise MatEffNetError(
            f"weights='imagenet' is not available for backbone={row.name!r}: Keras "
            "ships ImageNet weights only for "
            f"{', '.join(repr(n) for n, s in BACKBONE_SPECS.items() if s.keras_application)}"
            ". Pass weights=<path to a local .weights.h5/.h5/.keras file of an RGB "
            f"{row.name} backbone> (e.g. converted torchvision weights) or "
            "weights=None."
        )
    return getattr(keras.applications, application)(
        include_top=False, weights="imagenet", input_shape=(height, width, 3)
    )


def _weighted_layers(model):
    # Input normalisation is not learned and differs between RGB and flow (and
    # Keras's ImageNet EfficientNet stores a quirky variance), so it is never
    # copied; every other layer with weights must match one-to-one.
    return {
        l.name: l
        for l in model.layers
        if l.weights and not isinstance(l, _PREPROCESSING_TYPES)
    }


def _stem_layer(model):
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            return layer
    raise MatEffNetError(f"model {model.name!r} has no convolution")


def _copy_backbone_weights(target, source, what="weights"):
    """Copy every learned layer of ``source`` into ``target`` by layer name.

    The stem convolution may go from 3 (RGB) to ``2L`` (flow) input channels:
    its kernel is averaged over the RGB axis and repeated ``2L`` times (TSN
    cross-modality initialisation). Raises ValueError naming ``what`` when the
    two are not the same architecture.
    """
    tgt, src = _weighted_layers(target), _weighted_layers(source)
    missing, extra = sorted(set(tgt) - set(src)), sorted(set(src) - set(tgt))
    if missing or extra:
        raise MatEffNetError(
            f"{what}: the source model {source.name!r} is not a "
            f"{_backbone_name_or(target)} backbone (layers missing from "
            f"it: {missing[:5]}{'...' if len(missing) > 5 else ''}; unexpected "
            f"layers: {extra[:5]}{'...' if len(extra) > 5 else ''}). Accepted: "
            "weights of the same backbone, RGB or with the same channel count."
        )
    stem = _stem_layer(target).name
    target_channels = _stem_layer(target).kernel.shape[2]
    source_channels = _stem_layer(source).kernel.shape[2]
    if source_channels not in (3, target_channels):
        raise MatEffNetError(
            f"{what}: the source backbone takes {source_channels} input channels; "
            f"accepted are 3 (RGB, cross-modality initialisation) or "
            f"{target_channels} (same modality)"
        )
    for name, layer in tgt.items():
        if len(layer.weights) != len(src[name].weights):
            raise MatEffNetError(
                f"{what}: layer {name!r} has {len(src[name].weights)} weights in "
                f"the source but {len(layer.weights)} in this model"
            )
        new = []
        for t_var, s_val in zip(layer.weights, src[name].get_weights()):
            if name == stem and t_var.path.endswith("kernel") and (
                s_val.shape[2] != t_var.shape[2]
            ):
                s_val = _cross_modality_kernel(s_val, t_var.shape[2])
            if tuple(s_val.shape) != tuple(t_var.shape):
                raise MatEffNetError(
                    f"{what}: layer {name!r} has weights of shape "
                    f"{tuple(s_val.shape)} in the source but {tuple(t_var.shape)} "
                    "in this model (different architecture or channel count)"
                )
            new.append(s_val)
        layer.set_weights(new)
    return target


def _backbone_name_or(model):
    try:
        return repr(infer_backbone(model))
    except ValueError:
        return "matching"


def _cross_modality_kernel(kernel, channels):
    """TSN cross-modality init: RGB mean of the kernel, repeated per channel."""
    mean = kernel.mean(axis=2, keepdims=True)
    return np.repeat(mean, channels, axis=2).astype(kernel.dtype)


def _source_backbone(source, row, height, width, target_channels, what):
    """Turn a weights source ("imagenet", a path or a model) into a backbone."""
    if isinstance(source, keras.Model):
        return find_backbone(source)
    if isinstance(source, str) and source == "imagenet":
        return _imagenet_backbone(row, height, width)
    if not isinstance(source, (str, os.PathLike)):
        raise MatEffNetError(
            f"{what} must be None, 'imagenet', a keras.Model or a path to a "
            f".keras / .weights.h5 / .h5 file; got {source!r}"
        )
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise MatEffNetError(
            f"{what}: no such file {path!r} (accepted: None, 'imagenet' or a "
            "path to a .keras / .weights.h5 / .h5 file)"
        )
    if path.endswith(".keras"):
        try:
            loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
        except Exception as err:  # noqa: BLE001 -- re-raised as ValueError
            raise MatEffNetError(f"{what}: could not load {path!r}: {err}") from err
        return find_backbone(loaded)
    if path.endswith(".h5"):
        # A weights-only file carries no architecture: load it into a fresh
        # RGB backbone (or one with the target's channels, to resume a
        # temporal stream) of the requested kind. Keras refuses files whose
        # layers do not fit; weights of trailing extra layers (an ImageNet
        # classifier top) are ignored, which leaves the backbone part right.
        errors = []
        tried = tuple(dict.fromkeys((3, target_channels)))
        for channels in tried:
            reference = _bare_backbone(row, height, width, channels,
                                       f"{row.name}_reference")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    reference.load_weights(path)
                return reference
            except Exception as err:  # noqa: BLE001 -- collected below
                errors.append(f"{channels} channels: {err}")
        raise MatEffNetError(
            f"{what}: {path!r} does not hold weights of a {row.name} backbone "
            f"with {' or '.join(map(str, tried))} input channels "
            f"({'; '.join(errors)[:600]})"
        )
    raise MatEffNetError(
        f"{what}: unsupported file {path!r}; accepted are .keras (a backbone, "
        "stream or two-stream model) and .weights.h5 / .h5 (backbone weights)"
    )


def cross_modality_init(temporal_model_or_backbone, rgb_weights_source):
    """TSN cross-modality initialisation of a temporal stream (in place).

    Every learned backbone layer is copied by name from the RGB source; the
    stem convolution's kernel ``(k, k, 3, f)`` is averaged over its 3 input
    channels and repeated ``2L`` times. The input normalisation is left as
    built for flow, ``(x - 127.5) / 127.5`` (``x - 127.5`` for ResNet-50),
    never ImageNet's RGB statistics. The head (Fc, attention, classifier)
    is not touched.

    ``rgb_weights_source``: ``"imagenet"``, a path (``.keras`` RGB backbone /
    stream, ``.weights.h5`` / ``.h5`` RGB backbone weights) or a
    ``keras.Model``. Returns ``temporal_model_or_backbone``.
    """
    target = find_backbone(temporal_model_or_backbone, stream="temporal")
    if isinstance(temporal_model_or_backbone, (StreamModel, TwoStreamModel)):
        ident = identity(temporal_model_or_backbone)
        backbone = (ident.streams["temporal"] if ident.kind == "two_stream" else ident).backbone
    else:  # a bare backbone says what it is only through its layer names
        backbone = infer_backbone(target)
    _, height, width, channels = target.input_shape
    source = _source_backbone(rgb_weights_source, BACKBONE_SPECS[backbone], height, width, 3,
                              "rgb_weights_source")
    source_channels = _stem_layer(source).kernel.shape[2]
    if source_channels != 3:
        raise MatEffNetError(
            "rgb_weights_source must hold an RGB (3-channel) backbone, got one "
            f"with {source_channels} input channels"
        )
    _copy_backbone_weights(target, source, "rgb_weights_source")
    return temporal_model_or_backbone


