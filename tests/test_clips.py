"""mat_effnet.data.clips: flow stacks, crops, flips, test views, both record layouts.

The clips are pinned to a frozen, simpler pipeline
(`tests.baseline_pipeline`) and version-2 groups to
version-1 records; the frames' pixel levels encode their index (see
`pipeline_helpers`).
"""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from mat_effnet.data import clips
from mat_effnet import records
from tests import baseline_pipeline
from mat_effnet.data import views
from mat_effnet.data.clips import make_clip
from mat_effnet.data.sampling import PipelineConfig
from pipeline_helpers import (H, W, S, _clip_fn, _decoded, _flat_index, _gradient, _jpeg,
                              _mirror_flow, _noise_frames, _parse, _record, _rgb_level,
                              _smooth_noise, _x_level, _y_level)


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


# ---------------------------------------------------------------------------
# Test-time views
# ---------------------------------------------------------------------------

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
# Same clips as the frozen pipeline, which has none of the speed-ups (windowed decoding, uint8)
# ---------------------------------------------------------------------------

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
        return clips.make_clip_from_group(group, cfg, seed)

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
    monkeypatch.setattr(clips, "_WINDOW_COLOUR", True)
    jpeg = _jpeg(_smooth_noise(72, 96, 3, 5))
    full = tf.io.decode_jpeg(jpeg, channels=3).numpy()
    for oy, ox, h, w in [(0, 0, 32, 32), (5, 13, 32, 40), (40, 64, 32, 32), (1, 1, 70, 94)]:
        got = clips._decode_one(tf.constant(jpeg), 3, (oy, ox, h, w)).numpy()
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
# Test views from decoded frames (what an exported model is fed)
# ---------------------------------------------------------------------------

def _decoded_video(rec, stream):
    """A record's frames decoded: RGB (T, H, W, 3), or flow (T-1, H, W, 2) planes x, y."""
    if stream == "spatial":
        return np.stack([tf.io.decode_jpeg(b, channels=3).numpy() for b in rec.rgb])
    x = np.stack([tf.io.decode_jpeg(b, channels=1).numpy()[..., 0] for b in rec.flow_x])
    y = np.stack([tf.io.decode_jpeg(b, channels=1).numpy()[..., 0] for b in rec.flow_y])
    return np.stack([x, y], axis=-1)


@pytest.mark.parametrize("stream", ["spatial", "temporal"])
def test_views_from_decoded_frames_equal_make_clip_on_the_record(stream):
    """Decoded frames give the record's test clip exactly, in a graph of unknown T, H, W.

    One trace with a None-shaped signature (as in an exported SavedModel)
    serves every video: windowed, upscaled (short side < S), portrait, and
    shorter than L (flow indices clamped).
    """
    videos = [(12, 72, 96), (12, 24, 30), (9, 96, 72), (3, 72, 96)]
    planes = 3 if stream == "spatial" else 2
    signature = [tf.TensorSpec([None, None, None, planes], tf.uint8)]
    for crops in (1, 3, 10):
        cfg = PipelineConfig(stream, image_size=S, flow_length=4, test_segments=5,
                             training=False, crops=crops)

        @tf.function(input_signature=signature)
        def fn(frames):
            return views.views_from_frames(frames, cfg)  # noqa: B023 (called in this loop)

        for t, h, w in videos:
            rec = _record(t, h=h, w=w, rgb=[_jpeg(_smooth_noise(h, w, 3, i)) for i in range(t)],
                          fx=[_jpeg(_smooth_noise(h, w, 1, 100 + i)) for i in range(t - 1)],
                          fy=[_jpeg(_smooth_noise(h, w, 1, 200 + i)) for i in range(t - 1)])
            want, _ = make_clip(_parse(rec), cfg)
            got = fn(_decoded_video(rec, stream))
            assert got.dtype == want.dtype == tf.uint8
            assert got.shape == (crops, 5, S, S, cfg.channels)
            np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=str((crops, t, h, w)))
            # Eagerly on numpy (every size known: the path JAX takes) too.
            eager = views.views_from_frames(_decoded_video(rec, stream), cfg)
            np.testing.assert_array_equal(np.asarray(eager), want.numpy(),
                                          err_msg=str((crops, t, h, w)))
        assert fn.experimental_get_tracing_count() == 1


def test_views_from_frames_reject_training_configs_and_float_frames():
    frames = np.zeros((4, S, S, 3), np.uint8)
    with pytest.raises(ValueError, match="training"):
        views.views_from_frames(frames, PipelineConfig("spatial", image_size=S))
    test_cfg = PipelineConfig("spatial", image_size=S, training=False, test_segments=2)
    with pytest.raises(ValueError, match="uint8"):
        views.views_from_frames(frames.astype(np.float32), test_cfg)
    # float32 clips on request, like make_clip's.
    as_float = views.views_from_frames(frames + 7, dataclasses.replace(test_cfg,
                                                                           clip_dtype="float32"))
    assert as_float.dtype == tf.float32 and float(as_float.numpy().min()) == 7.0
