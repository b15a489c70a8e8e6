"""The data preparation end to end: records, metadata, bad input, resume, CLI."""

import dataclasses
import glob
import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from data_prep import builder, frame_index, layouts, synthetic, work_files
from data_prep.prep_config import PrepConfig
from mat_effnet import records
from mat_effnet.common.errors import MatEffNetError
from mat_effnet.ops import quantize


def _read_all(out_dir, split):
    meta = records.read_metadata(out_dir)
    out = []
    if split not in meta["shards"]:
        return out
    for path in records.split_files(out_dir, meta, split):
        out += list(records.read_shard(path, meta["schema_version"]))
    return out


def _rgb(jpeg):
    return tf.io.decode_jpeg(jpeg).numpy()


def _gray(jpeg):
    return tf.io.decode_jpeg(jpeg, channels=1).numpy()[..., 0]


def _index_video_tree(root, lengths, size=(48, 64)):
    """folder layout: classes 'a' and 'b' get index-encoded videos of the given lengths."""
    os.makedirs(os.path.join(root, "a"), exist_ok=True)
    os.makedirs(os.path.join(root, "b"), exist_ok=True)
    for i, n in enumerate(lengths):
        synthetic.write_video(os.path.join(root, "a", f"vid{i}.avi"),
                              frame_index.index_frames(n, *size))
        synthetic.write_video(os.path.join(root, "b", f"vid{i}.avi"),
                              frame_index.index_frames(n, *size))


def _cfg(root, out, **kw):
    kw.setdefault("flow", "dis")
    kw.setdefault("short_side", 32)
    kw.setdefault("videos_per_shard", 2)
    return PrepConfig(dataset=kw.pop("dataset", "folder"), data_root=str(root),
                      out_dir=str(out), **kw)


def test_frames_and_flow_are_aligned_and_chunked(tmp_path):
    _index_video_tree(tmp_path / "data", [7, 9])
    meta = builder.build(_cfg(tmp_path / "data", tmp_path / "out", chunk_frames=3,
                              split_file=None))
    recs = _read_all(str(tmp_path / "out"), "train") + _read_all(str(tmp_path / "out"), "test")
    # 7 frames -> chunks [0,3) [3,6) and a dropped 1-frame tail; 9 -> three chunks.
    by_video = {}
    for r in recs:
        by_video.setdefault(r["video_id"], []).append(r)
    assert sorted(len(v) for v in by_video.values()) == [2, 2, 3, 3]
    for chunks in by_video.values():
        for r in chunks:
            assert r["num_frames"] == 3 and len(r["rgb"]) == 3
            assert len(r["flow_x"]) == len(r["flow_y"]) == 2
            assert r["frame_offset"] == 3 * r["chunk_index"]
            # Pixels encode the frame index: every stored frame is the right one.
            got = [frame_index.decode_index(_rgb(j)) for j in r["rgb"]]
            assert got == [r["frame_offset"] + k for k in range(3)]
            assert (r["height"], r["width"]) == (32, 43)
            assert _rgb(r["rgb"][0]).shape == (32, 43, 3)
    assert meta["splits"]["train"]["frames"] + meta["splits"]["test"]["frames"] == 30
    assert meta["flow"]["algorithm"] == "dis" and meta["flow"]["bound"] == 20.0
    assert meta["frame_size"]["sizes"] == {"32x43": 4}
    assert meta["bytes_per_frame"]["rgb"] > 0 and meta["bytes_per_frame"]["flow_xy"] > 0


