"""Training across machines: a custom loop for ``MultiWorkerMirroredStrategy``.

Implements the multi-machine half of the training recipe (paper Sect. 4.2:
mini-batch SGD on one global batch): synchronous data parallelism with
``tf.distribute.MultiWorkerMirroredStrategy`` (MWMS), the cluster read from
``TF_CONFIG``, following TensorFlow's "Custom training loop with
MultiWorkerMirroredStrategy" pattern.

Why a custom loop, and why only for multi-worker runs
-----------------------------------------------------
With TensorFlow 2.21 / Keras 3.15, ``model.fit`` under MWMS fails on two
workers (``ValueError: Attempt to convert a value (PerReplica:{...``), while
``strategy.run`` inside a ``tf.function`` trains and leaves every worker
with the same weights.  Single-machine runs keep ``fit`` (``training.py``):
it is Keras's well-trodden path, its callbacks (BackupAndRestore included)
were written for it, and the end-to-end tests cover it.  The loop here works
under any strategy (``TrainConfig.loop="custom"``), which is how the tests
check it against ``fit`` in one process.

What the loop keeps from ``fit``
--------------------------------
* The same Keras callbacks, driven through ``keras.callbacks.CallbackList``
  with fit's call order and logs (``loss``, ``accuracy``, ``top5``,
  ``val_*``, ``learning_rate``): TensorBoard, CSVLogger, best/last
  ModelCheckpoint, LearningRateSetter, TerminateOnNaN.  Every logged number
  is reduced over all replicas of all workers, so every worker sees the same
  values and takes the same decisions (a worker that stopped alone would
  leave the others waiting in a collective forever).
* The step: the loss, the metric objects and the replica step's pieces are
  those of `mat_effnet.training.train_step.StreamTask`, whose loss and metrics ``fit`` gets
  through ``compile``; `StreamTrainer` drives them in the shape of orbit's
  ``StandardTrainer`` (``train_loop_begin`` / ``train_step`` /
  ``train_loop_end``).
* BatchNormalization's moving statistics, which each replica updates from
  its own batch, are averaged over all replicas after every step, so every
  worker holds the same model at all times (and saves the same one).
* Resume: instead of BackupAndRestore (it needs ``fit``), a
  ``tf.train.Checkpoint`` of model, optimizer (momentum, iteration count,
  loss scale) and two counters, the epoch and the step inside it, saved
  every ``backup_every_steps`` steps and at each epoch end by a
  ``tf.train.CheckpointManager`` in ``model_dir/checkpoints``.  A run
  started again with the same command continues at the saved step of the
  saved epoch; its data stream starts afresh (the shuffle buffers are not
  checkpointed: they hold undecoded videos and would make every checkpoint
  huge), which for an endless, reshuffled training stream changes only the
  order of later samples.  Unlike BackupAndRestore the checkpoints stay
  after a finished run, so the same command with more ``--epochs`` goes on
  training; delete ``model_dir/checkpoints`` to start over.

The cluster (``TF_CONFIG``, chief and workers, input sharding) is read by
`mat_effnet.training.cluster`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable, Sequence

import keras
import tensorflow as tf

from mat_effnet.training import cluster, lost_worker

log = logging.getLogger("mat_effnet.training.distributed")

CHECKPOINT_SUBDIR = "checkpoints"


# ---------------------------------------------------------------------------
# Broadcasting the chief's state
# ---------------------------------------------------------------------------

def broadcast_from_chief(strategy: tf.distribute.Strategy, variables: Sequence) -> None:
    """Gives every replica of every worker the chief's values of ``variables``.

    An all-reduce (sum) where replica 0, which lives on the chief, contributes
    its value and every other replica zeros: adding zeros is exact, so the
    result is the chief's value bit for bit.  Everything travels as float64
    (one dtype per all-reduce; exact for float32/16 values and for integers
    below 2**53).
    """
    variables = list(variables)
    if not variables:
        return

    @tf.function
    def reduce():
        def replica_fn():
            ctx = tf.distribute.get_replica_context()
            first = tf.equal(ctx.replica_id_in_sync_group, 0)
            values = []
            for v in variables:
                x = tf.cast(tf.convert_to_tensor(v), tf.float64)
                # tf.where, not a product: a NaN on a non-chief must not leak.
                values.append(tf.where(first, x, tf.zeros_like(x)))
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, values)

        return strategy.run(replica_fn)

    reduced = reduce()
    for v, r in zip(variables, reduced):
        # tf.as_dtype: Keras variables name their dtype by a string.
        v.assign(tf.cast(strategy.experimental_local_results(r)[0], tf.as_dtype(v.dtype)))


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Returns when every worker has reached it (a one-number all-reduce).

    At the end of a run it keeps the chief, which hosts TensorFlow's
    coordination service, from exiting while the others still work.
    """
    if strategy.num_replicas_in_sync < 2:
        return

    @tf.function
    def meet():
        return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.constant(1.0)))

    meet()


