"""Tests for mat_effnet.ops.video (decoding, probing, errors) and mat_effnet.ops.optical_flow."""

import inspect
import math

import cv2
import numpy as np
import pytest

import os

from mat_effnet.encoding import encode
from mat_effnet.ops import optical_flow, video
from mat_effnet.common.errors import MatEffNetError
from data_prep.frame_index import decode_index, index_frames
from data_prep.synthetic import write_video
from mat_effnet.ops import quantize


# ---------------------------------------------------------------------------
# video


@pytest.mark.parametrize("ext", [".avi", ".mp4"])
def test_round_trip_index_frames(tmp_path, ext):
    path = str(tmp_path / f"clip{ext}")
    assert write_video(path, index_frames(40, 64, 80), fps=30.0) == 40
    info = video.probe(path)
    assert info == video.VideoInfo(fps=30.0, width=80, height=64, frame_count=40)
    frames = list(video.iter_frames(path, short_side=0))
    assert len(frames) == 40
    for i, frame in enumerate(frames):
        assert frame.shape == (64, 80, 3) and frame.dtype == np.uint8
        assert decode_index(frame) == i


def test_iter_frames_resizes_keeping_aspect(tmp_path):
    path = str(tmp_path / "clip.avi")
    write_video(path, index_frames(6, 120, 160))
    small = list(video.iter_frames(path, short_side=60))
    assert [f.shape for f in small] == [(60, 80, 3)] * 6
    assert [decode_index(f) for f in small] == list(range(6))
    large = list(video.iter_frames(path, short_side=240))
    assert [f.shape for f in large] == [(240, 320, 3)] * 6
    assert [decode_index(f) for f in large] == list(range(6))


def test_iter_frames_returns_rgb(tmp_path):
    path = str(tmp_path / "red.avi")
    red = np.zeros((48, 64, 3), np.uint8)
    red[..., 0] = 220  # R in RGB order
    write_video(path, [red] * 3)
    frame = next(video.iter_frames(path, short_side=0))
    r, g, b = frame.reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 30 and b < 30


@pytest.mark.parametrize("size,short,expected", [
    ((160, 120), 60, (80, 60)),
    ((120, 160), 60, (60, 80)),
    ((320, 240), 256, (341, 256)),   # 341.33 rounds to 341
    ((100, 100), 50, (50, 50)),
    ((340, 256), 128, (170, 128)),
    ((161, 120), 60, (81, 60)),      # 80.5 rounds half up; no forced evenness
    ((160, 120), 0, (160, 120)),
    ((160, 120), -1, (160, 120)),
])
def test_resized_size(size, short, expected):
    assert video.resized_size(size[0], size[1], short) == expected


def test_resized_size_rejects_empty_frame():
    with pytest.raises(ValueError):
        video.resized_size(0, 120, 60)


def test_iter_frames_is_lazy(tmp_path, monkeypatch):
    path = str(tmp_path / "clip.avi")
    write_video(path, index_frames(20, 64, 80))
    reads = []
    real_open = video._open

    class CountingCapture:
        def __init__(self, cap):
            self._cap = cap

        def read(self):
            reads.append(1)
            return self._cap.read()

        def __getattr__(self, name):
            return getattr(self._cap, name)

    monkeypatch.setattr(video, "_open", lambda p: CountingCapture(real_open(p)))
    gen = video.iter_frames(path, short_side=0)
    assert inspect.isgenerator(gen)
    assert reads == []  # nothing decoded before the first next()
    assert decode_index(next(gen)) == 0
    assert decode_index(next(gen)) == 1
    assert len(reads) == 2
    gen.close()
    assert len(reads) == 2


def _assert_reason(path, reason):
    with pytest.raises(video.VideoError) as probe_err:
        video.probe(path)
    assert probe_err.value.reason == reason
    assert probe_err.value.path == path and path in str(probe_err.value)
    with pytest.raises(video.VideoError) as iter_err:
        list(video.iter_frames(path))
    assert iter_err.value.reason == reason


def test_missing_file(tmp_path):
    _assert_reason(str(tmp_path / "nope.avi"), "missing file")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.avi"
    path.write_bytes(b"")
    _assert_reason(str(path), "zero-byte file")


def test_text_file_renamed_avi(tmp_path):
    path = tmp_path / "notes.avi"
    path.write_text("this is not a video\n" * 50)
    _assert_reason(str(path), "cannot open (not a video or unsupported codec)")


