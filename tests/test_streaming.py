"""Streaming prediction and the long-video timeline (issue 16, parts 2 and 3).

Tiny saved models (resnet18, 32 px, flow_length 2, DIS flow) and lossless
FFV1 videos with uneven frame times (`tests/stream_helpers.py`). Tested: a
window's scores equal the single-clip path on a lossless cut of the same
frames, exactly (tolerance 1e-6: both paths decode the same JPEG bytes with
the same decoder, so only float summation order could differ); windows and
timestamps of a variable-frame-rate file; frames held do not grow with the
stream's length; each flow pair computed once; the CLI's --json and
--timeline_png.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mat_effnet.ops import optical_flow as flow_lib
from mat_effnet.ops import video
from mat_effnet.evaluation import protocol
from mat_effnet.serving import predict_video, streaming, timeline
from mat_effnet.common.errors import MatEffNetError

sys.path.insert(0, os.path.dirname(__file__))
import stream_helpers as H  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEGMENTS = 5  # positions per window: fewer than TSN's 25, for speed


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stream")
    paths = H.save_models(tmp)
    streams = {s: (p, protocol.load_model(p)) for s, p in zip(("spatial", "temporal"), paths)}
    resolved = predict_video.resolve(streams, predict_video.PrepSettings())
    frames = H.two_actions(n=24)
    # Variable frame rate: gaps of 20..90 ms, and one pause of 0.3 s.
    gaps = np.random.default_rng(1).uniform(0.02, 0.09, len(frames) - 1)
    gaps[30] = 0.3
    times = np.round(np.concatenate([[0.0], np.cumsum(gaps)]), 3)
    path = H.write_lossless(tmp / "two_actions.mkv", frames, times)
    return dict(tmp=tmp, paths=paths, streams=streams, resolved=resolved, video=path,
                times=times, frames=frames)


def _models(setup):
    return setup["streams"]["spatial"][1], setup["streams"]["temporal"][1]


def test_decoder_timestamps_of_a_variable_frame_rate_file(setup):
    stamps = [t for t, _ in video.iter_timed_frames(setup["video"], 40)]
    np.testing.assert_allclose(stamps, setup["times"], atol=1e-6)
    assert not np.allclose(np.diff(stamps), np.diff(stamps)[0])  # really variable


def test_timeline_windows_by_timestamps(setup):
    s, t = _models(setup)
    out = timeline.video_timeline(setup["video"], s, t, setup["resolved"].settings, 0.8, 0.5,
                                  num_segments=SEGMENTS, class_names=H.CLASSES, top_k=2)
    times, last = setup["times"], setup["times"][-1]
    windows = out["windows"]
    full = int(np.floor((last - 0.8) / 0.5)) + 1  # windows whose end is at or before the last frame
    assert [w["start_s"] for w in windows[:full]] == pytest.approx([0.5 * k for k in range(full)])
    for w in windows[:full]:
        assert w["end_s"] == pytest.approx(w["start_s"] + 0.8)
    # The last window is the shorter one that covers the frames no full window did.
    tail = windows[full:]
    assert len(tail) == 1 and tail[0]["start_s"] == pytest.approx(0.5 * full)
    assert windows[full - 1]["end_s"] <= last < tail[0]["end_s"] <= tail[0]["start_s"] + 0.8
    for w in windows:  # each window holds exactly the frames shown inside it
        assert w["frames"] == int(np.sum((times >= w["start_s"] - 1e-9)
                                         & (times < w["start_s"] + 0.8 - 1e-9)))
        assert len(w["top"]) == 2 and len(w["spatial"]) == len(w["temporal"]) == 3
        assert w["top"][0]["probability"] >= w["top"][1]["probability"]
        fused = 0.5 * np.array(w["spatial"]) + 0.5 * np.array(w["temporal"])
        assert w["top"][0]["probability"] == pytest.approx(fused.max(), abs=1e-6)
    assert out["frames"] == len(times) and out["duration_s"] == pytest.approx(last, abs=1e-6)


def test_window_scores_equal_the_single_clip_path(setup):
    """Each window against `inference.predict_video` on a lossless cut of its frames."""
    s, t = _models(setup)
    settings = setup["resolved"].settings
    out = timeline.video_timeline(setup["video"], s, t, settings, 1.0, 0.6,
                                  num_segments=SEGMENTS)
    decoded = list(video.iter_timed_frames(setup["video"], 40))
    # Windows in the first action, across the change, and in the second.
    for w in (out["windows"][0], out["windows"][len(out["windows"]) // 2], out["windows"][-1]):
        frames = [f for ts, f in decoded if w["start_s"] <= ts < w["start_s"] + 1.0]
        assert len(frames) == w["frames"] >= 2
        cut = H.write_lossless(setup["tmp"] / f"cut_{w['start_s']:.1f}.mkv", frames,
                               np.arange(len(frames)) / 25)
        ref = predict_video.predict_video(cut, s, t, settings, num_segments=SEGMENTS)
        np.testing.assert_allclose(w["spatial"], ref["spatial"], atol=1e-6)
        np.testing.assert_allclose(w["temporal"], ref["temporal"], atol=1e-6)


def _counting_flow():
    inner = flow_lib.create_batch_flow("dis")
    calls = []

    def fn(prev, nxt):
        calls.append(len(prev))
        return inner(prev, nxt)

    fn.batch_size = inner.batch_size
    return fn, calls


def _run_stream(setup, seconds: float, fps: float = 25.0, window_s=0.4, stride_s=0.2,
                flow_fn=None):
    s, t = _models(setup)
    predictor = streaming.StreamingPredictor(
        s, t, window_s, stride_s, settings=setup["resolved"].settings, num_segments=2,
        flow_fn=flow_fn)
    frames = setup["frames"]
    n = int(seconds * fps)
    windows, most = [], 0
    for i in range(n):
        windows += predictor.push(frames[i % len(frames)], i / fps)
        most = max(most, predictor.held, *(len(lane.items) for lane in predictor.lanes))
    windows += predictor.finish()
    return predictor, windows, most, n


def test_frames_held_do_not_grow_with_length(setup):
    short, w_short, held_short, _ = _run_stream(setup, 1.0)
    long, w_long, held_long, n = _run_stream(setup, 6.0)
    assert len(w_long) > 4 * len(w_short)
    # One window of 0.4 s at 25 fps is 10 frames; the frame that closes it comes in
    # after the window is scored and its first frames dropped.
    assert held_short == held_long == 10
    assert long.max_held == 10 and long.held <= 10


def test_each_flow_pair_is_computed_once(setup):
    fn, calls = _counting_flow()
    # Windows overlap 4x (0.8 s every 0.2 s), yet each pair is flowed once.
    _, windows, _, n = _run_stream(setup, 2.0, window_s=0.8, stride_s=0.2, flow_fn=fn)
    assert sum(calls) == n - 1 and len(windows) >= 7


def test_push_checks_frames_and_timestamps(setup):
    s, t = _models(setup)
    p = streaming.StreamingPredictor(s, t, 1.0, settings=setup["resolved"].settings)
    p.push(setup["frames"][0], 5.0)
    with pytest.raises(MatEffNetError, match=r"^timestamp=5.0: not after"):
        p.push(setup["frames"][1], 5.0)
    with pytest.raises(MatEffNetError, match="uint8 RGB"):
        p.push(setup["frames"][1].astype(np.float32), 6.0)
    with pytest.raises(MatEffNetError, match=r"^stride_s=0"):
        streaming.StreamingPredictor(s, t, 1.0, 0, settings=setup["resolved"].settings)


def test_cli_timeline_json_and_png(setup):
    png = setup["tmp"] / "timeline.png"
    r = subprocess.run(
        [sys.executable, "-m", "experiments.predict", f"--video={setup['video']}",
         f"--spatial_model={setup['paths'][0]}", f"--temporal_model={setup['paths'][1]}",
         "--window_s=1", "--stride_s=0.5", "--num_segments=3", "--top_k=2", "--json",
         f"--timeline_png={png}"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
        timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["windows"][0]["start_s"] == 0.0 and out["windows"][1]["start_s"] == 0.5
    assert set(out["windows"][0]) == {"start_s", "end_s", "frames", "top", "spatial",
                                      "temporal"}
    assert out["preparation"]["temporal"]["flow"] == "dis"
    assert out["fusion_weights"] == {"spatial": 0.5, "temporal": 0.5}
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
