"""What defines one stream model, as one frozen value.

Paper: Zhou et al., "MAT-EffNet", Multimedia Systems 2022, Sect. 3.3,
Fig. 5 and Table 1 (one stream: backbone, Fc, multi-head attention with
``h`` heads, token mean, classifier), Sect. 4.2-4.3 (input sizes, segments,
flow length, the ablation backbones).

:class:`StreamSpec` holds every fact that defines a stream model --
architecture (stream, backbone, attention, attention tokens, heads, key
size, Fc units, flow length, image size, input segments) and what training
knew (training segments, classes, class names, dataset, the preparation of
the training data) -- validated once, in ``__post_init__``. It is built
from a training config (`mat_effnet.training.config.TrainConfig.stream_spec`) or by
`mat_effnet.modeling.models.build_stream`'s keywords; `mat_effnet.modeling.models.build_from_spec`
builds the model from it without checking anything again, and the model
saves :meth:`StreamSpec.to_dict` as its identity (`mat_effnet.modeling.model_identity`),
from which :meth:`StreamSpec.from_dict` gives the same spec back -- the way
a keras-hub task is rebuilt from the config it saved.

Identities of version 1 lack the head sizes; they read
as today's defaults. Unknown keys are ignored, as the reader of version 1
did. This module imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

import dataclasses

from mat_effnet.modeling.backbones import BACKBONE_SPECS, STREAMS, check_image_size
from mat_effnet.common.checks import check_choice, check_int
from mat_effnet.common.errors import MatEffNetError

__all__ = [
    "ATTENTION_TOKENS",
    "IDENTITY_VERSION",
    "PREPARATION_KEYS",
    "PREPARATION_MUST_MATCH",
    "StreamSpec",
    "data_identity",
]

#: Accepted ``attention_tokens``: one token per segment (the paper's ``Y``
#: in Eq. 2) or every position of every segment's last feature map (Fig. 9).
ATTENTION_TOKENS = ("segment", "spatial")
#: Version of the ``identity`` entry of a model's config. 2 adds
#: ``num_heads``, ``key_dim`` and ``fc_units``.
IDENTITY_VERSION = 2
#: Keys of ``preparation``: the settings of the training data's preparation
#: (mat-effnet-prep) that a video must be prepared with to be scored alike.
#: Each with the type it is stored as.
_PREPARATION_TYPES = {"short_side": int, "flow": str, "flow_implementation": str,
                      "flow_bound": float, "jpeg_quality": int, "schema_version": int,
                      # Flow imported from frame folders: the folder
                      # layout it came from, and the rounding of its stored codes
                      # (half_up: ours; cvround: denseflow's; truncate: mmaction2's
                      # flow_extraction.py). Absent: computed by mat-effnet-prep.
                      "flow_source": str, "flow_rounding": str}
PREPARATION_KEYS = tuple(_PREPARATION_TYPES)
#: The preparation keys that change what a stream sees (not just how fast it
#: was computed): a mismatch with the evaluated data is an error. Another
#: ``flow_implementation`` of the same algorithm only gets a note.
PREPARATION_MUST_MATCH = ("flow", "flow_bound")
#: Models whose preparation names no implementation had their flow from OpenCV.
DEFAULT_FLOW_IMPLEMENTATION = "opencv"


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """Everything that defines one stream model; validated once, on creation.

    ``flow_length`` is kept for temporal streams only (None for spatial
    ones, which have no flow); ``image_size`` None means the paper's size
    for the backbone and is stored as ``(height, width)``;
    ``num_segments=None`` is a model that takes any number of segments.
    ``inferred`` is no fact of the model but where the facts came from: the
    fields `mat_effnet.modeling.model_identity.identity` read off the shapes and layer
    names of a model saved without its identity (then ``backbone`` may be
    None, unknown). It is not compared, and saved only when not empty.
    """

    num_classes: int
    stream: str = "spatial"
    backbone: str | None = "efficientnet_b0"
    attention: bool = True
    attention_tokens: str = "segment"
    num_heads: int = 2
    key_dim: int = 256
    fc_units: int = 512
    flow_length: int | None = 10
    image_size: tuple | None = None
    num_segments: int | None = 3
    train_segments: int | None = None
    class_names: tuple | None = None
    dataset: str | None = None
    preparation: dict | None = None
    inferred: tuple = dataclasses.field(default=(), compare=False)

    def __post_init__(self):
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        put("num_classes", check_int("num_classes", self.num_classes, 2))
        check_choice("stream", self.stream, STREAMS)
        # A spatial stream has no flow: a given flow_length is checked (as the
        # keyword builder always did) but not kept.
        if self.stream == "temporal" or self.flow_length is not None:
            flow_length = check_int("flow_length", self.flow_length, 1)
            put("flow_length", flow_length if self.stream == "temporal" else None)
        if self.backbone is None and "backbone" in self.inferred:
            put("image_size", tuple(int(s) for s in self.image_size))
        else:  # checks the backbone too
            put("image_size", check_image_size(self.image_size, self.backbone))
        if not isinstance(self.attention, bool):
            raise MatEffNetError(f"attention must be True or False, got {self.attention!r}")
        check_choice("attention_tokens", self.attention_tokens, ATTENTION_TOKENS)
        for name in ("num_heads", "key_dim", "fc_units"):
            put(name, check_int(name, getattr(self, name), 1))
        for name in ("num_segments", "train_segments"):  # None: any / unknown
            if getattr(self, name) is not None:
                put(name, check_int(name, getattr(self, name), 1))
        put("class_names", _check_class_names(self.class_names, self.num_classes))
        if self.dataset is not None and not (isinstance(self.dataset, str) and self.dataset):
            raise MatEffNetError(f"dataset={self.dataset!r}: must be a non-empty string")
        put("preparation", _check_preparation(self.preparation))
        put("inferred", tuple(self.inferred))

    # -- derived values ------------------------------------------------------
    @property
    def kind(self) -> str:
        """``"stream"`` (a two-stream identity says ``"two_stream"``)."""
        return "stream"

    @property
    def channels(self) -> int:
        """Input channels: 3 (RGB) or ``2 * flow_length`` (x/y flow).

        Temporal channels are interleaved: channel ``2i`` is the horizontal
        and ``2i + 1`` the vertical flow of frame ``i`` of the stack.
        """
        return 3 if self.stream == "spatial" else 2 * self.flow_length

    @property
    def input_name(self) -> str:
        return "rgb" if self.stream == "spatial" else "flow"

    # -- the saved form ------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-native form: a model's saved identity, and what score files carry."""
        out = {"version": IDENTITY_VERSION, "kind": "stream"}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "inferred" and not value:
                continue
            out[field.name] = (list(value) if isinstance(value, tuple)
                               else dict(value) if isinstance(value, dict) else value)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "StreamSpec":
        """Inverse of :meth:`to_dict`; reads version 1 too (missing keys: defaults).

        ``version``, ``kind`` and unknown keys are ignored.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def training_kwargs(self) -> dict:
        """What training knew: the arguments of `mat_effnet.modeling.model_identity.with_identity`."""
        return {"class_names": None if self.class_names is None else list(self.class_names),
                "dataset": self.dataset,
                "preparation": None if self.preparation is None else dict(self.preparation),
                "train_segments": self.train_segments}

    @property
    def backbone_spec(self):
        """The backbone's row of `mat_effnet.modeling.backbones` (already checked)."""
        return BACKBONE_SPECS[self.backbone]


