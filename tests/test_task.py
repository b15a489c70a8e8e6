"""The training step defined once (mat_effnet.training.train_step): fit and the custom loop's
StreamTrainer compute the same loss, metrics and update, the metrics over all
replicas."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mat_effnet.training import distributed, train_step, trainer

CLASSES = 6


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4)).astype("float32")
    # The two replicas' halves differ, so a metric read from one replica
    # alone would not give the whole batch's value.
    x[4:] *= 3.0
    y = np.array([0, 1, 2, 3, 4, 5, 0, 1], "int32")
    return x, y


def _model(weights=None):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(CLASSES,
                                                                     activation="softmax")])
    if weights is not None:
        model.set_weights(weights)
    return model


def _expected(model, x, y):
    probs = model(x).numpy()
    loss = float(np.mean(-np.log(probs[np.arange(len(y)), y])))
    accuracy = float(np.mean(probs.argmax(-1) == y))
    ranks = (probs > probs[np.arange(len(y)), y][:, None]).sum(-1)
    return {"loss": loss, "accuracy": accuracy, "top5": float(np.mean(ranks < 5))}


def test_custom_step_over_two_replicas_matches_fit():
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs the 2 logical CPU devices that conftest.py configures")
    x, y = _data()
    keras.utils.set_random_seed(0)
    reference = _model()
    start = reference.get_weights()
    y[5] = int(reference(x).numpy()[5].argmin())  # outside the top 5
    expected = _expected(reference, x, y)
    assert 0.0 < expected["accuracy"] < expected["top5"] < 1.0
    halves = [_expected(reference, x[i:i + 4], y[i:i + 4]) for i in (0, 4)]
    for name in expected:
        assert halves[0][name] != halves[1][name], name

    # fit's step, one device.
    fit_task = train_step.StreamTask(CLASSES)
    fit_task.compile(reference, keras.optimizers.SGD(0.5))
    fit_logs = reference.train_on_batch(x, y, return_dict=True)

    # The custom loop's step, the global batch split over two replicas.
    strategy = trainer.make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = _model(start)
        stream_task = train_step.StreamTask(CLASSES)
        stream_task.compile(model, keras.optimizers.SGD(0.5))
    loop = distributed.StreamTrainer(model, stream_task, strategy, global_batch_size=8)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    iterator = iter(strategy.experimental_distribute_dataset(data))
    loop.train_loop_begin()
    logs = loop.train_step(iterator)

    assert set(logs) == {"loss", "accuracy", "top5"}
    for name, value in expected.items():
        assert logs[name] == pytest.approx(value, rel=1e-5), name
        assert fit_logs[name] == pytest.approx(value, rel=1e-5), name
    assert loop.train_loop_end() == logs
    for a, b in zip(reference.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert max(float(np.abs(a - b).max()) for a, b in zip(start, model.get_weights())) > 1e-3

    # A new epoch starts from zero.
    loop.train_loop_begin()
    assert loop.train_loop_end() == {"loss": 0.0, "accuracy": 0.0, "top5": 0.0}


def test_the_task_is_the_compiled_loss_and_metrics():
    model = _model()
    stream_task = train_step.StreamTask(3)
    stream_task.compile(model, keras.optimizers.SGD(0.1))
    assert model.loss is stream_task.loss_fn
    assert stream_task.top5.get_config()["k"] == 3  # never more than the classes
    x, y = _data()
    model.evaluate(x, y % 3, verbose=0)
    # fit/evaluate updated the task's own metric objects.
    assert float(stream_task.accuracy.count) == 8
