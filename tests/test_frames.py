"""Frame folders: export (mat-effnet-flow), import (--frames_root), the round trip.

Also a small reader that follows mmaction2's RawframeDataset conventions
(file list ``<frame_dir> <total_frames> <label>``, ``filename_tmpl
'img_{:05}.jpg'``, flow ``'{}_{:05d}.jpg'`` with flow_x / flow_y,
``start_index`` 1), written here from those conventions only, to show that
it finds every frame the export wrote.
"""

import errno
import glob
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from data_prep import (builder, datasets, frame_index, frames_export, rawframes, synthetic,
                       work_files)
from data_prep.prep_config import PrepConfig
from mat_effnet import records
from mat_effnet.ops import quantize

QUICK = dict(flow="dis", flow_implementation="opencv")


def _ucf(root, per_class=2, frames=8):
    synthetic.generate_ucf101_like(str(root), videos_per_class=per_class, num_frames=frames,
                                   height=48, width=64)
    return datasets.load_layout("ucf101", str(root))


def _videos(layout):
    return [frames_export.Video(e.video_id, e.path)
            for entries in layout.splits.values() for e in entries]


def _by_video(out_dir):
    meta = records.read_metadata(str(out_dir))
    out = {}
    for split in meta["shards"]:
        for path in records.split_files(str(out_dir), meta, split):
            for r in records.read_shard(path, meta["schema_version"]):
                out.setdefault(r["video_id"], []).append(r)
    return out


def _import_cfg(root, frames_root, out, **kw):
    kw.setdefault("flow", "dis")
    kw.setdefault("short_side", 0)
    return PrepConfig(dataset=kw.pop("dataset", "ucf101"), data_root=str(root),
                      out_dir=str(out), frames_root=str(frames_root), **kw)


def _files(top):
    return {os.path.relpath(p, top): open(p, "rb").read()
            for p in glob.glob(os.path.join(str(top), "**", "*.jpg"), recursive=True)}


# ---------------------------------------------------------------------------
# The conventions
# ---------------------------------------------------------------------------

def test_rounding_conventions():
    # bound 127.5 makes 255 (v + b) / 2b == v + 127.5 exactly: ties are exact.
    v = np.array([0.0, 1.0, 2.0, -0.3, 0.7, 1000.0, -1000.0])
    q = {r: quantize.quantize_flow(v, 127.5, r).tolist() for r in rawframes.ROUNDINGS}
    assert q["cvround"] == [128, 128, 130, 127, 128, 255, 0]
    assert q["half_up"] == [128, 129, 130, 127, 128, 255, 0]
    assert q["truncate"] == [127, 128, 129, 127, 128, 255, 0]
    # The centre of a truncated code is half a step above the rounded one's.
    q = np.array([0, 128, 255], np.uint8)
    step = 40.0 / 255
    np.testing.assert_allclose(quantize.dequantize_flow(q, 20, "cvround"), q * step - 20,
                               atol=1e-5)
    np.testing.assert_allclose(quantize.dequantize_flow(q, 20, "truncate"),
                               q * step - 20 + step / 2, atol=1e-5)
    # Denseflow's default bound: one step of error at most between conventions.
    rng = np.random.default_rng(0)
    w = rng.uniform(-25, 25, 10000)
    for r in rawframes.ROUNDINGS:
        back = quantize.dequantize_flow(quantize.quantize_flow(w, 20, r), 20, r)
        assert np.max(np.abs(back - np.clip(w, -20, 20))) <= step / 2 + 1e-4, r


def test_frame_count_alignment_rule():
    assert rawframes.align(10, 9, 9) == (10, 9)  # denseflow: T - 1 fields
    assert rawframes.align(10, 10, 10) == (10, 9)  # a field for the last frame too: dropped
    for counts in ((10, 8, 8), (10, 11, 11), (10, 9, 8)):
        with pytest.raises(rawframes.FramesError, match="frame count mismatch"):
            rawframes.align(*counts)


