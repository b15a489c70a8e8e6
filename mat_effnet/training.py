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

Training across machines (``strategy="multi_worker"``,
``tf.distribute.MultiWorkerMirroredStrategy`` over the cluster in
``TF_CONFIG``) runs the custom loop of `mat_effnet.distributed` instead of
``fit``, which fails under that strategy with TF 2.21 / Keras 3.15; it
drives the same callbacks and resumes from ``tf.train.Checkpoint``s (see
that module for the design).  Single-machine runs keep ``fit``, Keras's
well-trodden path.

Two switches for accelerators, both off by default:

* ``mixed_precision``: Keras's ``mixed_float16`` policy on GPU (with loss
  scaling), ``mixed_bfloat16`` on TPU and on CPU (CPUs have no fast float16
  kernels; bfloat16 needs no loss scaling).  Compute runs in 16 bits,
  variables stay float32 and the final softmax is float32 (``models.py``).
  The policy is global Keras state: `train` restores the previous one when
  it returns.  ``model.keras`` is saved as a float32 model, so evaluation
  and inference do not depend on how it was trained; ``best.keras`` and
  ``last.keras`` keep the training policy.
* ``jit_compile``: XLA compilation of the training step (``fit``'s
  ``jit_compile``; in the custom loop, the forward and backward pass).
  Off by default, where Keras's "auto" would turn it on for one GPU: XLA
  recompiles for every new input shape and its numerics differ slightly.
  ``fit``'s compiled step cannot reach variables on other devices, so with
  several replicas (MirroredStrategy) ``loop="auto"`` takes the custom loop.

Both run on CPU too (they are tested there), but often make CPU training
slower (XLA by an order of magnitude for EfficientNet-B0); a warning says so.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Sequence

import keras
import tensorflow as tf

from mat_effnet import distributed, input_pipeline, models, records

log = logging.getLogger("mat_effnet.train")

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
LOOPS = ("auto", "fit", "custom")
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
    clip_norm: float | None = None     # global gradient-norm clip (TSN clips at 40); None: off
    multiscale: bool = False
    shuffle_buffer: int = 64
    validation_split: str | None = "test"  # evaluated (K segments, centre crop) after each epoch
    steps_per_epoch: int | None = None  # default: training records // batch_size
    backup_every_steps: int = 100
    strategy: str = "auto"             # auto | default | mirrored | multi_worker
    seed: int | None = None
    verbose: int = 2
    mixed_precision: bool = False      # mixed_float16 (GPU) / mixed_bfloat16 (TPU, CPU)
    jit_compile: bool = False          # XLA
    loop: str = "auto"                 # auto: fit, except see uses_custom_loop
    shard_policy: str = "auto"         # custom loop input sharding: auto | file | data

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
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm={self.clip_norm}: must be > 0 (or None for no clipping)")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch={self.steps_per_epoch}: must be >= 1")
        if self.loop not in LOOPS:
            raise ValueError(f"loop={self.loop!r}: expected one of {LOOPS}")
        if self.loop == "fit" and self.strategy == "multi_worker":
            raise ValueError("loop='fit' does not work with strategy='multi_worker' "
                             "(Keras's fit fails under MultiWorkerMirroredStrategy); "
                             "use loop='auto' or 'custom'")
        if self.shard_policy not in distributed.SHARD_POLICIES:
            raise ValueError(f"shard_policy={self.shard_policy!r}: expected one of "
                             f"{distributed.SHARD_POLICIES}")

    def uses_custom_loop(self, replicas: int = 1) -> bool:
        """The custom loop for multi_worker, and for XLA over several replicas.

        ``fit``'s XLA-compiled step cannot reach variables that live on the
        other replicas' devices (TF "known issue": tf.Variable on a different
        device), so with ``jit_compile`` and several replicas "auto" takes the
        custom loop, which compiles only each replica's forward/backward pass.
        """
        if self.loop != "auto":
            return self.loop == "custom"
        return self.strategy == "multi_worker" or (self.jit_compile and replicas > 1)


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """auto: MirroredStrategy over all GPUs when there are several, else default.

    "mirrored" on a machine without GPUs mirrors over the logical CPU devices
    (how the tests exercise the distributed code path).  "multi_worker":
    MultiWorkerMirroredStrategy over the cluster in ``TF_CONFIG`` (all GPUs,
    or the CPU, of every worker); it must be created before TensorFlow does
    anything else in the process.
    """
    if name == "multi_worker":
        return distributed.make_multi_worker_strategy()
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


def precision_policy(mixed_precision: bool) -> str:
    """The Keras dtype policy for this machine's accelerators."""
    if not mixed_precision:
        return "float32"
    if tf.config.list_logical_devices("TPU"):
        return "mixed_bfloat16"
    if tf.config.list_logical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16"


