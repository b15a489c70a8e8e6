"""The record schema: serialize/parse round trip, TFDS read-back, quantization."""

import os

import cv2
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mat_effnet import records
from mat_effnet.ops import quantize


def _jpeg(array):
    return cv2.imencode(".jpg", array)[1].tobytes()


def _record(i, n=4):
    rgb = [_jpeg(np.full((8, 10, 3), 10 * i + j, np.uint8)) for j in range(n)]
    flow = [_jpeg(np.full((8, 10), 100 + j, np.uint8)) for j in range(n - 1)]
    return records.VideoRecord(f"v{i}", i % 2, "ab"[i % 2], 25.0, 8, 10, rgb, flow, flow,
                               chunk_index=i, frame_offset=7 * i)


def test_serialize_parse_round_trip():
    rec = _record(2)
    parsed = records.parse_numpy(records.serialize(rec))
    assert parsed["video_id"] == "v2"
    assert parsed["label"] == 0 and parsed["class_name"] == "a"
    assert parsed["num_frames"] == 4 and parsed["fps"] == 25.0
    assert (parsed["height"], parsed["width"]) == (8, 10)
    assert (parsed["chunk_index"], parsed["frame_offset"]) == (2, 14)
    assert parsed["rgb"] == list(rec.rgb)
    assert parsed["flow_x"] == list(rec.flow_x) and len(parsed["flow_y"]) == 3


def test_parse_in_graph_mode_without_flow():
    rec = records.VideoRecord("x", 1, "b", 30.0, 8, 10, [_jpeg(np.zeros((8, 10, 3), np.uint8))] * 2)
    ds = tf.data.Dataset.from_tensor_slices([records.serialize(rec)]).map(records.parse)
    (parsed,) = list(ds)
    assert parsed["rgb"].shape == (2,)
    assert parsed["flow_x"].shape == (0,)


def test_record_rejects_misaligned_flow():
    with pytest.raises(ValueError, match="need 2 flow frames"):
        records.VideoRecord("x", 0, "a", 25.0, 8, 10, [b"1", b"2", b"3"], [b"f"], [b"f"])


def test_quantization_round_trip_within_half_a_step():
    bound = 20.0
    values = np.linspace(-25, 25, 10001, dtype=np.float32)
    q = quantize.quantize_flow(values, bound)
    assert q.dtype == np.uint8 and q[0] == 0 and q[-1] == 255
    assert np.all(np.diff(q.astype(int)) >= 0)
    back = quantize.dequantize_flow(q, bound)
    inside = np.abs(values) <= bound
    assert np.max(np.abs(back[inside] - values[inside])) <= bound / 255 + 1e-5
    # Clipped values come back as the bound.
    np.testing.assert_allclose(back[values > bound], bound, atol=1e-5)
    # The TF path (used by readers inside tf.data) gives the same numbers.
    np.testing.assert_allclose(quantize.dequantize_flow(tf.constant(q), bound).numpy(), back,
                               atol=1e-5)


def test_tfds_reads_our_shards(tmp_path):
    out = str(tmp_path)
    path = os.path.join(out, records.shard_filename("toy", "train", 0, 1))
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(3):
            writer.write(records.serialize(_record(i)))
    records.write_tfds_metadata(out, "toy", ["a", "b"], {"train": [3]},
                                {"train": os.path.getsize(path)})
    ds = tfds.builder_from_directory(out).as_dataset(split="train")
    got = [(ex["video_id"].numpy().decode(), int(ex["label"]), ex["rgb"].shape,
            ex["flow_x"].shape, int(ex["rgb"][1, 0, 0, 0])) for ex in ds]
    assert [g[0] for g in got] == ["v0", "v1", "v2"]
    assert [g[1] for g in got] == [0, 1, 0]
    assert all(g[2] == (4, 8, 10, 3) and g[3] == (3, 8, 10, 1) for g in got)
    # Pixel values encode 10*i + frame: JPEG keeps flat gray within a level or two.
    assert [abs(g[4] - (10 * i + 1)) <= 2 for i, g in enumerate(got)] == [True] * 3


def test_read_metadata_errors(tmp_path):
    with pytest.raises(records.MetadataError, match="mat_effnet_meta.json is missing"):
        records.read_metadata(str(tmp_path))
    records.write_metadata(str(tmp_path), {"shards": {"train": ["a"]}})
    meta = records.read_metadata(str(tmp_path))
    assert records.split_files(str(tmp_path), meta, "train") == [os.path.join(str(tmp_path), "a")]
    with pytest.raises(records.MetadataError, match="no split 'test'"):
        records.split_files(str(tmp_path), meta, "test")


