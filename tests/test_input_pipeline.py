"""The input pipeline: TSN position rules, flow stacking, crops, flips, datasets.

Frames encode their index in their pixel values (RGB frame i is a flat gray
level 10 + 7i, flow_x i is 20 + 7i, flow_y i is 23 + 7i), so a clip tells
which frames it was built from; content checks compare against the same
JPEG bytes decoded by TensorFlow, so they can be exact.
"""

import dataclasses
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from mat_effnet import input_pipeline, records
from mat_effnet.benchmark import baseline_pipeline
from mat_effnet.benchmark import pipeline as bench
from mat_effnet.input_pipeline import (PipelineConfig, build_dataset, clip_seed, make_clip,
                                       multiscale_crop_box, sample_positions)

H, W, S = 40, 48, 32


def _jpeg(array):
    return cv2.imencode(".jpg", array, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def _rgb_level(i):
    return 10 + 7 * i


def _x_level(i):
    return 20 + 7 * i


def _y_level(i):
    return 23 + 7 * i


def _record(t, h=H, w=W, flow=True, video_id="v", label=0, rgb=None, fx=None, fy=None):
    """A record of t frames; default frames are flat levels encoding the index."""
    rgb = rgb or [_jpeg(np.full((h, w, 3), _rgb_level(i), np.uint8)) for i in range(t)]
    if flow:
        fx = fx or [_jpeg(np.full((h, w), _x_level(i), np.uint8)) for i in range(t - 1)]
        fy = fy or [_jpeg(np.full((h, w), _y_level(i), np.uint8)) for i in range(t - 1)]
    else:
        fx = fy = []
    return records.VideoRecord(video_id, label, f"c{label}", 25.0, h, w, rgb, fx, fy)


def _parse(rec):
    return records.parse(tf.constant(records.serialize(rec)))


def _decoded(jpeg, channels):
    return tf.io.decode_jpeg(jpeg, channels=channels).numpy().astype(np.float32)


def _clip_fn(cfg):
    """make_clip traced as a graph, as tf.data runs it."""

    @tf.function
    def fn(serialized, seed):
        return make_clip(records.parse(serialized), cfg, seed)

    def run(rec, seed):
        clip, label = (v.numpy() for v in fn(tf.constant(records.serialize(rec)),
                                             tf.constant([seed, 7], tf.int64)))
        assert clip.dtype == np.dtype(cfg.clip_dtype)  # uint8 unless asked otherwise
        return clip, label

    return run


def _flat_index(image, level_fn, n=64):
    """The frame index whose flat level ``image`` shows (within JPEG's ±1)."""
    image = np.asarray(image, np.float32)  # uint8 clips: no wrap-around below
    mean = float(image.mean())
    idx = int(round((mean - level_fn(0)) / 7))
    assert 0 <= idx < n
    assert np.abs(image - level_fn(idx)).max() <= 1, (mean, idx)
    return idx


def _mirror_flow(view):
    """Expected flip of flow frames (..., H, W, 2L): mirror, x -> 255 - x."""
    out = np.asarray(view, np.float32)[..., ::-1, :].copy()
    out[..., 0::2] = 255.0 - out[..., 0::2]
    return out


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,name", [
    (dict(stream="rgb"), "stream"),
    (dict(stream="spatial", crops=2), "crops"),
    (dict(stream="spatial", num_segments=0), "num_segments"),
    (dict(stream="temporal", flow_length=0), "flow_length"),
    (dict(stream="spatial", image_size=7), "image_size"),
    (dict(stream="spatial", test_segments=0), "test_segments"),
    (dict(stream="spatial", shuffle_buffer=0), "shuffle_buffer"),
    (dict(stream="spatial", scales=(1.0, 1.5)), "scales"),
])
def test_bad_config_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PipelineConfig(**kwargs)


def test_config_channels_and_views():
    assert PipelineConfig("spatial").channels == 3
    assert PipelineConfig("temporal", flow_length=7).channels == 14
    cfg = PipelineConfig("spatial", training=False, crops=10, test_segments=4)
    assert (cfg.views, cfg.segments) == (10, 4)
    train = PipelineConfig("spatial", num_segments=5)
    assert (train.views, train.segments) == (1, 5)


