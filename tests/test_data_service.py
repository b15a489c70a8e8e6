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

from mat_effnet.data import input_pipeline
from mat_effnet.common.errors import MatEffNetError
from mat_effnet.data.input_pipeline import build_dataset
from mat_effnet.data.sampling import PipelineConfig

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


# ---------------------------------------------------------------------------
# Faults: a lost worker, a restarted dispatcher. Real processes
# (mat-effnet-data-service), killed with SIGKILL as a machine is lost: an
# in-process server's stop() waits for its clients and is no model of that.

def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _endless_slow_range():
    # The trainer's stream is endless (epochs counted in steps); 20 ms per
    # element keeps both workers holding splits when one is killed. Element
    # k is the k-th split, so what was lost is what is missing below the
    # highest value seen.
    from tensorflow.python.data.experimental.ops import testing

    return tf.data.Dataset.range(10**6).apply(testing.sleep(20000))


class _Service:
    """mat-effnet-data-service processes; their stderr in files; all killed at the end."""

    def __init__(self, tmp_path):
        self.tmp, self.procs = tmp_path, []

    def launch(self, *args, timeout=60):
        import os
        import subprocess
        import sys
        import time

        log = self.tmp / f"service_{len(self.procs)}.log"
        # As from a user's shell: not the test session's TF_CPP_MIN_LOG_LEVEL.
        env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
        with open(log, "w") as f:
            proc = subprocess.Popen([sys.executable, "-m", "experiments.data_service", *args],
                                    stdout=f, stderr=f, env=env)
        self.procs.append(proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = [x for x in log.read_text().splitlines() if "serving at" in x]
            if lines:
                target = lines[0].split("serving at ")[1].split(",")[0]
                return proc, log, target.split("://")[-1]  # HOST:PORT
            assert proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.2)
        raise AssertionError(f"no 'serving at' line in {timeout} s: {log.read_text()[-2000:]}")

    def close(self):
        for proc in self.procs:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture
def service_procs(tmp_path):
    procs = _Service(tmp_path)
    yield procs
    procs.close()


def _take(it, n, timeout_s):
    """n elements of ``it``, failing (not hanging) past timeout_s."""
    import queue
    import threading

    out = queue.Queue()
    # A daemon thread: a stuck read must not keep pytest from exiting.
    threading.Thread(target=lambda: out.put([int(next(it)) for _ in range(n)]),
                     daemon=True).start()
    try:
        return out.get(timeout=timeout_s)
    except queue.Empty:
        raise AssertionError(f"{n} elements not delivered in {timeout_s} s") from None


@pytest.mark.slow
def test_a_killed_worker_training_goes_on_with_the_other_at_most_once(service_procs):
    """DYNAMIC sharding: what the dead worker held is lost, nothing repeats, the log says who."""
    import signal
    import time

    _, dlog, address = service_procs.launch("dispatcher", "--port=0", "--worker_timeout_s=2")
    workers = [service_procs.launch("worker", "--port=0", f"--dispatcher={address}",
                                    "--heartbeat_s=0.5") for _ in range(2)]
    killed, _, killed_address = workers[1]
    ds = _endless_slow_range().apply(service.distribute(
        processing_mode=service.ShardingPolicy.DYNAMIC, service=f"grpc://{address}"))
    it = iter(ds)
    got = _take(it, 40, 120)
    t = time.monotonic()
    got += _take(it, 200, 120)
    print(f"two workers: 200 in {time.monotonic() - t:.1f} s")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    start = time.monotonic()
    got += _take(it, 200, 120)  # the survivor carries on
    took = time.monotonic() - start
    assert len(got) == len(set(got)), "an element was delivered twice"
    lost = sorted(set(range(max(got))) - set(got))
    # At most what one worker can hold: its prefetched splits, a few dozen.
    print(f"lost with the worker: {len(lost)} elements {lost[:8]}...; 200 more in {took:.1f} s")
    assert len(lost) < 100, lost
    deadline = time.monotonic() + 30
    # The dispatcher's log names the lost worker, --worker_timeout_s after
    # its last heartbeat.
    while f"Lost worker {killed_address} due to timeout" not in dlog.read_text():
        assert time.monotonic() < deadline, dlog.read_text()[-2000:]
        time.sleep(0.5)