def test_rgb_channel_order_and_flow_of_a_moving_square(tmp_path):
    # A textured red square moving right by 2 px per frame on a textured
    # background (texture inside, so flow is defined there).
    rng = np.random.default_rng(0)
    bg = cv2.GaussianBlur(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), (7, 7), 2)
    tex = cv2.GaussianBlur(rng.integers(0, 255, (20, 20), dtype=np.uint8), (5, 5), 1.5)
    patch = np.stack([150 + tex // 3, tex // 4, tex // 4], axis=-1).astype(np.uint8)
    frames = []
    for t in range(4):
        f = bg.copy()
        f[20:40, 10 + 2 * t:30 + 2 * t] = patch
        frames.append(f)
    os.makedirs(tmp_path / "d" / "a")
    os.makedirs(tmp_path / "d" / "b")
    synthetic.write_video(str(tmp_path / "d" / "a" / "x.avi"), frames)
    synthetic.write_video(str(tmp_path / "d" / "b" / "y.avi"), frames)
    builder.build(_cfg(tmp_path / "d", tmp_path / "o", flow="tvl1", short_side=0,
                       jpeg_quality=95))
    (rec,) = [r for r in _read_all(str(tmp_path / "o"), "train") + _read_all(str(tmp_path / "o"), "test")
              if r["video_id"] == "a/x"]
    red = _rgb(rec["rgb"][0])[30, 20]
    assert red[0] > 140 and red[1] < 80 and red[2] < 80  # stored as RGB, not BGR
    fx = quantize.dequantize_flow(_gray(rec["flow_x"][0]).astype(np.float32), 20.0)
    fy = quantize.dequantize_flow(_gray(rec["flow_y"][0]).astype(np.float32), 20.0)
    inside = (slice(24, 36), slice(16, 26))
    assert 1.5 < np.median(fx[inside]) < 2.5
    assert abs(np.median(fy[inside])) < 0.5


def test_bad_inputs_are_skipped_and_listed(tmp_path):
    root = tmp_path / "data"
    _index_video_tree(root, [6])
    (root / "a" / "zero.avi").write_bytes(b"")
    (root / "a" / "text.avi").write_text("this is not a video\n" * 50)
    good = (root / "a" / "vid0.avi").read_bytes()
    (root / "b" / "truncated.avi").write_bytes(good[:200])
    synthetic.write_video(str(root / "b" / "one.avi"), frame_index.index_frames(1, 48, 64))
    meta = builder.build(_cfg(root, tmp_path / "out"))
    reasons = {f["video_id"]: f["reason"] for f in meta["failures"]}
    assert reasons["a/zero"] == "zero-byte file"
    assert reasons["a/text"].startswith("cannot open")
    assert reasons["b/one"] == "only 1 frame"
    assert "b/truncated" in reasons
    assert meta["splits"]["train"]["videos"] + meta["splits"]["test"]["videos"] == 2
    ids = {r["video_id"] for s in ("train", "test") for r in _read_all(str(tmp_path / "out"), s)}
    assert ids == {"a/vid0", "b/vid0"}


def test_split_list_problems_are_failures_not_crashes(tmp_path):
    synthetic.generate_ucf101_like(str(tmp_path / "ucf"), videos_per_class=2, num_frames=4,
                                   height=32, width=40)
    lists = tmp_path / "ucf" / "ucfTrainTestlist"
    with open(lists / "trainlist01.txt", "a") as f:
        f.write("../../etc/passwd 1\r\n")
        f.write(f"{synthetic.CLASSES[0]}/v_{synthetic.CLASSES[0]}_g09_c09.avi 1\r\n")
    meta = builder.build(_cfg(tmp_path / "ucf", tmp_path / "out", dataset="ucf101"))
    reasons = sorted(f["reason"] for f in meta["failures"])
    assert len(reasons) == 2
    assert any("escapes" in r for r in reasons) and any("missing" in r for r in reasons)
    assert meta["splits"]["train"]["videos"] == 2 * len(synthetic.CLASSES)  # one group: all train
    assert meta["classes"] == synthetic.CLASSES


def _shard_bytes(out_dir):
    return {os.path.basename(p): open(p, "rb").read()
            for p in glob.glob(os.path.join(out_dir, "*.tfrecord-*")) if ".tmp" not in p}


def test_resume_after_a_kill_gives_the_same_result(tmp_path, monkeypatch):
    _index_video_tree(tmp_path / "data", [5, 6, 7])
    clean = builder.build(_cfg(tmp_path / "data", tmp_path / "clean"))

    real = work_files.process_video
    calls = []

    def dying(task):
        if len(calls) == 3:
            raise KeyboardInterrupt  # the "kill", after 3 videos
        calls.append(task.entry.video_id)
        return real(task)

    monkeypatch.setattr(work_files, "process_video", dying)
    with pytest.raises(KeyboardInterrupt):
        builder.build(_cfg(tmp_path / "data", tmp_path / "resumed"))
    assert not os.path.exists(tmp_path / "resumed" / records.META_FILENAME)
    # A torn temp file as a kill mid-write would leave it.
    (tmp_path / "resumed" / ".work" / "train" / "junk.tfrecord.tmp-1").write_bytes(b"xx")

    monkeypatch.setattr(work_files, "process_video", lambda t: calls.append(t.entry.video_id) or real(t))
    resumed = builder.build(_cfg(tmp_path / "data", tmp_path / "resumed"))
    assert len(calls) == 6  # 3 before the kill + the 3 left, none twice
    assert len(set(calls)) == 6
    assert resumed == clean
    assert _shard_bytes(tmp_path / "resumed") == _shard_bytes(tmp_path / "clean")

    # A finished run re-run does nothing new.
    calls.clear()
    assert builder.build(_cfg(tmp_path / "data", tmp_path / "resumed")) == clean
    assert calls == []


def test_other_settings_in_the_same_out_dir_are_refused(tmp_path):
    _index_video_tree(tmp_path / "data", [4])
    builder.build(_cfg(tmp_path / "data", tmp_path / "out"))
    with pytest.raises(builder.PrepError, match="flow: 'dis' -> 'none'"):
        builder.build(_cfg(tmp_path / "data", tmp_path / "out", flow="none"))


def test_two_workers_write_the_same_bytes(tmp_path):
    _index_video_tree(tmp_path / "data", [5, 6])
    builder.build(_cfg(tmp_path / "data", tmp_path / "one", workers=1))
    builder.build(_cfg(tmp_path / "data", tmp_path / "two", workers=2))
    assert _shard_bytes(tmp_path / "one") == _shard_bytes(tmp_path / "two")


def test_tfds_reads_a_version1_dataset(tmp_path):
    _index_video_tree(tmp_path / "data", [5, 6])
    meta = builder.build(_cfg(tmp_path / "data", tmp_path / "out", flow="none",
                              schema_version=1))
    assert records.read_metadata(str(tmp_path / "out"))["schema_version"] == 1
    b = tfds.builder_from_directory(str(tmp_path / "out"))
    assert b.info.features["label"].names == ["a", "b"]
    examples = list(b.as_dataset(split="train"))
    assert len(examples) == meta["splits"]["train"]["records"]
    for ex in examples:
        frames = ex["rgb"].numpy()
        assert [frame_index.decode_index(f) for f in frames] == list(range(len(frames)))
        assert ex["flow_x"].shape[0] == 0


def test_bad_config_values_name_the_flag(tmp_path):
    for kw, flag in [({"flow": "farneback"}, "flow=farneback: "), ({"workers": 0}, "workers=0: "),
                     ({"jpeg_quality": 0}, "jpeg_quality=0: "), ({"flow_bound": 0}, "flow_bound=0: "),
                     ({"flow": "dis", "flow_implementation": "keras"}, "flow_implementation=keras: "),
                     ({"flow_implementation": "cuda"}, "flow_implementation=cuda: "),
                     ({"flow_batch": 0}, "flow_batch=0: ")]:
        with pytest.raises(MatEffNetError, match=flag):
            builder.build(_cfg(tmp_path, tmp_path / "out", **kw))
    with pytest.raises(layouts.LayoutError):
        builder.build(_cfg(tmp_path / "missing", tmp_path / "out"))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "experiments.prep", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_errors_are_one_line_and_nonzero(tmp_path):
    r = _cli("--dataset=ucf101", f"--data_root={tmp_path}/nope", f"--out_dir={tmp_path}/o")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
    assert len(lines) == 1 and "nope" in lines[0], r.stderr
    assert not os.path.exists(tmp_path / "o" / records.META_FILENAME)
    r = _cli("--dataset=ucf999", f"--data_root={tmp_path}", f"--out_dir={tmp_path}/o")
    assert r.returncode != 0 and "dataset" in r.stderr


def test_cli_prepares_the_sample_set(tmp_path):
    synthetic.generate_ucf101_like(str(tmp_path / "ucf"), videos_per_class=4, num_frames=5,
                                   height=32, width=40)
    r = _cli("--dataset=ucf101", f"--data_root={tmp_path}/ucf", f"--out_dir={tmp_path}/o",
             "--flow=tvl1", "--short_side=24")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "o" / records.META_FILENAME).read_text())
    assert meta["num_classes"] == len(synthetic.CLASSES)
    assert meta["splits"]["train"]["videos"] + meta["splits"]["test"]["videos"] == 4 * len(synthetic.CLASSES)
    assert "videos/s" in r.stderr and "ETA" in r.stderr


