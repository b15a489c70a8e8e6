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
``TF_CONFIG``) runs the custom loop of `mat_effnet.training.distributed` instead of
``fit``, which fails under that strategy with TF 2.21 / Keras 3.15; it
takes the same step (the loss and metrics of `mat_effnet.training.train_step`, which
``fit`` gets through ``compile``), drives the same callbacks and resumes
from ``tf.train.Checkpoint``s (see that module for the design).
Single-machine runs keep ``fit``, Keras's well-trodden path.

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

import json
import logging
import math
import os
from typing import Sequence

import keras
import tensorflow as tf

from mat_effnet.common import atomic
from mat_effnet.training import cluster, config, distributed, skip_damaged, train_step
from mat_effnet.data import input_pipeline
from mat_effnet.records import integrity
from mat_effnet.modeling import models
from mat_effnet import records
from mat_effnet.data.sampling import PipelineConfig
from mat_effnet.common.errors import bad_argument

log = logging.getLogger("mat_effnet.train")

STRATEGIES = config.STRATEGIES
MODEL_FILENAME = "model.keras"


TrainConfig = config.TrainConfig


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """auto: MirroredStrategy over all GPUs when there are several, else default.

    "mirrored" on a machine without GPUs mirrors over the logical CPU devices
    (how the tests exercise the distributed code path).  "multi_worker":
    MultiWorkerMirroredStrategy over the cluster in ``TF_CONFIG`` (all GPUs,
    or the CPU, of every worker); it must be created before TensorFlow does
    anything else in the process.
    """
    if name == "multi_worker":
        return cluster.make_multi_worker_strategy()
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
    raise bad_argument("strategy", repr(name), f"expected one of {', '.join(STRATEGIES)}")


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
    if not (cfg.runtime.mixed_precision or cfg.runtime.jit_compile):
        return
    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        return
    switches = [n for n in ("mixed_precision", "jit_compile") if getattr(cfg.runtime, n)]
    # Measured on a 2-core AVX-512 CPU (step time vs. neither switch):
    # EfficientNet-B0 bfloat16 1.5x, XLA 15x; ResNet-18 bfloat16 0.75x, XLA 1.25x.
    log.warning("%s on a machine without GPU/TPU: allowed, but on CPU it is often "
                "slower (XLA much slower for EfficientNet)", " and ".join(switches))