@pytest.mark.slow
def test_a_dispatcher_with_a_work_dir_survives_a_kill(service_procs, tmp_path):
    import os
    import signal
    import time

    port = _free_port()
    journal = tmp_path / "journal"
    args = ("dispatcher", f"--port={port}", f"--work_dir={journal}")
    dispatcher, _, address = service_procs.launch(*args)
    service_procs.launch("worker", "--port=0", f"--dispatcher={address}")
    ds = _endless_slow_range().apply(service.distribute(
        processing_mode=service.ShardingPolicy.DYNAMIC, service=f"grpc://localhost:{port}"))
    it = iter(ds)
    got = _take(it, 20, 120)
    dispatcher.send_signal(signal.SIGKILL)
    dispatcher.wait(timeout=30)
    assert os.listdir(journal)
    time.sleep(1)
    _, dlog, _ = service_procs.launch(*args)  # same port and journal
    assert "fault-tolerant" in dlog.read_text()
    got += _take(it, 100, 180)  # the same job goes on: no restart from element 0
    assert len(got) == len(set(got)), "an element was delivered twice"
    assert max(got) < 1000


@pytest.mark.slow
def test_mat_effnet_train_over_the_service_completes_every_epoch_after_a_worker_dies(
        service_procs, data_dir, tmp_path):
    """``mat-effnet-train --data_service``: one of two workers is killed in epoch 2 of 4.

    The trainer's stream is endless (an epoch is counted in steps), so the
    survivor serves every remaining step: every epoch completes and is in
    the training log, and a model is written. What the dead worker had
    prefetched is not served again (DYNAMIC sharding is at-most-once), so
    epoch 2 sees some clips of the next splits instead; nothing fails.
    """
    import csv
    import os
    import signal
    import subprocess
    import sys
    import time

    _, dlog, address = service_procs.launch("dispatcher", "--port=0", "--worker_timeout_s=2")
    workers = [service_procs.launch("worker", "--port=0", f"--dispatcher={address}",
                                    "--heartbeat_s=0.5") for _ in range(2)]
    killed, _, killed_address = workers[1]
    model_dir = tmp_path / "m"
    log_csv = model_dir / "training_log.csv"
    epochs, steps = 4, 12
    args = [sys.executable, "-m", "experiments.train", f"--data_dir={data_dir}",
            f"--model_dir={model_dir}", "--stream=spatial", "--backbone=resnet18",
            "--weights=none", f"--epochs={epochs}", f"--steps_per_epoch={steps}",
            "--batch_size=2", "--image_size=32", "--num_segments=2", "--strategy=default",
            "--learning_rate=1e-3", "--seed=0", "--verbose=0",
            f"--data_service=grpc://{address}"]
    with open(tmp_path / "train.log", "w") as out:
        train = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                 env=dict(os.environ, PYTHONPATH=os.getcwd()))

    def logged_epochs():
        if not log_csv.exists():
            return []
        with open(log_csv) as f:
            rows = list(csv.DictReader(f))
        # A diverged run stops early with a NaN loss: not what is tested here.
        assert all(np.isfinite(float(row["loss"])) for row in rows), rows
        return [int(row["epoch"]) for row in rows]

    try:
        deadline = time.monotonic() + 600
        while not logged_epochs():  # epoch 1 done: epoch 2 is running
            assert train.poll() is None, (tmp_path / "train.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "epoch 1 never ended"
            time.sleep(0.1)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert logged_epochs() == [0], "the worker was killed after epoch 2 had ended"
        assert train.wait(timeout=600) == 0, (tmp_path / "train.log").read_text()[-3000:]
    finally:
        if train.poll() is None:
            train.kill()
    assert logged_epochs() == list(range(epochs))
    assert (model_dir / "model.keras").exists()
    deadline = time.monotonic() + 30  # the dispatcher names it a timeout after its last beat
    while f"Lost worker {killed_address}" not in dlog.read_text():
        assert time.monotonic() < deadline, dlog.read_text()[-2000:]
        time.sleep(0.5)
