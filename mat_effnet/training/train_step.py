"""What one training step of a stream computes (paper Sect. 4.2).

The paper trains each stream with categorical cross-entropy on the softmax
output and reports top-1 and top-5 accuracy.  `StreamTask` holds that loss
and the Keras metric objects, so both ways of training define them here and
only here:

* ``fit`` gets them through ``model.compile`` (`StreamTask.compile`): Keras's
  own ``train_step`` evaluates this loss object and updates these metric
  objects (``fit`` keeps the batch loss in its own ``Mean("loss")``).
* The custom loop (`mat_effnet.training.distributed`) calls the step pieces below
  inside ``strategy.run``: `forward_backward`, `apply`, `update_metrics`,
  then `results` / `reset` in cross-replica context.

The step lives here, beside the model and not in it: the saved model
(`identity.StreamModel`) holds no training code and stays backend-agnostic.

Reductions match ``fit``'s under a ``tf.distribute`` strategy: each replica's
loss is its per-example losses summed over the *global* batch (the optimizer
sums the replicas' gradients), and the logged loss is each replica's batch
mean weighted by its batch size.  Metric variables are created on-read
synchronised, so a result read in cross-replica context is the value over
every replica of every worker.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class StreamTask:
    """Loss and metrics of stream training; create under the strategy's scope."""

    def __init__(self, num_classes: int):
        # Labels are class indices and the model ends in a softmax: sparse
        # cross-entropy on probabilities is the paper's categorical loss.
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy()
        self.loss = keras.metrics.Mean(name="loss")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.top5 = keras.metrics.SparseTopKCategoricalAccuracy(k=min(5, int(num_classes)),
                                                                name="top5")

    @property
    def metrics(self) -> list:
        return [self.loss, self.accuracy, self.top5]

    def compile(self, model: keras.Model, optimizer, jit_compile: bool = False) -> None:
        """``fit``'s step, with this task's loss and metric objects."""
        model.compile(optimizer=optimizer, loss=self.loss_fn,
                      metrics=[self.accuracy, self.top5], jit_compile=bool(jit_compile))

    # -- the replica step ---------------------------------------------------

    def per_example_loss(self, labels, probs):
        return self.loss_fn.call(labels, probs)

    def forward_backward(self, model: keras.Model, clips, labels, global_batch_size: int):
        """(gradients, probabilities, this replica's mean loss)."""
        optimizer = model.optimizer
        with tf.GradientTape() as tape:
            probs = model(clips, training=True)
            per_example = self.per_example_loss(labels, probs)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
            mean_loss = tf.reduce_mean(per_example)
            if model.losses:
                extra = tf.add_n(model.losses)
                loss += tf.nn.scale_regularization_loss(extra)
                mean_loss += extra
            scaled = optimizer.scale_loss(loss)
        return tape.gradient(scaled, model.trainable_variables), probs, mean_loss

    @staticmethod
    def apply(model: keras.Model, grads) -> None:
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))

    def evaluate_batch(self, model: keras.Model, clips, labels) -> None:
        probs = model(clips, training=False)
        mean_loss = tf.reduce_mean(self.per_example_loss(labels, probs))
        if model.losses:
            mean_loss += tf.add_n(model.losses)
        self.update_metrics(labels, probs, mean_loss)

    def update_metrics(self, labels, probs, mean_loss) -> None:
        self.loss.update_state(mean_loss, sample_weight=tf.shape(labels)[0])
        self.accuracy.update_state(labels, probs)
        self.top5.update_state(labels, probs)

    # -- cross-replica ------------------------------------------------------

    def results(self) -> dict:
        return {m.name: m.result() for m in self.metrics}

    def reset(self) -> None:
        for m in self.metrics:
            m.reset_state()