def learning_rate_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate at a global step (0-based)."""
    epoch = step / steps_per_epoch
    base = cfg.optim.learning_rate
    if cfg.optim.warmup_epochs > 0 and epoch < cfg.optim.warmup_epochs:
        return base * (step + 1) / (cfg.optim.warmup_epochs * steps_per_epoch)
    if cfg.optim.lr_schedule == "constant":
        return base
    if cfg.optim.lr_schedule == "step":
        return base * 0.1 ** sum(epoch >= e for e in cfg.optim.lr_decay_epochs)
    total = cfg.optim.epochs - cfg.optim.warmup_epochs
    progress = min(max((epoch - cfg.optim.warmup_epochs) / total, 0.0), 1.0) if total > 0 else 1.0
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


def pipeline_config(cfg: TrainConfig, training: bool) -> PipelineConfig:
    data = cfg.data
    return PipelineConfig(
        stream=cfg.stream, num_segments=data.num_segments, image_size=cfg.image_size(),
        flow_length=data.flow_length, training=training, test_segments=data.num_segments,
        crops=1, multiscale=data.multiscale, flip=data.flip, shuffle_buffer=data.shuffle_buffer,
        seed=cfg.runtime.seed)


def build_model(cfg: TrainConfig, num_classes: int, meta: dict | None = None) -> keras.Model:
    """The stream model of ``cfg``; with the data's ``meta``, it carries its identity.

    The identity (class names, dataset, how the training data was prepared)
    is saved inside ``model.keras``, so evaluation and prediction need
    nothing but the file.
    """
    model = cfg.model
    return models.build_from_spec(cfg.stream_spec(num_classes, meta), weights=model.weights,
                                  dropout=model.dropout, bn_momentum=model.bn_momentum)


def compile_model(model: keras.Model, cfg: TrainConfig, num_classes: int) -> train_step.StreamTask:
    """SGD + the stream task's loss and metrics (`mat_effnet.training.train_step`); returns the task.

    Call under the strategy's scope.  Under the ``mixed_float16`` policy
    Keras wraps the optimizer in a LossScaleOptimizer.
    """
    optim = cfg.optim
    optimizer = keras.optimizers.SGD(learning_rate=optim.learning_rate, momentum=optim.momentum,
                                     weight_decay=optim.weight_decay or None,
                                     global_clipnorm=optim.clip_norm)
    stream_task = train_step.StreamTask(num_classes)
    stream_task.compile(model, optimizer, jit_compile=cfg.runtime.jit_compile)
    return stream_task


def _split_records(meta: dict, split: str) -> int:
    return int(meta["splits"][split]["records"])


def train(cfg: TrainConfig, callbacks: Sequence[keras.callbacks.Callback] = ()) -> dict:
    """Trains one stream; the chief writes ``model_dir/model.keras``; returns a summary.

    ``callbacks`` are added after the standard ones (every worker runs them).
    """
    for section, name in (("data", "data_dir"), ("runtime", "model_dir")):
        if not getattr(getattr(cfg, section), name):
            raise bad_argument(name, None, "required")
    cfg.stream  # noqa: B018 -- raises when the stream is missing, before any work
    # First: MultiWorkerMirroredStrategy configures TensorFlow's collectives
    # when it is created, which is refused once the runtime has started.
    strategy = make_strategy(cfg.runtime.strategy)
    info = cluster.strategy_worker_info(strategy)
    meta = records.read_metadata(cfg.data.data_dir)
    num_classes = int(meta["num_classes"])
    if info.is_chief:
        tf.io.gfile.makedirs(cfg.runtime.model_dir)
    if cfg.runtime.seed is not None:
        keras.utils.set_random_seed(cfg.runtime.seed)

    replicas = strategy.num_replicas_in_sync
    if cfg.optim.batch_size % replicas:
        raise ValueError(f"batch_size={cfg.optim.batch_size} must be a multiple of the "
                         f"{replicas} replicas of the strategy")
    train_records = _split_records(meta, "train")
    steps = cfg.optim.steps_per_epoch or max(1, train_records // cfg.optim.batch_size)
    has_val = bool(cfg.data.validation_split
                   and cfg.data.validation_split in meta.get("shards", {}))
    custom = cfg.uses_custom_loop(replicas)
    if cfg.runtime.loop == "fit" and cfg.runtime.jit_compile and replicas > 1:
        raise ValueError(f"jit_compile=True with loop='fit' over {replicas} replicas: Keras's "
                         "XLA step cannot reach other devices' variables; use loop='auto' "
                         "or 'custom'")
    read_splits = ["train", *([cfg.data.validation_split] if has_val else [])]
    skips = None
    if cfg.data.on_corrupt == "skip":
        if custom:
            raise bad_argument("on_corrupt", "skip", "works with the Keras fit loop (one "
                               "machine); the custom loop stops on a damaged record: run "
                               "mat-effnet-verify and mat-effnet-prep --rebuild_damaged")
        if int(meta.get("schema_version", 1)) == 1:
            raise bad_argument("on_corrupt", "skip", f"{cfg.data.data_dir} holds version-1 "
                               "records, which cannot be skipped one by one")
        skips = skip_damaged.SkipList(cfg.runtime.model_dir)
    for split in read_splits:  # sizes against the metadata: a stat each, before any step
        try:
            integrity.check_split(cfg.data.data_dir, meta, split)
        except integrity.DataFault:
            # A truncated shard: with skip, the groups past its end are left out.
            if skips is None or not skips.add(integrity.damaged_groups(
                    cfg.data.data_dir, meta, split, known=skips.keys), split):
                raise
    if custom:
        # Fail before any work when the shard files cannot feed the workers.
        cluster.plan_sharding(records.split_files(cfg.data.data_dir, meta, "train"),
                                  info.num_workers, cfg.runtime.shard_policy)
    _warn_if_cpu(cfg)

    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision_policy(cfg.runtime.mixed_precision))
    try:
        with strategy.scope():
            model = build_model(cfg, num_classes, meta)
            stream_task = compile_model(model, cfg, num_classes)
        monitor = "val_accuracy" if has_val else "accuracy"
        # Off the chief everything goes to a temp dir that is then deleted.
        with cluster.WriteDir(cfg.runtime.model_dir, info) as out_dir:
            if info.is_chief:
                _write_json(os.path.join(cfg.runtime.model_dir, "train_config.json"),
                            dict(cfg.to_dict(), num_classes=num_classes,
                                 classes=meta["classes"], replicas=replicas,
                                 workers=info.num_workers, steps_per_epoch=steps))
            while True:  # more than once only with on_corrupt=skip, after a damaged record
                all_callbacks = [*_standard_callbacks(cfg, out_dir, steps, monitor, custom,
                                                      skips), *callbacks]
                try:
                    if custom:
                        history = _train_custom(cfg, model, stream_task, strategy, info, meta,
                                                steps, has_val, out_dir, all_callbacks)
                    else:
                        skip = skips.keys if skips is not None else frozenset()
                        val = _val_dataset(cfg, meta, skip=skip) if has_val else None
                        # shuffle=False: the dataset is shuffled already (a permutation
                        # per epoch, input_pipeline); Keras's default True only warns.
                        history = model.fit(_train_dataset(cfg, meta, skip=skip),
                                            epochs=cfg.optim.epochs, steps_per_epoch=steps,
                                            validation_data=val, callbacks=all_callbacks,
                                            verbose=cfg.runtime.verbose, shuffle=False)
                    break
                except Exception as e:  # noqa: BLE001  # a damaged shard: named, not TF's trace
                    if not integrity.read_error(e):
                        raise
                    # Skip: every damaged video found in one scan, then resume from the
                    # last backup (BackupAndRestore) as after a kill.
                    if skips is None or not skips.scan(cfg.data.data_dir, meta, read_splits, e):
                        raise integrity.locate(cfg.data.data_dir, meta, read_splits,
                                               e) from None
            save_model(_float32_model(model, cfg, num_classes, meta),
                       os.path.join(out_dir, MODEL_FILENAME))
            if cluster.is_multi_worker(strategy):
                distributed.barrier(strategy)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    last = {k: float(v[-1]) for k, v in history.history.items() if v}
    path = os.path.join(cfg.runtime.model_dir, MODEL_FILENAME)
    summary = {"model": path if info.is_chief else None,
               "epochs_run": len(history.history.get("loss", [])),
               "final": last, "replicas": replicas, "workers": info.num_workers,
               "worker": info.name, "loop": "custom" if custom else "fit",
               "steps_per_epoch": steps,
               "skipped": skips.videos() if skips is not None else []}
    if info.is_chief:
        _write_json(os.path.join(cfg.runtime.model_dir, "train_summary.json"), summary)
    return summary


def _train_dataset(cfg: TrainConfig, meta: dict, files=None, batch_size=None,
                   skip=frozenset()) -> tf.data.Dataset:
    # With a tf.data service the clips are made on its workers; validation
    # stays local (one pass in file order, small).
    return input_pipeline.build_dataset(cfg.data.data_dir, "train", pipeline_config(cfg, True),
                                        batch_size or cfg.optim.batch_size, files=files,
                                        data_service=cfg.data.data_service, meta=meta,
                                        skip=skip)


def _val_dataset(cfg: TrainConfig, meta: dict, files=None, batch_size=None,
                 skip=frozenset()) -> tf.data.Dataset:
    # The test pipeline yields (B, crops=1, K, S, S, C): drop the crop axis.
    return input_pipeline.build_dataset(
        cfg.data.data_dir, cfg.data.validation_split, pipeline_config(cfg, False),
        batch_size or cfg.optim.batch_size, files=files, meta=meta, skip=skip,
    ).map(lambda clips, labels: (clips[:, 0], labels))


def _standard_callbacks(cfg: TrainConfig, out_dir: str, steps: int, monitor: str,
                        custom: bool, skips=None) -> list:
    callbacks = [LearningRateSetter(cfg, steps)]
    if not custom:
        # The custom loop checkpoints with tf.train.Checkpoint instead.
        callbacks.append(keras.callbacks.BackupAndRestore(
            os.path.join(cfg.runtime.model_dir, "backup"), save_freq=cfg.runtime.backup_every_steps,
            double_checkpoint=True))
    return callbacks + [
        keras.callbacks.TerminateOnNaN(),
        AtomicModelCheckpoint(os.path.join(out_dir, "best.keras"), monitor=monitor,
                              mode="max", save_best_only=True,
                              every_epochs=cfg.runtime.checkpoint_every_epochs),
        AtomicModelCheckpoint(os.path.join(out_dir, "last.keras"),
                              every_epochs=cfg.runtime.checkpoint_every_epochs),
        # Before the CSV and TensorBoard loggers, which read the logs it adds to.
        skip_damaged.SkippedCount(skips, os.path.join(out_dir, "training_log.csv")),
        keras.callbacks.CSVLogger(os.path.join(out_dir, "training_log.csv"), append=True),
        # The custom loop has no Keras train_function graph to draw.
        keras.callbacks.TensorBoard(os.path.join(out_dir, "logs"), update_freq="epoch",
                                    write_graph=not custom),
    ]


def _train_custom(cfg, model, stream_task, strategy, info, meta, steps, has_val, out_dir,
                  callbacks) -> keras.callbacks.History:
    seeded = cfg.runtime.seed is not None
    data_dir, batch_size = cfg.data.data_dir, cfg.optim.batch_size
    train_fn = cluster.make_dataset_fn(
        lambda files, batch: _train_dataset(cfg, meta, files, batch),
        records.split_files(data_dir, meta, "train"), batch_size, cfg.runtime.shard_policy,
        training=True, seeded=seeded)
    val_fn = None
    if has_val:
        val_fn = cluster.make_dataset_fn(
            lambda files, batch: _val_dataset(cfg, meta, files, batch),
            records.split_files(data_dir, meta, cfg.data.validation_split), batch_size,
            "auto", training=False, seeded=seeded)
    loop = distributed.LoopConfig(
        epochs=cfg.optim.epochs, steps_per_epoch=steps, global_batch_size=cfg.optim.batch_size,
        read_dir=distributed.checkpoint_dir(cfg.runtime.model_dir),
        write_dir=distributed.checkpoint_dir(out_dir),
        backup_every_steps=cfg.runtime.backup_every_steps, jit_compile=cfg.runtime.jit_compile,
        is_chief=info.is_chief)
    return distributed.run(model, stream_task, strategy, train_fn, val_fn, callbacks, loop,
                           verbose=cfg.runtime.verbose)


def _float32_model(model: keras.Model, cfg: TrainConfig, num_classes: int,
                   meta: dict | None = None) -> keras.Model:
    """``model`` itself, or a float32 twin with its weights when it is mixed precision."""
    if keras.mixed_precision.global_policy().name == "float32":
        return model
    keras.mixed_precision.set_global_policy("float32")  # train() restores the caller's
    twin = build_model(cfg.replace(weights=None), num_classes, meta)
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


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """Keras's ModelCheckpoint, saving through `save_model` (temp name, then rename).

    Keras's own saves in place: a kill or a full disk during the write left
    a broken ``best.keras``/``last.keras`` under the final name, and the
    previous, good one gone. Keras decides when and where to save
    (``_should_save_model`` keeps the best-so-far bookkeeping); only the
    write is replaced. ``every_epochs`` (``checkpoint_every_epochs``) thins
    the saves out: on epochs of a few steps a write costs more than the
    epoch's training. Every worker of a multi-worker run saves (off the
    chief into its private temp dir, `cluster.WriteDir`), so their saves
    go through here too.
    """

    def __init__(self, filepath, every_epochs: int = 1, **kwargs):
        super().__init__(filepath, **kwargs)
        self.every_epochs = int(every_epochs)

    def on_epoch_end(self, epoch, logs=None):
        # Every ``every_epochs`` epochs, and always after the last one.
        last = (self.params or {}).get("epochs")
        if (epoch + 1) % self.every_epochs == 0 or epoch + 1 == last:
            super().on_epoch_end(epoch, logs)

    def _save_model(self, epoch, batch, logs):
        filepath = self._get_file_path(epoch, batch, logs)
        if self._should_save_model(epoch, batch, logs, filepath):
            if self.save_weights_only:
                with atomic.replacing(filepath, suffix=".weights.h5") as tmp:
                    self.model.save_weights(tmp, overwrite=True)
            else:
                save_model(self.model, filepath)


def save_model(model: keras.Model, path: str) -> None:
    """``model.save`` under a temp name, then rename: never a torn .keras file."""
    with atomic.replacing(path, suffix=".keras") as tmp:
        model.save(tmp)


def _write_json(path: str, obj) -> None:
    atomic.write_text(path, json.dumps(obj, indent=2, default=str) + "\n")