def test_truncated_avi_ends_early(tmp_path):
    # Noise makes the JPEG frames large, so 30 % of the file holds the
    # header plus several whole frames.
    rng = np.random.default_rng(0)
    frames = [np.clip(f.astype(np.int16) + rng.integers(-40, 41, f.shape), 0, 255).astype(np.uint8)
              for f in index_frames(40, 120, 160)]
    full = tmp_path / "full.avi"
    write_video(str(full), frames)
    data = full.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.3)])
    try:
        decoded = list(video.iter_frames(str(cut), short_side=0))
    except video.VideoError as err:
        assert err.reason in ("cannot open (not a video or unsupported codec)", "no decodable frames")
    else:
        assert 0 < len(decoded) < 40
        # What is decoded is the undamaged prefix, in order (the last frame
        # may be partial, so it is not checked).
        assert [decode_index(f) for f in decoded[:-1]] == list(range(len(decoded) - 1))


class _FakeCapture:
    """Stands in for cv2.VideoCapture to reach metadata paths no real file hits."""

    def __init__(self, props, opened=True):
        self._props = props
        self._opened = opened

    def isOpened(self):
        return self._opened

    def get(self, prop):
        return self._props.get(prop, 0.0)

    def read(self):
        return False, None

    def release(self):
        pass


def _fake(monkeypatch, tmp_path, **props):
    path = tmp_path / "fake.avi"
    path.write_bytes(b"x")
    values = {cv2.CAP_PROP_FPS: 25.0, cv2.CAP_PROP_FRAME_WIDTH: 160.0,
              cv2.CAP_PROP_FRAME_HEIGHT: 120.0, cv2.CAP_PROP_FRAME_COUNT: 10.0}
    names = {"fps": cv2.CAP_PROP_FPS, "width": cv2.CAP_PROP_FRAME_WIDTH,
             "height": cv2.CAP_PROP_FRAME_HEIGHT, "count": cv2.CAP_PROP_FRAME_COUNT}
    for key, value in props.items():
        values[names[key]] = value
    monkeypatch.setattr(video, "_open", lambda p: _FakeCapture(values))
    return str(path)


@pytest.mark.parametrize("fps", [0.0, float("nan"), -3.0])
def test_fps_falls_back_to_25(monkeypatch, tmp_path, fps):
    info = video.probe(_fake(monkeypatch, tmp_path, fps=fps, count=-1.0))
    assert info == video.VideoInfo(fps=25.0, width=160, height=120, frame_count=0)


def test_zero_size_is_an_error(monkeypatch, tmp_path):
    path = _fake(monkeypatch, tmp_path, width=0.0, height=0.0)
    with pytest.raises(video.VideoError) as err:
        video.probe(path)
    assert err.value.reason == "zero frame size"


def test_no_decodable_frames(monkeypatch, tmp_path):
    gen = video.iter_frames(_fake(monkeypatch, tmp_path))
    with pytest.raises(video.VideoError) as err:
        next(gen)
    assert err.value.reason == "no decodable frames"


# ---------------------------------------------------------------------------
# flow


