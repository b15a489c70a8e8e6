"""Training one stream of MAT-EffNet (paper Sect. 4.2).

The recipe of Sect. 4.2: mini-batch SGD, batch 16, learning rate 1e-2,
dropout 0.2, categorical cross-entropy, random crops and horizontal flips,
50 epochs, ImageNet initialisation (from scratch for Kinetics, Sect. 4.4).
What the paper leaves open is chosen here and documented in `TrainConfig`:
momentum 0.9 and weight decay 5e-4 (TSN's values), and a cosine learning-rate
decay with optional linear warm-up.

`train` runs Keras's ``fit`` under a ``tf.distribute`` strategy with the
callbacks users expect: TensorBoard (loss, accuracy, top-5, learning rate),
best and last ``.keras`` checkpoints, BackupAndRestore (a killed run started
again with the same arguments continues from its last backup), TerminateOnNaN
and a CSV log.  The learning rate is a function of (epoch, step in epoch), set
by a callback, so it is right again after a resume.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os

import keras
import tensorflow as tf

from mat_effnet import input_pipeline, models, records

log = logging.getLogger("mat_effnet.train")

STRATEGIES = ("auto", "default", "mirrored")
SCHEDULES = ("cosine", "step", "constant")
MODEL_FILENAME = "model.keras"


@dataclasses.dataclass
class TrainConfig:
    """One stream's training run.  Defaults are the paper's where it gives them."""

    stream: str
    data_dir: str
    model_dir: str
    backbone: str = "efficientnet_b0"
    attention: bool = True
    weights: str | None = "imagenet"   # "imagenet", None (from scratch) or a file
    epochs: int = 50                   # Sect. 4.2 / Fig. 8
    batch_size: int = 16               # Sect. 4.2: global batch, split over replicas
    learning_rate: float = 1e-2        # Sect. 4.2
    momentum: float = 0.9              # not in the paper: TSN's value
    weight_decay: float = 5e-4         # not in the paper: TSN's value
    dropout: float = 0.2               # Sect. 4.2
    num_segments: int = 3              # TSN's K
    image_size: int = 224              # Sect. 4.2 (112/168 for ResNet-18/34)
    flow_length: int = 10              # L: 2L = 20 flow channels
    lr_schedule: str = "cosine"        # cosine | step | constant
    lr_decay_epochs: tuple = (30, 40)  # "step": x0.1 at each of these epochs
    warmup_epochs: float = 0.0
    bn_momentum: float | None = None   # None keeps Keras's 0.99
    multiscale: bool = False
    shuffle_buffer: int = 64
    validation_split: str | None = "test"  # evaluated (K segments, centre crop) after each epoch
    steps_per_epoch: int | None = None  # default: training records // batch_size
    backup_every_steps: int = 100
    strategy: str = "auto"
    seed: int | None = None
    verbose: int = 2

    def validate(self) -> None:
        """ValueError naming the bad argument (the binaries map it to a flag)."""
        if self.stream not in ("spatial", "temporal"):
            raise ValueError(f"stream={self.stream!r}: expected 'spatial' or 'temporal'")
        for name in ("epochs", "batch_size", "num_segments", "image_size", "flow_length",
                     "backup_every_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate}: must be > 0")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum={self.momentum}: must be in [0, 1)")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay}: must be >= 0")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout}: must be in [0, 1)")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule={self.lr_schedule!r}: expected one of {SCHEDULES}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy={self.strategy!r}: expected one of {STRATEGIES}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch={self.steps_per_epoch}: must be >= 1")


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """auto: MirroredStrategy over all GPUs when there are several, else default.

    "mirrored" on a machine without GPUs mirrors over the logical CPU devices
    (how the tests exercise the distributed code path).
    """
    gpus = tf.config.list_logical_devices("GPU")
    if name == "default" or (name == "auto" and len(gpus) < 2):
        return tf.distribute.get_strategy()
    if name in ("auto", "mirrored"):
        if gpus:
            return tf.distribute.MirroredStrategy(devices=[d.name for d in gpus])
        # CPU replicas: reduce through one device.  Collective all-reduce
        # across logical CPU devices packs gradients per replica and was
        # seen to disagree on the packing (a shape-mismatch abort).
        return tf.distribute.MirroredStrategy(
            devices=[d.name for d in tf.config.list_logical_devices("CPU")],
            cross_device_ops=tf.distribute.ReductionToOneDevice())
    raise ValueError(f"strategy={name!r}: expected one of {STRATEGIES}")


def learning_rate_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate at a global step (0-based)."""
    epoch = step / steps_per_epoch
    base = cfg.learning_rate
    if cfg.warmup_epochs > 0 and epoch < cfg.warmup_epochs:
        return base * (step + 1) / (cfg.warmup_epochs * steps_per_epoch)
    if cfg.lr_schedule == "constant":
        return base
    if cfg.lr_schedule == "step":
        return base * 0.1 ** sum(epoch >= e for e in cfg.lr_decay_epochs)
    total = cfg.epochs - cfg.warmup_epochs
    progress = min(max((epoch - cfg.warmup_epochs) / total, 0.0), 1.0) if total > 0 else 1.0
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


