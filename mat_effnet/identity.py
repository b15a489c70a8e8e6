"""What a saved model is, carried in its own Keras config (issue 11).

Paper: Zhou et al., "MAT-EffNet", Multimedia Systems 2022: a stream is
Sect. 3.3 / Fig. 5, the two-stream model the late fusion of Sect. 3.3 /
Fig. 1 (both built by `mat_effnet.models`).

:class:`StreamModel` and :class:`TwoStreamModel` are Functional models whose
Keras config carries an ``identity`` entry: the architecture (stream,
backbone, attention, flow length, image size, segments) and what training
knew (class names, dataset, the preparation settings of the training data,
training segments); see :func:`identity` and :func:`with_identity`. It is
stored the way keras-hub's task models store their constructor arguments in
``get_config``, but kept out of the constructor's named arguments: Keras
saves a Functional subclass as a graph only while its constructor looks
like Functional's. The registered names (``mat_effnet>StreamModel``,
``mat_effnet>TwoStreamModel``) are what saved files refer to; they must not
change.

Models saved before are read as before, off shapes and layer names
(:func:`infer_backbone`), with one warning on stderr per model.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import keras

from mat_effnet.backbones import BACKBONES
from mat_effnet.checks import check_int
from mat_effnet.errors import MatEffNetError
from mat_effnet.layers import LateFusion

__all__ = [
    "StreamModel",
    "TwoStreamModel",
    "ModelIdentity",
    "identity",
    "with_identity",
    "data_identity",
    "PREPARATION_KEYS",
    "PREPARATION_MUST_MATCH",
]

#: Name of a stream model's backbone sub-model.
BACKBONE_LAYER = "backbone"
#: Version of the ``identity`` entry of a model's config.
IDENTITY_VERSION = 1
#: Keys of ``preparation``: the settings of the training data's preparation
#: (mat-effnet-prep) that a video must be prepared with to be scored alike.
#: Each with the type it is stored as.
_PREPARATION_TYPES = {"short_side": int, "flow": str, "flow_implementation": str,
                      "flow_bound": float, "jpeg_quality": int, "schema_version": int}
PREPARATION_KEYS = tuple(_PREPARATION_TYPES)
#: The preparation keys that change what a stream sees (not just how fast it
#: was computed): a mismatch with the evaluated data is an error. Another
#: ``flow_implementation`` of the same algorithm only gets a note.
PREPARATION_MUST_MATCH = ("flow", "flow_bound")
#: Every preparation before issue 11 computed flow with OpenCV.
DEFAULT_FLOW_IMPLEMENTATION = "opencv"

_warned_models = set()


def _warn_once(key, message):
    """One line on stderr per model (models saved before this identity)."""
    if key in _warned_models:
        return
    _warned_models.add(key)
    print(f"mat-effnet: warning: {message}", file=sys.stderr, flush=True)


def _check_class_names(class_names, num_classes):
    if class_names is None:
        return None
    if isinstance(class_names, str) or not all(
            isinstance(c, str) and c for c in class_names):
        raise MatEffNetError(
            f"class_names={class_names!r}: must be a list of non-empty strings")
    names = [str(c) for c in class_names]
    if len(names) != num_classes:
        raise MatEffNetError(
            f"class_names={names[:3]}{'...' if len(names) > 3 else ''}: "
            f"{len(names)} names for a model of {num_classes} classes")
    if len(set(names)) != len(names):
        raise MatEffNetError(f"class_names={names}: a name appears twice")
    return names


def _check_preparation(preparation):
    """The known keys of ``preparation`` as JSON-native values (others dropped)."""
    if preparation is None:
        return None
    if dataclasses.is_dataclass(preparation):
        preparation = dataclasses.asdict(preparation)
    if not isinstance(preparation, dict):
        raise MatEffNetError(
            f"preparation={preparation!r}: must be a dict with keys "
            f"{', '.join(PREPARATION_KEYS)}")
    out = {}
    for key, kind in _PREPARATION_TYPES.items():
        value = preparation.get(key)
        if value is None:
            continue
        try:
            if kind is str:
                if not isinstance(value, str):
                    raise TypeError
                out[key] = value
            elif kind is int:
                if isinstance(value, bool) or int(value) != value:
                    raise TypeError
                out[key] = int(value)
            else:
                out[key] = float(value)
        except (TypeError, ValueError):
            raise MatEffNetError(
                f"preparation[{key!r}]={value!r}: must be {kind.__name__}") from None
    return out


def data_identity(meta):
    """``class_names``, ``dataset`` and ``preparation`` of prepared data.

    ``meta`` is :func:`mat_effnet.records.read_metadata`'s dict; the result
    is meant to be splatted into `mat_effnet.models.build_stream` or
    :func:`with_identity`.
    """
    settings = dict(meta.get("settings") or {})
    preparation = {k: settings[k] for k in PREPARATION_KEYS if k in settings}
    if "flow_implementation" not in preparation and settings.get("flow", "none") != "none":
        preparation["flow_implementation"] = DEFAULT_FLOW_IMPLEMENTATION
    if meta.get("schema_version") is not None:
        preparation["schema_version"] = meta["schema_version"]
    dataset = meta.get("name") or settings.get("name") or meta.get("dataset") or \
        settings.get("dataset")
    return {"class_names": list(meta["classes"]) if meta.get("classes") else None,
            "dataset": str(dataset) if dataset else None,
            "preparation": preparation or None}


@dataclasses.dataclass(frozen=True)
class ModelIdentity:
    """What a stream or two-stream model is (see :func:`identity`).

    ``inferred`` names the fields read off shapes and layer names because
    the model was saved before models carried their identity; None fields
    are unknown.
    """

    kind: str                        # "stream" or "two_stream"
    num_classes: int
    class_names: tuple | None = None
    dataset: str | None = None
    preparation: dict | None = None  # keys PREPARATION_KEYS (some may be missing)
    stream: str | None = None        # stream models: "spatial" / "temporal"
    backbone: str | None = None
    attention: bool | None = None
    attention_tokens: str | None = None
    flow_length: int | None = None   # temporal streams only
    image_size: tuple | None = None  # (height, width)
    num_segments: int | None = None  # of the input; None = any number
    train_segments: int | None = None
    streams: dict | None = None      # two_stream: {"spatial": ModelIdentity, ...}
    fusion_weights: tuple | None = None  # two_stream, normalised
    inferred: tuple = ()

    def to_dict(self) -> dict:
        """JSON-native form (what score files and ``predict --json`` carry)."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "streams" and value is not None:
                value = {k: v.to_dict() for k, v in value.items()}
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = dict(value)
            out[field.name] = value
        return out

    def training_kwargs(self) -> dict:
        """The arguments of :func:`with_identity` that reproduce this identity."""
        return {"class_names": None if self.class_names is None else list(self.class_names),
                "dataset": self.dataset,
                "preparation": None if self.preparation is None else dict(self.preparation),
                "train_segments": self.train_segments}


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
        self._identity_config = json.loads(json.dumps(identity_config or {}))

    def get_config(self):
        config = super().get_config()
        config["identity"] = json.loads(json.dumps(self._identity_config))
        return config