# ---------------------------------------------------------------------------
# --flow_implementation=keras: batched flow in this process


def _fake_tvl1(calls):
    """Stands in for `mat_effnet.ops.tvl1.batch_tvl1`: a cheap pair-local "flow", calls recorded.

    Each pair's output depends on that pair only, as the real one's does, so
    any batching must give the bytes of pairwise computation.
    """
    def factory(params=None):
        def fn(prev, nxt):
            assert prev.dtype == np.uint8 and prev.ndim == 3 and prev.shape == nxt.shape
            calls.append(prev.shape)
            dx = (nxt.astype(np.float32) - prev.astype(np.float32)) / 8.0
            dy = prev.astype(np.float32) / 32.0 - 4.0
            return np.stack([dx, dy], axis=-1)
        return fn
    return factory


def _pairwise_records(cfg, paths_by_id, fake):
    """Every video's records as pairwise computation with the same flow function gives them."""
    from mat_effnet.encoding import encode

    def pairwise(prev, nxt):
        return np.concatenate([fake()(prev[i:i + 1], nxt[i:i + 1]) for i in range(len(prev))])

    out = {}
    for vid, path in paths_by_id.items():
        out[vid] = [records.parse_numpy(records.serialize(r)) for r in encode.encode_video(
            path, dataclasses.replace(cfg, flow_implementation="keras").encoding,
            video_id=vid, label=0 if vid.startswith("a/") else 1, class_name=vid[0],
            flow_fn=pairwise)]
    return out