# ---------------------------------------------------------------------------
# Positions
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("stream,t,k,expected", [
    ("spatial", 10, 3, [{0, 1, 2}, {3, 4, 5}, {6, 7, 8, 9}]),
    ("spatial", 7, 3, [{0, 1}, {2, 3}, {4, 5, 6}]),
    # temporal, L = 5: starts 0..(T-1)-L = 0..9, split as for T = 10.
    ("temporal", 15, 3, [{0, 1, 2}, {3, 4, 5}, {6, 7, 8, 9}]),
])
def test_training_positions_cover_exactly_their_segments(stream, t, k, expected):
    cfg = PipelineConfig(stream, num_segments=k, flow_length=5)
    seen = [set() for _ in range(k)]
    for seed in range(300):
        pos = sample_positions(t, cfg, True, seed=seed).numpy()
        assert pos.dtype == np.int32 and pos.shape == (k,)
        for j, p in enumerate(pos):
            seen[j].add(int(p))
    assert seen == expected


def test_training_positions_repeat_when_fewer_frames_than_segments():
    cfg = PipelineConfig("spatial", num_segments=5)
    for seed in range(20):
        # V = 2: boundaries floor(k*2/5) = 0,0,0,1,1,2 -> empty segments keep floor(k*V/K).
        assert sample_positions(2, cfg, True, seed=seed).numpy().tolist() == [0, 0, 0, 1, 1]
        assert sample_positions(1, cfg, True, seed=seed).numpy().tolist() == [0] * 5


def test_test_positions_are_segment_centres():
    cfg = PipelineConfig("spatial", training=False, test_segments=25)
    assert sample_positions(100, cfg).numpy().tolist() == [4 * k + 2 for k in range(25)]
    cfg5 = PipelineConfig("spatial", training=False, test_segments=5)
    assert sample_positions(3, cfg5).numpy().tolist() == [0, 0, 1, 2, 2]
    # temporal, T = 37, L = 10: V = 27, floor(27 * (k + .5) / 5).
    tcfg = PipelineConfig("temporal", training=False, test_segments=5, flow_length=10)
    assert sample_positions(37, tcfg).numpy().tolist() == [2, 8, 13, 18, 24]
    # The seed does not matter at test time.
    assert sample_positions(37, tcfg, seed=3).numpy().tolist() == [2, 8, 13, 18, 24]


def test_same_seed_gives_same_rgb_and_flow_positions():
    t, length = 20, 4
    spatial = PipelineConfig("spatial", flow_length=length, align_to_flow=True, flip=False,
                             image_size=S)
    temporal = PipelineConfig("temporal", flow_length=length, flip=False, image_size=S)
    plain = PipelineConfig("spatial", flow_length=length)
    beyond_flow = False
    for seed in range(30):
        a = sample_positions(t, spatial, seed=seed).numpy()
        assert a.tolist() == sample_positions(t, temporal, seed=seed).numpy().tolist()
        assert a.max() <= t - 1 - length
        beyond_flow |= bool(sample_positions(t, plain, seed=seed).numpy().max() > t - 1 - length)
    assert beyond_flow  # without alignment the spatial stream uses all T frames

    rec = _record(t)
    rgb_fn, flow_fn = _clip_fn(spatial), _clip_fn(temporal)
    for seed in range(8):
        rgb, _ = rgb_fn(rec, seed)
        flow, _ = flow_fn(rec, seed)
        for k in range(3):
            assert _flat_index(rgb[k], _rgb_level) == _flat_index(flow[k, ..., 0], _x_level)


# ---------------------------------------------------------------------------
# Temporal stacks
# ---------------------------------------------------------------------------

def test_temporal_stack_is_l_consecutive_flows_interleaved():
    t, length = 14, 4  # V = 10: segments {0,1,2}, {3,4,5}, {6..9}
    cfg = PipelineConfig("temporal", flow_length=length, image_size=S, flip=False)
    fn = _clip_fn(cfg)
    rec = _record(t, label=2)
    segments = [range(0, 3), range(3, 6), range(6, 10)]
    starts = set()
    for seed in range(10):
        clip, label = fn(rec, seed)
        assert clip.shape == (3, S, S, 2 * length) and clip.dtype == np.uint8
        assert label == 2
        for k in range(3):
            p = _flat_index(clip[k, ..., 0], _x_level)
            assert p in segments[k]
            starts.add(p)
            for j in range(length):
                assert _flat_index(clip[k, ..., 2 * j], _x_level) == p + j
                assert _flat_index(clip[k, ..., 2 * j + 1], _y_level) == p + j
    assert len(starts) > 3


