"""One training configuration, defined once (paper Sect. 4.2).

The shape follows TF Model Garden's video-classification config (nested
dataclasses, one home for every default) without its registries:

    TrainConfig
      data:    DataConfig     what is read and how clips are sampled
      model:   ModelConfig    which stream and network
      optim:   OptimConfig    the SGD recipe and its schedule
      runtime: RuntimeConfig  where it runs, writes and resumes

Each field's default and help text live here and nowhere else: the absl
flags of ``mat-effnet-train`` are derived from these fields
(`mat_effnet.common.flagdefs`), keeping today's flat names (``--batch_size``,
``--image_size`` ...) so flagfiles and README commands keep working; field
names are therefore unique across the sections. ``train_config.json`` is
`TrainConfig.to_dict` plus what the run found out (classes, replicas).

Validation runs once, when a config is built (``__post_init__``), and names
the bad field as ``name=value: why``. What the paper leaves open is chosen
here and marked "not in the paper": momentum 0.9 and weight decay 5e-4
(TSN's), a cosine learning-rate decay with optional linear warm-up.

This module imports neither TensorFlow nor Keras, so a binary can derive its
flags and answer ``--help`` without starting them.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from mat_effnet.modeling import backbones
from mat_effnet.common.errors import bad_argument
from mat_effnet.common.flagdefs import setting
from mat_effnet.modeling.stream_spec import StreamSpec, data_identity

STREAMS = backbones.STREAMS
BACKBONES = backbones.BACKBONES
SCHEDULES = ("cosine", "step", "constant")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
LOOPS = ("auto", "fit", "custom")
SHARD_POLICIES = ("auto", "file", "data")
ON_CORRUPT = ("stop", "skip")  # mat_effnet.training.skip_damaged


def _at_least(name, value, minimum):
    if value is not None and value < minimum:
        raise bad_argument(name, value, f"must be >= {minimum}")


def _choice(name, value, choices):
    if value not in choices:
        raise bad_argument(name, repr(value), f"expected one of {', '.join(choices)}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What is read, and how a clip is made from a video (TSN sampling)."""

    data_dir: str | None = setting(None, "A folder written by mat-effnet-prep.")
    num_segments: int = setting(3, "TSN segments per clip (K).")
    flow_length: int = setting(10, "Flow fields per segment (L); 2L input channels.")
    image_size: int | None = setting(
        None, "Crop size; default: the paper's for --backbone "
        "(224; 112 ResNet-18, 168 ResNet-34).")
    multiscale: bool = setting(False, "TSN multi-scale crop instead of a plain random crop.")
    flip: bool = setting(True, "Random horizontal flips in training (p = 0.5, Sect. 4.2); "
                         "x-flow changes sign with the frame.")
    shuffle_buffer: int = setting(
        64, "Shuffle buffer, in records (version-1 data only: version 2 reads each epoch "
        "in a full permutation).")
    validation_split: str | None = setting(
        "test", "Split evaluated after each epoch ('' for none).")
    data_service: str | None = setting(
        None, "tf.data service dispatcher (grpc://HOST:PORT): run the input "
        "pipeline on its workers instead of this machine.")
    on_corrupt: str = setting(
        "stop", "A damaged record while training: stop (one line naming the shard and "
        "video) or skip (leave the video out, count it in training_log.csv and name it in "
        "skipped_videos.json; version-2 data, Keras fit loop).", choices=ON_CORRUPT)

    def __post_init__(self):
        for name in ("num_segments", "flow_length", "image_size", "shuffle_buffer"):
            _at_least(name, getattr(self, name), 1)
        if self.validation_split == "":
            object.__setattr__(self, "validation_split", None)
        _choice("on_corrupt", self.on_corrupt, ON_CORRUPT)
        if self.data_service == "":
            object.__setattr__(self, "data_service", None)
        if self.data_service is not None and "://" not in self.data_service:
            raise bad_argument("data_service", self.data_service,
                               "expected PROTOCOL://HOST:PORT, e.g. grpc://host:5050")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One stream of MAT-EffNet (Sect. 3.3) and its initialisation."""

    stream: str | None = setting(None, "Which stream to train.", choices=STREAMS)
    backbone: str = setting("efficientnet_b0", "CNN backbone.", choices=BACKBONES)
    attention: bool = setting(True, "Multi-head attention over segments (MAT-EffNet) or not.")
    weights: str | None = setting(
        "imagenet", "imagenet (Keras download), none (from scratch) or a local weights file.")
    dropout: float = setting(0.2, "Dropout before the classifier (Sect. 4.2).")
    bn_momentum: float | None = setting(
        None, "Override BatchNorm momentum (Keras: 0.99). 0.9 trains from scratch on "
        "small data much more reliably.")

    def __post_init__(self):
        if self.stream is not None:
            _choice("stream", self.stream, STREAMS)
        _choice("backbone", self.backbone, BACKBONES)
        if self.weights in ("", "none", "None"):
            object.__setattr__(self, "weights", None)
        if not 0 <= self.dropout < 1:
            raise bad_argument("dropout", self.dropout, "must be in [0, 1)")
        if self.bn_momentum is not None and not 0 <= self.bn_momentum < 1:
            raise bad_argument("bn_momentum", self.bn_momentum, "must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The recipe of Sect. 4.2: mini-batch SGD, batch 16, learning rate 1e-2, 50 epochs."""

    epochs: int = setting(50, "Training epochs (Fig. 8: 50).")
    batch_size: int = setting(16, "Global batch size (split over replicas).")
    learning_rate: float = setting(1e-2, "Peak SGD learning rate.")
    momentum: float = setting(0.9, "SGD momentum (TSN's 0.9; not in the paper).")
    weight_decay: float = setting(5e-4, "Decoupled weight decay (TSN's 5e-4; not in the paper).")
    lr_schedule: str = setting(
        "cosine", "cosine: half-cosine decay to 0 over the run; step: x0.1 at --lr_decay_epochs.",
        choices=SCHEDULES)
    lr_decay_epochs: tuple = setting((30, 40), "Epochs where the step schedule divides by 10.")
    warmup_epochs: float = setting(0.0, "Linear warm-up from 0 over this many epochs.")
    clip_norm: float | None = setting(
        None, "Clip the global gradient norm to this (TSN: 40); off by default, as in the paper.")
    steps_per_epoch: int | None = setting(None, "Default: training records // batch size.")

    def __post_init__(self):
        for name in ("epochs", "batch_size", "steps_per_epoch"):
            _at_least(name, getattr(self, name), 1)
        if not self.learning_rate > 0:
            raise bad_argument("learning_rate", self.learning_rate, "must be > 0")
        if not 0 <= self.momentum < 1:
            raise bad_argument("momentum", self.momentum, "must be in [0, 1)")
        if self.weight_decay < 0:
            raise bad_argument("weight_decay", self.weight_decay, "must be >= 0")
        if self.warmup_epochs < 0:
            raise bad_argument("warmup_epochs", self.warmup_epochs, "must be >= 0")
        _choice("lr_schedule", self.lr_schedule, SCHEDULES)
        try:
            epochs = tuple(int(e) for e in self.lr_decay_epochs)
        except (TypeError, ValueError):
            raise bad_argument("lr_decay_epochs", ",".join(map(str, self.lr_decay_epochs)),
                               "expected integers") from None
        object.__setattr__(self, "lr_decay_epochs", epochs)
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise bad_argument("clip_norm", self.clip_norm, "must be > 0 (or unset for no clipping)")


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Where the run happens, what it writes, and how it resumes."""

    model_dir: str | None = setting(None, "Checkpoints, logs and model.keras go here.")
    strategy: str = setting(
        "auto", "auto: MirroredStrategy over all GPUs when there are several; "
        "multi_worker: MultiWorkerMirroredStrategy over the machines in TF_CONFIG.",
        choices=STRATEGIES)
    loop: str = setting(
        "auto", "Training loop: auto = the custom loop for multi_worker and for "
        "jit_compile over several replicas, Keras fit otherwise.", choices=LOOPS)
    shard_policy: str = setting(
        "auto", "Custom loop: how workers split the input (file: disjoint shard files; "
        "data: every worker reads all; auto: file when each worker gets >= 4 files).",
        choices=SHARD_POLICIES)
    mixed_precision: bool = setting(
        False, "Mixed precision: float16 compute on GPU, bfloat16 on TPU/CPU "
        "(often slower on CPU).")
    jit_compile: bool = setting(False, "XLA-compile the training step (often much slower on CPU).")
    backup_every_steps: int = setting(100, "Resume checkpoint frequency, in steps.")
    checkpoint_every_epochs: int = setting(
        1, "Write best.keras and last.keras every this many epochs and after the last one "
        "(best: the best of those epochs). A write costs about a second of CPU for "
        "EfficientNet-B0, much of an epoch of a few steps.")
    seed: int | None = setting(None, "Random seed (weights, sampling, augmentation).")
    verbose: int = setting(2, "Keras progress output: 0 silent, 1 bar, 2 one line per epoch.")

    def __post_init__(self):
        _choice("strategy", self.strategy, STRATEGIES)
        _choice("loop", self.loop, LOOPS)
        _choice("shard_policy", self.shard_policy, SHARD_POLICIES)
        _at_least("backup_every_steps", self.backup_every_steps, 1)
        _at_least("checkpoint_every_epochs", self.checkpoint_every_epochs, 1)
        if self.loop == "fit" and self.strategy == "multi_worker":
            raise bad_argument("loop", "'fit'", "does not work with strategy='multi_worker' "
                               "(Keras's fit fails under MultiWorkerMirroredStrategy); "
                               "use loop='auto' or 'custom'")


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig,
             "runtime": RuntimeConfig}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One stream's training run: the four sections, validated once."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)

    def __post_init__(self):
        for name, cls in _SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"TrainConfig.{name} must be a {cls.__name__}")

    # -- flat access: every field has a unique name across the sections ----
    @classmethod
    def from_flat(cls, **values) -> "TrainConfig":
        """Builds a config from flat field names (as the flags name them)."""
        return nest(cls, values, "a training setting")

    def replace(self, **values) -> "TrainConfig":
        """A copy with some flat fields changed (validated again)."""
        return TrainConfig.from_flat(**{**self.flat(), **values})

    def flat(self) -> dict:
        return flat(self)

    def to_dict(self) -> dict:
        """Nested, JSON-ready (``train_config.json``)."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Inverse of `to_dict`; also reads the flat ``train_config.json`` of older runs."""
        if all(isinstance(d.get(name), dict) for name in _SECTIONS):
            return cls(**{name: _SECTIONS[name](**_known(_SECTIONS[name], d[name]))
                          for name in _SECTIONS})
        owner = flat_fields(cls)
        return cls.from_flat(**{k: v for k, v in d.items() if k in owner})

    # -- derived values, each computed in one place ---------------------------
    @property
    def stream(self) -> str:
        if self.model.stream is None:
            raise bad_argument("stream", None, "required: spatial or temporal")
        return self.model.stream

    def image_size(self) -> int:
        """The crop size: the flag, or the paper's size for the backbone."""
        if self.data.image_size is not None:
            return self.data.image_size
        return backbones.backbone_spec(self.model.backbone).paper_input_size

    def stream_spec(self, num_classes: int, meta: dict | None = None) -> StreamSpec:
        """The spec of the stream this config trains (`mat_effnet.modeling.stream_spec`).

        It takes any segment count: trained on K segments, evaluated on N
        (TSN: 25); K is kept as ``train_segments``. With the data's ``meta``
        (`mat_effnet.records.read_metadata`) it carries the class names,
        dataset and preparation of the training data. The training-only
        knobs (weights, dropout, BatchNorm momentum) are no part of it.
        """
        known = data_identity(meta) if meta is not None else {}
        return StreamSpec(
            num_classes=num_classes, stream=self.stream, backbone=self.model.backbone,
            attention=self.model.attention, flow_length=self.data.flow_length,
            image_size=self.image_size(), num_segments=None,
            train_segments=self.data.num_segments, **known)

    def uses_custom_loop(self, replicas: int = 1) -> bool:
        """The custom loop for multi_worker, and for XLA over several replicas.

        ``fit``'s XLA-compiled step cannot reach variables that live on the
        other replicas' devices (TF "known issue": tf.Variable on a different
        device), so with ``jit_compile`` and several replicas "auto" takes the
        custom loop, which compiles only each replica's forward/backward pass.
        """
        rt = self.runtime
        if rt.loop != "auto":
            return rt.loop == "custom"
        return rt.strategy == "multi_worker" or (rt.jit_compile and replicas > 1)


