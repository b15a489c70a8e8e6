"""Training across machines: TF_CONFIG, input sharding, the custom loop, resume,
and two MultiWorkerMirroredStrategy workers on localhost."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from mat_effnet.training import cluster, trainer
from mat_effnet import records

IMAGE = 32
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(data_dir, model_dir, **kw):
    base = dict(stream="spatial", data_dir=data_dir, model_dir=str(model_dir), weights=None,
                backbone="resnet18", epochs=1, batch_size=4, image_size=IMAGE, flow_length=3,
                bn_momentum=0.9, validation_split=None, seed=3, verbose=0,
                steps_per_epoch=2)
    base.update(kw)
    return trainer.TrainConfig.from_flat(**base)


# ---------------------------------------------------------------------------
# TF_CONFIG and sharding (no TensorFlow work)
# ---------------------------------------------------------------------------

def _tf_config(task_type, index, cluster=None):
    cluster = cluster or {"worker": ["a:1", "b:2", "c:3"]}
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


def test_worker_info_reads_tf_config():
    assert cluster.worker_info("") == cluster.WorkerInfo(None, 0, 1, True)
    w0 = cluster.worker_info(_tf_config("worker", 0))
    w2 = cluster.worker_info(_tf_config("worker", 2))
    assert (w0.is_chief, w0.num_workers, w0.name) == (True, 3, "worker:0")
    assert (w2.is_chief, w2.task_id) == (False, 2)
    # With a "chief" task, it is the chief and worker 0 is not.
    tasks = {"chief": ["a:1"], "worker": ["b:2"]}
    assert cluster.worker_info(_tf_config("chief", 0, tasks)).is_chief
    w = cluster.worker_info(_tf_config("worker", 0, tasks))
    assert (w.is_chief, w.num_workers) == (False, 2)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    (_tf_config("worker", 3), "index 3 is out of range"),
    (_tf_config("ps", 0, {"worker": ["a:1"], "ps": ["b:2"]}), "'ps'"),
    (_tf_config("evaluator", 0), "not in the cluster"),
])
def test_worker_info_rejects_bad_tf_config(text, message):
    with pytest.raises(ValueError, match=message):
        cluster.worker_info(text)


def test_plan_sharding():
    files = [f"f{i}" for i in range(9)]
    # auto: by file once every worker gets >= 4 files, else every worker reads all.
    how, plan = cluster.plan_sharding(files, 2)
    assert how == "file" and plan == [files[0::2], files[1::2]]
    assert sorted(sum(plan, [])) == sorted(files)
    how, plan = cluster.plan_sharding(files, 3)
    assert how == "data" and plan == [files] * 3
    # Evaluation shards by file whenever every worker gets one (exactly once).
    how, plan = cluster.plan_sharding(files[:3], 3, training=False)
    assert how == "file" and plan == [["f0"], ["f1"], ["f2"]]
    assert cluster.plan_sharding(files, 1, "data") == ("file", [files])
    with pytest.raises(ValueError, match="2 shard files cannot feed 3 workers"):
        cluster.plan_sharding(files[:2], 3, "file")
    with pytest.raises(ValueError, match="shard_policy='rows'"):
        cluster.plan_sharding(files, 2, "rows")


def test_config_rejects_fit_for_multi_worker(tmp_path):
    # Validated once, when the config is built.
    with pytest.raises(ValueError, match="loop='fit': does not work"):
        _cfg(str(tmp_path), tmp_path, strategy="multi_worker", loop="fit")
    assert _cfg(str(tmp_path), tmp_path, strategy="multi_worker").uses_custom_loop()
    assert not _cfg(str(tmp_path), tmp_path, strategy="mirrored").uses_custom_loop(2)
    # fit's XLA step cannot reach other replicas' variables: custom loop then.
    assert _cfg(str(tmp_path), tmp_path, jit_compile=True).uses_custom_loop(2)
    assert not _cfg(str(tmp_path), tmp_path, jit_compile=True).uses_custom_loop(1)
    assert not _cfg(str(tmp_path), tmp_path, loop="fit", jit_compile=True).uses_custom_loop(2)


# ---------------------------------------------------------------------------
# The custom loop in this process
# ---------------------------------------------------------------------------

def _model_weights(path):
    return [np.asarray(w) for w in keras.models.load_model(path).get_weights()]


def test_custom_loop_matches_fit(data_dir, tmp_path):
    """Same data, seed and recipe: the custom loop takes fit's steps."""
    common = dict(dropout=0.0, epochs=1, steps_per_epoch=2, strategy="default")
    fit = trainer.train(_cfg(data_dir, tmp_path / "fit", loop="fit", **common))
    custom = trainer.train(_cfg(data_dir, tmp_path / "custom", loop="custom", **common))
    assert (fit["loop"], custom["loop"]) == ("fit", "custom")
    assert custom["final"]["loss"] == pytest.approx(fit["final"]["loss"], rel=1e-4)
    assert custom["final"]["accuracy"] == pytest.approx(fit["final"]["accuracy"])
    assert custom["final"]["learning_rate"] == pytest.approx(fit["final"]["learning_rate"])
    a, b = _model_weights(fit["model"]), _model_weights(custom["model"])
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    # ...and it trained: the weights moved away from the seeded initialisation.
    keras.utils.set_random_seed(3)
    classes = records.read_metadata(data_dir)["num_classes"]
    init = trainer.build_model(_cfg(data_dir, tmp_path, dropout=0.0), classes).get_weights()
    assert max(float(np.abs(x - y).max()) for x, y in zip(init, b)) > 1e-4
    out = tmp_path / "custom"
    for name in ("model.keras", "best.keras", "last.keras", "training_log.csv"):
        assert (out / name).exists(), name
    assert os.listdir(out / "logs" / "train")
    assert not (out / "backup").exists()  # BackupAndRestore belongs to fit