def test_temporal_short_video_repeats_last_flow():
    # T = 4 frames -> 3 flow fields < L = 5: start 0, indices 0,1,2,2,2.
    for training in (True, False):
        cfg = PipelineConfig("temporal", flow_length=5, num_segments=2, test_segments=2,
                             image_size=S, training=training, flip=False)
        clip, _ = _clip_fn(cfg)(_record(4), 0)
        clip = clip if training else clip[0]
        for k in range(2):
            assert [_flat_index(clip[k, ..., 2 * j], _x_level) for j in range(5)] == [0, 1, 2, 2, 2]
            ys = [_flat_index(clip[k, ..., 2 * j + 1], _y_level) for j in range(5)]
            assert ys == [0, 1, 2, 2, 2]


def test_temporal_stream_on_record_without_flow_fails_clearly():
    cfg = PipelineConfig("temporal", flow_length=2, image_size=S)
    with pytest.raises(tf.errors.InvalidArgumentError, match="no flow frames"):
        make_clip(_parse(_record(5, flow=False)), cfg, seed=0)


# ---------------------------------------------------------------------------
# Flips and crops
# ---------------------------------------------------------------------------

def _gradient(h, w, shift, horizontal=True):
    ramp = np.arange(w if horizontal else h, dtype=np.float32) * (180.0 / max(w, h))
    img = ramp[None, :] if horizontal else ramp[:, None]
    return np.broadcast_to(img + shift, (h, w)).astype(np.uint8)


def test_flip_inverts_x_flow_mirrors_both_and_is_clip_wide():
    # S x S frames (crop = whole frame) and T = L + 1 (only start 0): the flip
    # is the only random choice, so clips compare exactly.
    length = 3
    fx = [_jpeg(_gradient(S, S, 10 + 20 * i)) for i in range(length)]
    fy = [_jpeg(_gradient(S, S, 30 + 20 * i)[:, ::-1].copy()) for i in range(length)]
    rec = _record(length + 1, h=S, w=S, fx=fx, fy=fy)
    x = np.stack([_decoded(b, 1)[..., 0] for b in fx], -1)
    y = np.stack([_decoded(b, 1)[..., 0] for b in fy], -1)
    plain = np.stack([x, y], -1).reshape(S, S, 2 * length)  # channel 2j = x_j, 2j+1 = y_j
    flipped = _mirror_flow(plain)
    np.testing.assert_array_equal(flipped[..., 0], 255.0 - plain[:, ::-1, 0])
    np.testing.assert_array_equal(flipped[..., 1], plain[:, ::-1, 1])

    fn = _clip_fn(PipelineConfig("temporal", flow_length=length, image_size=S))
    kinds = []
    for seed in range(24):
        clip, _ = fn(rec, seed)
        if np.array_equal(clip[0], plain):
            kinds.append("plain")
        else:
            np.testing.assert_array_equal(clip[0], flipped)
            kinds.append("flipped")
        for k in (1, 2):  # every segment got the same decision
            np.testing.assert_array_equal(clip[k], clip[0])
    assert set(kinds) == {"plain", "flipped"}

    no_flip = _clip_fn(PipelineConfig("temporal", flow_length=length, image_size=S, flip=False))
    for seed in range(24):
        np.testing.assert_array_equal(no_flip(rec, seed)[0][0], plain)


def test_flip_mirrors_rgb_consistently_across_segments():
    # T = K = 3 forces positions 0, 1, 2; left/right asymmetric frames.
    frames = [_jpeg(np.dstack([_gradient(S, S, 5 + 30 * i)] * 3)) for i in range(3)]
    rec = _record(3, h=S, w=S, rgb=frames)
    plain = np.stack([_decoded(b, 3) for b in frames])
    fn = _clip_fn(PipelineConfig("spatial", image_size=S))
    kinds = set()
    for seed in range(24):
        clip, _ = fn(rec, seed)
        if np.array_equal(clip, plain):
            kinds.add("plain")
        else:
            np.testing.assert_array_equal(clip, plain[:, :, ::-1, :])
            kinds.add("flipped")
    assert kinds == {"plain", "flipped"}