def _records_by_video(out_dir):
    out = {}
    for split in ("train", "test"):
        meta = records.read_metadata(str(out_dir))
        for path in records.split_files(str(out_dir), meta, split) if split in meta["shards"] else []:
            for video in records.read_shard(path, meta["schema_version"]):
                out.setdefault(video["video_id"], []).append(video)
    return out


def test_keras_flow_is_batched_across_videos_with_pairwise_bytes(tmp_path, monkeypatch):
    from mat_effnet.ops import tvl1

    calls = []
    monkeypatch.setattr(tvl1, "batch_tvl1", _fake_tvl1(calls))
    # 3- and 4-frame videos: 2-3 pairs each, so a batch of 4 needs several videos;
    # chunk_frames=3 cuts the 4-frame ones (the 1-frame tail is dropped).
    _index_video_tree(tmp_path / "data", [3, 4, 3])
    # One flow process (without a GPU the default is one per worker), fed by two
    # decoding workers: the fake TV-L1 counts its batches in this process.
    cfg = _cfg(tmp_path / "data", tmp_path / "out", flow="tvl1", flow_implementation="keras",
               flow_batch=4, chunk_frames=3, workers=2, flow_devices=1)
    meta = builder.build(cfg)
    assert meta["flow"]["implementation"] == "keras"
    assert meta["settings"]["flow_implementation"] == "keras"
    assert calls and all(c == (4, 32, 43) for c in calls)  # full, filled batches only
    # 6 videos x 2 pairs = 12 pairs: 3 batches, so pairs of several videos shared one.
    assert len(calls) == 3
    paths = {f"{c}/vid{i}": str(tmp_path / "data" / c / f"vid{i}.avi")
             for c in "ab" for i in range(3)}
    assert _records_by_video(tmp_path / "out") == _pairwise_records(cfg, paths,
                                                                    _fake_tvl1([]))
    # The same videos, one worker (all in this process): the same shards.
    builder.build(dataclasses.replace(cfg, out_dir=str(tmp_path / "one"), workers=1,
                                      flow_batch=3))
    assert _shard_bytes(tmp_path / "one") == _shard_bytes(tmp_path / "out")


