"""MAT-EffNet streams, two-stream fusion and the ablation backbones.

Paper: Zhou et al., "MAT-EffNet: multi-head attention-based two-stream
EfficientNet for video action recognition", Multimedia Systems 2022.

* Sect. 3.3, Fig. 5, Table 1 -- one stream (:func:`build_from_spec`, and
  its keyword front :func:`build_stream`):
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
* Sect. 3.3, Fig. 1 -- late average fusion of the two softmax outputs
  (:func:`build_two_stream`).
* Fig. 9 -- attention scores for visualisation (:func:`build_attention_model`,
  ``attention_tokens="spatial"``).

What defines a stream is one value, `mat_effnet.modeling.stream_spec.StreamSpec` (checked
once when it is made); :func:`build_from_spec` builds it as a
:class:`~mat_effnet.modeling.model_identity.StreamModel` that saves the spec as its
identity. The backbone sub-model, its input normalisation and its ImageNet /
file / cross-modality initialisation are `mat_effnet.modeling.pretrained`'s; the
paper's per-backbone facts are the table of `mat_effnet.modeling.backbones`.

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
  inside the backbone sub-model, set from the table of `mat_effnet.modeling.backbones`.
* ``weights=None`` is the default (no silent download); the paper's UCF101 /
  HMDB51 rows use ``weights="imagenet"``, its Kinetics rows ``None``.
  ``image_size=None`` means the paper's size per backbone (Sect. 4.2).
* The attention layer uses Keras's defaults otherwise: biases on, no
  attention dropout (the paper names only the 0.2 dropout before the
  classifier).
"""

from __future__ import annotations

import dataclasses

import keras
from keras import layers

from mat_effnet.modeling.backbones import BACKBONE_SPECS, BACKBONES, check_image_size
from mat_effnet.common.checks import check_choice, check_fraction, check_int
from mat_effnet.common.errors import MatEffNetError
from mat_effnet.modeling.model_identity import (
    BACKBONE_LAYER,
    StreamModel,
    TwoStreamModel,
    identity,
    two_stream_identity_config,
)
from mat_effnet.modeling.layers import FoldSegments, LateFusion, SegmentsToTokens
from mat_effnet.modeling.pretrained import backbone_model
from mat_effnet.modeling.stream_spec import StreamSpec

__all__ = [
    "build_backbone",
    "build_from_spec",
    "build_stream",
    "build_two_stream",
    "build_mat_effnet",
    "build_attention_model",
    "attention_token_grid",
    "set_bn_momentum",
]


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
    return _set_bn_momentum(model, check_fraction("bn_momentum", momentum))


def _set_bn_momentum(model, momentum):
    changed = 0
    for layer in _all_layers(model):
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = momentum
            changed += 1
    return changed


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
    model = backbone_model(BACKBONE_SPECS[backbone], height, width, channels, weights, name)
    if bn_momentum is not None:
        _set_bn_momentum(model, bn_momentum)
    return model


# --------------------------------------------------------------------------
# streams
# --------------------------------------------------------------------------
def build_from_spec(spec: StreamSpec, *, weights=None, dropout=0.2, bn_momentum=None,
                    name=None):
    """One MAT-EffNet stream (Sect. 3.3, Fig. 5, Table 1) built from its spec.

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
    ``num_segments=None`` builds a model that takes any number of segments
    (the attention runs over however many tokens come): trained on K = 3
    segments, the same model is evaluated on TSN's 25.

    Nothing is checked again: ``spec`` was checked when it was made, and the
    training-only knobs, which do not define the model, by their caller
    (`mat_effnet.training.config.ModelConfig` or :func:`build_stream`). ``weights`` as
    in :func:`build_backbone` initialise the backbone only (the head is
    always random) and are no part of the spec: the saved weights are the
    model's own. ``dropout`` is the rate before the classifier;
    ``bn_momentum`` (e.g. 0.9) overrides every BatchNormalization momentum.
    The result is a :class:`StreamModel` whose saved config is
    ``spec.to_dict()`` (:func:`~mat_effnet.modeling.model_identity.identity` gives ``spec``
    back, also after loading).
    """
    height, width = spec.image_size
    backbone = backbone_model(spec.backbone_spec, height, width, spec.channels, weights,
                              BACKBONE_LAYER)
    if bn_momentum is not None:
        _set_bn_momentum(backbone, bn_momentum)
    inputs = layers.Input(shape=(spec.num_segments, height, width, spec.channels),
                          name=spec.input_name)
    x = FoldSegments(name="fold_segments")(inputs)
    x = backbone(x)
    if spec.attention_tokens == "segment":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if spec.num_segments is None:
        x = SegmentsToTokens(None, name="tokens")([x, inputs])
    else:
        x = SegmentsToTokens(spec.num_segments, name="tokens")(x)
    # Fig. 5: a linear Fc between the pooled backbone feature and attention.
    x = layers.Dense(spec.fc_units, name="fc")(x)
    if spec.attention:
        # Self-attention: query = key = value = the tokens. Output width
        # defaults to the query width, i.e. fc_units (512 in Table 1).
        # The scores are requested here although the stream ignores them:
        # Keras cannot reuse a layer node with a different number of
        # outputs, so this node is what build_attention_model reads them from.
        x, _ = layers.MultiHeadAttention(
            num_heads=spec.num_heads, key_dim=spec.key_dim, name="attention"
        )(x, x, return_attention_scores=True)
    x = layers.GlobalAveragePooling1D(name="token_mean")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(spec.num_classes, name="logits")(x)
    # float32 softmax: stays numerically sound under mixed_float16.
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    # A model built from a spec knows its facts: nothing about it is inferred.
    return StreamModel(inputs, outputs, name=name or f"{spec.stream}_stream",
                       identity=dataclasses.replace(spec, inferred=()) if spec.inferred
                       else spec)


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
    """One stream from keywords: the :class:`StreamSpec` of them, built.

    Every argument but ``weights``, ``dropout``, ``bn_momentum`` and ``name``
    is a field of the spec (see :class:`~mat_effnet.modeling.stream_spec.StreamSpec`, and
    :func:`build_from_spec` for the layers): the architecture, and what
    training knows, ``class_names``, ``dataset``, ``preparation`` and
    ``train_segments``. ``image_size=None`` uses the paper's size for the
    backbone.
    """
    spec = StreamSpec(
        num_classes=num_classes, stream=stream, backbone=backbone, attention=attention,
        attention_tokens=attention_tokens, num_heads=num_heads, key_dim=key_dim,
        fc_units=fc_units, flow_length=flow_length, image_size=image_size,
        num_segments=num_segments, train_segments=train_segments, class_names=class_names,
        dataset=dataset, preparation=preparation)
    return build_from_spec(
        spec, weights=weights, dropout=check_fraction("dropout", dropout),
        bn_momentum=check_fraction("bn_momentum", bn_momentum, allow_none=True), name=name)


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