def test_plain_random_crop_is_a_window_of_the_frame():
    rng = np.random.default_rng(0)
    jpeg = _jpeg(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    frame = _decoded(jpeg, 3)
    fn = _clip_fn(PipelineConfig("spatial", image_size=S, flip=False, num_segments=2))
    offsets = set()
    for seed in range(20):
        clip, _ = fn(_record(1, rgb=[jpeg]), seed)
        assert clip.shape == (2, S, S, 3)
        np.testing.assert_array_equal(clip[0], clip[1])  # same crop for all segments
        found = [(oy, ox) for oy in range(H - S + 1) for ox in range(W - S + 1)
                 if np.array_equal(clip[0], frame[oy:oy + S, ox:ox + S])]
        assert len(found) == 1
        offsets.add(found[0])
    assert len(offsets) > 5


def test_small_frames_are_upscaled_before_cropping():
    rec = _record(3, h=20, w=24)
    for multiscale in (False, True):
        cfg = PipelineConfig("spatial", image_size=S, multiscale=multiscale)
        clip, _ = _clip_fn(cfg)(rec, 1)
        assert clip.shape == (3, S, S, 3)
        assert [_flat_index(clip[k], _rgb_level) for k in range(3)] == [0, 1, 2]


def test_multiscale_crop_box_follows_tsn():
    # base 40: sides int(40 * (1, .875, .75, .66)) = 40, 35, 30, 26; 30 snaps to S = 32.
    sides = [40, 35, 32, 26]
    allowed = {(sides[i], sides[j]) for i in range(4) for j in range(4) if abs(i - j) <= 1}
    cfg = PipelineConfig("spatial", image_size=S, multiscale=True)
    sizes, fixed = set(), set()
    for seed in range(300):
        oy, ox, ch, cw = (int(v) for v in multiscale_crop_box(H, W, cfg, tf.constant([seed, 1])))
        sizes.add((ch, cw))
        hs, ws = (H - ch) // 4, (W - cw) // 4
        five = [(0, 0), (0, 4 * ws), (4 * hs, 0), (4 * hs, 4 * ws), (2 * hs, 2 * ws)]
        assert (oy, ox) in five
        fixed.add(five.index((oy, ox)))
    assert sizes == allowed
    assert fixed == {0, 1, 2, 3, 4}

    free = PipelineConfig("spatial", image_size=S, multiscale=True, fixed_offsets=False)
    offsets = set()
    for seed in range(100):
        oy, ox, ch, cw = (int(v) for v in multiscale_crop_box(H, W, free, tf.constant([seed, 1])))
        assert 0 <= oy <= H - ch and 0 <= ox <= W - cw
        offsets.add((oy, ox))
    assert len(offsets) > 20

    clip, _ = _clip_fn(cfg)(_record(6), 3)
    assert clip.shape == (3, S, S, 3)
    assert [_flat_index(clip[k], _rgb_level) for k in range(3)] in (
        [a, b, c] for a in (0, 1) for b in (2, 3) for c in (4, 5))


# ---------------------------------------------------------------------------
# Test-time views
# ---------------------------------------------------------------------------

def _noise_frames(n, h=H, w=W, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    shape = (h, w, channels) if channels == 3 else (h, w)
    return [_jpeg(rng.integers(0, 256, shape, dtype=np.uint8)) for _ in range(n)]


def test_centre_and_ten_crops():
    frames = _noise_frames(5)
    rec = _record(5, rgb=frames)
    decoded = [_decoded(b, 3) for b in frames]
    at = [0, 2, 4]  # floor(5 * (k + .5) / 3)
    ly, lx = H - S, W - S

    centre_cfg = PipelineConfig("spatial", image_size=S, training=False, test_segments=3)
    clip, _ = _clip_fn(centre_cfg)(rec, 0)
    assert clip.shape == (1, 3, S, S, 3) and clip.dtype == np.uint8
    for k, p in enumerate(at):
        oy, ox = ly // 2, lx // 2
        np.testing.assert_array_equal(clip[0, k], decoded[p][oy:oy + S, ox:ox + S])

    clip, _ = _clip_fn(PipelineConfig("spatial", image_size=S, training=False, test_segments=3,
                                      crops=10))(rec, 0)
    assert clip.shape == (10, 3, S, S, 3)
    boxes = [(0, 0), (0, lx), (ly, 0), (ly, lx), (ly // 2, lx // 2)]
    for k, p in enumerate(at):
        for v, (oy, ox) in enumerate(boxes):
            window = decoded[p][oy:oy + S, ox:ox + S]
            np.testing.assert_array_equal(clip[v, k], window)
            np.testing.assert_array_equal(clip[v + 5, k], window[:, ::-1])


def test_ten_crop_flips_invert_x_flow():
    length = 2
    rec = _record(6, fx=_noise_frames(5, channels=1, seed=1),
                  fy=_noise_frames(5, channels=1, seed=2))
    cfg = PipelineConfig("temporal", image_size=S, training=False, test_segments=2, crops=10,
                         flow_length=length)
    clip, _ = _clip_fn(cfg)(rec, 0)
    assert clip.shape == (10, 2, S, S, 2 * length)
    for v in range(5):
        np.testing.assert_array_equal(clip[v + 5], _mirror_flow(clip[v]))
    # The unflipped centre view holds flow 1,2 and 3,4 (V = 4, centres 1 and 3).
    x1 = _decoded(rec.flow_x[1], 1)[4:4 + S, 8:8 + S, 0]
    y4 = _decoded(rec.flow_y[4], 1)[4:4 + S, 8:8 + S, 0]
    np.testing.assert_array_equal(clip[4, 0, ..., 0], x1)
    np.testing.assert_array_equal(clip[4, 1, ..., 3], y4)


def test_three_crops_along_the_long_side():
    # Short side already S: three exact windows at x = 0, 8, 16.
    frames = _noise_frames(2, h=S, w=W)
    cfg = PipelineConfig("spatial", image_size=S, training=False, test_segments=2, crops=3)
    clip, _ = _clip_fn(cfg)(_record(2, h=S, w=W, rgb=frames), 0)
    assert clip.shape == (3, 2, S, S, 3)
    for k in range(2):
        frame = _decoded(frames[k], 3)
        for v, ox in enumerate((0, 8, 16)):
            np.testing.assert_array_equal(clip[v, k], frame[:, ox:ox + S])

    # Larger frames are resized (short side -> S) first; a gradient along the
    # long side orders the crops, across width (landscape) or height (portrait).
    for h, w, horizontal in ((H, 64, True), (64, H, False)):
        img = np.dstack([_gradient(h, w, 20, horizontal)] * 3)
        clip, _ = _clip_fn(cfg)(_record(1, h=h, w=w, rgb=[_jpeg(img)]), 0)
        means = [clip[v].mean() for v in range(3)]
        assert means[0] + 20 < means[1] < means[2] - 20
        # Exact geometry: short side -> S, long side -> round(64 * 32 / 40) = 51,
        # squares at 0, (51 - 32) // 2 = 9 and 51 - 32 = 19 along the long side.
        frame = _decoded(_jpeg(img), 3)
        resized = tf.image.resize(frame[None], (S, 51) if horizontal else (51, S)).numpy()[0]
        for v, o in enumerate((0, 9, 19)):
            window = resized[:, o:o + S] if horizontal else resized[o:o + S, :]
            # uint8 clips: the resize is rounded, so within half a level.
            np.testing.assert_allclose(clip[v, 0], window, atol=0.5 + 1e-3)


# ---------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------

def _write_dataset(root, flow="tvl1", n_train=5, n_test=5, version=records.SCHEMA_VERSION):
    os.makedirs(root, exist_ok=True)
    shards = {}
    for split, n in (("train", n_train), ("test", n_test)):
        names = []
        for s, ids in enumerate((range(0, n, 2), range(1, n, 2))):
            name = records.shard_filename("toy", split, s, 2)
            records.write_shard(os.path.join(root, name), [
                _record(6 + i, video_id=f"{split}{i}", label=i % 3, flow=flow != "none")
                for i in ids], version)
            names.append(name)
        shards[split] = names
    records.write_metadata(root, {"classes": ["a", "b", "c"], "shards": shards,
                                  "flow": {"algorithm": flow, "bound": 20.0}}, version)
    return str(root)


VERSIONS = pytest.mark.parametrize("version", records.SCHEMA_VERSIONS)


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


# ---------------------------------------------------------------------------
# Same clips as before issue 10's speed-ups (windowed decoding, uint8)
# ---------------------------------------------------------------------------

def _smooth_noise(h, w, channels, seed):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, channels), dtype=np.uint8)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, channels)
    noise = rng.integers(0, 40, (h, w, channels), dtype=np.uint8)
    img = cv2.add(big, noise).reshape(h, w, channels)  # saturating: detail on a smooth field
    return img if channels == 3 else img[..., 0]


@pytest.mark.parametrize("h,w", [(72, 96), (24, 30)])  # windowed; upscaled (short side < S)
@pytest.mark.parametrize("stream", ["spatial", "temporal"])
def test_clips_equal_the_frozen_baseline(stream, h, w):
    """Positions, crops and flips exactly as before; pixels within the allowed rounding.

    The baseline decodes whole frames and crops floats; the new pipeline
    decodes only the window (colour with a margin) and keeps uint8, so
    without a resize the clips are identical and after one within 0.5.
    """
    t = 12
    rgb = [_jpeg(_smooth_noise(h, w, 3, i)) for i in range(t)]
    fx = [_jpeg(_smooth_noise(h, w, 1, 100 + i)) for i in range(t - 1)]
    fy = [_jpeg(_smooth_noise(h, w, 1, 200 + i)) for i in range(t - 1)]
    parsed = _parse(_record(t, h=h, w=w, rgb=rgb, fx=fx, fy=fy))
    upscaled = min(h, w) < S
    common = dict(stream=stream, image_size=S, flow_length=3, test_segments=4)
    cases = [(dict(), upscaled), (dict(multiscale=True), True),
             (dict(multiscale=True, fixed_offsets=False), True),
             (dict(training=False, crops=1), upscaled),
             (dict(training=False, crops=3), True), (dict(training=False, crops=10), upscaled)]
    for kwargs, resized in cases:
        new_cfg = PipelineConfig(**common, **kwargs)
        old_cfg = baseline_pipeline.PipelineConfig(**common, **kwargs)
        seeds = range(6) if new_cfg.training else range(1)
        for seed in seeds:
            new, label = make_clip(parsed, new_cfg, seed)
            old, _ = baseline_pipeline.make_clip(parsed, old_cfg, seed)
            assert new.dtype == tf.uint8 and new.shape == old.shape, kwargs
            diff = np.abs(new.numpy().astype(np.float32) - old.numpy()).max()
            assert diff <= (0.5 + 1e-3 if resized else 0.0), (kwargs, seed, diff)
            assert int(label) == 0


def _group_clip_fn(path, offset, header, cfg):
    """make_clip_from_group on one stored group, traced as a graph as tf.data runs it."""

    @tf.function
    def fn(seed):
        group = records.Group.read(tf.constant(path), offset, header)
        return input_pipeline.make_clip_from_group(group, cfg, seed)

    return fn


# Windowed; upscaled (short side < S); shorter than L; long enough that the
# spatial test positions are read one by one (span 33 > 6 x 5 frames).
@pytest.mark.parametrize("t,h,w", [(12, 72, 96), (12, 24, 30), (3, 72, 96), (40, 40, 48)])
@pytest.mark.parametrize("stream", ["spatial", "temporal"])
def test_version2_groups_give_the_clips_of_version1_records(tmp_path, stream, t, h, w):
    """A clip read from a frame-addressable group equals the one from the whole record.

    Same positions, crop, flip and bytes, for every mode: windowed and
    upscaled frames, a video shorter than L (flow indices clamped, so a run
    is shorter than L and repeats its last field), and both test-time reads.
    """
    rgb = [_jpeg(_smooth_noise(h, w, 3, i)) for i in range(t)]
    fx = [_jpeg(_smooth_noise(h, w, 1, 100 + i)) for i in range(t - 1)]
    fy = [_jpeg(_smooth_noise(h, w, 1, 200 + i)) for i in range(t - 1)]
    other = _record(5, h=h, w=w, video_id="before", label=2)  # the group is not first
    rec = _record(t, h=h, w=w, rgb=rgb, fx=fx, fy=fy, label=1)
    path = str(tmp_path / "shard")
    records.write_shard(path, [other, rec], version=2)
    offset, header = records.read_index(path)[1]
    parsed = _parse(rec)
    common = dict(stream=stream, image_size=S, flow_length=4, test_segments=5)
    modes = [dict(), dict(multiscale=True), dict(training=False, crops=1),
             dict(training=False, crops=3), dict(training=False, crops=10)]
    for kwargs in modes:
        cfg = PipelineConfig(**common, **kwargs)

        from_group = _group_clip_fn(path, offset, header, cfg)

        for seed in (range(5) if cfg.training else range(1)):
            key = tf.constant([seed, 3], tf.int64)
            want, want_label = make_clip(parsed, cfg, key)
            got, label = from_group(key)
            assert int(label) == int(want_label) == 1
            np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=str((kwargs, seed)))