def _state(model):
    return [w.numpy().copy() for w in model.weights] + \
           [np.asarray(v.numpy()).copy() for v in model.optimizer.variables]


class _KillAfter(keras.callbacks.Callback):
    """Stands in for SIGKILL after global step ``at``; keeps the state before it."""

    def __init__(self, at):
        super().__init__()
        self.at, self.seen, self.before = at, 0, None

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            raise KeyboardInterrupt
        self.before = _state(self.model)


class _Record(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.start, self.epoch, self.batches = None, None, []

    def on_train_begin(self, logs=None):
        self.start = _state(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.batches.append((self.epoch, batch))


def test_custom_loop_resumes_mid_epoch_after_a_kill(data_dir, tmp_path):
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs the 2 logical CPU devices that conftest.py configures")
    cfg = _cfg(data_dir, tmp_path / "m", strategy="mirrored", loop="custom", epochs=1,
               steps_per_epoch=3, backup_every_steps=1)
    kill = _KillAfter(3)  # in step 3 of epoch 0; the last save was after step 2
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg, callbacks=[kill])
    assert (tmp_path / "m" / "checkpoints").exists()

    record = _Record()
    summary = trainer.train(cfg, callbacks=[record])
    # Continues inside epoch 0 at its 3rd step, with the saved state exactly
    # (weights, BatchNorm statistics, momentum, iteration count).
    assert record.batches == [(0, 2)]
    assert len(record.start) == len(kill.before)
    for x, y in zip(record.start, kill.before):
        np.testing.assert_array_equal(x, y)
    assert summary["epochs_run"] == 1 and summary["replicas"] == 2
    log = (tmp_path / "m" / "training_log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["0"]

    # Finished: the same command again trains nothing more.
    record = _Record()
    assert trainer.train(cfg, callbacks=[record])["epochs_run"] == 0
    assert record.batches == []


# ---------------------------------------------------------------------------
# Two workers on localhost
# ---------------------------------------------------------------------------

# Runs the real binary with one extra callback that dumps the weights, the
# epochs it ran and the optimizer's iteration count.
_WORKER = textwrap.dedent("""
    import json, sys
    import keras, numpy as np
    from experiments import train as binary
    from mat_effnet.training import trainer

    out = sys.argv[1]

    class Dump(keras.callbacks.Callback):
        epochs = []

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append(epoch)

        def on_train_end(self, logs=None):
            np.savez(out + ".npz", *[w.numpy() for w in self.model.weights])
            with open(out + ".json", "w") as f:
                json.dump({"epochs": self.epochs,
                           "iterations": int(self.model.optimizer.iterations.numpy())}, f)

    real = trainer.train
    trainer.train = lambda cfg: real(cfg, callbacks=[Dump()])
    sys.argv = ["mat-effnet-train"] + sys.argv[2:]
    binary.run()
""")


def _free_ports(n):
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("localhost", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _run_workers(tmp_path, tag, model_dirs, args, timeout=240):
    try:
        ports = _free_ports(2)
    except OSError as e:
        pytest.skip(f"cannot bind localhost ports for the workers: {e}")
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for i, model_dir in enumerate(model_dirs):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": i}}),
            TMPDIR=str(tmp_path / f"tmp{i}"), TF_CPP_MIN_LOG_LEVEL="2",
            CUDA_VISIBLE_DEVICES="")
        os.makedirs(env["TMPDIR"], exist_ok=True)
        log = open(tmp_path / f"{tag}-{i}.log", "w")
        procs.append((subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(tmp_path / f"{tag}-{i}"), *args,
             f"--model_dir={model_dir}"], cwd=REPO, env=env, stdout=log,
            stderr=subprocess.STDOUT), log))
    try:
        for p, _ in procs:
            p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
    for i, (p, _) in enumerate(procs):
        text = (tmp_path / f"{tag}-{i}.log").read_text()
        assert p.returncode == 0, f"worker {i} exited {p.returncode}:\n{text[-3000:]}"
    return [json.loads((tmp_path / f"{tag}-{i}.json").read_text()) for i in range(2)]