def _mmaction2_rawframes(list_file, data_prefix):
    """What mmaction2's RawframeDataset would open for every line (RGB and Flow modality)."""
    opened = []
    for line in open(list_file):
        frame_dir, total, label = line.split()
        int(label)
        start_index = 1
        for i in range(start_index, start_index + int(total)):
            opened.append(os.path.join(data_prefix, frame_dir, "img_{:05}.jpg".format(i)))
        # Flow fields: one fewer than the frames (a clip's last offset has no field).
        for i in range(start_index, start_index + int(total) - 1):
            for xy in ("flow_x", "flow_y"):
                opened.append(os.path.join(data_prefix, frame_dir,
                                           "{}_{:05d}.jpg".format(xy, i)))
    return opened


def test_export_both_layouts_and_an_mmaction2_reader_finds_every_frame(tmp_path):
    layout = _ucf(tmp_path / "ucf", per_class=2, frames=6)
    out = tmp_path / "raw"
    conv = frames_export.export(_videos(layout), frames_export.FlowExportSettings(**QUICK),
                                str(out), layout=layout, split_id=1)
    lists = sorted(os.path.basename(p) for p in glob.glob(str(out / "*.txt")))
    assert lists == ["ucf101_train_split_1_rawframes.txt", "ucf101_val_split_1_rawframes.txt"]
    opened = []
    for name in lists:
        opened += _mmaction2_rawframes(str(out / name), str(out))
    written = sorted(glob.glob(str(out / "*" / "*" / "*.jpg")))
    # It finds every frame written, and nothing it asks for is missing.
    assert sorted(opened) == written and len(written) == 12 * (6 + 2 * 5)
    first = open(out / lists[0]).readline().split()
    assert first[1] == "6" and layout.classes[int(first[2])] == first[0].split("/")[0]
    assert conv["bound"] == 20 and conv["rounding"] == "cvround" and conv["jpeg_quality"] == 95
    assert json.load(open(out / rawframes.CONVENTIONS_FILE))["frames"][first[0]] == 6

    tsf = tmp_path / "tsf"
    frames_export.export(_videos(layout)[:2], frames_export.FlowExportSettings(
        layout="twostreamfusion", **QUICK), str(tsf))
    stem = os.path.basename(_videos(layout)[0].video_id)
    assert stem.startswith("v_")
    assert sorted(os.listdir(tsf / "jpegs_256" / stem)) == [f"frame{i:06d}.jpg" for i in range(1, 7)]
    for uv in ("u", "v"):
        assert sorted(os.listdir(tsf / "tvl1_flow" / uv / stem)) == \
            [f"frame{i:06d}.jpg" for i in range(1, 6)]


# ---------------------------------------------------------------------------
# The round trip
# ---------------------------------------------------------------------------