def _check_class_names(class_names, num_classes):
    if class_names is None:
        return None
    if isinstance(class_names, str) or not all(
            isinstance(c, str) and c for c in class_names):
        raise MatEffNetError(
            f"class_names={class_names!r}: must be a list of non-empty strings")
    names = tuple(str(c) for c in class_names)
    if len(names) != num_classes:
        raise MatEffNetError(
            f"class_names={list(names[:3])}{'...' if len(names) > 3 else ''}: "
            f"{len(names)} names for a model of {num_classes} classes")
    if len(set(names)) != len(names):
        raise MatEffNetError(f"class_names={list(names)}: a name appears twice")
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
    is meant to be splatted into :class:`StreamSpec`,
    `mat_effnet.modeling.models.build_stream` or `mat_effnet.modeling.model_identity.with_identity`.
    """
    settings = dict(meta.get("settings") or {})
    preparation = {k: settings[k] for k in PREPARATION_KEYS if k in settings}
    if "flow_implementation" not in preparation and settings.get("flow", "none") != "none":
        preparation["flow_implementation"] = DEFAULT_FLOW_IMPLEMENTATION
    if meta.get("schema_version") is not None:
        preparation["schema_version"] = meta["schema_version"]
    stored = (meta.get("frame_size") or {}).get("stored_short_side")
    if preparation.get("flow_source") and not preparation.get("short_side") and stored:
        # An import keeps the folders' size (short_side 0): prediction must
        # prepare a video at the size the model was trained on.
        preparation["short_side"] = int(stored)
    dataset = meta.get("name") or settings.get("name") or meta.get("dataset") or \
        settings.get("dataset")
    return {"class_names": list(meta["classes"]) if meta.get("classes") else None,
            "dataset": str(dataset) if dataset else None,
            "preparation": preparation or None}