def _warn_if_cpu(cfg: TrainConfig) -> None:
    if not (cfg.mixed_precision or cfg.jit_compile):
        return
    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        return
    switches = [n for n in ("mixed_precision", "jit_compile") if getattr(cfg, n)]
    # Measured on a 2-core AVX-512 CPU (step time vs. neither switch):
    # EfficientNet-B0 bfloat16 1.5x, XLA 15x; ResNet-18 bfloat16 0.75x, XLA 1.25x.
    log.warning("%s on a machine without GPU/TPU: allowed, but on CPU it is often "
                "slower (XLA much slower for EfficientNet)", " and ".join(switches))


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
    """SGD + sparse cross-entropy + accuracy/top-5.

    Under the ``mixed_float16`` policy Keras wraps the optimizer in a
    LossScaleOptimizer.
    """
    optimizer = keras.optimizers.SGD(learning_rate=cfg.learning_rate, momentum=cfg.momentum,
                                     weight_decay=cfg.weight_decay or None,
                                     global_clipnorm=cfg.clip_norm)
    # Labels are integer class indices: sparse categorical cross-entropy is
    # the paper's categorical cross-entropy without materialising one-hots.
    model.compile(
        optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                 keras.metrics.SparseTopKCategoricalAccuracy(k=min(5, num_classes), name="top5")],
        jit_compile=bool(cfg.jit_compile))


def _split_records(meta: dict, split: str) -> int:
    return int(meta["splits"][split]["records"])


def train(cfg: TrainConfig, callbacks: Sequence[keras.callbacks.Callback] = ()) -> dict:
    """Trains one stream; the chief writes ``model_dir/model.keras``; returns a summary.

    ``callbacks`` are added after the standard ones (every worker runs them).
    """
    cfg.validate()
    # First: MultiWorkerMirroredStrategy configures TensorFlow's collectives
    # when it is created, which is refused once the runtime has started.
    strategy = make_strategy(cfg.strategy)
    info = distributed.strategy_worker_info(strategy)
    meta = records.read_metadata(cfg.data_dir)
    num_classes = int(meta["num_classes"])
    if info.is_chief:
        tf.io.gfile.makedirs(cfg.model_dir)
    if cfg.seed is not None:
        keras.utils.set_random_seed(cfg.seed)

    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise ValueError(f"batch_size={cfg.batch_size} must be a multiple of the "
                         f"{replicas} replicas of the strategy")
    train_records = _split_records(meta, "train")
    steps = cfg.steps_per_epoch or max(1, train_records // cfg.batch_size)
    has_val = bool(cfg.validation_split and cfg.validation_split in meta.get("shards", {}))
    custom = cfg.uses_custom_loop(replicas)
    if cfg.loop == "fit" and cfg.jit_compile and replicas > 1:
        raise ValueError(f"jit_compile=True with loop='fit' over {replicas} replicas: Keras's "
                         "XLA step cannot reach other devices' variables; use loop='auto' "
                         "or 'custom'")
    if custom:
        # Fail before any work when the shard files cannot feed the workers.
        distributed.plan_sharding(records.split_files(cfg.data_dir, meta, "train"),
                                  info.num_workers, cfg.shard_policy)
    _warn_if_cpu(cfg)

    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision_policy(cfg.mixed_precision))
    try:
        with strategy.scope():
            model = build_model(cfg, num_classes)
            compile_model(model, cfg, num_classes)
        monitor = "val_accuracy" if has_val else "accuracy"
        # Off the chief everything goes to a temp dir that is then deleted.
        with distributed.WriteDir(cfg.model_dir, info) as out_dir:
            all_callbacks = [*_standard_callbacks(cfg, out_dir, steps, monitor, custom),
                             *callbacks]
            if info.is_chief:
                _write_json(os.path.join(cfg.model_dir, "train_config.json"),
                            dict(dataclasses.asdict(cfg), num_classes=num_classes,
                                 classes=meta["classes"], replicas=replicas,
                                 workers=info.num_workers, steps_per_epoch=steps))
            if custom:
                history = _train_custom(cfg, model, strategy, info, meta, steps,
                                        num_classes, has_val, out_dir, all_callbacks)
            else:
                history = model.fit(_train_dataset(cfg), epochs=cfg.epochs,
                                    steps_per_epoch=steps,
                                    validation_data=_val_dataset(cfg) if has_val else None,
                                    callbacks=all_callbacks, verbose=cfg.verbose)
            save_model(_float32_model(model, cfg, num_classes),
                       os.path.join(out_dir, MODEL_FILENAME))
            if distributed.is_multi_worker(strategy):
                distributed.barrier(strategy)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    last = {k: float(v[-1]) for k, v in history.history.items() if v}
    path = os.path.join(cfg.model_dir, MODEL_FILENAME)
    summary = {"model": path if info.is_chief else None,
               "epochs_run": len(history.history.get("loss", [])),
               "final": last, "replicas": replicas, "workers": info.num_workers,
               "worker": info.name, "loop": "custom" if custom else "fit",
               "steps_per_epoch": steps}
    if info.is_chief:
        _write_json(os.path.join(cfg.model_dir, "train_summary.json"), summary)
    return summary