@keras.saving.register_keras_serializable(package="mat_effnet")
class StreamModel(_IdentifiedModel):
    """One stream (see `mat_effnet.models.build_stream`), carrying its identity."""


@keras.saving.register_keras_serializable(package="mat_effnet")
class TwoStreamModel(_IdentifiedModel):
    """Two fused streams (see `mat_effnet.models.build_two_stream`), carrying their identity."""


def with_identity(model, *, class_names=..., dataset=..., preparation=...,
                  train_segments=...):
    """Sets what training knows about a stream model (in place; returns it).

    Only the arguments given change; None clears one. ``class_names``: one
    name per class index. ``dataset``: e.g. ``"ucf101"``. ``preparation``: a
    dict (or dataclass) with :data:`PREPARATION_KEYS`, other keys dropped.
    ``train_segments``: the K segments per clip the stream was trained on.
    See :func:`data_identity` for the first three from prepared data.
    """
    if not isinstance(model, StreamModel):
        raise MatEffNetError(
            f"model={getattr(model, 'name', model)!r}: not a stream model built by "
            "mat_effnet.models.build_stream")
    config = dict(model._identity_config)
    if class_names is not ...:
        config["class_names"] = _check_class_names(class_names, config["num_classes"])
    if dataset is not ...:
        if dataset is not None and not (isinstance(dataset, str) and dataset):
            raise MatEffNetError(f"dataset={dataset!r}: must be a non-empty string")
        config["dataset"] = dataset
    if preparation is not ...:
        config["preparation"] = _check_preparation(preparation)
    if train_segments is not ...:
        if train_segments is not None:
            train_segments = check_int("train_segments", train_segments, 1)
        config["train_segments"] = train_segments
    model._identity_config = config
    return model


