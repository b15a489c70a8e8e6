"""What a saved model is, carried in its own Keras config.

Paper: Zhou et al., "MAT-EffNet", Multimedia Systems 2022: a stream is
Sect. 3.3 / Fig. 5, the two-stream model the late fusion of Sect. 3.3 /
Fig. 1 (both built by `mat_effnet.modeling.models`).

A :class:`StreamModel` is a Functional model whose Keras config carries an
``identity`` entry, and that entry is its spec,
`mat_effnet.modeling.stream_spec.StreamSpec.to_dict`: the model is described once, by the
value it was built from, and :func:`identity` (or :attr:`StreamModel.spec`)
gives that value back after loading -- the way keras-hub's task models
store their constructor arguments in ``get_config``. It is kept out of the
constructor's named arguments: Keras saves a Functional subclass as a graph
only while its constructor looks like Functional's. A
:class:`TwoStreamModel` stores its streams' layer names and the fusion
weights (:class:`TwoStreamIdentity`). The registered names
(``mat_effnet>StreamModel``, ``mat_effnet>TwoStreamModel``) are what saved
files refer to; they must not change.

Models saved before are read as before, off shapes and layer names
(:func:`infer_backbone`), with one warning on stderr per model; identities
of version 1 lack the head sizes, which are then read off the
``attention`` and ``fc`` layers.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import keras

from mat_effnet.modeling.backbones import BACKBONES
from mat_effnet.common.errors import MatEffNetError
from mat_effnet.modeling.layers import LateFusion
from mat_effnet.modeling.stream_spec import IDENTITY_VERSION, StreamSpec

__all__ = [
    "StreamModel",
    "TwoStreamModel",
    "TwoStreamIdentity",
    "identity",
    "with_identity",
]

#: Name of a stream model's backbone sub-model.
BACKBONE_LAYER = "backbone"
_warned_models = set()


def _warn_once(key, message):
    """One line on stderr per model (models saved before this identity)."""
    if key in _warned_models:
        return
    _warned_models.add(key)
    print(f"mat-effnet: warning: {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class TwoStreamIdentity:
    """What a two-stream model is: its streams' specs and the fusion weights.

    ``class_names`` and ``dataset`` are the streams' (which agree);
    ``inferred`` is ``("fusion_weights",)`` for a model saved before models
    carried their identity.
    """

    num_classes: int
    streams: dict                    # {"spatial": StreamSpec, "temporal": StreamSpec}
    fusion_weights: tuple | None     # normalised
    class_names: tuple | None = None
    dataset: str | None = None
    inferred: tuple = ()

    @property
    def kind(self) -> str:
        return "two_stream"

    def to_dict(self) -> dict:
        """JSON-native form (what ``predict --json`` carries)."""
        return {"kind": "two_stream", "num_classes": self.num_classes,
                "streams": {k: v.to_dict() for k, v in self.streams.items()},
                "fusion_weights": None if self.fusion_weights is None
                else list(self.fusion_weights),
                "class_names": None if self.class_names is None else list(self.class_names),
                "dataset": self.dataset, "inferred": list(self.inferred)}


class _IdentifiedModel(keras.Model):
    """A Functional model whose config carries an ``identity`` dict.

    The constructor keeps Functional's signature ``(inputs, outputs, name)``
    (the identity travels in ``**kwargs``): Keras serialises such a subclass
    as a graph and revives it through that same constructor, while a
    Functional subclass with extra named arguments would be saved without
    its graph.
    """

    def __init__(self, inputs, outputs, name=None, **kwargs):
        identity_config = kwargs.pop("identity", None)
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        self._set_identity(identity_config)

    def _set_identity(self, config):
        self._identity_config = json.loads(json.dumps(config or {}))

    def _identity_dict(self):
        return self._identity_config

    def get_config(self):
        config = super().get_config()
        config["identity"] = json.loads(json.dumps(self._identity_dict()))
        return config


@keras.saving.register_keras_serializable(package="mat_effnet")
class StreamModel(_IdentifiedModel):
    """One stream (see `mat_effnet.modeling.models.build_from_spec`); its identity is its spec."""

    def _set_identity(self, config):
        # The builder hands over the (checked) spec itself; a loaded file its
        # dict, which version 1 wrote without the head sizes.
        if not isinstance(config, StreamSpec):
            config = StreamSpec.from_dict({**_head_sizes(self), **(config or {})})
        self._spec = config

    def _identity_dict(self):
        return self._spec.to_dict()

    @property
    def spec(self) -> StreamSpec:
        """The :class:`~mat_effnet.modeling.stream_spec.StreamSpec` this model was built from."""
        return self._spec


@keras.saving.register_keras_serializable(package="mat_effnet")
class TwoStreamModel(_IdentifiedModel):
    """Two fused streams (see `mat_effnet.modeling.models.build_two_stream`), carrying their identity."""


def _head_sizes(model):
    """``num_heads``, ``key_dim``, ``fc_units`` read off a stream's layers."""
    names = {l.name for l in model.layers}
    sizes = {}
    if "fc" in names:
        sizes["fc_units"] = int(model.get_layer("fc").units)
    if "attention" in names:
        attention = model.get_layer("attention")
        sizes.update(num_heads=int(attention.num_heads), key_dim=int(attention.key_dim))
    return sizes


