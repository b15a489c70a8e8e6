"""Many videos in one process: rows, a bad video, mixed sizes, resume.

Tiny saved models and DIS flow (`tests/stream_helpers.py`). The resume
after a kill is simulated the way a kill leaves the output: complete rows,
then half a line.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_prep import synthetic
from mat_effnet.serving import predict_many, predict_video
from mat_effnet.evaluation import protocol
from mat_effnet.common.errors import MatEffNetError

sys.path.insert(0, os.path.dirname(__file__))
import stream_helpers as H  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEGMENTS = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("many")
    paths = H.save_models(tmp)
    streams = {s: (p, protocol.load_model(p)) for s, p in zip(("spatial", "temporal"), paths)}
    resolved = predict_video.resolve(streams, predict_video.PrepSettings())
    videos = tmp / "videos"
    videos.mkdir()
    rng = np.random.default_rng(0)
    # Two frame sizes (short side 40 after resizing: 53x40 and 40x72), and a
    # file that is no video in the middle of the sorted list.
    for i, (cls, (h, w)) in enumerate([("RedSquareRight", (48, 64)), ("PurpleCrossSpin", (72, 40)),
                                       ("BlueSquareRight", (48, 64)), ("RedSquareRight", (72, 40))]):
        synthetic.write_video(str(videos / f"v{2 * i}.avi"),
                              synthetic.render_clip(cls, rng, 12, h, w))
    (videos / "v3.avi").write_text("not a video")
    return dict(tmp=tmp, paths=paths, streams=streams, resolved=resolved, videos=str(videos))


def _models(setup):
    return {s: m for s, (_, m) in setup["streams"].items()}


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_list_videos_dir_glob_and_list(setup, tmp_path):
    d = setup["videos"]
    listed = predict_many.list_videos(d)
    assert [os.path.basename(p) for p in listed] == [f"v{i}.avi" for i in range(7) if i in
                                                     (0, 2, 3, 4, 6)]
    assert predict_many.list_videos(os.path.join(d, "v[02]*.avi")) == listed[:2]
    lst = tmp_path / "list.txt"
    lst.write_text(f"# two\n{d}/v0.avi\n\n{os.path.relpath(d, tmp_path)}/v2.avi\n{d}/v0.avi\n")
    assert predict_many.list_videos(str(lst)) == listed[:2]
    with pytest.raises(MatEffNetError, match=r"^videos=.*no videos found"):
        predict_many.list_videos(str(tmp_path / "none*.mp4"))


def test_rows_errors_mixed_sizes_and_resume_after_a_kill(setup, tmp_path):
    paths = predict_many.list_videos(setup["videos"])
    out = str(tmp_path / "preds.jsonl")
    summary = predict_many.predict_many(paths, _models(setup), setup["resolved"], out,
                                         num_segments=SEGMENTS, top_k=2, batch_clips=3)
    assert (summary["videos"], summary["done"], summary["failed"], summary["skipped"]) == \
        (5, 4, 1, 0)
    rows = {r["path"]: r for r in _rows(out)}
    assert set(rows) == set(paths)
    bad = rows[paths[2]]
    assert bad == {"path": paths[2], "error": "cannot open (not a video or unsupported codec)"}
    s, t = _models(setup)["spatial"], _models(setup)["temporal"]
    for p in (paths[0], paths[1]):  # 53x40 and 40x72 frames, in one batch of clips
        ref = predict_video.predict_video(p, s, t, setup["resolved"].settings,
                                      num_segments=SEGMENTS)
        np.testing.assert_allclose(rows[p]["spatial"], ref["spatial"], atol=1e-5)
        np.testing.assert_allclose(rows[p]["temporal"], ref["temporal"], atol=1e-5)
        assert rows[p]["top"][0]["probability"] == pytest.approx(ref["fused"].max(), abs=1e-5)
        assert rows[p]["preparation"]["temporal"]["flow"] == "dis"
        assert rows[p]["frames"] == 12

    # A kill mid-row: the file ends in half a line. The rerun cuts it off,
    # redoes that video only, and skips the rest (the error row included).
    with open(out, "rb") as f:
        data = f.read()
    lines = data.splitlines(keepends=True)
    torn = json.loads(lines[-1])["path"]
    with open(out, "wb") as f:
        f.write(b"".join(lines[:-1]) + lines[-1][:len(lines[-1]) // 2])
    again = predict_many.predict_many(paths, _models(setup), setup["resolved"], out,
                                       num_segments=SEGMENTS, top_k=2)
    assert (again["skipped"], again["done"] + again["failed"]) == (4, 1)
    after = _rows(out)
    assert sorted(r["path"] for r in after) == sorted(paths)
    assert after[-1]["path"] == torn
    # Nothing left to do: a third run predicts nothing.
    third = predict_many.predict_many(paths, _models(setup), setup["resolved"], out)
    assert (third["skipped"], third["done"], third["failed"]) == (5, 0, 0)


def test_csv_output_resumes_too(setup, tmp_path):
    paths = predict_many.list_videos(setup["videos"])[1:3]
    out = tmp_path / "preds.csv"
    predict_many.predict_many(paths[:1], _models(setup), setup["resolved"], str(out),
                               num_segments=SEGMENTS)
    with open(out, "a") as f:
        f.write(f'"{paths[1]}",half')  # a torn row
    summary = predict_many.predict_many(paths, _models(setup), setup["resolved"], str(out),
                                         num_segments=SEGMENTS)
    assert (summary["skipped"], summary["failed"]) == (1, 1)
    import csv

    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == paths
    assert json.loads(rows[0]["top"])[0]["probability"] > 0 and rows[0]["error"] == ""
    assert rows[1]["error"].startswith("cannot open")


def test_cli_many_videos_with_workers(setup, tmp_path):
    out = tmp_path / "cli.jsonl"
    cmd = [sys.executable, "-m", "experiments.predict", f"--videos={setup['videos']}",
           f"--output={out}", f"--spatial_model={setup['paths'][0]}",
           f"--temporal_model={setup['paths'][1]}", "--workers=2", "--num_segments=3",
           "--json"]
    env = dict(os.environ, PYTHONPATH=REPO)
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert (summary["done"], summary["failed"]) == (4, 1)
    assert "5/5 videos (100%)" in r.stderr and "ETA" in r.stderr  # the progress line
    assert len(_rows(out)) == 5


@pytest.mark.parametrize("flags, message", [
    ([], "give exactly one of --video"),
    (["--videos=b"], "--videos needs --output"),
    (["--video=a.avi", "--stride_s=1"], "--stride_s and --timeline_png need --window_s"),
])
def test_cli_modes_one_clear_line(flags, message):
    r = subprocess.run([sys.executable, "-m", "experiments.predict", *flags,
                        "--spatial_model=x.keras"], cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(f"mat-effnet-predict: error: {message}")


def test_keras_tvl1_route_batches_flow_across_videos(setup, tmp_path, monkeypatch):
    """The Keras TV-L1 route (flow in this process, through `mat_effnet.encoding.flow_batches`).

    The real Keras TV-L1 (`mat_effnet.ops.tvl1.batch_tvl1`, compiled once per
    frame size; fewer scales, warps and iterations than OpenCV's defaults, to
    stay quick on a CPU), on two small videos of two frame sizes and the file
    that is no video: the rows equal `predict_video` with the same flow, and
    the pairs of both sizes went through the batched function.
    """
    import dataclasses

    from mat_effnet.ops import optical_flow as flow_lib
    from mat_effnet.ops import tvl1

    batches = []
    real_batch_tvl1 = tvl1.batch_tvl1

    def counted_batch_tvl1(params=None, chunk=None):
        fn = real_batch_tvl1(tvl1.TVL1Params(nscales=2, warps=1, inner_iterations=5,
                                             outer_iterations=2), chunk)

        def counted(prev, nxt):
            batches.append(prev.shape)
            return fn(prev, nxt)
        return counted

    monkeypatch.setattr(tvl1, "batch_tvl1", counted_batch_tvl1)
    monkeypatch.setattr(flow_lib, "_KERAS_FNS", {})
    resolved = dataclasses.replace(setup["resolved"], settings={
        s: dataclasses.replace(v, flow="tvl1", flow_implementation="keras")
        for s, v in setup["resolved"].settings.items()})
    paths = predict_many.list_videos(setup["videos"])[:3]  # 53x40, 40x72, not a video
    out = str(tmp_path / "keras.jsonl")
    summary = predict_many.predict_many(paths, _models(setup), resolved, out,
                                         num_segments=SEGMENTS)
    assert (summary["done"], summary["failed"]) == (2, 1)
    assert {shape[1:] for shape in batches} == {(40, 53), (72, 40)}
    assert sum(shape[0] for shape in batches) >= 2 * 11  # every pair of both videos
    rows = {r["path"]: r for r in _rows(out)}
    s, t = _models(setup)["spatial"], _models(setup)["temporal"]
    ref = predict_video.predict_video(paths[1], s, t, resolved.settings, num_segments=SEGMENTS)
    np.testing.assert_allclose(rows[paths[1]]["temporal"], ref["temporal"], atol=1e-5)
    assert rows[paths[1]]["preparation"]["temporal"]["flow_implementation"] == "keras"


# ---------------------------------------------------------------------------
# Faults of the machine: no video gets an error row for them.
#
# Real: the full disk (the rows file on a tmpfs that fills mid-run, then
# remounted larger). Injected: a lost input mount (os.stat of one video
# raising ESTALE, as a stale NFS handle does) and the host running out of
# memory (MemoryError while a video's clips are made).

def _same_rows(got_path, want_path):
    got = {r["path"]: r for r in _rows(got_path) if "path" in r}
    want = {r["path"]: r for r in _rows(want_path)}
    assert sorted(got) == sorted(want)
    for p, w in want.items():
        g = got[p]
        assert g.get("error") == w.get("error"), p
        for key in ("spatial", "temporal"):
            if w.get(key) is not None:
                np.testing.assert_allclose(g[key], w[key], atol=1e-5)
    return got


@pytest.fixture
def clean_rows(setup, tmp_path):
    paths = predict_many.list_videos(setup["videos"])
    out = str(tmp_path / "clean.jsonl")
    predict_many.predict_many(paths, _models(setup), setup["resolved"], out,
                              num_segments=SEGMENTS)
    return paths, out


def test_rows_onto_a_disk_that_fills_stop_and_the_rerun_completes(setup, tmp_path, clean_rows):
    from mat_effnet.common import faults
    from tests import fault_helpers as F

    paths, clean = clean_rows
    lines = {json.loads(ln)["path"]: len(ln.encode()) for ln in open(clean)}
    # Written in this order: the error row of paths[2] as soon as it is met, then the
    # first batch of clips (paths 0, 1, 3). A note that is no row fills the file's one
    # page so that the second scored row is torn when the disk is full.
    pad = F.PAGE - lines[paths[2]] - lines[paths[0]] - lines[paths[1]] // 2
    disk = tmp_path / "disk"
    if not F.mount_tmpfs(disk, "64k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = disk / "rows.jsonl"
        note = json.dumps({"note": ""}) + "\n"
        out.write_text(json.dumps({"note": "x" * (pad - len(note))}) + "\n")
        with open(disk / "filler", "wb") as f:
            f.write(b"\0" * F.free_bytes(disk))
        assert F.free_bytes(disk) == 0
        with pytest.raises(faults.MachineFault) as info:
            predict_many.predict_many(paths, _models(setup), setup["resolved"], str(out),
                                      num_segments=SEGMENTS)
        line = str(info.value)
        assert line.startswith(f"{out}: no space left on device (") and "\n" not in line, line
        written = [json.loads(ln) for ln in out.read_bytes().splitlines(keepends=True)
                   if ln.endswith(b"\n")][1:]
        assert [r["path"] for r in written] == [paths[2], paths[0]]  # filled mid-run
        assert all("error" not in r for r in written[1:])
        F.remount(disk, "64m")
        again = predict_many.predict_many(paths, _models(setup), setup["resolved"], str(out),
                                          num_segments=SEGMENTS)
        assert (again["skipped"], again["done"], again["failed"]) == (2, 3, 0)
        _same_rows(out, clean)
    finally:
        F.umount(disk)


def test_a_lost_input_mount_stops_the_run_with_no_error_row(setup, tmp_path, clean_rows,
                                                            monkeypatch):
    from mat_effnet.common import faults

    paths, clean = clean_rows
    lost = paths[3]
    real_stat = os.stat

    def stale(path, *a, **k):
        if os.fspath(path) == lost:
            raise OSError(116, "Stale file handle", lost)  # ESTALE
        return real_stat(path, *a, **k)

    out = str(tmp_path / "rows.jsonl")
    monkeypatch.setattr(os, "stat", stale)
    with pytest.raises(faults.MachineFault) as info:
        predict_many.predict_many(paths, _models(setup), setup["resolved"], out,
                                  num_segments=SEGMENTS)
    assert str(info.value).startswith(f"{lost}: stale file handle")
    assert lost not in {r["path"] for r in _rows(out)}
    monkeypatch.undo()
    predict_many.predict_many(paths, _models(setup), setup["resolved"], out,
                              num_segments=SEGMENTS)
    _same_rows(out, clean)


def test_out_of_memory_stops_the_run_naming_the_size_to_lower(setup, tmp_path, clean_rows,
                                                             monkeypatch):
    from mat_effnet.common import faults

    paths, clean = clean_rows
    real_add = predict_many._Scorer.add

    def short_of_memory(self, result):
        if result["path"] == paths[1]:
            raise MemoryError()
        return real_add(self, result)

    out = str(tmp_path / "rows.jsonl")
    monkeypatch.setattr(predict_many._Scorer, "add", short_of_memory)
    with pytest.raises(faults.MachineFault) as info:
        predict_many.predict_many(paths, _models(setup), setup["resolved"], out,
                                  num_segments=SEGMENTS)
    line = str(info.value)
    assert line.startswith(f"{paths[1]}: out of memory on the host; lower --batch_clips"), line
    assert "space" not in line
    assert paths[1] not in {r["path"] for r in _rows(out)}
    monkeypatch.undo()
    predict_many.predict_many(paths, _models(setup), setup["resolved"], out,
                              num_segments=SEGMENTS)
    _same_rows(out, clean)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_error_rows_that_recorded_the_machines_fault_are_redone(setup, tmp_path, clean_rows,
                                                               suffix):
    paths, clean = clean_rows
    out = str(tmp_path / f"old{suffix}")
    old = predict_many.Output(out)
    for p, error in ((paths[0], "OSError: [Errno 116] Stale file handle: '%s'" % paths[0]),
                     (paths[2], "cannot open (not a video or unsupported codec)"),
                     (paths[3], "MemoryError: "),
                     (paths[4], "ResourceExhaustedError: Out of memory while trying to "
                                "allocate 123 bytes")):
        old.append({"path": p, "error": error})
    old.close()
    summary = predict_many.predict_many(paths, _models(setup), setup["resolved"], out,
                                        num_segments=SEGMENTS)
    # The video's own error stays; the machine's are dropped and their videos predicted.
    assert (summary["skipped"], summary["done"], summary["failed"]) == (1, 4, 0)
    if suffix == ".jsonl":
        _same_rows(out, clean)
    else:
        import csv

        with open(out, newline="") as f:
            rows = list(csv.DictReader(f))
        assert sorted(r["path"] for r in rows) == sorted(paths)
        assert [r["path"] for r in rows if r["error"]] == [paths[2]]
