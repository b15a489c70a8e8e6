"""The data preparation end to end: records, metadata, bad input, resume, CLI."""

import glob
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from data_prep import builder, layouts, synthetic
from mat_effnet import records


def _read_all(out_dir, split):
    meta = records.read_metadata(out_dir)
    out = []
    if split not in meta["shards"]:
        return out
    for path in records.split_files(out_dir, meta, split):
        out += [records.parse_numpy(r.numpy()) for r in tf.data.TFRecordDataset(path)]
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
                              synthetic.index_frames(n, *size))
        synthetic.write_video(os.path.join(root, "b", f"vid{i}.avi"),
                              synthetic.index_frames(n, *size))


def _cfg(root, out, **kw):
    kw.setdefault("flow", "dis")
    kw.setdefault("short_side", 32)
    kw.setdefault("videos_per_shard", 2)
    return builder.PrepConfig(dataset=kw.pop("dataset", "folder"), data_root=str(root),
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
            got = [synthetic.decode_index(_rgb(j)) for j in r["rgb"]]
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
    fx = records.dequantize_flow(_gray(rec["flow_x"][0]).astype(np.float32), 20.0)
    fy = records.dequantize_flow(_gray(rec["flow_y"][0]).astype(np.float32), 20.0)
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
    synthetic.write_video(str(root / "b" / "one.avi"), synthetic.index_frames(1, 48, 64))
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

    real = builder.process_video
    calls = []

    def dying(task):
        if len(calls) == 3:
            raise KeyboardInterrupt  # the "kill", after 3 videos
        calls.append(task.entry.video_id)
        return real(task)

    monkeypatch.setattr(builder, "process_video", dying)
    with pytest.raises(KeyboardInterrupt):
        builder.build(_cfg(tmp_path / "data", tmp_path / "resumed"))
    assert not os.path.exists(tmp_path / "resumed" / records.META_FILENAME)
    # A torn temp file as a kill mid-write would leave it.
    (tmp_path / "resumed" / ".work" / "train" / "junk.tfrecord.tmp-1").write_bytes(b"xx")

    monkeypatch.setattr(builder, "process_video", lambda t: calls.append(t.entry.video_id) or real(t))
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


def test_tfds_reads_a_prepared_dataset(tmp_path):
    _index_video_tree(tmp_path / "data", [5, 6])
    meta = builder.build(_cfg(tmp_path / "data", tmp_path / "out", flow="none"))
    b = tfds.builder_from_directory(str(tmp_path / "out"))
    assert b.info.features["label"].names == ["a", "b"]
    examples = list(b.as_dataset(split="train"))
    assert len(examples) == meta["splits"]["train"]["records"]
    for ex in examples:
        frames = ex["rgb"].numpy()
        assert [synthetic.decode_index(f) for f in frames] == list(range(len(frames)))
        assert ex["flow_x"].shape[0] == 0


def test_bad_config_values_name_the_flag(tmp_path):
    for kw, flag in [({"flow": "farneback"}, "--flow"), ({"workers": 0}, "--workers"),
                     ({"jpeg_quality": 0}, "--jpeg_quality"), ({"flow_bound": 0}, "--flow_bound")]:
        with pytest.raises(ValueError, match=flag):
            builder.build(_cfg(tmp_path, tmp_path / "out", **kw))
    with pytest.raises(layouts.LayoutError):
        builder.build(_cfg(tmp_path / "missing", tmp_path / "out"))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "data_prep.build", *args],
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