def test_keras_flow_groups_pairs_by_frame_size(tmp_path, monkeypatch):
    from mat_effnet.ops import tvl1

    calls = []
    monkeypatch.setattr(tvl1, "batch_tvl1", _fake_tvl1(calls))
    root = tmp_path / "data"
    for cls, size in (("a", (48, 64)), ("b", (40, 40))):
        os.makedirs(root / cls)
        for i, n in enumerate([5, 4]):
            synthetic.write_video(str(root / cls / f"vid{i}.avi"), frame_index.index_frames(n, *size))
    cfg = _cfg(root, tmp_path / "out", flow="tvl1", flow_implementation="keras", flow_batch=4,
               short_side=0)
    meta = builder.build(cfg)
    assert meta["frame_size"]["sizes"] == {"48x64": 2, "40x40": 2}
    # Every batch holds one exact size, never padded: 7 pairs of each size.
    assert sorted(calls) == [(4, 40, 40)] * 2 + [(4, 48, 64)] * 2
    paths = {f"{c}/vid{i}": str(root / c / f"vid{i}.avi") for c in "ab" for i in range(2)}
    assert _records_by_video(tmp_path / "out") == _pairwise_records(cfg, paths, _fake_tvl1([]))


def _kill_and_resume(tmp_path, cfg, clean_dir, kill_after):
    """Kills a batched run after `kill_after` videos are written, re-runs it; returns decoded ids."""
    real_encode, real_decode = work_files.encode_task, work_files.decode_task
    written, decoded = [], []

    def dying(*args):
        if len(written) == kill_after:
            raise KeyboardInterrupt
        written.append(args[0].entry.video_id)
        return real_encode(*args)

    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(work_files, "encode_task", dying)
        with pytest.raises(KeyboardInterrupt):
            builder.build(cfg)
        assert not os.path.exists(os.path.join(cfg.out_dir, records.META_FILENAME))
        mp.setattr(work_files, "encode_task", real_encode)
        mp.setattr(work_files, "decode_task", lambda t: decoded.append(t.entry.video_id)
                   or real_decode(t))
        resumed = builder.build(cfg)
    finally:
        mp.undo()
    assert _shard_bytes(cfg.out_dir) == _shard_bytes(clean_dir)
    assert not set(decoded) & set(written)  # finished videos are not redone
    return resumed, written, decoded


def test_keras_flow_resumes_a_killed_run(tmp_path, monkeypatch):
    from mat_effnet.ops import tvl1

    monkeypatch.setattr(tvl1, "batch_tvl1", _fake_tvl1([]))
    _index_video_tree(tmp_path / "data", [3, 4, 5])
    kw = dict(flow="tvl1", flow_implementation="keras", flow_batch=4)
    clean = builder.build(_cfg(tmp_path / "data", tmp_path / "clean", **kw))
    resumed, written, decoded = _kill_and_resume(
        tmp_path, _cfg(tmp_path / "data", tmp_path / "resumed", **kw), tmp_path / "clean", 2)
    assert resumed == clean
    assert len(written) == 2 and len(decoded) == 4


def test_real_keras_tvl1_end_to_end_with_resume(tmp_path):
    # The compiled TV-L1 itself: one frame size and one batch size, so one
    # program is compiled (shared by the three runs of this process).
    _index_video_tree(tmp_path / "data", [4, 5, 3])
    kw = dict(flow="tvl1", flow_implementation="keras", flow_batch=4, short_side=24)
    clean = builder.build(_cfg(tmp_path / "data", tmp_path / "clean", **kw))
    assert clean["flow"]["implementation"] == "keras"
    # Resumed, its batches hold other pairs than the clean run's: the same
    # bytes show that a pair's flow does not depend on its batch-mates.
    resumed, written, decoded = _kill_and_resume(
        tmp_path, _cfg(tmp_path / "data", tmp_path / "resumed", **kw), tmp_path / "clean", 3)
    assert resumed == clean and len(decoded) == 3
    # Its flow is OpenCV's TV-L1 up to the quantization step (40/255 px) on
    # most pixels: the same algorithm.
    opencv = builder.build(_cfg(tmp_path / "data", tmp_path / "opencv",
                                **dict(kw, flow_implementation="opencv")))
    assert opencv["splits"] == clean["splits"]
    got, want = _records_by_video(tmp_path / "clean"), _records_by_video(tmp_path / "opencv")
    diffs = []
    for vid in want:
        for a, b in zip(got[vid], want[vid]):
            ra, rb = a, b
            assert ra["rgb"] == rb["rgb"]
            for key in ("flow_x", "flow_y"):
                for ja, jb in zip(ra[key], rb[key]):
                    diffs.append(np.abs(_gray(ja).astype(int) - _gray(jb).astype(int)).ravel())
    diffs = np.concatenate(diffs)
    assert np.mean(diffs <= 2) > 0.9, np.percentile(diffs, [50, 90, 99])