# ---------------------------------------------------------------------------
# Version 2: frame-addressable groups and their index
# ---------------------------------------------------------------------------

def test_version2_shard_layout_and_index(tmp_path):
    """Each group: header, RGB frames, then x0, y0, x1, y1...; the index points at headers."""
    recs = [_record(i) for i in range(3)] + [
        records.VideoRecord("noflow", 1, "b", 30.0, 8, 10, [_jpeg(np.zeros((8, 10, 3), np.uint8))])]
    path = str(tmp_path / "shard")
    records.write_shard(path, recs, version=2)
    raw = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    assert len(raw) == sum(1 + 3 * len(r.rgb) - 2 for r in recs[:3]) + 2
    index = records.read_index(path)
    offsets, sizes = [], []
    at = 0
    for r in recs:
        payloads = records.serialize_group(r)
        assert payloads[1:] == [*r.rgb, *[b for xy in zip(r.flow_x, r.flow_y) for b in xy]]
        offsets.append(at)
        sizes.append(len(payloads[0]))
        at += records.framed_size(payloads)
    assert index.tolist() == [[o, s] for o, s in zip(offsets, sizes)]
    assert at == os.path.getsize(path)
    # The front-to-back reader gives parse_numpy's dicts of the same videos.
    got = list(records.read_shard(path, 2))
    assert got == [records.parse_numpy(records.serialize(r)) for r in recs]
    assert got == list(records.read_shard(_v1_copy(tmp_path, recs), 1))


def _v1_copy(tmp_path, recs):
    path = str(tmp_path / "v1")
    records.write_shard(path, recs, version=1)
    assert not os.path.exists(records.index_path(path))
    return path


def test_version2_group_reads_only_what_is_asked(tmp_path):
    recs = [_record(i, n=6) for i in range(2)]
    path = str(tmp_path / "shard")
    records.write_shard(path, recs)
    (o0, h0), (o1, h1) = records.read_index(path)

    @tf.function
    def read(offset, header, frames, first, counts):
        group = records.Group.read(tf.constant(path), offset, header)
        fx, fy = group.flow(first, counts)
        return (group.rgb(frames), fx, fy, group.num_frames, group.num_flow,
                group.header["video_id"], group.header["label"])

    rgb, fx, fy, t, nf, vid, label = read(o1, h1, tf.constant([5, 0, 5]),
                                          tf.constant([3, 0]), tf.constant([2, 1]))
    r = recs[1]
    assert rgb.numpy().tolist() == [r.rgb[5], r.rgb[0], r.rgb[5]]
    assert fx.numpy().tolist() == [r.flow_x[3], r.flow_x[4], r.flow_x[0]]
    assert fy.numpy().tolist() == [r.flow_y[3], r.flow_y[4], r.flow_y[0]]
    assert (int(t), int(nf), vid.numpy(), int(label)) == (6, 5, b"v1", 1)
    # The first group too (offset 0).
    rgb, *_ = read(o0, h0, tf.constant([1]), tf.constant([0]), tf.constant([1]))
    assert rgb.numpy().tolist() == [recs[0].rgb[1]]


def test_version2_errors_name_the_file(tmp_path):
    path = str(tmp_path / "shard")
    with pytest.raises(records.MetadataError, match="shard.index.json.*missing.*mat-effnet-prep"):
        records.read_index(path)
    with open(records.index_path(path), "w") as f:
        f.write('{"groups": "nope"}')
    with pytest.raises(records.MetadataError, match="shard.index.json: not a shard index"):
        records.read_index(path)
    # A group cut short (a truncated file) is named by its video.
    payloads = records.serialize_group(_record(1))
    with tf.io.TFRecordWriter(path) as w:
        for p in payloads[:-2]:
            w.write(p)
    with pytest.raises(records.MetadataError, match="v1: the file ends inside its group"):
        list(records.read_groups(path))


def test_metadata_versions(tmp_path):
    for version in records.SCHEMA_VERSIONS:
        records.write_metadata(str(tmp_path), {"classes": ["a"]}, version)
        assert records.read_metadata(str(tmp_path))["schema_version"] == version
    records.write_metadata(str(tmp_path), {"classes": ["a"]}, 3)
    with pytest.raises(records.MetadataError, match="schema version 3 is not supported.*1, 2"):
        records.read_metadata(str(tmp_path))