def stream_identity_config(*, stream, backbone, attention, attention_tokens, flow_length,
                           image_size, num_segments, num_classes):
    """The ``identity`` entry of a new stream model (nothing yet known from training)."""
    return {
        "version": IDENTITY_VERSION, "kind": "stream", "stream": stream,
        "backbone": backbone, "attention": attention,
        "attention_tokens": attention_tokens,
        "flow_length": flow_length if stream == "temporal" else None,
        "image_size": list(image_size), "num_segments": num_segments,
        "num_classes": num_classes, "train_segments": None, "class_names": None,
        "dataset": None, "preparation": None,
    }


def two_stream_identity_config(*, spatial_name, temporal_name, fusion_weights):
    """The ``identity`` entry of a two-stream model: its streams' layer names."""
    return {"version": IDENTITY_VERSION, "kind": "two_stream",
            "streams": {"spatial": spatial_name, "temporal": temporal_name},
            "fusion_weights": list(fusion_weights)}


def _stream_identity_from_config(config):
    return ModelIdentity(
        kind="stream", num_classes=int(config["num_classes"]),
        class_names=None if config.get("class_names") is None
        else tuple(config["class_names"]),
        dataset=config.get("dataset"),
        preparation=None if config.get("preparation") is None
        else dict(config["preparation"]),
        stream=config["stream"], backbone=config["backbone"],
        attention=bool(config["attention"]),
        attention_tokens=config.get("attention_tokens", "segment"),
        flow_length=config.get("flow_length"),
        image_size=tuple(config["image_size"]),
        num_segments=config.get("num_segments"),
        train_segments=config.get("train_segments"))


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
        f"model {model.name!r} was saved without its identity (before mat-effnet "
        f"issue 11): stream ({stream}), backbone and image size are read off its shapes "
        "and layer names; its class names, dataset and preparation settings are not in it")
    return ModelIdentity(
        kind="stream", num_classes=int(model.outputs[0].shape[-1]), stream=stream,
        backbone=backbone, attention="attention" in names,
        attention_tokens="segment" if "avg_pool" in names else "spatial",
        flow_length=channels // 2 if stream == "temporal" else None,
        image_size=(int(shape[2]), int(shape[3])),
        num_segments=None if shape[1] is None else int(shape[1]),
        inferred=("stream", "backbone", "attention", "attention_tokens", "flow_length",
                  "image_size", "num_segments", "num_classes"))


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


def identity(model) -> ModelIdentity:
    """What ``model`` (a stream or two-stream model) is, read from its config.

    Models saved before models carried their identity are read as before,
    off shapes and layer names (``inferred`` lists those fields), with one
    warning on stderr per model.
    """
    config = getattr(model, "_identity_config", None) or {}
    if config.get("kind") == "stream":
        return _stream_identity_from_config(config)
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
        return ModelIdentity(
            kind="two_stream", num_classes=first.num_classes,
            class_names=known[0].class_names,
            dataset=next((i.dataset for i in streams.values() if i.dataset), None),
            streams=streams, fusion_weights=weights, inferred=inferred)
    if not isinstance(model, keras.Model) or len(model.inputs) != 1 or \
            len(model.inputs[0].shape) != 5:
        raise MatEffNetError(
            f"model={getattr(model, 'name', model)!r}: not a stream or two-stream "
            "model (a stream takes (batch, segments, height, width, channels))")
    return _legacy_stream_identity(model)