def _assert_same_weights(tmp_path, tag):
    a, b = (np.load(tmp_path / f"{tag}-{i}.npz") for i in range(2))
    assert len(a.files) == len(b.files) > 50
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    return [a[k] for k in a.files]


def test_two_workers_train_alike_and_resume(data_dir, tmp_path):
    chief_dir, worker_dir = tmp_path / "chief", tmp_path / "worker1"
    args = ["--stream=spatial", f"--data_dir={data_dir}", "--weights=none", "--batch_size=4",
            f"--image_size={IMAGE}", "--flow_length=3", "--bn_momentum=0.9", "--seed=3",
            "--backbone=resnet18", "--steps_per_epoch=2", "--strategy=multi_worker",
            "--backup_every_steps=1"]
    # Separate model dirs, as on two machines without shared storage.
    runs = _run_workers(tmp_path, "a", [chief_dir, worker_dir],
                        args + ["--epochs=1", "--validation_split=test"])
    assert [r["epochs"] for r in runs] == [[0], [0]]
    assert [r["iterations"] for r in runs] == [2, 2]
    weights = _assert_same_weights(tmp_path, "a")
    saved = keras.models.load_model(str(chief_dir / "model.keras")).get_weights()
    for x, y in zip(weights, saved):
        np.testing.assert_array_equal(x, y)

    # Only the chief wrote anything; the other worker's temp dir is gone.
    for name in ("model.keras", "best.keras", "last.keras", "training_log.csv",
                 "train_config.json", "train_summary.json"):
        assert (chief_dir / name).exists(), name
    assert os.listdir(chief_dir / "logs" / "train")
    assert tf.train.latest_checkpoint(str(chief_dir / "checkpoints"))
    assert not worker_dir.exists()
    assert os.listdir(tmp_path / "tmp1") == []
    summary = json.loads((chief_dir / "train_summary.json").read_text())
    assert (summary["workers"], summary["replicas"], summary["loop"]) == (2, 2, "custom")
    log = (chief_dir / "training_log.csv").read_text().splitlines()
    assert len(log) == 2 and "val_accuracy" in log[0]

    # Started again with more epochs: both continue at epoch 1, the worker
    # with the chief's state (it has no checkpoint of its own).
    runs = _run_workers(tmp_path, "b", [chief_dir, worker_dir],
                        args + ["--epochs=2", "--validation_split=test"])
    assert [r["epochs"] for r in runs] == [[1], [1]]
    assert [r["iterations"] for r in runs] == [4, 4]
    _assert_same_weights(tmp_path, "b")
    assert not worker_dir.exists()
    log = (chief_dir / "training_log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["0", "1"]


@pytest.mark.slow
def test_a_killed_worker_the_survivor_names_it_and_a_restart_resumes(data_dir, tmp_path):
    """Issue 17: one line naming the lost worker, exit 2; the same command resumes."""
    import signal
    import time

    chief_dir, worker_dir = tmp_path / "chief", tmp_path / "worker1"
    epochs, steps = 6, 3
    args = ["--stream=spatial", f"--data_dir={data_dir}", "--weights=none", "--batch_size=4",
            f"--image_size={IMAGE}", "--flow_length=3", "--bn_momentum=0.9", "--seed=3",
            "--backbone=resnet18", f"--steps_per_epoch={steps}", "--strategy=multi_worker",
            "--backup_every_steps=1", f"--epochs={epochs}", "--validation_split="]
    try:
        ports = _free_ports(2)
    except OSError as e:
        pytest.skip(f"cannot bind localhost ports for the workers: {e}")
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for i, model_dir in enumerate([chief_dir, worker_dir]):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": i}}),
            TMPDIR=str(tmp_path / f"tmp{i}"), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
        os.makedirs(env["TMPDIR"], exist_ok=True)
        with open(tmp_path / f"k-{i}.log", "w") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-c", _WORKER, str(tmp_path / f"k-{i}"), *args,
                 f"--model_dir={model_dir}"], cwd=REPO, env=env, stdout=log,
                stderr=subprocess.STDOUT))
    try:
        csv = chief_dir / "training_log.csv"
        deadline = time.monotonic() + 240
        while not (csv.exists() and len(csv.read_text().splitlines()) >= 3):  # 2 epochs done
            assert time.monotonic() < deadline and procs[0].poll() is None, \
                (tmp_path / "k-0.log").read_text()[-3000:]
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        rc = procs[0].wait(timeout=120)  # bounded: TF's collective fails on the closed port
        took = time.monotonic() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    text = (tmp_path / "k-0.log").read_text()
    assert rc == 2, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    last = text.strip().splitlines()[-1]
    assert last.startswith(f"mat-effnet-train: error: lost worker:1 (localhost:{ports[1]})"), last
    assert "worker:0 stops here" in last and "same command" in last
    print(f"the survivor stopped {took:.1f} s after the kill: {last}")
    done = [row.split(",")[0] for row in csv.read_text().splitlines()[1:]]
    assert done == [str(e) for e in range(len(done))] and 2 <= len(done) < epochs

    # The same command on both: from the chief's last checkpoint to the end,
    # every step once (the optimizer's count), every epoch once in the CSV.
    runs = _run_workers(tmp_path, "r", [chief_dir, worker_dir], args)
    assert [r["iterations"] for r in runs] == [epochs * steps] * 2
    assert runs[0]["epochs"][-1] == epochs - 1 and runs[0]["epochs"][0] <= len(done)
    _assert_same_weights(tmp_path, "r")
    rows = [row.split(",")[0] for row in csv.read_text().splitlines()[1:]]
    assert rows == [str(e) for e in range(epochs)]