def test_round_trip_equals_prep_from_videos(tmp_path):
    layout = _ucf(tmp_path / "ucf", per_class=2, frames=7)
    videos = _videos(layout)
    direct = builder.build(PrepConfig(dataset="ucf101", data_root=str(tmp_path / "ucf"),
                                      out_dir=str(tmp_path / "direct"), flow="dis",
                                      short_side=32))
    want = _by_video(tmp_path / "direct")

    # The prep's own conventions (quality 90, half up): records equal byte for byte.
    same = tmp_path / "same"
    frames_export.export(videos, frames_export.FlowExportSettings(
        jpeg_quality=90, rounding="half_up", short_side=32, **QUICK), str(same))
    # denseflow's conventions (cvRound, quality 95): equal up to the JPEG round trip.
    dense = tmp_path / "dense"
    frames_export.export(videos, frames_export.FlowExportSettings(short_side=32, **QUICK),
                         str(dense))
    shutil.rmtree(tmp_path / "ucf" / "UCF-101")  # an import needs the lists only
    for frames_root, out in ((same, "imp_same"), (dense, "imp_dense")):
        meta = builder.build(_import_cfg(tmp_path / "ucf", frames_root, tmp_path / out))
        assert meta["splits"] == direct["splits"] and meta["failures"] == []
        assert meta["settings"]["flow_implementation"] == "imported"
        assert meta["settings"]["flow_source"] == "rawframes"
    got = _by_video(tmp_path / "imp_same")
    assert got.keys() == want.keys()
    for vid in want:
        for a, b in zip(got[vid], want[vid]):
            assert a == b  # every field, every JPEG byte

    # Where nothing is re-encoded the records hold the files' bytes.
    dense_recs = _by_video(tmp_path / "imp_dense")
    meta = records.read_metadata(str(tmp_path / "imp_dense"))
    assert meta["settings"]["flow_rounding"] == "cvround"
    assert meta["jpeg_quality"]["rgb"] is None  # copied: the source's quality, unknown
    assert meta["settings"]["jpeg_quality"] is None  # never claimed to be the default 90
    diffs = []
    for vid, recs in dense_recs.items():
        r = recs[0]
        folder = dense / vid
        assert r["rgb"] == [open(folder / f"img_{i:05d}.jpg", "rb").read()
                            for i in range(1, len(r["rgb"]) + 1)]
        assert r["flow_x"] == [open(folder / f"flow_x_{i:05d}.jpg", "rb").read()
                               for i in range(1, len(r["flow_x"]) + 1)]
        for key in ("flow_x", "flow_y"):
            for ja, jb in zip(r[key], want[vid][0][key]):
                qa = cv2.imdecode(np.frombuffer(ja, np.uint8), cv2.IMREAD_GRAYSCALE)
                qb = cv2.imdecode(np.frombuffer(jb, np.uint8), cv2.IMREAD_GRAYSCALE)
                diffs.append(np.abs(quantize.dequantize_flow(qa, 20) -
                                    quantize.dequantize_flow(qb, 20)).ravel())
    diffs = np.concatenate(diffs)
    # JPEG 95 vs 90 on flow codes: well under a pixel, most within 2 steps.
    assert diffs.mean() < 0.2 and np.mean(diffs <= 2 * 40 / 255 + 1e-6) > 0.9, \
        (diffs.mean(), np.percentile(diffs, [50, 99]))


def test_import_resizes_and_requantizes_flow(tmp_path):
    # One hand-made rawframes folder: constant flow of (+4, -2) px at bound 10.
    root = tmp_path / "list"
    frames_root = tmp_path / "frames"
    os.makedirs(root / "a")
    folder = frames_root / "a" / "clip"
    os.makedirs(folder)
    for i in range(1, 4):
        cv2.imwrite(str(folder / f"img_{i:05d}.jpg"), np.full((40, 60, 3), 50 * i, np.uint8))
    for i in range(1, 3):
        for name, v in (("flow_x", 4.0), ("flow_y", -2.0)):
            q = quantize.quantize_flow(np.full((40, 60), v), 10, "cvround")
            cv2.imwrite(str(folder / f"{name}_{i:05d}.jpg"), q)
    cfg = _import_cfg(root, frames_root, tmp_path / "out", dataset="folder", short_side=20,
                      frames_bound=10.0, split_file=None)
    with open(root / "split.txt", "w") as f:
        f.write("a/clip train\n")
    cfg.split_file = str(root / "split.txt")
    meta = builder.build(cfg)
    (r,) = _by_video(tmp_path / "out")["a/clip"]
    assert (r["height"], r["width"]) == (20, 30) and len(r["flow_x"]) == 2
    assert meta["flow"]["requantized"] and meta["settings"]["flow_rounding"] == "half_up"
    for key, want in (("flow_x", 2.0), ("flow_y", -1.0)):  # halved with the frame
        q = cv2.imdecode(np.frombuffer(r[key][0], np.uint8), cv2.IMREAD_GRAYSCALE)
        assert q.shape == (20, 30)
        np.testing.assert_allclose(quantize.dequantize_flow(q, 20.0), want, atol=40 / 255)


