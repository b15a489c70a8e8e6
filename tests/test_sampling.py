"""mat_effnet.data.sampling: the pipeline's settings, TSN position rules, seeds, crop boxes."""

import numpy as np
import pytest
import tensorflow as tf

from mat_effnet.data.sampling import PipelineConfig, clip_seed, multiscale_crop_box, sample_positions
from pipeline_helpers import H, W, S, _clip_fn, _flat_index, _record, _rgb_level, _x_level


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
# Training crop boxes
# ---------------------------------------------------------------------------

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