def batch_norm_statistics(model: keras.Model) -> list:
    """The moving mean/variance variables of every BatchNormalization layer."""
    found, seen = [], set()

    def walk(layer):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, keras.layers.BatchNormalization):
            found.extend([layer.moving_mean, layer.moving_variance])
        for child in getattr(layer, "layers", ()):
            walk(child)

    walk(model)
    return found


def average_over_replicas(strategy: tf.distribute.Strategy, variables: Sequence) -> None:
    """Sets every replica's copy of ``variables`` to their mean over replicas.

    Call from a ``tf.function`` in cross-replica context.  BatchNormalization
    updates its moving statistics from each replica's own batch, so without
    this the copies drift apart (the workers would save different models).
    The mean of the replicas' moving averages is the moving average of the
    mean of their batch statistics, i.e. of the global batch's mean (for the
    variance, the mean of the per-replica variances).
    """
    if not variables:
        return
    means = strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(
        # tf.identity: a fresh tensor on the replica's device (all_reduce
        # finds no destination for the variable read itself).
        tf.distribute.ReduceOp.MEAN, [tf.identity(v) for v in variables]))
    for v, m in zip(variables, means):
        v.assign(strategy.experimental_local_results(m)[0])


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class LoopConfig:
    """What the loop needs beyond the model, its data and its callbacks."""

    epochs: int
    steps_per_epoch: int
    global_batch_size: int
    read_dir: str            # checkpoints restored from here (the chief's)
    write_dir: str           # checkpoints saved here (a temp dir off the chief)
    backup_every_steps: int = 100
    jit_compile: bool = False
    is_chief: bool = True
    max_to_keep: int = 2


def _skip_together(grads: list) -> list:
    """Makes every replica's gradients non-finite when any replica's are.

    The loss-scale optimizer skips a step whose gradients are not finite,
    judged on each replica's own gradients; judged apart, some replicas
    would enter the gradient all-reduce and others not, and the step would
    hang.  Call in replica context.
    """
    bad = tf.cast(tf.logical_not(tf.reduce_all(
        [tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None])), tf.float32)
    bad = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, bad)
    poison = tf.where(bad > 0, float("nan"), 0.0)
    return [None if g is None else g + tf.cast(poison, g.dtype) for g in grads]


class StreamTrainer:
    """One global step at a time, in the shape of orbit's ``StandardTrainer``.

    `train_loop_begin` resets the task's metrics, `train_step` runs the
    task's replica step on every replica and returns the running metric
    values, `train_loop_end` returns them at the end of the epoch.  The loss
    and the metrics are the task's (`mat_effnet.training.train_step`), the ones ``fit`` uses.
    """

    def __init__(self, model: keras.Model, task, strategy: tf.distribute.Strategy,
                 global_batch_size: int, jit_compile: bool = False):
        self.model, self.task, self.strategy = model, task, strategy

        def forward_backward(clips, labels):
            return task.forward_backward(model, clips, labels, global_batch_size)

        if jit_compile:
            # XLA compiles the forward and backward pass; the gradient
            # all-reduce and the update stay outside (collectives are not
            # XLA-compiled here).
            forward_backward = tf.function(forward_backward, jit_compile=True,
                                           reduce_retracing=True)
        self._forward_backward = forward_backward
        self._agree_on_skips = (isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
                                and strategy.num_replicas_in_sync > 1)
        self._bn_statistics = (batch_norm_statistics(model)
                               if strategy.num_replicas_in_sync > 1 else [])
        self._train = tf.function(self._global_train_step)
        self._eval = tf.function(self._global_eval_step, reduce_retracing=True)
        self._results = tf.function(task.results)

    def _replica_train_step(self, clips, labels):
        grads, probs, mean_loss = self._forward_backward(clips, labels)
        if self._agree_on_skips:
            grads = _skip_together(grads)
        self.task.apply(self.model, grads)
        self.task.update_metrics(labels, probs, mean_loss)

    def _global_train_step(self, iterator):
        clips, labels = next(iterator)
        self.strategy.run(self._replica_train_step, args=(clips, labels))
        average_over_replicas(self.strategy, self._bn_statistics)
        return self.task.results()

    def _global_eval_step(self, clips, labels):
        self.strategy.run(lambda c, l: self.task.evaluate_batch(self.model, c, l),
                          args=(clips, labels))
        return self.task.results()

    def train_loop_begin(self) -> None:
        self.task.reset()

    def train_step(self, iterator) -> dict:
        return _floats(self._train(iterator))

    def train_loop_end(self) -> dict:
        return _floats(self._results())

    def evaluate(self, dataset, cb: keras.callbacks.CallbackList) -> dict:
        """One pass over a distributed dataset; the metrics as ``fit`` logs them."""
        self.task.reset()
        cb.on_test_begin()
        logs: dict = {}
        for i, (clips, labels) in enumerate(dataset):
            cb.on_test_batch_begin(i)
            logs = _floats(self._eval(clips, labels))
            cb.on_test_batch_end(i, logs)
        logs = _floats(self._results())
        cb.on_test_end(logs)
        return {f"val_{k}": v for k, v in logs.items()}


def _floats(results: dict) -> dict:
    return {k: float(v) for k, v in results.items()}


