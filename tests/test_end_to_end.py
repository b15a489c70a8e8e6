"""prep -> train (MirroredStrategy, 2 logical CPUs) -> eval -> fuse -> predict -> reload."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from data_prep import synthetic
from mat_effnet.evaluation import protocol, fusion
from mat_effnet.serving import predict_video
from mat_effnet import records
from mat_effnet.training import trainer
from mat_effnet.modeling import model_identity as I

IMAGE = 32


def _cfg(data_dir, model_dir, stream, **kw):
    base = dict(stream=stream, data_dir=data_dir, model_dir=str(model_dir), weights=None,
                epochs=1, batch_size=4, image_size=IMAGE, flow_length=3, bn_momentum=0.9,
                validation_split=None, seed=3, verbose=0)
    base.update(kw)
    return trainer.TrainConfig.from_flat(**base)


def _run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs the 2 logical CPU devices that conftest.py configures")
    root = tmp_path_factory.mktemp("models")
    out = {}
    for stream in ("spatial", "temporal"):
        summary = trainer.train(_cfg(data_dir, root / stream, stream, strategy="mirrored",
                                      steps_per_epoch=2))
        assert summary["replicas"] == 2
        out[stream] = summary["model"]
    return root, out


def test_train_writes_model_logs_and_checkpoints(trained):
    root, models = trained
    for stream, path in models.items():
        d = os.path.dirname(path)
        assert os.path.exists(path)
        assert os.path.exists(os.path.join(d, "last.keras"))
        assert os.path.exists(os.path.join(d, "best.keras"))
        assert os.listdir(os.path.join(d, "logs", "train"))  # TensorBoard events
        log = open(os.path.join(d, "training_log.csv")).read().splitlines()
        assert log[0].split(",")[:1] == ["epoch"] and "learning_rate" in log[0]
        assert "top5" in log[0] and len(log) == 2
        assert not os.path.exists(os.path.join(d, "backup"))  # removed after a finished run


def test_saved_model_reloads_with_identical_predictions(trained, data_dir):
    _, models = trained
    model = keras.models.load_model(models["spatial"], safe_mode=True)
    again = protocol.load_model(models["spatial"])
    x = np.random.default_rng(0).uniform(0, 255, (2, 3, IMAGE, IMAGE, 3)).astype(np.float32)
    np.testing.assert_allclose(model(x).numpy(), again(x).numpy(), rtol=1e-6, atol=1e-6)


def test_eval_fuse_and_predict(trained, data_dir, tmp_path):
    _, models = trained
    score_files = []
    for stream, path in models.items():
        out = tmp_path / f"{stream}.npz"
        r = _run("experiments.evaluate", f"--data_dir={data_dir}", f"--model={path}",
                 "--num_segments=4", "--crops=3", f"--output={out}")
        assert r.returncode == 0, r.stderr[-2000:]
        line = json.loads(r.stdout.strip().splitlines()[-1])
        assert set(line) >= {"top1", "top5", "mean_class_accuracy"}
        scores = fusion.load_scores(str(out))
        meta = records.read_metadata(data_dir)
        # The score file says which model wrote it: the trained model's identity.
        assert scores.model_identity["stream"] == stream
        assert scores.model_identity["class_names"] == meta["classes"]
        assert scores.num_videos == meta["splits"]["test"]["videos"]
        assert scores.stream == stream
        np.testing.assert_allclose(scores.scores.sum(axis=1), 1.0, atol=1e-5)
        assert line["top1"] == pytest.approx(
            float(np.mean(scores.scores.argmax(1) == scores.labels)))
        score_files.append(str(out))

    r = _run("experiments.fuse", f"--scores={','.join(score_files)}",
             f"--output_dir={tmp_path / 'fused'}")
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "fused" / "fusion.json").read_text())
    a, b = (fusion.load_scores(f) for f in score_files)
    fused = fusion.fuse([a, b])
    assert report["two_stream"]["top1"] == pytest.approx(
        float(np.mean(fused.scores.argmax(1) == fused.labels)))

    video = os.path.join(os.path.dirname(data_dir), "videos", "UCF-101",
                         synthetic.CLASSES[0], f"v_{synthetic.CLASSES[0]}_g02_c01.avi")
    png = tmp_path / "att.png"
    r = _run("experiments.predict", f"--video={video}", f"--spatial_model={models['spatial']}",
             f"--temporal_model={models['temporal']}", "--num_segments=4", "--json",
             f"--attention_png={png}")
    assert r.returncode == 0, r.stderr[-2000:]
    pred = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(pred["top"]) == 5 and pred["top"][0]["class"] in synthetic.CLASSES
    # Settings and class names came from the models themselves.
    assert pred["class_names_source"] == "model"
    for stream in ("spatial", "temporal"):
        used = pred["preparation"][stream]
        assert (used["source"], used["flow"], used["short_side"]) == ("model", "dis", 40)
    probs = [t["probability"] for t in pred["top"]]
    assert probs == sorted(probs, reverse=True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The predicted fused scores equal the average of the two streams' scores
    # computed through the library on the same video.
    spatial = protocol.load_model(models["spatial"])
    temporal = protocol.load_model(models["temporal"])
    ident = I.identity(spatial)
    assert ident.class_names == tuple(synthetic.CLASSES) and ident.train_segments == 3
    assert (ident.preparation["flow"], ident.preparation["short_side"]) == ("dis", 40)
    # The older route (train_config.json -> the data's metadata) agrees.
    settings, classes = predict_video.settings_for(models["spatial"], predict_video.PrepSettings())
    assert (settings.flow, settings.short_side) == ("dis", 40)
    assert classes == list(synthetic.CLASSES)
    res = predict_video.predict_video(video, spatial, temporal, settings, num_segments=4)
    np.testing.assert_allclose(res["fused"], (res["spatial"] + res["temporal"]) / 2, atol=1e-6)
    top = res["fused"].argsort()[::-1][0]
    assert pred["top"][0]["index"] == int(top)


def test_bad_inputs_give_one_line_errors(trained, data_dir, tmp_path):
    _, models = trained
    r = _run("experiments.evaluate", f"--data_dir={tmp_path}", f"--model={models['spatial']}",
             f"--output={tmp_path / 'x.npz'}")
    assert r.returncode == 2 and "mat_effnet_meta.json is missing" in r.stderr
    # TensorFlow's C++ start-up lines may precede it; ours is exactly one line.
    ours = [ln for ln in r.stderr.splitlines() if ln.startswith("mat-effnet-")]
    assert len(ours) == 1 and "Traceback" not in r.stderr, r.stderr

    not_video = tmp_path / "notes.mp4"
    not_video.write_text("hello")
    r = _run("experiments.predict", f"--video={not_video}", f"--spatial_model={models['spatial']}")
    assert r.returncode == 2 and "not a usable video" in r.stderr

    r = _run("experiments.predict", f"--video={not_video}",
             f"--spatial_model={models['temporal']}")
    assert r.returncode == 2 and "--spatial_model is a temporal stream model" in r.stderr

    # A model with another class count than the data.
    other = trainer.build_model(_cfg(data_dir, tmp_path, "spatial"), num_classes=3)
    path = str(tmp_path / "three.keras")
    other.save(path)
    r = _run("experiments.evaluate", f"--data_dir={data_dir}", f"--model={path}",
             f"--output={tmp_path / 'y.npz'}")
    assert r.returncode == 2 and "3 classes" in r.stderr

    r = _run("experiments.train", "--stream=spatial", f"--data_dir={data_dir}",
             f"--model_dir={tmp_path / 'm'}", "--epochs=0")
    assert r.returncode == 2 and "--epochs=0" in r.stderr


class _Kill(keras.callbacks.Callback):
    """Stands in for SIGKILL: stops the run after a given global step."""

    def __init__(self, at_step):
        super().__init__()
        self.at_step, self.seen = at_step, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at_step:
            raise KeyboardInterrupt


def test_training_resumes_after_a_kill(data_dir, tmp_path, monkeypatch):
    cfg = _cfg(data_dir, tmp_path / "m", "spatial", epochs=3, steps_per_epoch=2,
               backup_every_steps=1)
    real_fit = keras.Model.fit
    epochs_seen = []

    def fit_with_kill(self, *args, callbacks=(), **kw):
        class Record(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                epochs_seen.append(epoch)
        return real_fit(self, *args, callbacks=[*callbacks, Record(), _Kill(4)], **kw)

    monkeypatch.setattr(keras.Model, "fit", fit_with_kill)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg)
    assert epochs_seen == [0, 1]  # killed in the 2nd epoch, after its 2nd step
    backup = tmp_path / "m" / "backup"
    assert backup.exists()
    monkeypatch.setattr(keras.Model, "fit", real_fit)

    epochs_seen.clear()

    def fit_recording(self, *args, callbacks=(), **kw):
        class Record(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                epochs_seen.append(epoch)
        return real_fit(self, *args, callbacks=[*callbacks, Record()], **kw)

    monkeypatch.setattr(keras.Model, "fit", fit_recording)
    summary = trainer.train(cfg)
    # The backup was taken after the last step of epoch 1 completed its
    # epoch-end, so the run continues at epoch 2 instead of from scratch.
    assert epochs_seen[0] >= 1 and epochs_seen[-1] == 2
    assert summary["epochs_run"] == len(epochs_seen) < 3
    assert not backup.exists()