def test_flow_implementation_changes_are_refused_on_resume(tmp_path):
    _index_video_tree(tmp_path / "data", [4])
    cfg = _cfg(tmp_path / "data", tmp_path / "out", flow="tvl1", short_side=16)
    builder.build(cfg)
    with pytest.raises(builder.PrepError, match="flow_implementation: 'opencv' -> 'keras'"):
        builder.build(dataclasses.replace(cfg, flow_implementation="keras"))
    # auto resumes with the implementation the run was started with, and
    # starts a new run with the faster one.
    assert builder.auto_flow_implementation(cfg.out_dir, "tvl1") == "opencv"
    assert builder.auto_flow_implementation(str(tmp_path / "new"), "tvl1") == "keras"
    assert builder.auto_flow_implementation(cfg.out_dir, "dis") == "opencv"
    # A run from before implementations existed was OpenCV's: it still resumes.
    path = tmp_path / "out" / ".work" / "settings.json"
    old = json.loads(path.read_text())
    del old["flow_implementation"]
    path.write_text(json.dumps(old))
    assert builder.build(cfg)["settings"]["flow_implementation"] == "opencv"


def test_a_folder_never_mixes_record_versions(tmp_path):
    _index_video_tree(tmp_path / "data", [4, 5])
    v1 = _cfg(tmp_path / "data", tmp_path / "out", schema_version=1)
    first = builder.build(v1)
    assert records.read_metadata(v1.out_dir)["schema_version"] == 1
    assert not glob.glob(os.path.join(v1.out_dir, "*" + records.INDEX_SUFFIX))
    with pytest.raises(builder.PrepError,
                       match=r"schema_version: 1 -> 2.*finish it with --schema_version=1"):
        builder.build(dataclasses.replace(v1, schema_version=2))
    # A run from before version 2 (its settings lack the key) wrote version 1.
    path = tmp_path / "out" / ".work" / "settings.json"
    old = json.loads(path.read_text())
    del old["schema_version"]
    path.write_text(json.dumps(old))
    with pytest.raises(builder.PrepError, match="schema_version: 1 -> 2"):
        builder.build(dataclasses.replace(v1, schema_version=2))
    assert builder.build(v1)["splits"] == first["splits"]
    with pytest.raises(ValueError, match="schema_version=3: "):
        builder.build(dataclasses.replace(v1, schema_version=3))


def test_a_lost_index_is_named_and_rebuilt(tmp_path):
    from mat_effnet.data import input_pipeline
    from mat_effnet.data.sampling import PipelineConfig

    _index_video_tree(tmp_path / "data", [4, 5])
    cfg = _cfg(tmp_path / "data", tmp_path / "out")
    builder.build(cfg)
    shard = records.split_files(cfg.out_dir, records.read_metadata(cfg.out_dir), "train")[0]
    before = open(records.index_path(shard), "rb").read()
    os.remove(records.index_path(shard))
    with pytest.raises(records.MetadataError,
                       match=re.escape(records.index_path(shard)) + ".*re-run mat-effnet-prep"):
        input_pipeline.build_dataset(cfg.out_dir, "train", PipelineConfig("spatial", image_size=16),
                                     1)
    # Re-running the preparation redoes that shard's videos and writes it again.
    builder.build(cfg)
    assert open(records.index_path(shard), "rb").read() == before


