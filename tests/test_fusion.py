"""Metrics, score files and late average fusion (paper Sect. 3, Tables 2-4)."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from mat_effnet.common import atomic
from mat_effnet.evaluation import fusion, metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Four videos, three classes, labels 0, 1, 2, 0.
LABELS = np.array([0, 1, 2, 0])
# Spatial stream: predictions 0, 0, 2, 1 -> right on v0 and v2 -> top-1 = 2/4 = 0.5.
SPATIAL = np.array([[0.6, 0.3, 0.1],
                    [0.5, 0.4, 0.1],
                    [0.1, 0.2, 0.7],
                    [0.1, 0.7, 0.2]])
# Temporal stream: predictions 1, 1, 0, 0 -> right on v1 and v3 -> top-1 = 0.5.
TEMPORAL = np.array([[0.4, 0.5, 0.1],
                     [0.15, 0.8, 0.05],
                     [0.8, 0.05, 0.15],
                     [0.8, 0.15, 0.05]])
# Equal-weight average (S + T) / 2:
#   v0 [0.5, 0.4, 0.1]      -> 0, right
#   v1 [0.325, 0.6, 0.075]  -> 1, right
#   v2 [0.45, 0.125, 0.425] -> 0, wrong (label 2)
#   v3 [0.45, 0.425, 0.125] -> 0, right
# -> fused top-1 = 3/4 = 0.75.
FUSED = np.array([[0.5, 0.4, 0.1],
                  [0.325, 0.6, 0.075],
                  [0.45, 0.125, 0.425],
                  [0.45, 0.425, 0.125]])
CLASSES = ("brush_hair", "cartwheel", "catch")
IDS = ("v0", "v1", "v2", "v3")


def _scores(stream, scores, ids=IDS, labels=LABELS, classes=CLASSES, split="test",
            dataset="hmdb51", path=""):
    return fusion.Scores(video_ids=np.array(ids), labels=np.asarray(labels, np.int64),
                         scores=np.asarray(scores, np.float32), class_names=tuple(classes),
                         split=split, dataset=dataset, stream=stream, path=path)


def _save(tmp_path, name, stream, scores, ids=IDS, labels=LABELS, classes=CLASSES,
          split="test", dataset="hmdb51"):
    path = str(tmp_path / name)
    fusion.save_scores(path, ids, labels, scores, classes, split, dataset, stream)
    return path


# ---------------------------------------------------------------- metrics


def test_top1_of_each_stream_and_of_the_fusion():
    assert metrics.topk_accuracy(SPATIAL, LABELS, 1) == 0.5
    assert metrics.topk_accuracy(TEMPORAL, LABELS, 1) == 0.5
    assert metrics.topk_accuracy(FUSED, LABELS, 1) == 0.75


def test_top2_and_top5():
    # Spatial top-2 sets: v0 {0,1} ok, v1 {0,1} ok, v2 {2,1} ok, v3 {1,2} misses 0 -> 3/4.
    assert metrics.topk_accuracy(SPATIAL, LABELS, 2) == 0.75
    # With 3 classes top-3 contains every class -> 1.
    assert metrics.topk_accuracy(SPATIAL, LABELS, 3) == 1.0
    # summarize uses top-min(5, C) = top-3 here.
    assert metrics.summarize(SPATIAL, LABELS, 3)["top5"] == 1.0


def test_ties_go_to_the_lower_class_index():
    # Classes 0 and 1 tie; the label is 1 -> argmax picks 0 -> wrong at top-1, right at top-2.
    s = np.array([[0.4, 0.4, 0.2]])
    assert metrics.topk_accuracy(s, [1], 1) == 0.0
    assert metrics.topk_accuracy(s, [0], 1) == 1.0
    # Class 2 ties with class 1 for second place -> class 1 (lower index) takes it.
    s = np.array([[0.6, 0.2, 0.2]])
    assert metrics.topk_accuracy(s, [2], 2) == 0.0
    assert metrics.topk_accuracy(s, [1], 2) == 1.0


def test_mean_class_accuracy_of_the_streams():
    # Spatial: class 0 (v0 right, v3 wrong) 1/2, class 1 (v1 wrong) 0, class 2 (v2 right) 1
    # -> (0.5 + 0 + 1) / 3 = 0.5.
    assert metrics.mean_class_accuracy(SPATIAL, LABELS, 3) == pytest.approx(0.5)
    # Fused: class 0 (v0, v3 right) 1, class 1 (v1 right) 1, class 2 (v2 wrong) 0 -> 2/3,
    # not the 0.75 of top-1 because class 0 has two videos.
    assert metrics.mean_class_accuracy(FUSED, LABELS, 3) == pytest.approx(2 / 3)


def test_mean_class_accuracy_differs_from_top1_when_imbalanced():
    # Four videos of class 0, all right; one of class 1, wrong (predicted 0).
    s = np.array([[0.9, 0.1, 0.0]] * 5)
    labels = np.array([0, 0, 0, 0, 1])
    assert metrics.topk_accuracy(s, labels, 1) == pytest.approx(4 / 5)
    # Recall: class 0 4/4 = 1, class 1 0/1 = 0; class 2 has no video and is left out
    # -> (1 + 0) / 2 = 0.5.
    assert metrics.mean_class_accuracy(s, labels, 3) == pytest.approx(0.5)


def test_confusion_matrix_rows_are_true_classes():
    pred = metrics.predictions(FUSED)
    np.testing.assert_array_equal(pred, [0, 1, 0, 0])
    cm = metrics.confusion_matrix(pred, LABELS, 3)
    # true 0 -> pred 0 twice (v0, v3); true 1 -> 1 (v1); true 2 -> 0 (v2).
    np.testing.assert_array_equal(cm, [[2, 0, 0], [0, 1, 0], [1, 0, 0]])
    assert cm.dtype == np.int64


def test_summarize():
    assert metrics.summarize(FUSED, LABELS, 3) == {
        "top1": 0.75, "top5": 1.0, "mean_class_accuracy": pytest.approx(2 / 3), "num_videos": 4}


@pytest.mark.parametrize("call, culprit", [
    (lambda: metrics.topk_accuracy(SPATIAL, LABELS, 4), "k must be"),
    (lambda: metrics.topk_accuracy(SPATIAL, LABELS, 0), "k must be"),
    (lambda: metrics.topk_accuracy(SPATIAL, [0, 1, 2], 1), "3 entries for 4 videos"),
    (lambda: metrics.topk_accuracy(SPATIAL, [0, 1, 3, 0], 1), "labels[2] = 3 is outside 0..2"),
    (lambda: metrics.topk_accuracy(SPATIAL[0], [0], 1), "must be 2-D"),
    (lambda: metrics.topk_accuracy(np.zeros((0, 3)), [], 1), "no videos"),
    (lambda: metrics.topk_accuracy([[np.nan, 0, 0]], [0], 1), "video 0 are not finite"),
    (lambda: metrics.mean_class_accuracy(SPATIAL, LABELS, 4), "3 classes but num_classes is 4"),
    (lambda: metrics.confusion_matrix([0, 5], [0, 1], 3), "pred[1] = 5"),
])
def test_metrics_errors(call, culprit):
    with pytest.raises(metrics.MetricsError, match=re.escape(culprit)):
        call()


# ------------------------------------------------------------ score files


def test_save_and_load_round_trip(tmp_path):
    path = _save(tmp_path, "spatial.npz", "spatial", SPATIAL)
    s = fusion.load_scores(path)
    assert s.video_ids.tolist() == list(IDS)
    assert s.labels.dtype == np.int64 and s.labels.tolist() == [0, 1, 2, 0]
    assert s.scores.dtype == np.float32
    np.testing.assert_allclose(s.scores, SPATIAL, rtol=1e-6)
    assert s.class_names == CLASSES
    assert (s.split, s.dataset, s.stream, s.path) == ("test", "hmdb51", "spatial", path)
    # The keys are those of the documented format; nothing needs pickle.
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z.files) == sorted(fusion.KEYS)
        assert z["video_ids"].dtype.kind == "U" and z["split"].shape == ()
    # No temporary file is left next to it.
    assert os.listdir(tmp_path) == ["spatial.npz"]


def test_save_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = _save(tmp_path, "s.npz", "spatial", SPATIAL)
    with pytest.raises(ZeroDivisionError):
        atomic.write_with(path, lambda f: (f.write(b"partial"), 1 / 0))
    assert fusion.load_scores(path).stream == "spatial"
    assert os.listdir(tmp_path) == ["s.npz"]


@pytest.mark.parametrize("kwargs, culprit", [
    (dict(scores=[[2.0, -1.0, 0.0]] * 4), "not softmax probabilities"),
    (dict(scores=SPATIAL[:3]), "video_ids for 3 rows"),
    (dict(ids=("v0", "v1", "v1", "v3")), "video id v1 appears more than once"),
    (dict(classes=("a", "b")), "class_names for 3 columns"),
    (dict(labels=[0, 1, 3, 0]), "label 3 of video v2 is outside 0..2"),
    (dict(split=""), "split is empty"),
])
def test_save_rejects_inconsistent_arrays(tmp_path, kwargs, culprit):
    args = dict(ids=IDS, labels=LABELS, scores=SPATIAL, classes=CLASSES, split="test",
                dataset="hmdb51")
    args.update(kwargs)
    with pytest.raises(fusion.ScoresError, match=culprit):
        fusion.save_scores(str(tmp_path / "x.npz"), args["ids"], args["labels"], args["scores"],
                           args["classes"], args["split"], args["dataset"], "spatial")
    assert not os.listdir(tmp_path)


def test_load_missing_file(tmp_path):
    with pytest.raises(fusion.ScoresError, match=r"nope\.npz: no such score file"):
        fusion.load_scores(str(tmp_path / "nope.npz"))


def test_load_corrupt_file(tmp_path):
    good = _save(tmp_path, "good.npz", "spatial", SPATIAL)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(open(good, "rb").read()[:100])  # truncated archive
    with pytest.raises(fusion.ScoresError, match=r"bad\.npz: unreadable or corrupt"):
        fusion.load_scores(str(bad))
    text = tmp_path / "text.npz"
    text.write_text("hello\n")
    with pytest.raises(fusion.ScoresError, match=r"text\.npz: unreadable or corrupt"):
        fusion.load_scores(str(text))


def test_load_missing_keys(tmp_path):
    path = tmp_path / "partial.npz"
    np.savez(path, scores=SPATIAL.astype(np.float32), labels=LABELS)
    with pytest.raises(fusion.ScoresError,
                       match=r"partial\.npz: not a score file, missing key\(s\) format_version, "
                             r"video_ids, class_names, split, dataset, stream"):
        fusion.load_scores(str(path))


# ----------------------------------------------------------------- fusion


def test_fuse_equal_weights_is_the_average():
    fused = fusion.fuse([_scores("spatial", SPATIAL), _scores("temporal", TEMPORAL)])
    np.testing.assert_allclose(fused.scores, FUSED, atol=1e-7)
    assert fused.scores.dtype == np.float32
    assert fused.stream == "two_stream" and fused.path == ""
    assert metrics.topk_accuracy(fused.scores, fused.labels, 1) == 0.75


def test_fuse_with_weights():
    # Weights 3 : 1 -> 0.75 S + 0.25 T:
    #   v0 [0.45+0.1, 0.225+0.125, 0.075+0.025]      = [0.55, 0.35, 0.1]        -> 0 right
    #   v1 [0.375+0.0375, 0.3+0.2, 0.075+0.0125]     = [0.4125, 0.5, 0.0875]    -> 1 right
    #   v2 [0.075+0.2, 0.15+0.0125, 0.525+0.0375]    = [0.275, 0.1625, 0.5625]  -> 2 right
    #   v3 [0.075+0.2, 0.525+0.0375, 0.15+0.0125]    = [0.275, 0.5625, 0.1625]  -> 1 wrong
    expected = np.array([[0.55, 0.35, 0.1], [0.4125, 0.5, 0.0875],
                         [0.275, 0.1625, 0.5625], [0.275, 0.5625, 0.1625]])
    streams = [_scores("spatial", SPATIAL), _scores("temporal", TEMPORAL)]
    for weights in ([3, 1], [0.75, 0.25], (6.0, 2.0)):
        np.testing.assert_allclose(fusion.fuse(streams, weights).scores, expected, atol=1e-6)
    fused = fusion.fuse(streams, [3, 1])
    np.testing.assert_array_equal(metrics.predictions(fused.scores), [0, 1, 2, 1])
    # Class 0: v0 right, v3 wrong -> 1/2; classes 1, 2 right -> (0.5 + 1 + 1) / 3.
    assert metrics.mean_class_accuracy(fused.scores, fused.labels, 3) == pytest.approx(2.5 / 3)
    # A zero weight leaves the other stream alone.
    np.testing.assert_allclose(fusion.fuse(streams, [0, 1]).scores, TEMPORAL, atol=1e-7)


def test_fuse_aligns_videos_by_id():
    order = [2, 0, 3, 1]
    shuffled = _scores("temporal", TEMPORAL[order], ids=[IDS[i] for i in order],
                       labels=LABELS[order])
    fused = fusion.fuse([_scores("spatial", SPATIAL), shuffled])
    assert fused.video_ids.tolist() == list(IDS)
    assert fused.labels.tolist() == LABELS.tolist()
    np.testing.assert_allclose(fused.scores, FUSED, atol=1e-7)
    # The other way round: the first file's order wins.
    fused = fusion.fuse([shuffled, _scores("spatial", SPATIAL)])
    assert fused.video_ids.tolist() == ["v2", "v0", "v3", "v1"]
    np.testing.assert_allclose(fused.scores, FUSED[order], atol=1e-7)


def test_fuse_three_files():
    third = _scores("rgb_diff", np.tile([[0.0, 0.0, 1.0]], (4, 1)))
    fused = fusion.fuse([_scores("spatial", SPATIAL), _scores("temporal", TEMPORAL), third])
    # v0: ([0.6,0.3,0.1] + [0.4,0.5,0.1] + [0,0,1]) / 3 = [1/3, 0.8/3, 1.2/3]
    np.testing.assert_allclose(fused.scores[0], [1 / 3, 0.8 / 3, 1.2 / 3], atol=1e-7)


@pytest.mark.parametrize("kwargs, message", [
    (dict(ids=("v0", "v1", "v2", "x9")),
     "a.npz and b.npz cover different videos: 1 only in a.npz (e.g. v3), "
     "1 only in b.npz (e.g. x9)"),
    (dict(classes=("brush_hair", "cartwheel", "chew")),
     "a.npz and b.npz have different class_names: class 2 is 'catch' vs 'chew'"),
    (dict(classes=("a", "b", "c", "d")),
     "a.npz and b.npz have different class_names: 3 vs 4 classes"),
    (dict(split="train"), "a.npz and b.npz are of different splits: 'test' vs 'train'"),
    (dict(dataset="ucf101"), "a.npz and b.npz are of different datasets: 'hmdb51' vs 'ucf101'"),
    (dict(labels=[0, 1, 2, 1]),
     "a.npz and b.npz disagree on the labels of 1 video(s) (e.g. v3: 0 in a.npz, 1 in b.npz)"),
])
def test_fuse_refuses_files_that_do_not_match(kwargs, message):
    b_scores = TEMPORAL
    if "classes" in kwargs and len(kwargs["classes"]) == 4:
        b_scores = np.hstack([TEMPORAL, np.zeros((4, 1))])
    a = _scores("spatial", SPATIAL, path="a.npz")
    b = _scores("temporal", b_scores, path="b.npz", **kwargs)
    with pytest.raises(fusion.ScoresError) as e:
        fusion.fuse([a, b])
    assert str(e.value) == message


def _identity(stream, **kw):
    ident = {"kind": "stream", "stream": stream, "num_classes": 3, "class_names": list(CLASSES),
             "dataset": "hmdb51", "preparation": {"flow": "tvl1", "short_side": 256}}
    ident.update(kw)
    return ident


def test_score_files_carry_the_model_identity(tmp_path):
    path = str(tmp_path / "s.npz")
    fusion.save_scores(path, IDS, LABELS, SPATIAL, CLASSES, "test", "hmdb51", "spatial",
                       model_identity=_identity("spatial"))
    s = fusion.load_scores(path)
    assert s.model_identity == _identity("spatial")
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z.files) == sorted(fusion.KEYS + (fusion.IDENTITY_KEY,))
    # Files written before identities still load, without one.
    assert fusion.load_scores(_save(tmp_path, "old.npz", "spatial", SPATIAL)).model_identity is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(dataset="ucf101"),
     "a.npz and b.npz come from models of different dataset: 'hmdb51' vs 'ucf101'"),
    (dict(class_names=["cartwheel", "brush_hair", "catch"]),
     "a.npz and b.npz come from models of different class_names: "
     "['brush_hair', 'cartwheel', 'catch'] vs ['cartwheel', 'brush_hair', 'catch']"),
])
def test_fuse_refuses_scores_of_models_that_differ(kwargs, message):
    a = _scores("spatial", SPATIAL, path="a.npz")
    a.model_identity = _identity("spatial")
    b = _scores("temporal", TEMPORAL, path="b.npz")
    b.model_identity = _identity("temporal", **kwargs)
    with pytest.raises(fusion.ScoresError) as e:
        fusion.fuse([a, b])
    assert str(e.value) == message
    # Unknown (None) on one side, another preparation, another stream: they fuse.
    b.model_identity = _identity("temporal", dataset=None,
                                 preparation={"flow": "dis", "short_side": 128})
    assert fusion.fuse([a, b]).num_videos == 4
    b.model_identity = None
    assert fusion.fuse([a, b]).num_videos == 4


def test_different_videos_counts_and_one_sided():
    a = _scores("spatial", SPATIAL, path="a.npz")
    b = _scores("temporal", TEMPORAL[:1], ids=["v0"], labels=[0], path="b.npz")
    with pytest.raises(fusion.ScoresError) as e:
        fusion.fuse([a, b])
    assert str(e.value) == ("a.npz and b.npz cover different videos: 3 only in a.npz (e.g. v1), "
                            "0 only in b.npz")


@pytest.mark.parametrize("weights, message", [
    ([1], "got 1 fusion weight(s) for 2 score file(s)"),
    ([1, 2, 3], "got 3 fusion weight(s) for 2 score file(s)"),
    ([1, -1], "fusion weights must be non-negative, got [1.0, -1.0]"),
    ([0, 0], "fusion weights must not all be zero, got [0.0, 0.0]"),
    ([1, float("nan")], "fusion weights must be finite"),
    (["x", 1], "fusion weights must be numbers"),
])
def test_bad_weights(weights, message):
    streams = [_scores("spatial", SPATIAL), _scores("temporal", TEMPORAL)]
    with pytest.raises(fusion.ScoresError) as e:
        fusion.fuse(streams, weights)
    assert str(e.value).startswith(message)


def test_fuse_of_nothing():
    with pytest.raises(fusion.ScoresError, match="at least one score file"):
        fusion.fuse([])


def test_row_names_suffix_repeats_and_reserved():
    assert fusion.row_names(["spatial", "temporal"]) == ["spatial", "temporal"]
    assert fusion.row_names(["spatial", "spatial", "spatial"]) == [
        "spatial", "spatial_2", "spatial_3"]
    assert fusion.row_names(["two_stream", "weights"], reserved=("two_stream", "weights")) == [
        "two_stream_2", "weights_2"]


# ------------------------------------------------------------ the binary


def _run_fuse(*args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "experiments.fuse", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_binary_end_to_end(tmp_path):
    order = [3, 1, 0, 2]  # the temporal evaluator listed the videos in another order
    a = _save(tmp_path, "a.npz", "spatial", SPATIAL)
    b = _save(tmp_path, "b.npz", "temporal", TEMPORAL[order], ids=[IDS[i] for i in order],
              labels=LABELS[order])
    out = tmp_path / "out"
    proc = _run_fuse(f"--scores={a},{b}", f"--output_dir={out}")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "fusion.json").read_text())
    assert report["spatial"] == {"top1": 0.5, "top5": 1.0, "mean_class_accuracy": 0.5}
    # Temporal: class 0 (v0 wrong, v3 right) 1/2, class 1 right, class 2 wrong -> 0.5.
    assert report["temporal"] == {"top1": 0.5, "top5": 1.0, "mean_class_accuracy": 0.5}
    assert report["two_stream"]["top1"] == 0.75
    assert report["two_stream"]["mean_class_accuracy"] == pytest.approx(2 / 3)
    assert report["weights"] == [0.5, 0.5]
    assert report["num_videos"] == 4
    assert report["files"] == [a, b]
    png = (out / "confusion.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(out)) == ["confusion.png", "fusion.json"]
    # The table: one row per stream, then the fusion, in percent.
    lines = proc.stdout.splitlines()
    row = {ln.split()[0]: ln.split()[1:] for ln in lines
           if ln.split() and ln.split()[0] in ("spatial", "temporal", "two_stream")}
    assert row["spatial"] == ["50.00", "100.00", "50.00"]
    assert row["two_stream"] == ["75.00", "100.00", "66.67"]
    # The last stdout line is the report as one JSON line.
    assert json.loads(lines[-1]) == report


def test_binary_weights_and_duplicate_stream_names(tmp_path):
    a = _save(tmp_path, "a.npz", "spatial", SPATIAL)
    b = _save(tmp_path, "b.npz", "spatial", TEMPORAL)
    out = tmp_path / "out"
    proc = _run_fuse(f"--scores={a},{b}", "--weights=3,1", f"--output_dir={out}")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "fusion.json").read_text())
    assert set(report) >= {"spatial", "spatial_2", "two_stream"}
    assert report["weights"] == [0.75, 0.25]
    # See test_fuse_with_weights: predictions 0, 1, 2, 1 -> 3/4, class mean 2.5/3.
    assert report["two_stream"]["top1"] == 0.75
    assert report["two_stream"]["mean_class_accuracy"] == pytest.approx(2.5 / 3)


@pytest.mark.parametrize("case, expected", [
    ("videos", "cover different videos: 1 only in"),
    ("missing", "no such score file"),
    ("weights", "--weights: 'abc' is not a number"),
    ("count", "got 3 fusion weight(s) for 2 score file(s)"),
    ("one", "--scores: fusion needs at least two score files, got 1"),
])
def test_binary_errors_are_one_line_exit_2(tmp_path, case, expected):
    a = _save(tmp_path, "a.npz", "spatial", SPATIAL)
    b = _save(tmp_path, "b.npz", "temporal", TEMPORAL,
              ids=("v0", "v1", "v2", "x9") if case == "videos" else IDS)
    files = {"missing": f"{a},{tmp_path / 'gone.npz'}", "one": a}.get(case, f"{a},{b}")
    args = [f"--scores={files}", f"--output_dir={tmp_path / 'out'}"]
    if case == "weights":
        args.append("--weights=1,abc")
    if case == "count":
        args.append("--weights=1,2,3")
    proc = _run_fuse(*args)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    assert err[0].startswith("mat-effnet-fuse: error: ")
    assert expected in err[0]
    assert not (tmp_path / "out").exists()
