"""The Beam driver of the data preparation writes what the multiprocessing builder writes.

Runs on Beam's DirectRunner (in-process, and with worker processes, which
pickles every step as a cluster runner would).  Skipped without apache-beam.
"""

import dataclasses
import json
import os

import pytest

pytest.importorskip("apache_beam")

from data_prep import (beam_pipeline, builder, frame_index, layouts, shards,  # noqa: E402
                       synthetic, work_files)
from mat_effnet import records  # noqa: E402
from test_prep import _cfg, _index_video_tree, _shard_bytes  # noqa: E402


def _output_files(out_dir):
    """Every file a finished run leaves next to the shards (the work dir aside)."""
    out = {}
    for name in sorted(os.listdir(out_dir)):
        path = os.path.join(out_dir, name)
        if name != work_files.WORK_DIR and ".tmp" not in name:
            with open(path, "rb") as f:
                out[name] = f.read()
    return out


def _tree_with_bad_videos(root):
    _index_video_tree(root, [5, 6, 7])
    (root / "a" / "zero.avi").write_bytes(b"")
    synthetic.write_video(str(root / "b" / "one.avi"), frame_index.index_frames(1, 48, 64))


def test_beam_writes_the_builders_bytes_metadata_and_failures(tmp_path):
    root = tmp_path / "data"
    _tree_with_bad_videos(root)
    # chunk_frames=3 cuts each video into several records; 2 videos a shard
    # gives several shards per split.
    kw = dict(chunk_frames=3, videos_per_shard=2)
    expected = builder.build(_cfg(root, tmp_path / "pool", **kw))
    # Two worker processes: every step is pickled and run elsewhere, as on a cluster.
    got = beam_pipeline.build_with_beam(_cfg(root, tmp_path / "beam", workers=2, **kw),
                                        ["--runner=DirectRunner"])

    assert got == expected
    reasons = {f["video_id"]: f["reason"] for f in got["failures"]}
    assert reasons == {"a/zero": "zero-byte file", "b/one": "only 1 frame"}
    assert sum(s["videos"] for s in got["splits"].values()) == 6
    shard_bytes = _shard_bytes(tmp_path / "beam")
    assert shard_bytes == _shard_bytes(tmp_path / "pool")
    # Each shard and its index (version 2).
    assert sorted(shard_bytes) == sorted(n + suffix for names in got["shards"].values()
                                         for n in names for suffix in ("", records.INDEX_SUFFIX))
    # 8 videos, 2 a shard: 6 train (one failed) and 2 test (one failed).
    assert {s: (v["videos"], v["failed"]) for s, v in got["splits"].items()} == {
        "train": (5, 1), "test": (1, 1)}
    assert {s: len(names) for s, names in got["shards"].items()} == {"train": 3, "test": 1}
    assert all(shard_bytes.values())
    # Shards, indexes and mat_effnet_meta.json: the same names, the same bytes
    # (TFDS's files belong to version 1, which TFDS can read).
    files = _output_files(tmp_path / "beam")
    assert files == _output_files(tmp_path / "pool")
    assert records.META_FILENAME in files and "dataset_info.json" not in files


def test_beam_resumes_a_killed_run_without_redoing_work(tmp_path, monkeypatch):
    root = tmp_path / "data"
    _index_video_tree(root, [5, 6, 7])
    clean = builder.build(_cfg(root, tmp_path / "clean"))

    real = work_files.process_video
    calls = []

    def dying(task):
        if len(calls) == 3:
            raise RuntimeError("killed")  # the worker dies after 3 videos
        calls.append(task.entry.video_id)
        return real(task)

    # The in-process DirectRunner runs the steps in this process, so the
    # patched builder function is the one the pipeline calls.
    monkeypatch.setattr(work_files, "process_video", dying)
    with pytest.raises(Exception, match="killed"):
        beam_pipeline.build_with_beam(_cfg(root, tmp_path / "resumed"), [])
    assert not os.path.exists(tmp_path / "resumed" / records.META_FILENAME)

    monkeypatch.setattr(work_files, "process_video",
                        lambda t: calls.append(t.entry.video_id) or real(t))
    resumed = beam_pipeline.build_with_beam(_cfg(root, tmp_path / "resumed"), [])
    assert len(calls) == 6 and len(set(calls)) == 6  # 3 before the kill + 3 left, none twice
    assert resumed == clean
    assert _output_files(tmp_path / "resumed") == _output_files(tmp_path / "clean")

    # A finished run re-run only rewrites the metadata.
    calls.clear()
    assert beam_pipeline.build_with_beam(_cfg(root, tmp_path / "resumed"), []) == clean
    assert calls == []