def test_cli_refuses_a_bad_flow_implementation(tmp_path):
    _index_video_tree(tmp_path / "data", [3])
    args = ["--dataset=folder", f"--data_root={tmp_path}/data", f"--out_dir={tmp_path}/o"]
    r = _cli(*args, "--flow=dis", "--flow_implementation=keras")
    assert r.returncode == 2
    assert "mat-effnet-prep: error: --flow_implementation=keras: only flow=tvl1" in r.stderr
    r = _cli(*args, "--flow_implementation=cuda")
    assert r.returncode != 0 and "flow_implementation" in r.stderr
    r = _cli(*args, "--flow=tvl1", "--flow_implementation=keras", "--flow_batch=0")
    assert r.returncode != 0 and "flow_batch" in r.stderr
    assert not os.path.exists(tmp_path / "o" / records.META_FILENAME)


def test_keras_flow_lists_bad_videos_and_survives_a_flow_error(tmp_path, monkeypatch):
    from mat_effnet.ops import tvl1

    calls = []
    fake = _fake_tvl1(calls)

    def failing(params=None):
        fn = fake()

        def flaky(prev, nxt):
            if len(calls) == 1:  # the second batch
                calls.append(None)
                raise RuntimeError("device lost")
            return fn(prev, nxt)
        return flaky

    monkeypatch.setattr(tvl1, "batch_tvl1", failing)
    root = tmp_path / "data"
    _index_video_tree(root, [3, 3, 3])  # 2 pairs each: batches of 4 hold 2 videos
    (root / "a" / "zero.avi").write_bytes(b"")
    synthetic.write_video(str(root / "b" / "one.avi"), frame_index.index_frames(1, 48, 64))
    meta = builder.build(_cfg(root, tmp_path / "out", flow="tvl1", flow_implementation="keras",
                              flow_batch=4))
    reasons = {f["video_id"]: f["reason"] for f in meta["failures"]}
    assert reasons.pop("a/zero") == "zero-byte file"
    assert reasons.pop("b/one") == "only 1 frame"
    # The batch that failed took its two videos down, and only them.
    assert list(reasons.values()) == ["RuntimeError: device lost"] * 2
    assert sum(s["videos"] for s in meta["splits"].values()) == 4


def test_one_flow_process_per_device_writes_the_same_bytes(tmp_path):
    # flow_devices=2 on CPU: two flow processes (each would see one GPU
    # through CUDA_VISIBLE_DEVICES), each with its own decoding worker.
    _index_video_tree(tmp_path / "data", [4, 5, 3])
    kw = dict(flow="tvl1", flow_implementation="keras", flow_batch=4, short_side=24, workers=2)
    one = builder.build(_cfg(tmp_path / "data", tmp_path / "one", flow_devices=1, **kw))
    two = builder.build(_cfg(tmp_path / "data", tmp_path / "two", flow_devices=2, **kw))
    assert two["splits"] == one["splits"] and not two["failures"]
    assert _shard_bytes(tmp_path / "two") == _shard_bytes(tmp_path / "one")


def test_without_a_gpu_each_worker_runs_its_own_flow_process(monkeypatch):
    # XLA's CPU TV-L1 keeps about one core busy: one flow process per worker
    # (each decoding its own videos), as the test above runs with two; with
    # GPUs, one per GPU whatever the workers.
    from mat_effnet.encoding import flow_batches
    from mat_effnet.ops import optical_flow

    monkeypatch.setattr(optical_flow, "accelerators", lambda: 0)
    assert [flow_batches.default_devices(w) for w in (1, 2, 5)] == [1, 2, 5]
    monkeypatch.setattr(optical_flow, "accelerators", lambda: 2)
    assert [flow_batches.default_devices(w) for w in (1, 5)] == [2, 2]


def test_a_dead_flow_process_stops_the_run_with_one_line(tmp_path, monkeypatch):
    # The flow processes are spawned: they get the builder's steps pickled,
    # so a step that raises there (os.abort takes no task) kills them.
    _index_video_tree(tmp_path / "data", [3])
    monkeypatch.setattr(work_files, "decode_task", os.abort)
    cfg = _cfg(tmp_path / "data", tmp_path / "out", flow="tvl1", flow_implementation="keras",
               flow_devices=2, short_side=16)
    with pytest.raises(builder.PrepError,
                       match=r"^a flow process exited with code 1; re-run to resume$"):
        builder.build(cfg)
    assert not os.path.exists(os.path.join(cfg.out_dir, records.META_FILENAME))