def flat_fields(cls=TrainConfig) -> dict[str, str]:
    """{flat field name: section name} of a nested config class."""
    out = {}
    for section in dataclasses.fields(cls):
        sub = _field_type(cls, section.name)
        for f in dataclasses.fields(sub):
            if f.name in out:
                raise TypeError(f"field name {f.name!r} appears in two sections")
            out[f.name] = section.name
    return out


def nest(cls, values: dict, what: str):
    """An instance of the sectioned config ``cls`` from flat field names."""
    owner = flat_fields(cls)
    unknown = sorted(set(values) - set(owner))
    if unknown:
        raise bad_argument(unknown[0], values[unknown[0]], f"not {what}")
    parts: dict = {f.name: {} for f in dataclasses.fields(cls)}
    for key, value in values.items():
        parts[owner[key]][key] = value
    return cls(**{name: _field_type(cls, name)(**kw) for name, kw in parts.items()})


def flat(instance) -> dict:
    """{field name: value} over every section of a sectioned config."""
    return {k: v for section in dataclasses.fields(instance)
            for k, v in _shallow(getattr(instance, section.name)).items()}


def to_dict(instance) -> dict:
    """A sectioned config as nested, JSON-ready dicts (tuples become lists)."""
    return {section.name: _jsonable(_shallow(getattr(instance, section.name)))
            for section in dataclasses.fields(instance)}


def _shallow(section) -> dict:
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}


def _field_type(cls, name: str):
    return typing.get_type_hints(cls)[name]


def _known(cls, values: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def _jsonable(d: dict) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