def test_beam_finishes_a_run_the_builder_started(tmp_path, monkeypatch):
    # Both drivers share the work-dir format: a builder run killed midway is
    # finished by Beam with the same result.
    root = tmp_path / "data"
    _index_video_tree(root, [5, 6, 7])
    clean = builder.build(_cfg(root, tmp_path / "clean"))
    real = work_files.process_video
    calls = []

    def dying(task):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(task.entry.video_id)
        return real(task)

    monkeypatch.setattr(work_files, "process_video", dying)
    with pytest.raises(KeyboardInterrupt):
        builder.build(_cfg(root, tmp_path / "out"))
    monkeypatch.setattr(work_files, "process_video",
                        lambda t: calls.append(t.entry.video_id) or real(t))
    assert beam_pipeline.build_with_beam(_cfg(root, tmp_path / "out"), []) == clean
    assert len(calls) == 6 and len(set(calls)) == 6
    assert _output_files(tmp_path / "out") == _output_files(tmp_path / "clean")


def test_plan_round_trips_every_shard_including_non_ascii_names(tmp_path):
    cfg = _cfg(tmp_path, tmp_path / "out")
    entries = [layouts.VideoEntry(f"k/vidé_{i}", f"/d/k/vidé_{i}.avi", i % 3, "k", "train")
               for i in range(7)] + [layouts.VideoEntry("日本/x", "/d/日本/x.mp4", 1, "日本", "train")]
    plans = {"train": shards.plan_shards(entries, 3),
             "test": shards.plan_shards(entries[:2], 3)}
    for split in plans:
        os.makedirs(work_files.work_dir(cfg.out_dir, split))
    refs = beam_pipeline.write_plan(cfg, plans)
    assert [(r.split, r.index, r.count) for r in refs] == [
        ("train", 0, 3), ("train", 1, 3), ("train", 2, 3), ("test", 0, 1)]
    for ref in refs:
        # Byte offsets are right even though the names are not ASCII.
        assert beam_pipeline.read_shard(ref) == plans[ref.split][ref.index]
    # Writing the same plan again gives the same file (named by its content).
    assert beam_pipeline.write_plan(cfg, plans) == refs
    with open(refs[0].plan_path, "rb") as f:
        first = json.loads(f.readline())
    assert first == [dataclasses.asdict(e) for e in plans["train"][0]]


def test_workers_size_the_local_runner_and_user_flags_win(tmp_path):
    def flags(workers, args):
        options = beam_pipeline.pipeline_options(_cfg(tmp_path, tmp_path, workers=workers), args)
        return options.get_all_options()

    opts = flags(3, [])
    assert opts["direct_num_workers"] == 3 and opts["direct_running_mode"] == "multi_processing"
    opts = flags(3, ["--runner=DirectRunner", "--direct_num_workers=1"])
    assert opts["direct_num_workers"] == 1 and opts["direct_running_mode"] == "in_memory"
    opts = flags(1, [])
    assert opts["direct_num_workers"] == 1
    # A cluster runner's options pass through untouched, with no local flags added.
    opts = flags(8, ["--runner=DataflowRunner", "--project=p", "--region=r",
                     "--temp_location=gs://b/tmp"])
    assert (opts["runner"], opts["project"], opts["region"]) == ("DataflowRunner", "p", "r")
    assert opts["direct_num_workers"] == 1 and opts["direct_running_mode"] == "in_memory"


def test_bad_settings_are_refused_before_the_pipeline_runs(tmp_path):
    _index_video_tree(tmp_path / "data", [4])
    builder.build(_cfg(tmp_path / "data", tmp_path / "out"))
    with pytest.raises(builder.PrepError, match="flow: 'dis' -> 'none'"):
        beam_pipeline.build_with_beam(_cfg(tmp_path / "data", tmp_path / "out", flow="none"), [])
    with pytest.raises(ValueError, match="jpeg_quality=0: "):
        beam_pipeline.build_with_beam(_cfg(tmp_path / "data", tmp_path / "o2", jpeg_quality=0), [])
    with pytest.raises(layouts.LayoutError):
        beam_pipeline.build_with_beam(_cfg(tmp_path / "missing", tmp_path / "o3"), [])


def test_beam_with_keras_flow_writes_the_builders_bytes(tmp_path, monkeypatch):
    # Beam computes flow per video (batched within it) with the same batched
    # function; the builder batches across videos: the same shards.
    from mat_effnet.ops import tvl1
    from test_prep import _fake_tvl1

    calls = []
    monkeypatch.setattr(tvl1, "batch_tvl1", _fake_tvl1(calls))
    root = tmp_path / "data"
    _index_video_tree(root, [3, 5, 4])
    kw = dict(flow="tvl1", flow_implementation="keras", flow_batch=4)
    expected = builder.build(_cfg(root, tmp_path / "pool", **kw))
    batched_calls = len(calls)
    got = beam_pipeline.build_with_beam(_cfg(root, tmp_path / "beam", **kw), [])
    assert got == expected and got["flow"]["implementation"] == "keras"
    assert _output_files(tmp_path / "beam") == _output_files(tmp_path / "pool")
    # 6 videos, 2-4 pairs each: the builder shares batches between videos
    # (18 pairs in 5 batches of 4); Beam runs one or more per video.
    assert batched_calls == 5 and len(calls) - batched_calls == 6
    assert set(calls) == {(4, 32, 43)}