def test_import_of_mmaction2_flow_extraction_names_keeps_truncated_codes(tmp_path):
    # tools/misc/flow_extraction.py: x_00001.jpg / y_00001.jpg, truncated codes.
    folder = tmp_path / "frames" / "a" / "clip"
    os.makedirs(folder)
    os.makedirs(tmp_path / "list")
    (tmp_path / "list" / "split.txt").write_text("a/clip train\n")
    for i in range(1, 4):
        cv2.imwrite(str(folder / f"img_{i:05d}.jpg"), np.full((16, 16, 3), 60 * i, np.uint8))
    for i in range(1, 3):
        for name in ("x", "y"):
            q = quantize.quantize_flow(np.full((16, 16), 0.1 * i), 20, "truncate")
            cv2.imwrite(str(folder / f"{name}_{i:05d}.jpg"), q)
    meta = builder.build(_import_cfg(tmp_path / "list", tmp_path / "frames", tmp_path / "out",
                                     dataset="folder", split_file=str(tmp_path / "list" /
                                                                      "split.txt"),
                                     frames_rounding="truncate"))
    assert meta["settings"]["flow_rounding"] == "truncate" and not meta["flow"]["requantized"]
    (r,) = _by_video(tmp_path / "out")["a/clip"]
    assert r["flow_y"] == [(folder / f"y_{i:05d}.jpg").read_bytes() for i in (1, 2)]


# ---------------------------------------------------------------------------
# Bad input and resume
# ---------------------------------------------------------------------------

def test_bad_frame_folders_are_listed_with_reasons_and_the_rest_imported(tmp_path):
    layout = _ucf(tmp_path / "ucf", per_class=2, frames=6)
    out = tmp_path / "raw"
    frames_export.export(_videos(layout), frames_export.FlowExportSettings(**QUICK), str(out))
    ids = sorted(v.video_id for v in _videos(layout))
    shutil.rmtree(out / ids[0])  # missing folder
    os.remove(out / ids[1] / "img_00003.jpg")  # missing frame
    (out / ids[2] / "img_00002.jpg").write_bytes(b"not a jpeg")  # unreadable
    for xy in ("flow_x", "flow_y"):  # count mismatch: 6 images, 3 fields
        for i in (4, 5):
            os.remove(out / ids[3] / f"{xy}_{i:05d}.jpg")
    cv2.imwrite(str(out / ids[4] / "img_00004.jpg"), np.zeros((10, 12, 3), np.uint8))  # sizes
    meta = builder.build(_import_cfg(tmp_path / "ucf", out, tmp_path / "imp"))
    reasons = {f["video_id"]: f["reason"] for f in meta["failures"]}
    assert reasons[ids[0]].endswith("but frame folder missing")
    assert reasons[ids[1]] == "missing frame img_00003.jpg"
    assert reasons[ids[2]] == "unreadable frame img_00002.jpg"
    assert reasons[ids[3]].startswith("frame count mismatch: 6 images and 3 flow fields")
    assert reasons[ids[4]].startswith("mixed frame sizes: 10x12 in img_00004.jpg")
    assert len(reasons) == 5
    assert sum(s["videos"] for s in meta["splits"].values()) == len(ids) - 5
    # A re-run resumes: nothing to do, the same result.
    assert builder.build(_import_cfg(tmp_path / "ucf", out, tmp_path / "imp")) == meta