class LearningRateSetter(keras.callbacks.Callback):
    """Sets the optimizer's learning rate from (epoch, batch) and logs it.

    Derived from the epoch counter rather than the optimizer's iteration
    count so that a run resumed by BackupAndRestore gets the right value.
    """

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int):
        super().__init__()
        self.cfg, self.steps_per_epoch = cfg, steps_per_epoch
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        lr = learning_rate_at(self.cfg, self._epoch * self.steps_per_epoch + batch,
                              self.steps_per_epoch)
        self.model.optimizer.learning_rate.assign(lr)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate.numpy())


def pipeline_config(cfg: TrainConfig, training: bool) -> input_pipeline.PipelineConfig:
    return input_pipeline.PipelineConfig(
        stream=cfg.stream, num_segments=cfg.num_segments, image_size=cfg.image_size,
        flow_length=cfg.flow_length, training=training, test_segments=cfg.num_segments,
        crops=1, multiscale=cfg.multiscale, shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed)


def _weights_arg(weights):
    if weights in (None, "", "none", "None"):
        return None
    return weights


def build_model(cfg: TrainConfig, num_classes: int) -> keras.Model:
    return models.build_stream(
        # Any segment count: trained on K segments, evaluated on N (TSN: 25).
        num_classes, cfg.stream, num_segments=None, image_size=cfg.image_size,
        flow_length=cfg.flow_length, backbone=cfg.backbone, attention=cfg.attention,
        weights=_weights_arg(cfg.weights), dropout=cfg.dropout, bn_momentum=cfg.bn_momentum)


def compile_model(model: keras.Model, cfg: TrainConfig, num_classes: int) -> None:
    optimizer = keras.optimizers.SGD(learning_rate=cfg.learning_rate, momentum=cfg.momentum,
                                     weight_decay=cfg.weight_decay or None)
    # Labels are integer class indices: sparse categorical cross-entropy is
    # the paper's categorical cross-entropy without materialising one-hots.
    model.compile(
        optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                 keras.metrics.SparseTopKCategoricalAccuracy(k=min(5, num_classes), name="top5")])


def _split_records(meta: dict, split: str) -> int:
    return int(meta["splits"][split]["records"])


def train(cfg: TrainConfig) -> dict:
    """Trains one stream; writes ``model_dir/model.keras``; returns a summary."""
    cfg.validate()
    meta = records.read_metadata(cfg.data_dir)
    num_classes = int(meta["num_classes"])
    tf.io.gfile.makedirs(cfg.model_dir)
    if cfg.seed is not None:
        keras.utils.set_random_seed(cfg.seed)

    strategy = make_strategy(cfg.strategy)
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise ValueError(f"batch_size={cfg.batch_size} must be a multiple of the "
                         f"{replicas} replicas of the strategy")
    train_records = _split_records(meta, "train")
    steps = cfg.steps_per_epoch or max(1, train_records // cfg.batch_size)
    train_ds = input_pipeline.build_dataset(cfg.data_dir, "train", pipeline_config(cfg, True),
                                            cfg.batch_size)
    val_ds = None
    if cfg.validation_split and cfg.validation_split in meta.get("shards", {}):
        # The test pipeline yields (B, crops=1, K, S, S, C): drop the crop axis.
        val_ds = input_pipeline.build_dataset(
            cfg.data_dir, cfg.validation_split, pipeline_config(cfg, False), cfg.batch_size
        ).map(lambda clips, labels: (clips[:, 0], labels))

    with strategy.scope():
        model = build_model(cfg, num_classes)
        compile_model(model, cfg, num_classes)

    monitor = "val_accuracy" if val_ds is not None else "accuracy"
    callbacks = [
        LearningRateSetter(cfg, steps),
        keras.callbacks.BackupAndRestore(os.path.join(cfg.model_dir, "backup"),
                                         save_freq=cfg.backup_every_steps,
                                         double_checkpoint=True),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.ModelCheckpoint(os.path.join(cfg.model_dir, "best.keras"),
                                        monitor=monitor, mode="max", save_best_only=True),
        keras.callbacks.ModelCheckpoint(os.path.join(cfg.model_dir, "last.keras")),
        keras.callbacks.CSVLogger(os.path.join(cfg.model_dir, "training_log.csv"), append=True),
        keras.callbacks.TensorBoard(os.path.join(cfg.model_dir, "logs"), update_freq="epoch"),
    ]
    _write_json(os.path.join(cfg.model_dir, "train_config.json"),
                dict(dataclasses.asdict(cfg), num_classes=num_classes,
                     classes=meta["classes"], replicas=replicas, steps_per_epoch=steps))
    history = model.fit(train_ds, epochs=cfg.epochs, steps_per_epoch=steps,
                        validation_data=val_ds, callbacks=callbacks, verbose=cfg.verbose)
    path = os.path.join(cfg.model_dir, MODEL_FILENAME)
    save_model(model, path)
    last = {k: float(v[-1]) for k, v in history.history.items() if v}
    summary = {"model": path, "epochs_run": len(history.history.get("loss", [])),
               "final": last, "replicas": replicas, "steps_per_epoch": steps}
    _write_json(os.path.join(cfg.model_dir, "train_summary.json"), summary)
    return summary


def save_model(model: keras.Model, path: str) -> None:
    """``model.save`` under a temp name, then rename: never a torn .keras file."""
    tmp = path[: -len(".keras")] + f".tmp-{os.getpid()}.keras"
    model.save(tmp)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def _write_json(path: str, obj) -> None:
    records.atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")
