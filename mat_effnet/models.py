"""MAT-EffNet streams, two-stream fusion and the ablation backbones.

Paper: Zhou et al., "MAT-EffNet: multi-head attention-based two-stream
EfficientNet for video action recognition", Multimedia Systems 2022.

* Sect. 3.3, Fig. 5, Table 1 -- one stream (:func:`build_stream`):
  ``segments`` frames (spatial stream, RGB) or stacks of ``L`` optical-flow
  fields (temporal stream, ``2L`` channels) each go through the same 2D
  backbone (weights shared across segments), global average pooling
  (1280-d for EfficientNet-B0), a linear Fc layer to 512, multi-head
  self-attention with ``h = 2`` heads and a 512-d output (Sect. 3.2, Eq. 3-5)
  across the segment tokens, the mean over the tokens, dropout 0.2
  (Sect. 4.2) and Fc + softmax over the classes (Table 1, row 11).
* Sect. 4.3, Tables 2-3 -- the ablation backbones ``efficientnet_b0``,
  ``resnet50``, ``resnet18``, ``resnet34``, each with ``attention=True``
  (Fc -> MHA -> mean) or ``attention=False`` (Fc -> mean, the baseline rows).
* Sect. 3.3 / 4.2 -- ImageNet initialisation of both streams; the temporal
  stream uses TSN cross-modality initialisation (:func:`cross_modality_init`).
* Sect. 3.3, Fig. 1 -- late average fusion of the two softmax outputs
  (:func:`build_two_stream`).
* Fig. 9 -- attention scores for visualisation (:func:`build_attention_model`,
  ``attention_tokens="spatial"``).
* The paper's per-backbone facts (input size, feature size, input
  normalisation) are one table, `mat_effnet.backbones`.

The models carry their identity (`mat_effnet.identity`): :func:`build_stream`
returns a :class:`~mat_effnet.identity.StreamModel`, :func:`build_two_stream`
a :class:`~mat_effnet.identity.TwoStreamModel`.

Decisions the paper leaves open (all documented where they are made):

* Attention tokens: one token per segment (``Y`` in Eq. 2 is the pooled
  feature of every segment). ``key_dim = 256`` per head, so the two heads
  together span the 512-d model width (``d_k = d_model / h`` as in Vaswani et
  al.); the output projection maps back to 512 (Table 1, row 10). No
  positional encoding is added, so the stream output does not depend on the
  order of the segments (self-attention is permutation-equivariant and the
  token mean is permutation-invariant); without attention the same holds
  trivially.
* Inputs are raw 0..255 values for every backbone; the normalisation lives
  inside the backbone sub-model (see ``build_backbone``), set from the table
  of `mat_effnet.backbones` (its docstring lists it per backbone).
* ``weights=None`` is the default (no silent download); the paper's UCF101 /
  HMDB51 rows use ``weights="imagenet"``, its Kinetics rows ``None``.
  ``image_size=None`` means the paper's size per backbone (Sect. 4.2).
* The attention layer uses Keras's defaults otherwise: biases on, no
  attention dropout (the paper names only the 0.2 dropout before the
  classifier).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import keras
from keras import layers

from mat_effnet.backbones import (
    BACKBONE_SPECS,
    BACKBONES,
    STREAMS,
    backbone_spec,
    check_image_size,
    input_statistics,
)
from mat_effnet.checks import check_choice, check_fraction, check_int
from mat_effnet.errors import MatEffNetError
from mat_effnet.identity import (
    BACKBONE_LAYER,
    StreamModel,
    TwoStreamModel,
    find_backbone,
    identity,
    infer_backbone,
    stream_identity_config,
    two_stream_identity_config,
    with_identity,
)
from mat_effnet.layers import (
    ChannelStandardization,
    FoldSegments,
    LateFusion,
    SegmentsToTokens,
)
from mat_effnet.resnet import resnet_features

__all__ = [
    "ATTENTION_TOKENS",
    "input_channels",
    "build_backbone",
    "cross_modality_init",
    "build_stream",
    "build_two_stream",
    "build_mat_effnet",
    "build_attention_model",
    "attention_token_grid",
    "set_bn_momentum",
]

#: Accepted ``attention_tokens`` values.
ATTENTION_TOKENS = ("segment", "spatial")
# Input normalisation layers: never copied between backbones.
_PREPROCESSING_TYPES = (layers.Normalization, ChannelStandardization)


def input_channels(stream, flow_length=10):
    """Input channels of a stream: 3 (RGB) or ``2 * flow_length`` (x/y flow).

    Temporal channels are interleaved: channel ``2i`` is the horizontal and
    ``2i + 1`` the vertical flow of frame ``i`` of the stack.
    """
    check_choice("stream", stream, STREAMS)
    flow_length = check_int("flow_length", flow_length, 1)
    return 3 if stream == "spatial" else 2 * flow_length


# --------------------------------------------------------------------------
# backbones
# --------------------------------------------------------------------------
def _all_layers(model):
    """Every layer of ``model``, descending into nested models."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def set_bn_momentum(model, momentum):
    """Set ``momentum`` on every BatchNormalization layer (nested included).

    Keras's default 0.99 makes the moving statistics lag far behind when a
    network is trained from scratch for few steps (the demo), so the stream
    builder can override it. Returns the number of layers changed.
    """
    momentum = check_fraction("bn_momentum", momentum)
    changed = 0
    for layer in _all_layers(model):
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = momentum
            changed += 1
    return changed