def test_import_and_export_resume_after_a_kill(tmp_path, monkeypatch):
    layout = _ucf(tmp_path / "ucf", per_class=2, frames=5)
    videos = _videos(layout)
    s = frames_export.FlowExportSettings(**QUICK)
    frames_export.export(videos, s, str(tmp_path / "clean"))

    real = frames_export.export_video
    calls = []

    def dying(item, *args, **kw):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(item.video_id)
        return real(item, *args, **kw)

    monkeypatch.setattr(frames_export, "export_video", dying)
    with pytest.raises(KeyboardInterrupt):
        frames_export.export(videos, s, str(tmp_path / "resumed"))
    os.makedirs(tmp_path / "resumed" / videos[5].video_id)  # torn: no marker
    monkeypatch.setattr(frames_export, "export_video",
                        lambda item, *a, **k: calls.append(item.video_id) or real(item, *a, **k))
    frames_export.export(videos, s, str(tmp_path / "resumed"))
    assert len(calls) == len(set(calls)) == len(videos)
    assert _files(tmp_path / "resumed") == _files(tmp_path / "clean")

    clean = builder.build(_import_cfg(tmp_path / "ucf", tmp_path / "clean", tmp_path / "imp1"))
    real_process = work_files.process_video
    done = []

    def dying_import(task):
        if len(done) == 4:
            raise KeyboardInterrupt
        done.append(task.entry.video_id)
        return real_process(task)

    monkeypatch.setattr(work_files, "process_video", dying_import)
    with pytest.raises(KeyboardInterrupt):
        builder.build(_import_cfg(tmp_path / "ucf", tmp_path / "clean", tmp_path / "imp2"))
    monkeypatch.setattr(work_files, "process_video",
                        lambda t: done.append(t.entry.video_id) or real_process(t))
    assert builder.build(_import_cfg(tmp_path / "ucf", tmp_path / "clean",
                                     tmp_path / "imp2")) == clean
    assert len(done) == len(set(done)) == len(videos)


