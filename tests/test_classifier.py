"""`mat_effnet.VideoClassifier`: the door in front of the prediction modules, not a second path.

A file, the same video's frames as an array, and the same frames with their
times give the same scores (each is prepared as mat-effnet-prep would); the
timeline equals ``mat-effnet-predict --window_s``; a stream alone works; bad
input is one clear error.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from data_prep import synthetic
from mat_effnet.common.errors import MatEffNetError
from mat_effnet.modeling import models as M
from mat_effnet.ops import video

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["Drift", "Jump", "Spin", "Wave"]
PREP = {"short_side": 40, "flow": "dis", "flow_implementation": "opencv",
        "flow_bound": 20.0, "jpeg_quality": 90, "schema_version": 2}
SMALL = dict(backbone="efficientnet_b0", image_size=32, num_segments=None, flow_length=2,
             key_dim=8, fc_units=16, class_names=CLASSES, dataset="folder",
             preparation=PREP, train_segments=3)


def _spread_logits(model, rng):
    """Scales the last layer so that the logits of different clips differ by a few units:
    untrained, the streams' softmax is flat and would hide any difference of input."""
    dense = [la for la in model.layers if isinstance(la, keras.layers.Dense)][-1]
    features = keras.Model(model.inputs, dense.input)
    clips = rng.uniform(0, 255, (6, 3) + tuple(model.input_shape[2:])).astype("float32")
    f = np.asarray(features([clips], training=False))
    kernel = rng.normal(size=dense.get_weights()[0].shape)
    logits = (f - f.mean(axis=0)) @ kernel
    dense.set_weights([(kernel * 2.0 / max(logits.std(), 1e-12)).astype("float32"),
                       np.zeros(kernel.shape[1], "float32")])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("classifier")
    keras.utils.set_random_seed(7)
    for stream in ("spatial", "temporal"):
        model = M.build_stream(len(CLASSES), stream, **SMALL)
        _spread_logits(model, np.random.default_rng(2))
        model.save(str(root / f"{stream}.keras"))
    rng = np.random.default_rng(1)
    # Lossless-enough input: decoding the file gives the frames the array test feeds.
    synthetic.write_video(str(root / "clip.avi"),
                          synthetic.render_clip("RedSquareRight", rng, num_frames=20), fps=20)
    from mat_effnet import VideoClassifier

    clf = VideoClassifier.load(spatial=root / "spatial.keras", temporal=root / "temporal.keras",
                               num_segments=5)
    return root, clf


def test_the_package_exposes_the_classifier_lazily():
    import mat_effnet
    from mat_effnet.serving import classifier

    assert mat_effnet.VideoClassifier is classifier.VideoClassifier
    with pytest.raises(AttributeError):
        mat_effnet.NotAThing  # noqa: B018


def test_a_file_its_frames_and_its_timed_frames_give_the_same_scores(setup):
    root, clf = setup
    path = str(root / "clip.avi")
    from_file = clf.predict(path)
    assert from_file.frames == 20 and from_file.class_names == tuple(CLASSES)
    assert from_file.scores.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.ptp(from_file.scores) > 0.01  # the scores depend on the video
    frames = np.stack(list(video.iter_frames(path, short_side=0)))
    from_array = clf.predict(frames, fps=20)
    np.testing.assert_allclose(from_array.scores, from_file.scores, atol=1e-6)
    np.testing.assert_allclose(from_array.spatial, from_file.spatial, atol=1e-6)
    np.testing.assert_allclose(from_array.temporal, from_file.temporal, atol=1e-6)
    from_pairs = clf.predict((f, i / 20) for i, f in enumerate(frames))
    np.testing.assert_allclose(from_pairs.scores, from_file.scores, atol=1e-6)
    # The fused scores are the equal-weight mean of the streams'.
    np.testing.assert_allclose(from_file.scores, (from_file.spatial + from_file.temporal) / 2,
                               atol=1e-6)
    top = from_file.top(2)
    assert [c for c, _ in top] == [CLASSES[i] for i in np.argsort(-from_file.scores)[:2]]


def test_the_timeline_is_predicts(setup):
    root, clf = setup
    path = str(root / "clip.avi")
    result = clf.predict(path, window_s=0.5, stride_s=0.25)
    r = subprocess.run([sys.executable, "-m", "experiments.predict", f"--video={path}",
                        f"--spatial_model={root / 'spatial.keras'}",
                        f"--temporal_model={root / 'temporal.keras'}", "--num_segments=5",
                        "--window_s=0.5", "--stride_s=0.25", "--json"], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    cli = json.loads(r.stdout)
    assert len(result.windows) == len(cli["windows"]) >= 3
    for mine, theirs in zip(result.windows, cli["windows"]):
        assert (mine["start_s"], mine["end_s"]) == (theirs["start_s"], theirs["end_s"])
        assert [t["class"] for t in mine["top"]] == [t["class"] for t in theirs["top"]]
        np.testing.assert_allclose(mine["temporal"], theirs["temporal"], atol=1e-5)
    # The whole-video scores of a timeline: the mean of its windows' fused scores.
    fused = np.mean([(np.array(w["spatial"]) + np.array(w["temporal"])) / 2
                     for w in result.windows], axis=0)
    np.testing.assert_allclose(result.scores, fused, atol=1e-6)


def test_one_stream_alone(setup):
    root, _ = setup
    from mat_effnet import VideoClassifier

    clf = VideoClassifier.load(temporal=root / "temporal.keras", num_segments=5)
    assert clf.streams == ("temporal",)
    result = clf.predict(str(root / "clip.avi"))
    assert result.spatial is None
    np.testing.assert_allclose(result.scores, result.temporal, atol=1e-7)
    with pytest.raises(MatEffNetError, match="needs both streams"):
        clf.export(root / "never")


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 8, 8), np.uint8), r"frames must be uint8 RGB of shape \(T, H, W, 3\)"),
    (np.zeros((4, 8, 8, 3), np.float32), "frames must be uint8 RGB"),
    (np.zeros((1, 48, 64, 3), np.uint8), "1 frame"),
    ("no/such/video.mp4", "no such video file"),
    ([1, 2, 3], r"an iterable of \(frame, time_s\) pairs"),
])
def test_bad_input_is_one_clear_error(setup, bad, message):
    _, clf = setup
    with pytest.raises(MatEffNetError, match=message):
        clf.predict(bad)


def test_loading_checks_what_it_is_given(setup):
    root, _ = setup
    from mat_effnet import VideoClassifier

    with pytest.raises(MatEffNetError, match="a temporal stream model"):
        VideoClassifier.load(spatial=root / "temporal.keras")
    with pytest.raises(MatEffNetError, match="give spatial="):
        VideoClassifier.load()
    with pytest.raises(MatEffNetError, match="not a mat-effnet-export folder"):
        VideoClassifier.load(root)