def _set_keras_normalization(layer, mean, variance):
    # keras.layers.Normalization built without explicit statistics keeps them
    # in non-trainable variables and caches constant copies; finalize_state()
    # refreshes that cache after the assignment.
    layer.adapt_mean.assign(np.asarray(mean, dtype="float32"))
    layer.adapt_variance.assign(np.asarray(variance, dtype="float32"))
    layer.finalize_state()


def _keras_application(backbone, inputs, channels, weights=None):
    """``keras.applications``' builder of ``backbone`` on the tensor ``inputs``."""
    height, width = inputs.shape[1:3]
    with warnings.catch_warnings():
        # Keras warns about inputs that are not 1 or 3 channels; 2L flow
        # channels are intended here.
        warnings.filterwarnings("ignore", message=".*input channels.*")
        return getattr(keras.applications, backbone_spec(backbone).keras_application)(
            include_top=False, weights=weights, input_tensor=inputs,
            input_shape=(height, width, channels),
        )


def _set_builtin_normalization(model, backbone, channels):
    rescaling = [l for l in model.layers if isinstance(l, layers.Rescaling)]
    norm = [l for l in model.layers if isinstance(l, layers.Normalization)]
    # weights=None builds exactly one Rescaling(1/255) and one Normalization;
    # give them stable names (Keras auto-numbers them per session).
    rescaling[0].name = "input_rescaling"
    norm[0].name = "input_normalization"
    # The table is in raw 0..255 units; Keras's layer runs after its x / 255.
    mean, std, _ = input_statistics(backbone, channels)
    _set_keras_normalization(norm[0], [m / 255.0 for m in mean],
                             [(s / 255.0) ** 2 for s in std])


def _standardization(backbone, channels):
    mean, std, reverse = input_statistics(backbone, channels)
    return ChannelStandardization(mean, std, reverse_channels=reverse,
                                  name="input_standardization")


def _bare_backbone(backbone, height, width, channels, name):
    """Randomly initialised backbone (raw 0..255 in, last feature map out)."""
    spec = backbone_spec(backbone)
    inputs = layers.Input(shape=(height, width, channels), name="image")
    if spec.builtin_normalization:
        features = _keras_application(backbone, inputs, channels).output
    else:
        x = _standardization(backbone, channels)(inputs)
        if spec.keras_application:
            features = _keras_application(backbone, x, channels).output
        else:
            features = resnet_features(x, backbone)
    # Re-wrapped so the model's input is a single tensor rather than the
    # one-element list Keras builds from input_tensor.
    model = keras.Model(inputs, features, name=name)
    if spec.builtin_normalization:
        _set_builtin_normalization(model, backbone, channels)
    return model