def test_frame_folders_stand_for_videos_in_every_dataset_layout(tmp_path):
    # Kinetics: the CSV rows name the clips; their folders may sit in class folders.
    os.makedirs(tmp_path / "k")
    (tmp_path / "k" / "train.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                              "abseiling,aaa,0,10,train\nabseiling,bbb,5,15,train\n")
    for clip in ("aaa_000000_000010", "ccc_000000_000010"):
        os.makedirs(tmp_path / "kf" / "abseiling" / clip)
    k = datasets.load_layout("kinetics400", str(tmp_path / "k"), frames_root=str(tmp_path / "kf"))
    assert [e.path for e in k.splits["train"]] == [str(tmp_path / "kf" / "abseiling" /
                                                       "aaa_000000_000010")]
    assert [(f.video_id, f.reason) for f in k.failures] == [("bbb_000005_000015", "clip missing")]
    # HMDB51: the split files only, no video folders.
    split_dir = tmp_path / "h" / "testTrainMulti_7030_splits"
    os.makedirs(split_dir)
    (split_dir / "run_test_split1.txt").write_text("r1.avi 1\nr2.avi 2\nr3.avi 1\n")
    for v in ("r1", "r2"):
        os.makedirs(tmp_path / "hf" / "run" / v)
    h = datasets.load_layout("hmdb51", str(tmp_path / "h"), frames_root=str(tmp_path / "hf"))
    assert [e.video_id for e in h.splits["train"]] == ["run/r1"]
    assert [e.video_id for e in h.splits["test"]] == ["run/r2"]
    assert h.failures[0].reason == "listed in run_test_split1.txt but frame folder missing"
    # UCF101 from videos still needs its video folders.
    _ucf(tmp_path / "u", per_class=1, frames=3)
    shutil.rmtree(tmp_path / "u" / "UCF-101")
    with pytest.raises(datasets.LayoutError, match="ucf101 videos not found"):
        datasets.load_layout("ucf101", str(tmp_path / "u"))


def test_twostreamfusion_import(tmp_path):
    layout = _ucf(tmp_path / "ucf", per_class=1, frames=5)
    tsf = tmp_path / "tsf"
    frames_export.export(_videos(layout), frames_export.FlowExportSettings(
        layout="twostreamfusion", **QUICK), str(tsf))
    meta = builder.build(_import_cfg(tmp_path / "ucf", tsf, tmp_path / "imp",
                                     frames_layout="twostreamfusion"))
    assert meta["failures"] == [] and meta["settings"]["flow_source"] == "twostreamfusion"
    recs = _by_video(tmp_path / "imp")
    vid = _videos(layout)[0].video_id
    stem = os.path.basename(vid)
    assert recs[vid][0]["rgb"][0] == (tsf / "jpegs_256" / stem / "frame000001.jpg").read_bytes()
    assert recs[vid][0]["flow_y"][-1] == \
        (tsf / "tvl1_flow" / "v" / stem / "frame000004.jpg").read_bytes()


# ---------------------------------------------------------------------------
# The real TV-L1 and the command lines
# ---------------------------------------------------------------------------

def test_default_keras_tvl1_export(tmp_path):
    os.makedirs(tmp_path / "v")
    synthetic.write_video(str(tmp_path / "v" / "clip.avi"), frame_index.index_frames(3, 24, 32))
    conv = frames_export.export(frames_export.find_videos(str(tmp_path / "v")),
                                frames_export.FlowExportSettings(flow_batch=2),
                                str(tmp_path / "out"))
    assert conv["flow"] == "tvl1" and conv["flow_implementation"] == "keras"
    assert sorted(os.listdir(tmp_path / "out" / "clip")) == [
        "flow_x_00001.jpg", "flow_x_00002.jpg", "flow_y_00001.jpg", "flow_y_00002.jpg",
        "img_00001.jpg", "img_00002.jpg", "img_00003.jpg"]


def test_command_lines_export_then_import(tmp_path):
    _ucf(tmp_path / "ucf", per_class=1, frames=4)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    flow = subprocess.run(
        [sys.executable, "-m", "experiments.flow", "--dataset=ucf101",
         f"--data_root={tmp_path / 'ucf'}", f"--out_dir={tmp_path / 'raw'}", "--flow=dis",
         "--flow_implementation=opencv", "--short_side=32"],
        capture_output=True, text=True, env=env, timeout=300)
    assert flow.returncode == 0, flow.stderr[-2000:]
    assert "6/6 videos" in flow.stderr
    assert os.path.isfile(tmp_path / "raw" / "ucf101_train_split_1_rawframes.txt")
    prep = subprocess.run(
        [sys.executable, "-m", "experiments.prep", "--dataset=ucf101",
         f"--data_root={tmp_path / 'ucf'}", f"--frames_root={tmp_path / 'raw'}",
         f"--out_dir={tmp_path / 'imp'}", "--flow=dis"],
        capture_output=True, text=True, env=env, timeout=300)
    assert prep.returncode == 0, prep.stderr[-2000:]
    meta = records.read_metadata(str(tmp_path / "imp"))
    # --short_side not given: the stored 32-pixel short side is kept.
    assert meta["settings"]["short_side"] == 0 and list(meta["frame_size"]["sizes"]) == ["32x43"]
    assert meta["frame_size"]["stored_short_side"] == 32


# ---------------------------------------------------------------------------
# Faults of the machine during an export or an import: no video marked failed.
#
# Real: the full disk (a tmpfs that fills mid-run, then remounted larger).
# Injected at the file layer (os.stat / open raising the errno a failing disk
# or a lost mount gives): the I/O error and the stale mount.

def _failed_markers(out_dir):
    found = []
    for p in glob.glob(os.path.join(str(out_dir), frames_export.MARKER_DIR, "*.json")):
        with open(p) as f:
            if json.load(f).get("status") == "failed":
                found.append(p)
    return found


def test_export_onto_a_disk_that_fills_stops_and_the_rerun_completes_byte_identical(tmp_path):
    """Real ENOSPC: a tmpfs smaller than the export; no failure marked; remounted, rerun."""
    from mat_effnet.common import faults
    from tests import fault_helpers as F

    layout = _ucf(tmp_path / "ucf", per_class=2, frames=5)
    videos = _videos(layout)
    s = frames_export.FlowExportSettings(**QUICK)
    clean = frames_export.export(videos, s, str(tmp_path / "clean"))
    pages = len(glob.glob(str(tmp_path / "clean" / "**" / "*"), recursive=True))
    disk = tmp_path / "disk"
    if not F.mount_tmpfs(disk, f"{pages // 2 * F.PAGE}"):  # about half of the export fits
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        with pytest.raises(faults.MachineFault) as info:
            frames_export.export(videos, s, str(disk / "o"))
        line = str(info.value)
        assert line.startswith(str(disk / "o")) and "no space left on device" in line, line
        assert "run the same command again" in line and "\n" not in line
        assert info.value.code == errno.ENOSPC
        assert _failed_markers(disk / "o") == []
        done_before = [v for v in videos if frames_export.read_marker(str(disk / "o"),
                                                                       v.video_id)]
        assert 0 < len(done_before) < len(videos)  # it filled mid-run
        F.remount(disk, "64m")
        again = frames_export.export(videos, s, str(disk / "o"))
        assert again == clean and again["failures"] == []
        assert _files(disk / "o") == _files(tmp_path / "clean")
        assert not glob.glob(str(disk / "o" / "**" / "*.partial"), recursive=True)
    finally:
        F.umount(disk)


@pytest.mark.parametrize("code", [errno.EIO, errno.ESTALE])
def test_export_stops_on_an_unreadable_input_disk_and_resumes(tmp_path, monkeypatch, code):
    """Injected: the input's stat fails as on a failing disk (EIO) or a lost mount (ESTALE)."""
    from mat_effnet.common import faults

    layout = _ucf(tmp_path / "ucf", per_class=2, frames=5)
    videos = _videos(layout)
    s = frames_export.FlowExportSettings(**QUICK)
    clean = frames_export.export(videos, s, str(tmp_path / "clean"))
    lost = videos[2].path
    real_stat = os.stat

    def failing(path, *a, **k):
        if os.fspath(path) == lost:
            raise OSError(code, os.strerror(code), lost)
        return real_stat(path, *a, **k)

    monkeypatch.setattr(os, "stat", failing)
    with pytest.raises(faults.MachineFault) as info:
        frames_export.export(videos, s, str(tmp_path / "o"))
    assert str(info.value).startswith(f"{lost}: ") and info.value.code == code
    assert _failed_markers(tmp_path / "o") == []
    monkeypatch.undo()
    assert frames_export.export(videos, s, str(tmp_path / "o")) == clean
    assert _files(tmp_path / "o") == _files(tmp_path / "clean")


def test_markers_that_recorded_the_machines_fault_are_retried(tmp_path):
    """Markers as runs wrote them before the policy: a full disk, out of memory, an I/O error."""
    layout = _ucf(tmp_path / "ucf", per_class=2, frames=5)
    videos = _videos(layout)
    s = frames_export.FlowExportSettings(**QUICK)
    clean = frames_export.export(videos, s, str(tmp_path / "clean"))
    out = tmp_path / "old"
    shutil.copytree(tmp_path / "clean", out)
    reasons = ["OSError: [Errno 28] No space left on device: '%s'",
               "MemoryError: ", "OSError: [Errno 5] Input/output error: '%s'"]
    for v, reason in zip(videos, reasons):
        for d in rawframes.folders(str(out), s.layout, v.video_id):
            shutil.rmtree(d, ignore_errors=True)
        marker = frames_export._marker(str(out), v.video_id)
        with open(marker, "w") as f:
            json.dump({"video_id": v.video_id, "path": v.path, "status": "failed",
                       "reason": reason.replace("%s", str(out / "x.jpg"))}, f)
    # A video's own failure stays one: not retried.
    bad = videos[len(reasons)]
    own = {"video_id": bad.video_id, "path": bad.path, "status": "failed",
           "reason": "cannot open (not a video or unsupported codec)"}
    with open(frames_export._marker(str(out), bad.video_id), "w") as f:
        json.dump(own, f)
    again = frames_export.export(videos, s, str(out))
    assert again["failures"] == [{"video_id": bad.video_id, "path": bad.path,
                                  "reason": own["reason"]}]
    assert again["frames"] == {k: n for k, n in clean["frames"].items() if k != bad.video_id}
    redone = _files(out)
    assert all(redone[k] == b for k, b in _files(tmp_path / "clean").items()
               if bad.video_id.split("/")[-1] not in k)


@pytest.mark.parametrize("code", [errno.EIO, errno.ESTALE])
def test_import_stops_on_an_io_error_instead_of_an_unreadable_frame(tmp_path, monkeypatch,
                                                                   code):
    """Injected: reading one frame file fails with the errno of a failing disk / lost mount."""
    from mat_effnet.common import faults

    layout = _ucf(tmp_path / "ucf", per_class=2, frames=5)
    frames_export.export(_videos(layout), frames_export.FlowExportSettings(**QUICK),
                         str(tmp_path / "frames"))
    clean = builder.build(_import_cfg(tmp_path / "ucf", tmp_path / "frames", tmp_path / "imp1"))
    victim = sorted(glob.glob(str(tmp_path / "frames" / "**" / "*.jpg"), recursive=True))[7]

    def failing_open(path, *a, **k):
        if os.fspath(path) == victim:
            raise OSError(code, os.strerror(code), victim)
        return open(path, *a, **k)

    from data_prep import frames_import

    monkeypatch.setattr(frames_import, "open", failing_open, raising=False)
    with pytest.raises(faults.MachineFault) as info:
        builder.build(_import_cfg(tmp_path / "ucf", tmp_path / "frames", tmp_path / "imp2"))
    assert str(info.value).startswith(f"{victim}: ") and info.value.code == code
    assert not glob.glob(str(tmp_path / "imp2" / ".work" / "*" / "*.failed.json"))
    monkeypatch.undo()
    assert builder.build(_import_cfg(tmp_path / "ucf", tmp_path / "frames",
                                     tmp_path / "imp2")) == clean


def test_where_the_imported_conventions_came_from_and_a_broken_file_stops(tmp_path):
    layout = _ucf(tmp_path / "ucf", per_class=1, frames=5)
    frames = tmp_path / "frames"
    frames_export.export(_videos(layout), frames_export.FlowExportSettings(bound=15.0, **QUICK),
                         str(frames))
    meta = builder.build(_import_cfg(tmp_path / "ucf", frames, tmp_path / "file"))
    assert meta["flow"]["source_conventions"] == {"bound": "file", "rounding": "file"}
    assert meta["flow"]["source_bound"] == 15.0
    meta = builder.build(_import_cfg(tmp_path / "ucf", frames, tmp_path / "flags",
                                     frames_bound=12.0))
    assert meta["flow"]["source_conventions"] == {"bound": "flags", "rounding": "file"}
    conventions = frames / rawframes.CONVENTIONS_FILE
    good = conventions.read_text()
    for broken, why in (('{"bound": 15', "not JSON"), ("[1, 2]", "not a JSON object"),
                        ('{"bound": "15"}', "bound='15' is not a positive number"),
                        ('{"rounding": "up"}', "rounding='up' is not one of")):
        conventions.write_text(broken)
        out = tmp_path / f"broken{len(broken)}"
        with pytest.raises(rawframes.ConventionsError) as info:
            builder.build(_import_cfg(tmp_path / "ucf", frames, out))
        line = str(info.value)
        assert line.startswith(f"{conventions}: {why}") and "\n" not in line, line
        assert not glob.glob(str(out / records.META_FILENAME))
        assert not glob.glob(str(out / "**" / "*.tfrecord*"), recursive=True)
    conventions.unlink()  # no file: denseflow's, and the metadata says so
    meta = builder.build(_import_cfg(tmp_path / "ucf", frames, tmp_path / "assumed"))
    assert meta["flow"]["source_conventions"] == {"bound": "assumed", "rounding": "assumed"}
    assert meta["flow"]["source_bound"] == rawframes.DENSEFLOW_BOUND
    conventions.write_text(good)
