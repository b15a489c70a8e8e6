"""The demo's closing lines: motion pairs from the fused scores, files, wall time by stage.

Run in a subprocess: ``experiments.demo`` defines absl flags at import, which
other binaries imported by the test session define too.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np

from data_prep import synthetic
from mat_effnet.evaluation import fusion

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _scores(path, stream, labels, predicted, classes):
    scores = np.full((len(labels), len(classes)), 0.01, np.float32)
    scores[np.arange(len(labels)), predicted] = 1.0
    scores /= scores.sum(axis=1, keepdims=True)
    fusion.save_scores(str(path), [f"v{i}" for i in range(len(labels))], labels, scores,
                       classes, "test", "ucf101", stream)


def _closing_lines(tmp_path, temporal_predicted):
    classes = list(synthetic.CLASSES)
    labels = np.repeat(np.arange(len(classes)), 2)
    # Both streams agree except where the temporal stream is given its own calls.
    _scores(tmp_path / "s.npz", "spatial", labels, labels, classes)
    _scores(tmp_path / "t.npz", "temporal", labels, temporal_predicted, classes)
    code = textwrap.dedent(f"""
        from experiments import demo
        print(demo.motion_pairs_line([{str(tmp_path / 's.npz')!r}, {str(tmp_path / 't.npz')!r}]))
        print(demo.stage_times_line({{"generate_s": 2.0, "prep_s": 70.4, "train_spatial_s": 95,
                                      "train_temporal_s": 100, "eval_spatial_s": 6,
                                      "eval_temporal_s": 7, "fuse_s": 1.5, "total_s": 282}}))
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_motion_pairs_and_stage_times(tmp_path):
    classes = list(synthetic.CLASSES)
    labels = np.repeat(np.arange(len(classes)), 2)
    motion, stages = _closing_lines(tmp_path, labels)
    assert motion.endswith(": every pair apart")
    assert "RedSquareDown 2/2 right, 0 called RedSquareRight" in motion
    assert stages == ("Wall time: prep 1m12s, train spatial 1m35s, train temporal 1m40s, "
                      "eval/fuse 0m14s; total 4m42s")


def test_a_pair_told_apart_by_neither_stream_is_named(tmp_path):
    classes = list(synthetic.CLASSES)
    labels = np.repeat(np.arange(len(classes)), 2)
    # Both streams call every RedSquareRight video RedSquareDown.
    down, right = classes.index("RedSquareDown"), classes.index("RedSquareRight")
    wrong = np.where(labels == right, down, labels)
    spatial = tmp_path / "s.npz"
    _scores(spatial, "spatial", labels, wrong, classes)
    _scores(tmp_path / "t.npz", "temporal", labels, wrong, classes)
    code = ("from experiments import demo; "
            f"print(demo.motion_pairs_line([{str(spatial)!r}, {str(tmp_path / 't.npz')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "RedSquareRight 0/2 right, 2 called RedSquareDown" in r.stdout
    assert r.stdout.strip().endswith(": NOT every pair apart")