def test_colour_window_decode_equals_a_cropped_full_decode(monkeypatch):
    """The colour window option (off by default: slower at 340x256) stays exact."""
    monkeypatch.setattr(input_pipeline, "_WINDOW_COLOUR", True)
    jpeg = _jpeg(_smooth_noise(72, 96, 3, 5))
    full = tf.io.decode_jpeg(jpeg, channels=3).numpy()
    for oy, ox, h, w in [(0, 0, 32, 32), (5, 13, 32, 40), (40, 64, 32, 32), (1, 1, 70, 94)]:
        got = input_pipeline._decode_one(tf.constant(jpeg), 3, (oy, ox, h, w)).numpy()
        np.testing.assert_array_equal(got, full[oy:oy + h, ox:ox + w])


def test_float32_clips_on_request():
    rec = _record(6, rgb=_noise_frames(6))
    cfg = PipelineConfig("spatial", image_size=S)
    as_uint8, _ = make_clip(_parse(rec), cfg, 3)
    as_float, _ = make_clip(_parse(rec), dataclasses.replace(cfg, clip_dtype="float32"), 3)
    assert as_float.dtype == tf.float32
    np.testing.assert_array_equal(as_float.numpy(), as_uint8.numpy().astype(np.float32))
    with pytest.raises(ValueError, match="clip_dtype"):
        PipelineConfig("spatial", clip_dtype="float16")