def _train_dataset(cfg: TrainConfig, files=None, batch_size=None) -> tf.data.Dataset:
    return input_pipeline.build_dataset(cfg.data_dir, "train", pipeline_config(cfg, True),
                                        batch_size or cfg.batch_size, files=files)


def _val_dataset(cfg: TrainConfig, files=None, batch_size=None) -> tf.data.Dataset:
    # The test pipeline yields (B, crops=1, K, S, S, C): drop the crop axis.
    return input_pipeline.build_dataset(
        cfg.data_dir, cfg.validation_split, pipeline_config(cfg, False),
        batch_size or cfg.batch_size, files=files,
    ).map(lambda clips, labels: (clips[:, 0], labels))


def _standard_callbacks(cfg: TrainConfig, out_dir: str, steps: int, monitor: str,
                        custom: bool) -> list:
    callbacks = [LearningRateSetter(cfg, steps)]
    if not custom:
        # The custom loop checkpoints with tf.train.Checkpoint instead.
        callbacks.append(keras.callbacks.BackupAndRestore(
            os.path.join(cfg.model_dir, "backup"), save_freq=cfg.backup_every_steps,
            double_checkpoint=True))
    return callbacks + [
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.ModelCheckpoint(os.path.join(out_dir, "best.keras"),
                                        monitor=monitor, mode="max", save_best_only=True),
        keras.callbacks.ModelCheckpoint(os.path.join(out_dir, "last.keras")),
        keras.callbacks.CSVLogger(os.path.join(out_dir, "training_log.csv"), append=True),
        # The custom loop has no Keras train_function graph to draw.
        keras.callbacks.TensorBoard(os.path.join(out_dir, "logs"), update_freq="epoch",
                                    write_graph=not custom),
    ]


def _train_custom(cfg, model, strategy, info, meta, steps, num_classes, has_val, out_dir,
                  callbacks) -> keras.callbacks.History:
    seeded = cfg.seed is not None
    train_fn = distributed.make_dataset_fn(
        lambda files, batch: _train_dataset(cfg, files, batch),
        records.split_files(cfg.data_dir, meta, "train"), cfg.batch_size, cfg.shard_policy,
        training=True, seeded=seeded)
    val_fn = None
    if has_val:
        val_fn = distributed.make_dataset_fn(
            lambda files, batch: _val_dataset(cfg, files, batch),
            records.split_files(cfg.data_dir, meta, cfg.validation_split), cfg.batch_size,
            "auto", training=False, seeded=seeded)
    loop = distributed.LoopConfig(
        epochs=cfg.epochs, steps_per_epoch=steps, global_batch_size=cfg.batch_size,
        read_dir=distributed.checkpoint_dir(cfg.model_dir),
        write_dir=distributed.checkpoint_dir(out_dir),
        backup_every_steps=cfg.backup_every_steps, jit_compile=cfg.jit_compile,
        num_classes=num_classes, is_chief=info.is_chief)
    return distributed.run(model, strategy, train_fn, val_fn, callbacks, loop,
                           verbose=cfg.verbose)


def _float32_model(model: keras.Model, cfg: TrainConfig, num_classes: int) -> keras.Model:
    """``model`` itself, or a float32 twin with its weights when it is mixed precision."""
    if keras.mixed_precision.global_policy().name == "float32":
        return model
    keras.mixed_precision.set_global_policy("float32")  # train() restores the caller's
    twin = build_model(dataclasses.replace(cfg, weights=None), num_classes)
    compile_model(twin, cfg, num_classes)
    # Variables are float32 under mixed precision: the copy is exact.
    twin.set_weights(model.get_weights())
    # The optimizer state too (momentum, iterations), as a fit-trained model
    # saves it; a loss-scale optimizer's own state (the scale) is dropped.
    source = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    twin.optimizer.build(twin.trainable_variables)
    for target, value in zip(twin.optimizer.variables, source.variables):
        target.assign(value)
    return twin


def save_model(model: keras.Model, path: str) -> None:
    """``model.save`` under a temp name, then rename: never a torn .keras file."""
    tmp = path[: -len(".keras")] + f".tmp-{os.getpid()}.keras"
    model.save(tmp)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def _write_json(path: str, obj) -> None:
    records.atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")