def _shifted_pair(dx, dy, height=96, width=128, seed=0):
    """A smooth random texture and a copy translated by (dx, dy) pixels."""
    pad = 24
    rng = np.random.default_rng(seed)
    tex = rng.uniform(0, 255, (height + 2 * pad, width + 2 * pad)).astype(np.float32)
    tex = cv2.GaussianBlur(tex, (0, 0), 2.0)
    tex = cv2.normalize(tex, None, 0, 255, cv2.NORM_MINMAX)
    moved = cv2.warpAffine(tex, np.float32([[1, 0, dx], [0, 1, dy]]), (tex.shape[1], tex.shape[0]),
                           flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    crop = (slice(pad, pad + height), slice(pad, pad + width))
    to_u8 = lambda a: np.clip(a[crop] + 0.5, 0, 255).astype(np.uint8)  # noqa: E731
    return to_u8(tex), to_u8(moved)


@pytest.mark.parametrize("algorithm", ["tvl1", "dis"])
@pytest.mark.parametrize("dx,dy", [(2.0, 1.5), (-2.0, 0.0)])
def test_flow_recovers_translation(algorithm, dx, dy):
    prev, nxt = _shifted_pair(dx, dy)
    f = optical_flow.create_flow(algorithm)(prev, nxt)
    assert f.shape == (96, 128, 2) and f.dtype == np.float32
    inner = f[16:-16, 16:-16]
    mx, my = float(inner[..., 0].mean()), float(inner[..., 1].mean())
    assert np.sign(mx) == np.sign(dx)
    assert abs(math.hypot(mx, my) - math.hypot(dx, dy)) <= 0.1 * math.hypot(dx, dy)
    assert abs(mx - dx) <= 0.1 * abs(dx)
    if dy:
        assert my > 0 and abs(my - dy) <= 0.1 * abs(dy)
    else:
        assert abs(my) < 0.2


def test_flow_none_is_zero():
    prev, nxt = _shifted_pair(2.0, 0.0, 32, 40)
    f = optical_flow.create_flow("none")(prev, nxt)
    assert f.shape == (32, 40, 2) and f.dtype == np.float32
    assert not f.any()


def test_unknown_algorithm_names_accepted_values():
    with pytest.raises(MatEffNetError, match="^flow=farneback: ") as err:
        optical_flow.create_flow("farneback")
    for name in optical_flow.ALGORITHMS:
        assert name in str(err.value)


@pytest.mark.parametrize("algorithm,factory", [
    ("dis", (cv2, "DISOpticalFlow_create")),
    ("tvl1", (cv2.optflow, "DualTVL1OpticalFlow_create")),
])
def test_flow_object_is_created_once(monkeypatch, algorithm, factory):
    module, name = factory
    real = getattr(module, name)
    made = []

    def counting(*args):
        made.append(args)
        return real(*args)

    monkeypatch.setattr(module, name, counting)
    fn = optical_flow.create_flow(algorithm)
    prev, nxt = _shifted_pair(1.0, 0.0, 32, 40)
    first = fn(prev, nxt)
    second = fn(prev, nxt)
    assert len(made) == 1
    np.testing.assert_allclose(first, second, atol=1e-5)
    if algorithm == "dis":
        assert made[0] == (cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,)


def test_flow_rejects_bad_inputs():
    fn = optical_flow.create_flow("none")
    with pytest.raises(ValueError):
        fn(np.zeros((8, 8), np.uint8), np.zeros((8, 9), np.uint8))
    with pytest.raises(ValueError):
        fn(np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError):
        fn(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))


def test_to_gray():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[0, 2] = (0, 0, 255)
    rgb[1, :] = 200
    gray = optical_flow.to_gray(rgb)
    assert gray.shape == (2, 3) and gray.dtype == np.uint8
    # BT.601 luma: 0.299 R + 0.587 G + 0.114 B, so channel order matters.
    np.testing.assert_array_equal(gray, [[76, 150, 29], [200, 200, 200]])
    np.testing.assert_array_equal(optical_flow.to_gray(gray), gray)


@pytest.mark.parametrize("bound", [20.0, 15.0, 1.0, 3.7])
def test_quantize_round_trip(bound):
    v = np.linspace(-2 * bound, 2 * bound, 4001)
    q = quantize.quantize_flow(v, bound)
    assert q.dtype == np.uint8 and q.shape == v.shape
    assert np.all(np.diff(q.astype(int)) >= 0)  # monotonic
    assert set(np.unique(q)) == set(range(256))  # every level used
    back = quantize.dequantize_flow(q, bound)
    assert back.dtype == np.float32
    inside = np.abs(v) <= bound
    assert np.max(np.abs(back[inside] - v[inside])) <= bound / 255 * (1 + 1e-5)
    # Beyond ±bound values saturate at the ends.
    np.testing.assert_array_equal(q[v < -bound], 0)
    np.testing.assert_array_equal(q[v > bound], 255)
    np.testing.assert_allclose(back[v > bound], bound, rtol=1e-6)
    np.testing.assert_allclose(back[v < -bound], -bound, rtol=1e-6)


@pytest.mark.parametrize("bound", [20.0, 15.0, 1.0, 3.7, 1e-3])
def test_quantize_fixed_points(bound):
    # Zero lands exactly on 127.5, which rounds half up to 128.
    assert quantize.quantize_flow(np.array([0.0]), bound)[0] == 128
    assert quantize.quantize_flow(np.array([-bound, bound]), bound).tolist() == [0, 255]
    # Every level is its own dequantized value's image.
    levels = np.arange(256)
    np.testing.assert_array_equal(quantize.quantize_flow(quantize.dequantize_flow(levels, bound), bound), levels)
    np.testing.assert_allclose(quantize.dequantize_flow(levels, bound), np.linspace(-bound, bound, 256),
                               atol=bound * 1e-6)


def test_quantize_examples_and_errors():
    # step = 40/255; v = 2.0 -> (2/20 + 1) * 127.5 = 140.25 -> 140
    assert quantize.quantize_flow(np.array([2.0, -2.0, np.nan]), 20.0).tolist() == [140, 115, 128]
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            quantize.quantize_flow(np.zeros(3), bad)
        with pytest.raises(ValueError):
            quantize.dequantize_flow(np.zeros(3, np.uint8), bad)


