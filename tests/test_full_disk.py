"""A full disk under eval, fuse, predict and export: one line, exit 2, nothing torn.

Each binary runs as a user runs it, writing onto a real tmpfs that is full
(or fills on the way), so the write errors are the kernel's own ENOSPC as
Python, numpy, zipfile and TensorFlow's SavedModel writer meet them. Prep and
train on a full disk are in test_faults.py. Needs root to mount; skipped
otherwise.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from data_prep import builder, synthetic
from data_prep.prep_config import PrepConfig
from mat_effnet.evaluation import fusion
from mat_effnet import records
from mat_effnet.modeling import stream_spec
from mat_effnet.modeling import models as M
from tests.stream_helpers import SMALL

PAGE = 4096


def _mount(path, pages):
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={pages * PAGE}", "tmpfs", str(path)],
                       capture_output=True)
    return r.returncode == 0


def _fill(disk, leave_pages=0):
    """Fills ``disk`` up to ``leave_pages`` free pages (tmpfs counts whole pages)."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(os.path.join(disk, "filler"), "wb") as f:
        f.write(b"\0" * (free - leave_pages * PAGE))
    assert os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize == leave_pages * PAGE


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk"
    if not _mount(path, 64):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)])


def _run(module, *args):
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    return subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True,
                          text=True, timeout=300)


def _one_line(r, prog, disk):
    """rc 2, no traceback, one error line naming the disk; returns the line."""
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    # TensorFlow's own C++ start-up lines (the parent test process asked for them) aside.
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("mat-effnet") or "Error" in ln]
    assert len(lines) == 1, r.stderr[-3000:]
    line = lines[0]
    assert line.startswith(f"{prog}: error: ") and str(disk) in line, line
    assert "no space left on device" in line and "free some space" in line, line
    return line


def _leftovers(disk):
    """What a run left on the disk besides the filler (no torn file, no temporary)."""
    return sorted(os.path.relpath(p, disk) for p in glob.glob(str(disk / "**"), recursive=True)
                  if os.path.isfile(p) and os.path.basename(p) != "filler")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """12 videos of 6 classes (one group each: all train) prepared with DIS, and both streams' models saved for them."""
    root = tmp_path_factory.mktemp("fulldisk")
    videos = str(root / "videos")
    synthetic.generate_ucf101_like(videos, videos_per_class=2, num_frames=8, height=48,
                                   width=64, seed=5)
    data = str(root / "data")
    builder.build(PrepConfig(dataset="ucf101", data_root=videos, out_dir=data, flow="dis",
                             flow_implementation="opencv", short_side=40, videos_per_shard=4))
    ident = stream_spec.data_identity(records.read_metadata(data))
    classes = ident["class_names"]
    paths = {}
    for stream in ("spatial", "temporal"):
        model = M.build_stream(len(classes), stream, class_names=classes, dataset="ucf101",
                               preparation=ident["preparation"], train_segments=3, **SMALL)
        paths[stream] = str(root / f"{stream}.keras")
        model.save(paths[stream])
    return {"root": root, "videos": videos, "data": data, "models": paths, "classes": classes}


def test_eval_onto_a_full_disk(prepared, disk):
    _fill(disk)
    r = _run("experiments.evaluate", f"--data_dir={prepared['data']}",
             f"--model={prepared['models']['spatial']}", "--num_segments=2",
             "--split=train", f"--output={disk / 'scores.npz'}")
    line = _one_line(r, "mat-effnet-eval", disk)
    assert "scores.npz" in line
    assert _leftovers(disk) == []


def test_fuse_onto_a_full_disk(prepared, disk, tmp_path):
    import numpy as np

    classes = prepared["classes"]
    rng = np.random.default_rng(0)
    files = []
    for stream in ("spatial", "temporal"):
        scores = rng.dirichlet(np.ones(len(classes)), size=4)
        files.append(str(tmp_path / f"{stream}.npz"))
        fusion.save_scores(files[-1], [f"v{i}" for i in range(4)], [0, 1, 2, 3], scores,
                           classes, "test", "ucf101", stream)
    _fill(disk)
    r = _run("experiments.fuse", f"--scores={','.join(files)}", f"--output_dir={disk / 'f'}")
    _one_line(r, "mat-effnet-fuse", disk)
    assert _leftovers(disk) == []


def test_predict_many_fills_the_disk_and_the_rerun_finishes_the_rest(prepared, disk, tmp_path):
    models = [f"--spatial_model={prepared['models']['spatial']}",
              f"--temporal_model={prepared['models']['temporal']}", "--num_segments=2"]
    clean = _run("experiments.predict", f"--videos={prepared['videos']}",
                 f"--output={tmp_path / 'clean.jsonl'}", *models)
    assert clean.returncode == 0, clean.stderr[-3000:]
    rows = [json.loads(ln) for ln in open(tmp_path / "clean.jsonl")]
    assert len(rows) == 12 and not any(r.get("error") for r in rows)
    assert os.path.getsize(tmp_path / "clean.jsonl") > PAGE  # so one free page fills up
    _fill(disk, leave_pages=1)
    out = disk / "rows.jsonl"
    full = _run("experiments.predict", f"--videos={prepared['videos']}", f"--output={out}",
                *models)
    assert _one_line(full, "mat-effnet-predict", disk).split(": ")[2] == str(out)
    assert 0 < len(open(out).read().splitlines()) < 12
    # The space comes back; the same command finishes the rest, each video once.
    subprocess.run(["mount", "-o", f"remount,size={256 * PAGE}", str(disk)], check=True)
    again = _run("experiments.predict", f"--videos={prepared['videos']}", f"--output={out}",
                 *models)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = [json.loads(ln) for ln in open(out)]
    key = lambda r: (r["path"], r["top"][0]["class"])  # noqa: E731
    assert sorted(map(key, resumed)) == sorted(map(key, rows))
    for a, b in zip(sorted(resumed, key=key), sorted(rows, key=key)):
        assert a["spatial"] == pytest.approx(b["spatial"], abs=1e-5)
        assert a["temporal"] == pytest.approx(b["temporal"], abs=1e-5)


def test_export_onto_a_full_disk(prepared, disk, tmp_path):
    from tests.trained_streams import PREP as TVL1

    classes = prepared["classes"]
    paths = []
    for stream in ("spatial", "temporal"):
        model = M.build_stream(len(classes), stream, class_names=classes, dataset="ucf101",
                               preparation=TVL1, train_segments=3,
                               **dict(SMALL, flow_length=2))
        paths.append(str(tmp_path / f"{stream}.keras"))
        model.save(paths[-1])
    _fill(disk, leave_pages=8)  # room for a start, not for the variables
    r = _run("experiments.export", f"--spatial_model={paths[0]}", f"--temporal_model={paths[1]}",
             f"--output_dir={disk / 'saved'}", "--num_segments=2", "--frame_sizes=4:3")
    line = _one_line(r, "mat-effnet-export", disk)
    assert line.split(": ")[2] == str(disk / "saved")  # the folder asked for, not a temporary
    assert _leftovers(disk) == []