def with_identity(model, *, class_names=..., dataset=..., preparation=...,
                  train_segments=...):
    """Sets what training knows about a stream model (in place; returns it).

    Only the arguments given change; None clears one. ``class_names``: one
    name per class index. ``dataset``: e.g. ``"ucf101"``. ``preparation``: a
    dict (or dataclass) with `mat_effnet.modeling.stream_spec.PREPARATION_KEYS`, other keys
    dropped. ``train_segments``: the K segments per clip the stream was
    trained on. See `mat_effnet.modeling.stream_spec.data_identity` for the first three from
    prepared data. The new spec is checked as any spec is.
    """
    if not isinstance(model, StreamModel):
        raise MatEffNetError(
            f"model={getattr(model, 'name', model)!r}: not a stream model built by "
            "mat_effnet.modeling.models.build_stream")
    given = {"class_names": class_names, "dataset": dataset, "preparation": preparation,
             "train_segments": train_segments}
    model._spec = dataclasses.replace(
        model._spec, **{k: v for k, v in given.items() if v is not ...})
    return model


def two_stream_identity_config(*, spatial_name, temporal_name, fusion_weights):
    """The ``identity`` entry of a two-stream model: its streams' layer names."""
    return {"version": IDENTITY_VERSION, "kind": "two_stream",
            "streams": {"spatial": spatial_name, "temporal": temporal_name},
            "fusion_weights": list(fusion_weights)}


def infer_backbone(model):
    """The backbone of a bare backbone model, read off its layer names."""
    names = {l.name for l in model.layers}
    if "stem_conv" in names and "top_conv" in names:
        return "efficientnet_b0"
    if "conv2_block1_3_conv" in names:
        return "resnet50"
    if "conv4_block6_2_conv" in names:
        return "resnet34"
    if "conv2_block1_2_conv" in names:
        return "resnet18"
    raise MatEffNetError(
        f"model {model.name!r} is not one of the backbones {BACKBONES}"
    )


def find_backbone(model, stream="spatial"):
    """The backbone sub-model of a stream model, of the ``stream`` branch of a
    two-stream model, or ``model`` itself (a bare backbone)."""
    if isinstance(model, TwoStreamModel):
        return find_backbone(_stream_layers(model)[stream])
    names = {l.name for l in model.layers}
    if BACKBONE_LAYER in names and isinstance(
        model.get_layer(BACKBONE_LAYER), keras.Model
    ):
        return model.get_layer(BACKBONE_LAYER)
    if f"{stream}_stream" in names:
        return find_backbone(model.get_layer(f"{stream}_stream"))
    return model


def _legacy_stream_identity(model):
    """Today's inference from shapes and layer names (models saved before)."""
    shape = model.inputs[0].shape  # (batch, segments, H, W, C)
    channels = int(shape[-1])
    stream = "spatial" if channels == 3 else "temporal"
    names = {l.name for l in model.layers}
    try:
        backbone = infer_backbone(find_backbone(model))
    except ValueError:
        backbone = None
    _warn_once(
        ("legacy", id(model)),
        f"model {model.name!r} was saved without its identity "
        f"(a plain Functional model): stream ({stream}), backbone and image size are read off its shapes "
        "and layer names; its class names, dataset and preparation settings are not in it")
    return StreamSpec(
        num_classes=int(model.outputs[0].shape[-1]), stream=stream, backbone=backbone,
        attention="attention" in names,
        attention_tokens="segment" if "avg_pool" in names else "spatial",
        flow_length=channels // 2 if stream == "temporal" else None,
        image_size=(int(shape[2]), int(shape[3])),
        num_segments=None if shape[1] is None else int(shape[1]), **_head_sizes(model),
        inferred=("stream", "backbone", "attention", "attention_tokens", "num_heads",
                  "key_dim", "fc_units", "flow_length", "image_size", "num_segments",
                  "num_classes"))


def _stream_layers(model):
    """``{"spatial": stream model, "temporal": ...}`` of a two-stream model."""
    config = getattr(model, "_identity_config", {})
    if config.get("kind") == "two_stream":
        return {s: model.get_layer(n) for s, n in config["streams"].items()}
    found = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model) and len(layer.inputs) == 1:
            found[identity(layer).stream] = layer
    return found


def identity(model) -> StreamSpec | TwoStreamIdentity:
    """What ``model`` is: a stream's :class:`~mat_effnet.modeling.stream_spec.StreamSpec`, or a
    two-stream model's :class:`TwoStreamIdentity`, read from its config.

    Models saved before models carried their identity are read as before,
    off shapes and layer names (``inferred`` lists those fields), with one
    warning on stderr per model.
    """
    if isinstance(model, StreamModel):
        return model.spec
    config = getattr(model, "_identity_config", None) or {}
    if config.get("kind") == "two_stream" or len(getattr(model, "inputs", ()) or ()) == 2:
        streams = {s: identity(m) for s, m in _stream_layers(model).items()}
        first = next(iter(streams.values()))
        known = [i for i in streams.values() if i.class_names is not None] or [first]
        if config.get("kind") == "two_stream":
            weights, inferred = tuple(config["fusion_weights"]), ()
        else:
            fusion = [l for l in model.layers if isinstance(l, LateFusion)]
            weights = tuple(fusion[0].fusion_weights) if fusion else None
            inferred = ("fusion_weights",)
        return TwoStreamIdentity(
            num_classes=first.num_classes, class_names=known[0].class_names,
            dataset=next((i.dataset for i in streams.values() if i.dataset), None),
            streams=streams, fusion_weights=weights, inferred=inferred)
    if not isinstance(model, keras.Model) or len(model.inputs) != 1 or \
            len(model.inputs[0].shape) != 5:
        raise MatEffNetError(
            f"model={getattr(model, 'name', model)!r}: not a stream or two-stream "
            "model (a stream takes (batch, segments, height, width, channels))")
    return _legacy_stream_identity(model)