class Checkpoints:
    """Resume state: model, optimizer and (epoch, step in epoch).

    Only the chief restores; the others then receive its values (see the
    module docstring).  Off the chief a save only takes part in the save's
    collectives and is deleted.
    """

    def __init__(self, model: keras.Model, strategy: tf.distribute.Strategy, cfg: LoopConfig):
        self.cfg = cfg
        with strategy.scope():
            model.optimizer.build(model.trainable_variables)
        # Plain (not mirrored) variables: every worker sets them from the host.
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer,
                                         epoch=self.epoch, step_in_epoch=self.step)
        if cfg.is_chief:
            latest = tf.train.latest_checkpoint(cfg.read_dir)
            if latest:
                checkpoint.restore(latest).assert_existing_objects_matched()
                log.info("restored %s: epoch %d, step %d", latest, int(self.epoch.numpy()),
                         int(self.step.numpy()))
        if cluster.is_multi_worker(strategy) and cluster.strategy_worker_info(strategy).num_workers > 1:
            broadcast_from_chief(strategy, [*model.weights, *model.optimizer.variables,
                                            self.epoch, self.step])
        self.manager = tf.train.CheckpointManager(
            checkpoint, cfg.write_dir, max_to_keep=cfg.max_to_keep if cfg.is_chief else 1)

    def start(self) -> tuple[int, int]:
        """(epoch, step) to continue from."""
        epoch, step = int(self.epoch.numpy()), int(self.step.numpy())
        if step >= self.cfg.steps_per_epoch:  # steps_per_epoch shrank since the save
            return epoch + 1, 0
        return epoch, step

    def save(self, epoch: int, step: int) -> None:
        self.epoch.assign(epoch)
        self.step.assign(step)
        self.manager.save(checkpoint_number=epoch * self.cfg.steps_per_epoch + step)
        if not self.cfg.is_chief:
            tf.io.gfile.rmtree(self.cfg.write_dir)


def run(model: keras.Model, task, strategy: tf.distribute.Strategy, train_dataset_fn: Callable,
        val_dataset_fn: Callable | None, callbacks: Sequence[keras.callbacks.Callback],
        cfg: LoopConfig, verbose: int = 0) -> keras.callbacks.History:
    """Trains ``model`` (compiled under ``strategy``) with ``fit``'s semantics.

    Returns the History callback.  The optimizer is the model's; the loss and
    the metrics are ``task``'s (`mat_effnet.training.train_step.StreamTask`).  A peer lost
    mid-run ends it with one `MatEffNetError` naming that worker
    (`mat_effnet.training.lost_worker`); the chief's checkpoints stay as they were.
    """
    try:
        return _run(model, task, strategy, train_dataset_fn, val_dataset_fn, callbacks, cfg,
                    verbose)
    except lost_worker.PEER_ERRORS as e:
        if not (cluster.is_multi_worker(strategy) and cluster.strategy_worker_info(strategy).num_workers > 1):
            raise
        raise lost_worker.as_error(e, cluster.strategy_worker_info(strategy).name,
                                   cfg.read_dir) from None


def _run(model, task, strategy, train_dataset_fn, val_dataset_fn, callbacks, cfg, verbose):
    checkpoints = Checkpoints(model, strategy, cfg)
    trainer = StreamTrainer(model, task, strategy, cfg.global_batch_size, cfg.jit_compile)
    iterator = iter(strategy.distribute_datasets_from_function(train_dataset_fn))
    cb = keras.callbacks.CallbackList(
        list(callbacks), add_history=True, add_progbar=verbose != 0 and cfg.is_chief,
        model=model, verbose=verbose, epochs=cfg.epochs, steps=cfg.steps_per_epoch)
    start_epoch, start_step = checkpoints.start()
    model.stop_training = False
    cb.on_train_begin()
    logs: dict = {}
    for epoch in range(start_epoch, cfg.epochs):
        cb.on_epoch_begin(epoch)
        trainer.train_loop_begin()
        for step in range(start_step if epoch == start_epoch else 0, cfg.steps_per_epoch):
            cb.on_train_batch_begin(step)
            cb.on_train_batch_end(step, trainer.train_step(iterator))
            if model.stop_training:
                break
            done = step + 1
            # The epoch's last step is saved by the epoch end, after its
            # callbacks, so a resume never skips an epoch's CSV row or models.
            if done % cfg.backup_every_steps == 0 and done < cfg.steps_per_epoch:
                checkpoints.save(epoch, done)
        logs = trainer.train_loop_end()
        if val_dataset_fn is not None:
            logs = {**logs, **trainer.evaluate(
                strategy.distribute_datasets_from_function(val_dataset_fn), cb)}
        cb.on_epoch_end(epoch, logs)
        if model.stop_training:
            break  # not saved: a restart resumes from the last good state
        checkpoints.save(epoch + 1, 0)
    cb.on_train_end(logs)
    return model.history


def checkpoint_dir(model_dir: str) -> str:
    return os.path.join(model_dir, CHECKPOINT_SUBDIR)
