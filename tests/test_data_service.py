"""The input pipeline through tf.data service: a dispatcher and 2 workers in-process.

The service splits the (epoch, file) range between its workers dynamically
(sharding policy DYNAMIC) and every clip's seed is keyed to (video, chunk,
epoch, global seed), so over one epoch the service must deliver exactly the
clips a local run delivers, in some other order; and Keras must train on it.
"""

import hashlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from mat_effnet import input_pipeline
from mat_effnet.errors import MatEffNetError
from mat_effnet.input_pipeline import build_dataset
from mat_effnet.sampling import PipelineConfig

S = 32
service = tf.data.experimental.service


@pytest.fixture(scope="module")
def dispatcher():
    """A dispatcher and 2 workers on localhost (ports chosen by the OS)."""
    server = service.DispatchServer(service.DispatcherConfig(port=0))
    address = server.target.split("://", 1)[1]
    workers = [service.WorkerServer(service.WorkerConfig(dispatcher_address=address, port=0))
               for _ in range(2)]
    yield server.target
    for worker in workers:
        worker.stop()
    server.stop()


def _clip_set(ds):
    """Sorted (video id, label, clip digest) of every clip of a finite dataset."""
    out = []
    for clips, labels, ids in ds:
        for clip, label, vid in zip(clips.numpy(), labels.numpy(), ids.numpy()):
            out.append((vid.decode(), int(label), hashlib.sha1(clip.tobytes()).hexdigest()))
    return sorted(out)


def _config(seed):
    return PipelineConfig("temporal", image_size=S, flow_length=2, num_segments=2,
                          multiscale=True, seed=seed, shuffle_buffer=4)


def test_sharding_policy_is_dynamic():
    assert input_pipeline.SHARDING_POLICY == "DYNAMIC"
    assert hasattr(service.ShardingPolicy, input_pipeline.SHARDING_POLICY)


def test_service_delivers_the_clips_of_a_local_epoch(data_dir, dispatcher):
    cfg = _config(seed=5)
    local = _clip_set(build_dataset(data_dir, "train", cfg, 1, with_ids=True, epochs=1))
    served = _clip_set(build_dataset(data_dir, "train", cfg, 1, with_ids=True, epochs=1,
                                     data_service=dispatcher))
    # Every training record once, with the same clip: the same multiset.
    assert len(local) == len({vid for vid, _, _ in local}) > 4
    assert served == local
    # The comparison can fail: another seed draws other clips of the same videos.
    other = _clip_set(build_dataset(data_dir, "train", _config(seed=6), 1, with_ids=True,
                                    epochs=1))
    assert [v for v, _, _ in other] == [v for v, _, _ in local]
    assert other != local


def test_service_two_epochs_match_local_and_epochs_draw_anew(data_dir, dispatcher):
    cfg = _config(seed=1)
    local = _clip_set(build_dataset(data_dir, "train", cfg, 1, with_ids=True, epochs=2))
    served = _clip_set(build_dataset(data_dir, "train", cfg, 1, with_ids=True, epochs=2,
                                     data_service=dispatcher))
    assert served == local
    by_video = {}
    for vid, _, digest in local:
        by_video.setdefault(vid, []).append(digest)
    assert all(len(d) == 2 for d in by_video.values())
    # The epoch is part of the seed: a video's two clips differ (most of them).
    assert sum(d[0] != d[1] for d in by_video.values()) >= len(by_video) - 1


def test_keras_trains_through_the_service(data_dir, dispatcher):
    cfg = PipelineConfig("spatial", image_size=S, num_segments=2, seed=0, shuffle_buffer=4)
    ds = build_dataset(data_dir, "train", cfg, 4, data_service=dispatcher)
    clips, labels = next(iter(ds))
    assert clips.dtype == tf.uint8 and clips.shape == (4, 2, S, S, 3)
    keras.utils.set_random_seed(0)
    # uint8 clips go straight in: the model casts on entry and scales inside.
    inputs = keras.Input((2, S, S, 3), name="clips")
    x = keras.layers.Rescaling(1 / 255.0, name="scale")(inputs)
    x = keras.layers.GlobalAveragePooling3D(name="pool")(x)
    outputs = keras.layers.Dense(6, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="tiny")
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(ds, steps_per_epoch=3, epochs=2, verbose=0)
    losses = history.history["loss"]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert any(not np.allclose(a, b.numpy()) for a, b in zip(before, model.trainable_weights))


@pytest.mark.parametrize("kwargs,name", [
    (dict(data_service="localhost:5050"), "data_service"),
    (dict(epochs=0), "epochs"),
    (dict(threads=0), "threads"),
])
def test_bad_service_arguments_name_the_argument(data_dir, kwargs, name):
    with pytest.raises(MatEffNetError, match=name):
        build_dataset(data_dir, "train", _config(seed=0), 1, **kwargs)
