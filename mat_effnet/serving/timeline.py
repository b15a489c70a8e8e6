"""A long video as a timeline: which action, when.

`video_timeline` decodes a file one frame at a time with its decoder
timestamps (`mat_effnet.ops.video.iter_timed_frames`, so variable-frame-rate
video is dated right) and pushes every frame through a
`mat_effnet.serving.streaming.StreamingPredictor`: frames are decoded, flowed and
dropped as the windows pass, so memory does not grow with the video's
length, and each flow pair is computed once however much windows overlap.
Each window is scored as a clip of the same frames is by the single-clip
path (`mat_effnet.serving.predict_video.predict_video`; TSN's test sampling inside the
window, paper Sect. 3.3).

`write_png` draws the result as a strip: the top-1 class of each window
over time, above the fused scores of the classes that are ever top-1.
"""

from __future__ import annotations

import resource
import time

import numpy as np

from mat_effnet.serving.streaming import StreamingPredictor


def _decode_side(settings: dict) -> int:
    """Decode at the streams' common short side; at full size when they differ
    (each stream then resizes from the original, as `iter_frames` would)."""
    sides = {s.short_side for s in settings.values()}
    return sides.pop() if len(sides) == 1 else 0


def video_timeline(path: str, spatial_model, temporal_model, settings: dict, window_s: float,
                   stride_s: float | None = None, *, num_segments: int = 25,
                   fusion_weights=(1.0, 1.0), top_k: int = 5, class_names=None,
                   flow_fn=None) -> dict:
    """The windows of ``path`` with their times and scores, and what it cost.

    Returns ``{"windows": [WindowPrediction.to_dict()...], "frames",
    "duration_s", "window_s", "stride_s", "fusion_weights": {stream: w},
    "seconds": {stage: s},
    "max_frames_held", "peak_rss_mb"}``. Raises `mat_effnet.ops.video.VideoError`
    for a file that cannot be decoded.
    """
    from mat_effnet.ops import video

    return frames_timeline(video.iter_timed_frames(path, _decode_side(settings)), spatial_model,
                           temporal_model, settings, window_s, stride_s,
                           num_segments=num_segments, fusion_weights=fusion_weights,
                           top_k=top_k, class_names=class_names, flow_fn=flow_fn)


def frames_timeline(timed_frames, spatial_model, temporal_model, settings: dict,
                    window_s: float, stride_s: float | None = None, *, num_segments: int = 25,
                    fusion_weights=(1.0, 1.0), top_k: int = 5, class_names=None,
                    flow_fn=None) -> dict:
    """`video_timeline` of ``(timestamp_s, RGB frame)`` pairs: decoded frames, or a live source.

    Frames of any size: each stream resizes them as the decoder would.
    """
    predictor = StreamingPredictor(spatial_model, temporal_model, window_s, stride_s,
                                   settings=settings, num_segments=num_segments,
                                   fusion_weights=fusion_weights, flow_fn=flow_fn)
    windows, frames, first, last = [], 0, None, None
    decode = 0.0
    start = time.perf_counter()
    stream = iter(timed_frames)
    while True:
        t = time.perf_counter()
        item = next(stream, None)
        decode += time.perf_counter() - t
        if item is None:
            break
        stamp, frame = item
        first = stamp if first is None else first
        last = stamp
        frames += 1
        windows += predictor.push(frame, stamp)
    windows += predictor.finish()
    seconds = {"decode": decode, **predictor.times, "total": time.perf_counter() - start}
    return {"windows": [w.to_dict(top_k, class_names) for w in windows],
            "frames": frames, "duration_s": (last - first) if frames else 0.0,
            "window_s": predictor.window_s, "stride_s": predictor.stride_s,
            "fusion_weights": {lane.stream: float(w)
                               for lane, w in zip(predictor.lanes, predictor.weights)},
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
            "max_frames_held": predictor.max_held,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def write_png(result: dict, path: str, class_names=None, max_classes: int = 8) -> list[str]:
    """Draws the timeline of `video_timeline`'s ``result``; returns the classes shown.

    Top: one bar per window at its time span, coloured by its top-1 class
    (overlapping windows are drawn as their stride's share, centred on the
    window). Bottom: the fused score of each class that is ever top-1 (at
    most ``max_classes``, the most frequent), at each window's centre.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mat_effnet.common import atomic

    windows = result["windows"]
    if not windows:
        raise ValueError("no windows to draw")
    tops = [w["top"][0] for w in windows]
    counts: dict = {}
    for t in tops:
        counts[t["index"]] = counts.get(t["index"], 0) + 1
    shown = sorted(counts, key=lambda i: -counts[i])[:max_classes]
    names = {t["index"]: t["class"] for w in windows for t in w["top"]}
    label = {i: (class_names[i] if class_names else names.get(i, f"class_{i}")) for i in shown}
    colours = {i: plt.cm.tab10(n % 10) for n, i in enumerate(shown)}
    centres = np.array([(w["start_s"] + w["end_s"]) / 2 for w in windows])
    share = min(result.get("stride_s") or np.inf, result.get("window_s") or np.inf)

    fig, (strip, curves) = plt.subplots(2, 1, figsize=(10, 3.6), sharex=True,
                                        gridspec_kw={"height_ratios": [1, 3]})
    for w, c, t in zip(windows, centres, tops):
        half = min(share, w["end_s"] - w["start_s"]) / 2
        colour = colours.get(t["index"], (0.8, 0.8, 0.8, 1.0))
        strip.barh(0, 2 * half, left=c - half, height=1.0, color=colour,
                   alpha=0.35 + 0.65 * t["probability"])
    strip.set_yticks([])
    strip.set_ylabel("top-1", rotation=0, ha="right", va="center")
    weights = result.get("fusion_weights") or {}
    for i in shown:
        fused = []
        for w in windows:
            if weights and all(w.get(stream) is not None for stream in weights):
                # Every class's fused score, not only the top-k's.
                fused.append(sum(weight * w[stream][i] for stream, weight in weights.items()))
            else:
                fused.append({t["index"]: t["probability"] for t in w["top"]}.get(i, np.nan))
        curves.plot(centres, fused, marker="o", ms=3, color=colours[i], label=label[i])
    curves.set_ylim(0, 1)
    curves.set_ylabel("fused score")
    curves.set_xlabel("time (s, decoder timestamps)")
    curves.legend(loc="upper right", fontsize=8, ncol=min(len(shown), 4))
    fig.suptitle(f"{len(windows)} windows of {result['window_s']:g} s every "
                 f"{result['stride_s']:g} s", fontsize=9)
    fig.tight_layout()
    with atomic.replacing(path, ".png") as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return [label[i] for i in shown]