# ---------------------------------------------------------------------------
# flow implementations and batches


def _fake_factory(calls):
    """Stands in for mat_effnet.ops.tvl1.batch_tvl1 (pair-local, cheap), recording batch shapes."""
    def factory(params=None):
        def fn(prev, nxt):
            calls.append(prev.shape)
            return np.stack([nxt.astype(np.float32) - prev, prev / np.float32(50)], axis=-1)
        return fn
    return factory


def _pairs(count, height=32, width=40):
    pairs = [_shifted_pair(1.0 + 0.5 * i, -0.5 * i, height, width, seed=i) for i in range(count)]
    return np.stack([p for p, _ in pairs]), np.stack([n for _, n in pairs])


@pytest.mark.parametrize("algorithm", ["tvl1", "dis", "none"])
def test_batch_flow_is_the_pairwise_flow_for_opencv(algorithm):
    prev, nxt = _pairs(3)
    batch = optical_flow.create_batch_flow(algorithm)
    assert batch.batch_size == 1 and batch.implementation == "opencv"
    got = batch(prev, nxt)
    assert got.shape == (3, 32, 40, 2) and got.dtype == np.float32
    # OpenCV's solvers keep state between calls (DIS's results move by up to
    # 5e-3 px), so the reference is one pairwise function over the same sequence.
    pairwise = optical_flow.create_flow(algorithm)
    for i in range(3):
        np.testing.assert_array_equal(got[i], pairwise(prev[i], nxt[i]))
    if algorithm != "none":  # the pairs differ, so their flows do
        assert abs(got[2, 8:-8, 8:-8, 0].mean() - got[0, 8:-8, 8:-8, 0].mean()) > 0.5


def test_keras_batch_flow_runs_full_compiled_batches(monkeypatch):
    from mat_effnet.ops import tvl1

    calls = []
    monkeypatch.setattr(tvl1, "batch_tvl1", _fake_factory(calls))
    prev, nxt = _pairs(7)
    fn = optical_flow.create_batch_flow("tvl1", "keras", batch_size=4)
    assert (fn.batch_size, fn.implementation, fn.algorithm) == (4, "keras", "tvl1")
    got = fn(prev, nxt)
    # 7 pairs: a batch of 4, then 3 filled up to 4: one compiled shape.
    assert calls == [(4, 32, 40), (4, 32, 40)]
    want = np.stack([nxt.astype(np.float32) - prev, prev / np.float32(50)], axis=-1)
    np.testing.assert_array_equal(got, want)
    # Pairwise through the same implementation: a batch of one.
    np.testing.assert_array_equal(optical_flow.create_flow("tvl1", "keras")(prev[5], nxt[5]), want[5])
    assert calls[-1] == (1, 32, 40)
    # One compiled function per process, whatever the batch size.
    assert optical_flow._keras_tvl1() is optical_flow._keras_tvl1()
    with pytest.raises(MatEffNetError, match="next_gray"):
        fn(prev, nxt[:, :, :-1])


@pytest.mark.parametrize("call", [
    lambda: optical_flow.create_flow("dis", "keras"),
    lambda: optical_flow.create_batch_flow("none", "keras"),
    lambda: optical_flow.create_batch_flow("tvl1", "cuda"),
    lambda: optical_flow.create_flow("tvl1", "torch"),
])
def test_bad_implementations_name_the_argument(call):
    with pytest.raises(MatEffNetError, match=r"^flow_implementation=\w+: "):
        call()


def test_bad_batch_size():
    with pytest.raises(MatEffNetError, match="flow_batch=0: "):
        optical_flow.create_batch_flow("tvl1", "keras", batch_size=0)


def test_default_implementation_is_the_faster_one_per_algorithm(monkeypatch):
    # Keras's TV-L1 measured faster than OpenCV's on CPU as well (see the
    # function's docstring), so the machine does not change the choice.
    monkeypatch.setattr(optical_flow, "accelerators", lambda: 1 / 0)  # not even asked
    assert optical_flow.default_implementation("tvl1") == "keras"
    assert optical_flow.default_implementation("dis") == "opencv"
    assert optical_flow.default_implementation("none") == "opencv"


# ---------------------------------------------------------------------------
# encode: settings and the one video -> records seam