# ---------------------------------------------------------------------------
# Seeds keyed to (video, chunk, epoch, global seed)
# ---------------------------------------------------------------------------

def test_clip_seed_depends_on_video_chunk_epoch_and_seed_only():
    base = clip_seed(tf.constant("v_Run_g01_c01"), 0, 0, 7).numpy()
    assert base.dtype == np.int64 and base.shape == (2,)
    np.testing.assert_array_equal(clip_seed(tf.constant("v_Run_g01_c01"), 0, 0, 7).numpy(), base)
    vid = tf.constant("v_Run_g01_c01")
    others = [clip_seed(tf.constant("v_Run_g01_c02"), 0, 0, 7), clip_seed(vid, 1, 0, 7),
              clip_seed(vid, 0, 1, 7), clip_seed(vid, 0, 0, 8)]
    assert len({tuple(base)} | {tuple(o.numpy()) for o in others}) == 5
    # A fingerprint, not Python's salted hash: the same value in every process.
    assert tf.strings.to_hash_bucket_fast("v_Run_g01_c01", 2**63 - 1).numpy() == 1151787800365447602


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
    old_root = _write_dataset(tmp_path / "v1", n_train=3, n_test=1, version=1)
    cfg = PipelineConfig("spatial", image_size=S, num_segments=2)
    rate = bench.pipeline_rate(input_pipeline, root, cfg, 2, min_seconds=0.0, min_batches=2)
    assert rate["clip_dtype"] == "uint8" and rate["host_bytes_per_clip"] == 2 * S * S * 3
    old = bench.pipeline_rate(baseline_pipeline, old_root, bench._baseline_config(cfg), 2,
                              min_seconds=0.0, min_batches=2)
    assert old["host_bytes_per_clip"] == 4 * 2 * S * S * 3  # float32 before issue 10
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