def _imagenet_backbone(backbone, height, width):
    """Keras's own ImageNet backbone (downloads on first use)."""
    application = backbone_spec(backbone).keras_application
    if application is None:
        raise MatEffNetError(
            f"weights='imagenet' is not available for backbone={backbone!r}: Keras "
            "ships ImageNet weights only for "
            f"{', '.join(repr(n) for n, s in BACKBONE_SPECS.items() if s.keras_application)}"
            ". Pass weights=<path to a local .weights.h5/.h5/.keras file of an RGB "
            f"{backbone} backbone> (e.g. converted torchvision weights) or "
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


def _source_backbone(source, backbone, height, width, target_channels, what):
    """Turn a weights source ("imagenet", a path or a model) into a backbone."""
    if isinstance(source, keras.Model):
        return find_backbone(source)
    if isinstance(source, str) and source == "imagenet":
        return _imagenet_backbone(backbone, height, width)
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
            reference = _bare_backbone(backbone, height, width, channels,
                                       f"{backbone}_reference")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    reference.load_weights(path)
                return reference
            except Exception as err:  # noqa: BLE001 -- collected below
                errors.append(f"{channels} channels: {err}")
        raise MatEffNetError(
            f"{what}: {path!r} does not hold weights of a {backbone} backbone "
            f"with {' or '.join(map(str, tried))} input channels "
            f"({'; '.join(errors)[:600]})"
        )
    raise MatEffNetError(
        f"{what}: unsupported file {path!r}; accepted are .keras (a backbone, "
        "stream or two-stream model) and .weights.h5 / .h5 (backbone weights)"
    )


def build_backbone(
    backbone="efficientnet_b0",
    channels=3,
    image_size=None,
    weights=None,
    bn_momentum=None,
    name=BACKBONE_LAYER,
):
    """One backbone: ``(H, W, channels)`` raw 0..255 -> last feature map.

    The input normalisation (module docstring table) is the first layer(s) of
    the returned model. ``weights``: None (random init), ``"imagenet"``
    (Keras download; EfficientNet-B0 and ResNet-50 only), a path to a
    ``.keras`` / ``.weights.h5`` / ``.h5`` file of an RGB backbone (or of a
    stream / two-stream ``.keras`` model, whose RGB backbone is used), or a
    ``keras.Model``. With ``channels != 3`` RGB weights are transferred by
    cross-modality initialisation.
    """
    check_choice("backbone", backbone, BACKBONES)
    channels = check_int("channels", channels, 1)
    height, width = check_image_size(image_size, backbone)
    bn_momentum = check_fraction("bn_momentum", bn_momentum, allow_none=True)
    model = _bare_backbone(backbone, height, width, channels, name)
    if weights is not None:
        source = _source_backbone(weights, backbone, height, width, channels,
                                  "weights")
        _copy_backbone_weights(model, source, "weights")
    if bn_momentum is not None:
        set_bn_momentum(model, bn_momentum)
    return model


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
        backbone = identity(temporal_model_or_backbone)
        backbone = (backbone.streams["temporal"] if backbone.streams else backbone).backbone
    else:  # a bare backbone says what it is only through its layer names
        backbone = infer_backbone(target)
    _, height, width, channels = target.input_shape
    source = _source_backbone(rgb_weights_source, backbone, height, width, 3,
                              "rgb_weights_source")
    source_channels = _stem_layer(source).kernel.shape[2]
    if source_channels != 3:
        raise MatEffNetError(
            "rgb_weights_source must hold an RGB (3-channel) backbone, got one "
            f"with {source_channels} input channels"
        )
    _copy_backbone_weights(target, source, "rgb_weights_source")
    return temporal_model_or_backbone


# --------------------------------------------------------------------------
# streams
# --------------------------------------------------------------------------
def build_stream(
    num_classes,
    stream="spatial",
    *,
    num_segments=3,
    image_size=None,
    flow_length=10,
    backbone="efficientnet_b0",
    attention=True,
    attention_tokens="segment",
    weights=None,
    dropout=0.2,
    bn_momentum=None,
    num_heads=2,
    key_dim=256,
    fc_units=512,
    class_names=None,
    dataset=None,
    preparation=None,
    train_segments=None,
    name=None,
):
    """One MAT-EffNet stream (Sect. 3.3, Fig. 5, Table 1) as a ``keras.Model``.

    Input ``(batch, num_segments, H, W, C)`` of raw 0..255 values, named
    ``"rgb"`` (C = 3) or ``"flow"`` (C = 2 * flow_length, x/y interleaved).
    Output: class probabilities ``(batch, num_classes)`` in float32.

    Layers: ``fold_segments`` -> ``backbone`` (shared over segments) ->
    ``avg_pool`` -> ``tokens`` -> ``fc`` (linear, ``fc_units``) ->
    ``attention`` (``keras.layers.MultiHeadAttention``, ``num_heads`` heads of
    ``key_dim``, output ``fc_units``; only if ``attention``) -> ``token_mean``
    -> ``dropout`` -> ``logits`` -> ``probabilities`` (float32 softmax).

    ``attention_tokens="spatial"`` skips ``avg_pool`` and feeds every position
    of every segment's last feature map as a token
    (``segments * h * w`` tokens, order given by :class:`SegmentsToTokens`).
    ``image_size=None`` uses the paper's size for the backbone
    (:data:`PAPER_INPUT_SIZE`). ``weights`` as in :func:`build_backbone`;
    they initialise the backbone only, the head is always random.
    ``bn_momentum`` (e.g. 0.9) overrides every BatchNormalization momentum.
    ``num_segments=None`` builds a model that takes any number of segments
    (the attention runs over however many tokens come): trained on K = 3
    segments, the same model is evaluated on TSN's 25.

    The result is a :class:`StreamModel` whose saved config carries its
    identity (:func:`identity`): the architecture arguments above, and what
    training knows, ``class_names``, ``dataset``, ``preparation`` and
    ``train_segments`` (see :func:`with_identity`). ``weights`` is not part of
    it: the saved weights are the model's own.
    """
    num_classes = check_int("num_classes", num_classes, 2)
    check_choice("stream", stream, STREAMS)
    if num_segments is not None:  # None: any number of segments per clip
        num_segments = check_int("num_segments", num_segments, 1)
    channels = input_channels(stream, flow_length)
    height, width = check_image_size(image_size, backbone)  # checks backbone too
    if not isinstance(attention, bool):
        raise MatEffNetError(f"attention must be True or False, got {attention!r}")
    check_choice("attention_tokens", attention_tokens, ATTENTION_TOKENS)
    dropout = check_fraction("dropout", dropout)
    num_heads = check_int("num_heads", num_heads, 1)
    key_dim = check_int("key_dim", key_dim, 1)
    fc_units = check_int("fc_units", fc_units, 1)

    backbone_model = build_backbone(
        backbone, channels, (height, width), weights=weights,
        bn_momentum=bn_momentum,
    )
    inputs = layers.Input(
        shape=(num_segments, height, width, channels),
        name="rgb" if stream == "spatial" else "flow",
    )
    x = FoldSegments(name="fold_segments")(inputs)
    x = backbone_model(x)
    if attention_tokens == "segment":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if num_segments is None:
        x = SegmentsToTokens(None, name="tokens")([x, inputs])
    else:
        x = SegmentsToTokens(num_segments, name="tokens")(x)
    # Fig. 5: a linear Fc between the pooled backbone feature and attention.
    x = layers.Dense(fc_units, name="fc")(x)
    if attention:
        # Self-attention: query = key = value = the tokens. Output width
        # defaults to the query width, i.e. fc_units (512 in Table 1).
        # The scores are requested here although the stream ignores them:
        # Keras cannot reuse a layer node with a different number of
        # outputs, so this node is what build_attention_model reads them from.
        x, _ = layers.MultiHeadAttention(
            num_heads=num_heads, key_dim=key_dim, name="attention"
        )(x, x, return_attention_scores=True)
    x = layers.GlobalAveragePooling1D(name="token_mean")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    # float32 softmax: stays numerically sound under mixed_float16.
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    model = StreamModel(inputs, outputs, name=name or f"{stream}_stream",
                        identity=stream_identity_config(
                            stream=stream, backbone=backbone, attention=attention,
                            attention_tokens=attention_tokens, flow_length=flow_length,
                            image_size=(height, width), num_segments=num_segments,
                            num_classes=num_classes))
    return with_identity(model, class_names=class_names, dataset=dataset,
                         preparation=preparation, train_segments=train_segments)


def build_two_stream(spatial_model, temporal_model, fusion_weights=(1.0, 1.0),
                     name="mat_effnet"):
    """Late weighted-average fusion of two stream models (Sect. 3.3, Fig. 1).

    Returns one ``keras.Model`` with inputs ``[rgb, flow]`` (Input layers
    named ``"rgb"`` and ``"flow"``, so it can also be called with a dict
    ``{"rgb": ..., "flow": ...}``) and output
    ``w_s * p_spatial + w_t * p_temporal`` with ``(w_s, w_t)`` the
    ``fusion_weights`` normalised to sum to 1 (default 1:1, the paper's
    average). The stream models are shared, not copied.

    The result is a :class:`TwoStreamModel`; :func:`identity` gives the
    fusion weights and each stream's identity. Streams that know their
    class names or dataset must agree on them.
    """
    for arg, model in (("spatial_model", spatial_model),
                       ("temporal_model", temporal_model)):
        if not isinstance(model, keras.Model) or len(model.inputs) != 1:
            raise MatEffNetError(f"{arg} must be a single-input stream keras.Model")
    if spatial_model.output_shape != temporal_model.output_shape:
        raise MatEffNetError(
            "spatial_model and temporal_model must predict the same classes, got "
            f"outputs {spatial_model.output_shape} and {temporal_model.output_shape}"
        )
    if spatial_model.name == temporal_model.name:
        raise MatEffNetError(
            f"spatial_model and temporal_model need different names, both are "
            f"{spatial_model.name!r}"
        )
    if len(tuple(fusion_weights)) != 2:
        raise MatEffNetError(
            f"fusion_weights must be a pair (spatial, temporal), got {fusion_weights!r}"
        )
    given = {"spatial": spatial_model, "temporal": temporal_model}
    ids = {stream: identity(model) for stream, model in given.items()}
    for stream, model in given.items():
        if ids[stream].stream != stream:
            raise MatEffNetError(
                f"{stream}_model={model.name!r}: is a {ids[stream].stream} stream model")
    for key in ("class_names", "dataset"):
        a, b = getattr(ids["spatial"], key), getattr(ids["temporal"], key)
        if a is not None and b is not None and a != b:
            raise MatEffNetError(
                f"temporal_model={temporal_model.name!r}: its {key} {_short(b)} differ "
                f"from the spatial stream's {_short(a)}")
    fusion = LateFusion(fusion_weights, name="fusion")
    rgb = layers.Input(shape=spatial_model.input_shape[1:], name="rgb")
    flow = layers.Input(shape=temporal_model.input_shape[1:], name="flow")
    fused = fusion([spatial_model(rgb), temporal_model(flow)])
    return TwoStreamModel(
        [rgb, flow], fused, name=name,
        identity=two_stream_identity_config(
            spatial_name=spatial_model.name, temporal_name=temporal_model.name,
            fusion_weights=fusion.fusion_weights))


def _short(value):
    """A value for an error message, long lists cut to their first items."""
    if isinstance(value, (list, tuple)) and len(value) > 4:
        return repr(list(value[:4]))[:-1] + f", ... ({len(value)} in all)]"
    return repr(list(value) if isinstance(value, tuple) else value)


def build_mat_effnet(num_classes, *, fusion_weights=(1.0, 1.0),
                     name="mat_effnet", **stream_kwargs):
    """Both streams from one configuration, fused (the full MAT-EffNet).

    ``stream_kwargs`` go to :func:`build_stream` for both streams; an RGB
    ``weights`` source initialises the spatial stream directly and the
    temporal stream by cross-modality initialisation.
    """
    if "stream" in stream_kwargs or "name" in stream_kwargs:
        raise MatEffNetError("stream and name are set by build_mat_effnet itself")
    spatial = build_stream(num_classes, "spatial", **stream_kwargs)
    temporal = build_stream(num_classes, "temporal", **stream_kwargs)
    return build_two_stream(spatial, temporal, fusion_weights, name=name)


# --------------------------------------------------------------------------
# attention read-out (Fig. 9)
# --------------------------------------------------------------------------
def build_attention_model(stream_model):
    """Sibling model exposing the attention scores of a stream (Fig. 9).

    Shares every layer (and so every weight) with ``stream_model``. Outputs a
    dict: ``"probabilities"`` ``(batch, classes)`` (identical to
    ``stream_model``'s output) and ``"attention_scores"``
    ``(batch, heads, tokens, tokens)``, each row a softmax over the keys.
    See :func:`attention_token_grid` for the token layout.
    """
    names = {l.name for l in stream_model.layers}
    if "attention" not in names:
        raise MatEffNetError(
            f"stream_model {stream_model.name!r} has no 'attention' layer "
            "(built with attention=False?)"
        )
    # The stream's attention node already outputs (attended, scores).
    _, scores = stream_model.get_layer("attention").output
    probabilities = stream_model.output
    return keras.Model(
        stream_model.input,
        {"probabilities": probabilities, "attention_scores": scores},
        name=f"{stream_model.name}_attention",
    )


def attention_token_grid(stream_model):
    """``(segments, h, w)`` such that tokens reshape to that grid (C order).

    ``(segments, 1, 1)`` for one token per segment; ``(segments, h, w)`` with
    the last feature map's size for ``attention_tokens="spatial"``.
    """
    segments = stream_model.input_shape[1]
    if identity(stream_model).attention_tokens == "segment":
        return (segments, 1, 1)
    _, h, w, _ = stream_model.get_layer(BACKBONE_LAYER).output_shape
    return (segments, h, w)
