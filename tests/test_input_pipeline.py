"""mat_effnet.data.input_pipeline: datasets, epochs, and the benchmark's measurements of them.

Frames encode their index in their pixel values (see `pipeline_helpers`).
"""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from mat_effnet.data import input_pipeline
from mat_effnet import records
from mat_effnet.benchmark import pipeline as bench
from mat_effnet.data.input_pipeline import build_dataset
from mat_effnet.data.sampling import PipelineConfig
from pipeline_helpers import (VERSIONS, S, _flat_index, _record, _rgb_level, _write_dataset)


# ---------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------

@VERSIONS
def test_training_dataset_batches(tmp_path, version):
    root = _write_dataset(tmp_path / "d", version=version)
    cfg = PipelineConfig("spatial", image_size=S, seed=0, shuffle_buffer=4)
    ds = build_dataset(root, "train", cfg, 2, with_ids=True)
    clips_spec, labels_spec, _ = ds.element_spec
    assert clips_spec.shape.as_list() == [2, 3, S, S, 3]  # drop_remainder: static batch
    assert clips_spec.dtype == tf.uint8 and labels_spec.dtype == tf.int32
    first = [[v.numpy() for v in batch] for batch in ds.take(8)]
    seen = set()
    for clips, labels, ids in first:  # 16 clips of 5 videos: repeats
        for clip, label, vid in zip(clips, labels, ids):
            i = int(vid.decode()[len("train"):])
            assert label == i % 3
            idx = [_flat_index(clip[k], _rgb_level) for k in range(3)]
            t = 6 + i
            bounds = [(k * t // 3, (k + 1) * t // 3) for k in range(3)]
            assert all(lo <= p < hi for p, (lo, hi) in zip(idx, bounds))
            seen.add(i)
    assert seen == set(range(5))

    # A seed makes a freshly built stream reproducible, draws included.
    again = build_dataset(root, "train", cfg, 2, with_ids=True)
    for (a, _, ia), (b, _, ib) in zip(first, again.take(8)):
        np.testing.assert_array_equal(a, b.numpy())
        assert ia.tolist() == ib.numpy().tolist()
    # Another seed gives other draws.
    other = build_dataset(root, "train", dataclasses.replace(cfg, seed=1), 2)
    assert any(not np.array_equal(a, b.numpy()) for (a, _, _), (b, _) in zip(first, other.take(8)))


@VERSIONS
def test_temporal_training_dataset_shape(tmp_path, version):
    root = _write_dataset(tmp_path / "d", n_train=3, n_test=1, version=version)
    cfg = PipelineConfig("temporal", image_size=S, flow_length=2, num_segments=2, multiscale=True)
    clips, labels = next(iter(build_dataset(root, "train", cfg, 3)))
    assert clips.shape == (3, 2, S, S, 4) and labels.shape == (3,)
    assert float(clips.numpy().min()) >= 0.0 and float(clips.numpy().max()) <= 255.0


@VERSIONS
def test_test_dataset_is_one_ordered_pass_with_a_short_last_batch(tmp_path, version):
    root = _write_dataset(tmp_path / "d", version=version)
    cfg = PipelineConfig("spatial", image_size=S, training=False, test_segments=2, crops=3)
    batches = list(build_dataset(root, "test", cfg, 2, with_ids=True))
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    assert batches[0][0].shape[1:] == (3, 2, S, S, 3)
    ids = [v.decode() for b in batches for v in b[2].numpy()]
    assert ids == ["test0", "test2", "test4", "test1", "test3"]  # shard order
    labels = [int(v) for b in batches for v in b[1].numpy()]
    assert labels == [0, 2, 1, 1, 0]
    # Video test0 has T = 6: positions floor(6 * (k + .5) / 2) = 1, 4.
    first = batches[0][0].numpy()[0]
    assert [_flat_index(first[1, k], _rgb_level) for k in range(2)] == [1, 4]


@VERSIONS
def test_dataset_errors(tmp_path, version):
    with pytest.raises(records.MetadataError):
        build_dataset(str(tmp_path), "train", PipelineConfig("spatial"), 2)
    root = _write_dataset(tmp_path / "noflow", flow="none", n_train=1, n_test=1, version=version)
    with pytest.raises(ValueError, match="flow=none"):
        build_dataset(root, "train", PipelineConfig("temporal"), 2)
    assert build_dataset(root, "train", PipelineConfig("spatial", image_size=S), 1) is not None
    with pytest.raises(ValueError, match="batch_size"):
        build_dataset(root, "train", PipelineConfig("spatial"), 0)


def _epoch_clips(root, cfg, files=None, epochs=1):
    ds = build_dataset(root, "train", cfg, 1, with_ids=True, epochs=epochs, files=files)
    return sorted((vid.decode(), clip.tobytes()) for clips, _, ids in ds
                  for clip, vid in zip(clips.numpy(), ids.numpy()))


@VERSIONS
def test_an_epoch_is_each_record_once_whatever_the_file_order(tmp_path, version):
    root = _write_dataset(tmp_path / "d", n_train=6, version=version)
    cfg = PipelineConfig("temporal", image_size=S, flow_length=2, seed=4, shuffle_buffer=2)
    files = records.split_files(root, records.read_metadata(root), "train")
    one = _epoch_clips(root, cfg)
    assert [vid for vid, _ in one] == [f"train{i}" for i in range(6)]
    # Reading the shards in another order (as service workers do) changes nothing.
    assert _epoch_clips(root, cfg, files=files[::-1]) == one
    two = _epoch_clips(root, cfg, epochs=2)
    assert [vid for vid, _ in two] == sorted(2 * [f"train{i}" for i in range(6)])
    assert set(one) <= set(two) and len(set(two)) > len(set(one))


# ---------------------------------------------------------------------------
# The benchmark's measurement functions (mat_effnet.benchmark.pipeline)
# ---------------------------------------------------------------------------

@VERSIONS
def test_bound_counts_the_distinct_jpegs_a_clip_needs(tmp_path, version):
    root = _write_dataset(tmp_path / "d", n_train=2, n_test=1, version=version)
    # Test time, T = 6 (video train0), L = 4: V = 2, 3 centres 0, 1, 1 -> flow 0..4, 5 fields.
    cfg = PipelineConfig("temporal", image_size=S, flow_length=4, training=False,
                         test_segments=3)
    jpegs = bench.clip_jpegs(root, cfg, 1)
    assert len(jpegs[0]) == 2 * 5 and {c for _, c in jpegs[0]} == {1}
    spatial = bench.clip_jpegs(root, PipelineConfig("spatial", image_size=S, training=False,
                                                    test_segments=3), 2)
    assert [len(j) for j in spatial] == [3, 3] and {c for _, c in spatial[0]} == {3}
    bound = bench.decode_bound(spatial, min_seconds=0.0)
    assert bound["jpegs_per_clip"] == 3 and bound["clips_per_s"] > 0
    assert bound["clips_per_s"] == pytest.approx(bound["jpegs_per_s"] / 3)


def test_pipeline_rate_and_summary(tmp_path):
    root = _write_dataset(tmp_path / "d", n_train=3, n_test=1)
    cfg = PipelineConfig("spatial", image_size=S, num_segments=2)
    rate = bench.pipeline_rate(input_pipeline, root, cfg, 2, min_seconds=0.0, min_batches=2)
    assert rate["clip_dtype"] == "uint8" and rate["host_bytes_per_clip"] == 2 * S * S * 3
    assert rate["clips"] >= 2 * 2 and rate["clips_per_s"] > 0
    wide_cfg = dataclasses.replace(cfg, clip_dtype="float32")
    wide = bench.pipeline_rate(input_pipeline, root, wide_cfg, 2, min_seconds=0.0, min_batches=2)
    assert wide["clip_dtype"] == "float32" and wide["host_bytes_per_clip"] == 4 * 2 * S * S * 3
    bound = {"clips_per_s": 2 * rate["clips_per_s"], "cpu_ms_per_clip": 1.0,
             "jpeg_bytes_per_clip": 10.0, "jpegs_per_clip": 2.0}
    out = bench.summarize(rate, bound, cores=4, num_segments=3)
    assert out["share_of_bound"] == pytest.approx(0.5)
    assert bench.a100_clips_per_s(3) == pytest.approx(1150.0)
    assert out["cores_per_a100"] == pytest.approx(1150.0 / (rate["clips_per_s"] / 4))


def test_read_rate_counts_what_a_clip_reads(tmp_path):
    """Version 2 reads a header and the clip's frames; version 1 the whole record."""
    t = 6  # video train0: 6 frames of flat levels, 2 segments -> 2 RGB frames read
    rec = _record(t, video_id="train0")
    v2 = bench.read_parse_rate(_write_dataset(tmp_path / "v2", n_train=1, n_test=1),
                               PipelineConfig("spatial", image_size=S, num_segments=2), 0.0)
    payloads = records.serialize_group(rec)
    frames = sorted(len(p) for p in payloads[1:1 + t])  # the flat levels differ in size
    assert v2["schema_version"] == 2
    assert len(payloads[0]) + 3 * records.FRAMING_BYTES + 2 * frames[0] <= \
        v2["read_bytes_per_clip"] <= len(payloads[0]) + 3 * records.FRAMING_BYTES + 2 * frames[-1]
    v1 = bench.read_parse_rate(_write_dataset(tmp_path / "v1", n_train=1, n_test=1, version=1),
                               PipelineConfig("spatial", image_size=S, num_segments=2), 0.0)
    assert v1["read_bytes_per_clip"] == len(records.serialize(rec)) + records.FRAMING_BYTES
    assert v1["clips_per_s"] > 0 and v2["clips_per_s"] > 0


def test_levers_switch_the_decoding_flags_they_name_and_restore_them(monkeypatch):
    """Each flag lever flips its switch in mat_effnet.data.clips for its run only."""
    from mat_effnet.data import clips

    seen = {}

    def fake_rate(module, data_dir, cfg, batch, min_seconds, **build):
        assert module is input_pipeline
        seen.update({k: getattr(clips, k) for k in ("_WINDOW", "_WINDOW_COLOUR", "_UNROLL")})
        seen["options_default"] = module._options(None).threading.max_intra_op_parallelism
        return {"clips_per_s": 1.0}

    monkeypatch.setattr(bench, "pipeline_rate", fake_rate)
    cfg = PipelineConfig("spatial", image_size=S)
    shipped = {"_WINDOW": True, "_WINDOW_COLOUR": False, "_UNROLL": True}
    for name, variant in bench.LEVERS.items():
        if "flags" not in variant:
            continue
        bench._run_variant(name, variant, cfg, "unused", 1, 0.0, 1)
        assert {k: seen[k] for k in shipped} == {**shipped, **variant["flags"]}, name
        assert seen["options_default"] == 1  # this lever leaves the options alone
        assert {k: getattr(clips, k) for k in shipped} == shipped  # restored
    bench._run_variant("default_tf_data_options", bench.LEVERS["default_tf_data_options"], cfg,
                       "unused", 1, 0.0, 1)
    assert seen["options_default"] is None
    assert input_pipeline._options(None).threading.max_intra_op_parallelism == 1


def test_compare_times_the_layout_lever_on_the_version1_records_it_is_given(tmp_path,
                                                                            monkeypatch):
    """version1_dir feeds the version1_records lever and the version-1 read, nothing else."""
    from mat_effnet.common.errors import MatEffNetError

    root = _write_dataset(tmp_path / "v2", n_train=1, n_test=1)
    v1 = _write_dataset(tmp_path / "v1", n_train=1, n_test=1, version=1)
    read_dirs = []

    def fake_rate(module, data_dir, cfg, batch, min_seconds, **build):
        slow = data_dir == v1  # the version-1 records: half the rate, twice the CPU
        return {"clips_per_s": 25.0 if slow else 50.0, "cpu_ms_per_clip": 4.0 if slow else 2.0}

    def fake_read(data_dir, cfg, min_seconds):
        read_dirs.append(data_dir)
        return {"cpu_ms_per_clip": 0.5, "clips_per_s": 1.0,
                "read_bytes_per_clip": 100.0 if data_dir == v1 else 10.0}

    monkeypatch.setattr(bench, "pipeline_rate", fake_rate)
    monkeypatch.setattr(bench, "read_parse_rate", fake_read)
    monkeypatch.setattr(bench, "clip_jpegs", lambda *a: [])
    monkeypatch.setattr(bench, "decode_bound", lambda *a, **k: {
        "clips_per_s": 100.0, "cpu_ms_per_clip": 1.0, "jpeg_bytes_per_clip": 1.0,
        "jpegs_per_clip": 3.0})
    kw = dict(streams=("spatial",), modes=("train", "test_1crop"), image_size=S, rounds=1,
              levers={"version1_records": bench.LEVERS["version1_records"]}, log=lambda m: None)
    out = bench.compare(root, version1_dir=v1, **kw)
    for mode in ("train", "test_1crop"):
        entry = out["spatial"][mode]
        assert set(entry) >= {"bound", "new", "levers"} and "baseline" not in entry
        assert entry["new"]["share_of_bound"] == pytest.approx(0.5)
        lever = entry["levers"]["version1_records"]
        assert lever["new_over_variant"] == pytest.approx(2.0)
        assert lever["new_cpu_saving"] == pytest.approx(0.5)
    train = out["spatial"]["train"]
    assert train["read"]["read_bytes_per_clip"] == 10.0
    assert train["read_version1"]["read_bytes_per_clip"] == 100.0
    assert train["bound_with_read_cpu_ms_per_clip"] == pytest.approx(1.5)
    assert read_dirs == [root, v1]

    alone = bench.compare(root, **kw)["spatial"]
    assert alone["train"]["levers"] == {} and "read_version1" not in alone["train"]
    assert alone["test_1crop"]["levers"] == {}
    with pytest.raises(MatEffNetError, match=r"^version1_dir=.*not version-1 records"):
        bench.compare(root, version1_dir=root, **kw)