def test_encode_settings_defaults_validation_and_dicts():
    s = encode.EncodeSettings()
    assert s.to_dict() == {"short_side": 256, "flow": "tvl1", "flow_implementation": "opencv",
                           "flow_bound": 20.0, "jpeg_quality": 90, "chunk_frames": 1000}
    other = encode.EncodeSettings(short_side=64, flow="dis", flow_bound=15.0)
    assert encode.EncodeSettings.from_dict({**other.to_dict(), "dataset": "ucf101"}) == other
    assert encode.EncodeSettings.from_dict({}) == s
    for kw, message in [({"short_side": -1}, "short_side=-1: "), ({"flow": "x"}, "flow=x: "),
                        ({"flow_bound": 0.0}, "flow_bound=0.0: "),
                        ({"jpeg_quality": 101}, "jpeg_quality=101: "),
                        ({"chunk_frames": 1}, "chunk_frames=1: "),
                        ({"flow": "dis", "flow_implementation": "keras"},
                         "flow_implementation=keras: ")]:
        with pytest.raises(MatEffNetError, match="^" + message):
            encode.EncodeSettings(**kw)


def test_encode_video_is_what_the_builder_writes_and_batching_does_not_matter(tmp_path):
    from data_prep import layouts, work_files
    from data_prep.prep_config import PrepConfig
    from mat_effnet import records

    path = str(tmp_path / "v.avi")
    write_video(path, index_frames(8, 48, 64))
    settings = encode.EncodeSettings(short_side=32, flow="dis", chunk_frames=5)
    stats = {}
    recs = list(encode.encode_video(path, settings, video_id="c/v", label=3, class_name="c",
                                    stats=stats))
    assert [(r.chunk_index, r.frame_offset, len(r.rgb), len(r.flow_x)) for r in recs] == [
        (0, 0, 5, 4), (1, 5, 3, 2)]
    assert (recs[0].video_id, recs[0].label, recs[0].height, recs[0].width) == ("c/v", 3, 32, 43)
    assert stats["frames"] == 8 and stats["records"] == 2 and stats["height"] == 32
    # The builder's work file for the same video holds these records, byte for byte.
    import tensorflow as tf

    entry = layouts.VideoEntry("c/v", path, 3, "c", "train")
    cfg = PrepConfig(dataset="folder", data_root=str(tmp_path),
                     out_dir=str(tmp_path / "out"), flow="dis", short_side=32,
                     chunk_frames=5)
    work_dir = work_files.work_dir(cfg.out_dir, "train")
    os.makedirs(work_dir)
    result = work_files.video_result(cfg, "train", entry)
    assert (result["status"], result["records"], result["frames"]) == ("done", 2, 8)
    written = tf.data.TFRecordDataset(os.path.join(work_dir, result["key"] + ".tfrecord"))
    assert [r.numpy() for r in written] == [p for r in recs for p in records.serialize_group(r)]
    # Its marker gives each group's (offset, header length) in that file.
    groups = records.serialize_group(recs[0])
    assert result["groups"] == [[0, len(groups[0])], [records.framed_size(groups),
                                                      len(records.serialize_group(recs[1])[0])]]

    # A pair-local flow handed over 1, 3 or all pairs per call, and the
    # decode / assemble halves: the same bytes.
    def fake(step):
        def fn(prev, nxt):
            assert len(prev) <= step
            return np.stack([nxt.astype(np.float32) - prev, prev / np.float32(40)], axis=-1)
        fn.batch_size = step
        return fn

    out = [[records.serialize(r) for r in encode.encode_video(path, settings, flow_fn=fake(k))]
           for k in (1, 3, 100)]
    assert out[0] == out[1] == out[2]
    decoded = encode.decode_video(path, settings)
    assert decoded.pairs == 6 and [len(g) for g in decoded.grays] == [5, 3]
    quantized = [quantize.quantize_flow(fake(100)(g[:-1], g[1:]), settings.flow_bound)
                 for g in decoded.grays]
    halves = [records.serialize(r) for r in encode.assemble_records(
        decoded, quantized, settings, video_id=os.path.basename(path))]
    assert halves == out[0]
    # Without flow, no gray frames are kept and records carry none.
    none = encode.EncodeSettings(short_side=32, flow="none")
    assert encode.decode_video(path, none).grays == [None]
    assert list(encode.encode_video(path, none))[0].flow_x == []


def test_encode_video_errors(tmp_path):
    one = str(tmp_path / "one.avi")
    write_video(one, index_frames(1, 32, 32))
    for fn in (lambda: list(encode.encode_video(one, encode.EncodeSettings(flow="none"))),
               lambda: encode.decode_video(one, encode.EncodeSettings(flow="none"))):
        with pytest.raises(video.VideoError) as err:
            fn()
        assert err.value.reason == "only 1 frame"
    with pytest.raises(video.VideoError) as err:
        list(encode.encode_video(str(tmp_path / "nope.avi"), encode.EncodeSettings()))
    assert err.value.reason == "missing file"
