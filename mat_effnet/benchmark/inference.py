"""Inference figures: the fused two-stream model's clips/s, and prediction latency by part.

The fused model (paper Fig. 1: both streams, late fusion) runs
`predict_on_batch` on one in-memory clip of TSN's 25 test segments x 1 crop.
`mat_effnet.serving.predict_video.predict_video` then runs on a generated 10-second
video at UCF101's 320x240, prepared exactly as the training data (decode,
resize, flow, JPEG, records); its wall time is split into decode, flow,
JPEG+records and the models by timing decode and flow again in separate
passes.

Prediction at scale (``at_scale``; `scale_figures`): the same
models, saved, predict ``scale_videos`` generated videos in one process
(`mat_effnet.serving.predict_many`) against a loop of the single-video CLI over
some of them (each run pays the start-up: TF import, model load); and the
timeline (`mat_effnet.serving.timeline` on `mat_effnet.serving.streaming`) runs on a short
and a long video, each in a process of its own so that its peak RSS is its
own, with the time of each stage (decode, resize, flow, quantize, JPEG,
models) and the latency of one window.
"""

from __future__ import annotations

import os

from mat_effnet.encoding.encode import EncodeSettings
from mat_effnet.benchmark import prep_figures
from mat_effnet.benchmark.report import VIDEO_FPS, Context, Stopwatch, rate, timed_iterations
from mat_effnet.benchmark.settings import ClipSettings, InferenceSettings


def _flow_pass(frames, flow: str, implementation: str) -> None:
    """Flow over consecutive decoded frames, as prediction computes it."""
    from mat_effnet.ops import optical_flow as flow_lib

    gray = [flow_lib.to_gray(f) for f in frames]
    create_batch = getattr(flow_lib, "create_batch_flow", None)
    if create_batch is None:  # the pairwise contract only
        fn = flow_lib.create_flow(flow)
        for prev, nxt in zip(gray[:-1], gray[1:]):
            fn(prev, nxt)
        return
    import numpy as np

    fn = create_batch(flow, implementation)
    step = max(1, getattr(fn, "batch_size", 1))
    for start in range(0, len(gray) - 1, step):
        stop = min(start + step, len(gray) - 1)
        fn(np.stack(gray[start:stop]), np.stack(gray[start + 1:stop + 1]))


def measure(s: InferenceSettings, clip: ClipSettings, ctx: Context,
            num_classes: int = 101, warmup: int = 1) -> dict:
    """Fused two-stream clips/s, and predict_video's latency split into its parts."""
    import keras
    import tensorflow as tf

    from mat_effnet.ops import video
    from mat_effnet.serving import predict_video
    from mat_effnet.modeling import models

    keras.utils.set_random_seed(ctx.seed)
    segments, size = clip.test_segments, clip.image_size
    kw = dict(num_segments=None, image_size=size, flow_length=clip.flow_length,
              backbone=clip.backbone, weights=None)
    spatial = models.build_stream(num_classes, "spatial", **kw)
    temporal = models.build_stream(num_classes, "temporal", **kw)
    fused = models.build_two_stream(spatial, temporal)
    rgb = tf.random.uniform((1, segments, size, size, 3), 0, 255, seed=ctx.seed)
    flw = tf.random.uniform((1, segments, size, size, 2 * clip.flow_length), 0, 255, seed=ctx.seed)
    seconds = timed_iterations(lambda: fused.predict_on_batch([rgb, flw]), s.infer_clips, warmup)
    figures = {"inference.two_stream.clips_per_s": ctx.figure(
        rate(s.infer_clips, seconds), "clips/s",
        {"model": f"build_two_stream({clip.backbone} + attention, both streams)",
         "segments": segments, "crops": 1, "image_size": size, "flow_length": clip.flow_length,
         "batch_size": 1, "clips": s.infer_clips, "images_per_clip": 2 * segments,
         "call": "keras Model.predict_on_batch, fixed in-memory clip"},
        seconds=seconds)}

    path = os.path.join(ctx.work_dir, "predict", "clip.avi")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    frames_written = prep_figures.write_long_video(path, s.predict_seconds, VIDEO_FPS, s.predict_height,
                                           s.predict_width, ctx.seed)
    with Stopwatch() as sw_decode:
        frames = list(video.iter_frames(path, s.predict_short_side))
    with Stopwatch() as sw_flow:
        _flow_pass(frames, s.predict_flow, s.predict_flow_implementation)
    stored = f"{frames[0].shape[1]}x{frames[0].shape[0]}"
    del frames
    settings = EncodeSettings(short_side=s.predict_short_side, flow=s.predict_flow,
                              flow_implementation=s.predict_flow_implementation)
    with Stopwatch() as sw_total:
        out = predict_video.predict_video(path, spatial, temporal, settings, num_segments=segments)
    model_s = out["spatial_model_s"] + out["temporal_model_s"]
    base = {"video_seconds": frames_written / VIDEO_FPS, "video_frames": frames_written,
            "source_size": f"{s.predict_width}x{s.predict_height}", "stored_size": stored,
            "short_side": s.predict_short_side, "flow": s.predict_flow,
            "flow_implementation": s.predict_flow_implementation, "segments": segments,
            "crops": 1, "image_size": size, "jpeg_quality": settings.jpeg_quality,
            "settings_class": type(settings).__module__ + "." + type(settings).__name__,
            "cv2_threads": "OpenCV default"}
    parts = {
        "total": (sw_total.seconds, "wall time of inference.predict_video"),
        "decode": (sw_decode.seconds, "separate pass: video.iter_frames (decode + resize)"),
        "flow": (sw_flow.seconds, "separate pass: to_gray + the flow function over the decoded "
                                  "frames (create_batch_flow, in its batch size)"),
        "jpeg_and_records": (max(out["prepare_s"] - sw_decode.seconds - sw_flow.seconds, 0.0),
                             "predict_video's prepare_s - decode - flow (JPEG encoding, "
                             "quantization, serialization)"),
        "models": (model_s, "predict_video's spatial_model_s + temporal_model_s (record parse, "
                            "test sampling, both streams eagerly)"),
    }
    for part, (value, how) in parts.items():
        extra = {"prepare_s": out["prepare_s"]} if part == "total" else {}
        figures[f"inference.predict.{part}_s"] = ctx.figure(value, "s", dict(base, measured=how),
                                                            **extra)
    if s.at_scale:
        figures.update(scale_figures(s, spatial, temporal, ctx))
    return figures


# ---------------------------------------------------------------------------
# Prediction at scale

def _save_models(spatial, temporal, settings: EncodeSettings, work: str) -> dict:
    """The timed models with their preparation, as a user's trained ones: {stream: (path, model)}."""
    out = {}
    prep_dict = dict(settings.to_dict(), schema_version=2)
    for name, model in (("spatial", spatial), ("temporal", temporal)):
        path = os.path.join(work, f"{name}.keras")
        fresh = _with_preparation(model, prep_dict)
        fresh.save(path)
        out[name] = (path, fresh)
    return out


def _with_preparation(model, preparation: dict):
    """``model`` rebuilt with the same weights and ``preparation`` in its identity."""
    from mat_effnet.modeling import model_identity, models

    ident = model_identity.identity(model)
    num_classes = int(model.outputs[0].shape[-1])
    fresh = models.build_stream(
        num_classes, ident.stream, backbone=ident.backbone, image_size=ident.image_size[0],
        num_segments=ident.num_segments, flow_length=ident.flow_length or 10, weights=None,
        class_names=[f"class_{i}" for i in range(num_classes)], dataset="benchmark",
        preparation=preparation)
    fresh.set_weights(model.get_weights())
    return fresh


def _child(code: str) -> dict:
    """Runs ``code`` (which prints one JSON line last) in a fresh Python; its answer."""
    import json
    import subprocess
    import sys

    from mat_effnet.common import tf_startup

    env = dict(os.environ, **{tf_startup.ENV: "1", "TF_CPP_MIN_LOG_LEVEL": "3"})
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       check=False)
    if r.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({r.returncode}): {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def timeline_child(video_path: str, spatial_path: str, temporal_path: str, window_s: float,
                   stride_s: float, num_segments: int) -> None:
    """In a child process: loads the models, runs the timeline, prints its figures as JSON."""
    import json
    import resource

    from mat_effnet.evaluation import protocol
    from mat_effnet.serving import predict_video, timeline

    streams = {s: (p, protocol.load_model(p)) for s, p in (("spatial", spatial_path),
                                                            ("temporal", temporal_path))}
    resolved = predict_video.resolve(streams, EncodeSettings())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = timeline.video_timeline(video_path, streams["spatial"][1], streams["temporal"][1],
                                  resolved.settings, window_s, stride_s,
                                  num_segments=num_segments)
    windows = out.pop("windows")
    out["windows"] = len(windows)
    out["rss_before_mb"] = round(before, 1)
    print(json.dumps(out))


def _cli_seconds(video: str, spatial_path: str, temporal_path: str, segments: int) -> float:
    import subprocess
    import sys

    with Stopwatch() as sw:
        subprocess.run([sys.executable, "-m", "experiments.predict", f"--video={video}",
                        f"--spatial_model={spatial_path}", f"--temporal_model={temporal_path}",
                        f"--num_segments={segments}", "--json"],
                       check=True, capture_output=True, text=True)
    return sw.seconds


def scale_figures(s: InferenceSettings, spatial, temporal, ctx: Context) -> dict:
    """Many videos in one process against the CLI loop; the timeline at two lengths."""
    from mat_effnet.ops import video
    from mat_effnet.serving import predict_many, predict_video
    from mat_effnet.evaluation import protocol

    work = os.path.join(ctx.work_dir, "predict_at_scale")
    os.makedirs(work, exist_ok=True)
    settings = EncodeSettings(short_side=s.predict_short_side, flow=s.predict_flow,
                              flow_implementation=s.predict_flow_implementation)
    streams = _save_models(spatial, temporal, settings, work)
    (spatial_path, spatial), (temporal_path, temporal) = streams["spatial"], streams["temporal"]
    segments = protocol.stream_spec(spatial).num_segments or 25
    base = {"flow": s.predict_flow, "flow_implementation": s.predict_flow_implementation,
            "short_side": s.predict_short_side, "source_size": f"{s.predict_width}x"
            f"{s.predict_height}", "segments": segments, "crops": 1}
    figures = {}

    # Many videos: one process against the CLI loop.
    paths = []
    for i in range(s.scale_videos):
        path = os.path.join(work, "videos", f"v{i}.avi")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        prep_figures.write_long_video(path, s.scale_video_seconds, VIDEO_FPS, s.predict_height,
                              s.predict_width, ctx.seed + i)
        paths.append(path)
    resolved = predict_video.resolve(streams, settings)
    output = os.path.join(work, "preds.jsonl")
    if os.path.exists(output):
        os.remove(output)
    with Stopwatch() as sw_many:
        summary = predict_many.predict_many(
            paths, {"spatial": spatial, "temporal": temporal}, resolved, output,
            workers=s.scale_workers, num_segments=segments)
    import json

    with open(output) as f:
        rows = [json.loads(line) for line in f]
    models_per_video = sum(r["seconds"].get("spatial_model_s", 0) +
                           r["seconds"].get("temporal_model_s", 0) for r in rows) / len(rows)
    frames = list(video.iter_frames(paths[0], s.predict_short_side))
    with Stopwatch() as sw_flow:
        _flow_pass(frames, s.predict_flow, s.predict_flow_implementation)
    del frames
    cli = [_cli_seconds(p, spatial_path, temporal_path, segments)
           for p in paths[:s.scale_cli_videos]]
    many = dict(base, videos=s.scale_videos, video_seconds=s.scale_video_seconds,
                workers=s.scale_workers, batch_clips=8)
    per_video = sw_many.seconds / s.scale_videos
    figures["inference.many.videos_per_s"] = ctx.figure(
        s.scale_videos / sw_many.seconds, "videos/s",
        dict(many, measured="batch_predict.predict_many, models loaded before"),
        seconds=sw_many.seconds, failed=summary["failed"])
    figures["inference.many.cli_loop_videos_per_s"] = ctx.figure(
        len(cli) / sum(cli), "videos/s",
        dict(many, videos=len(cli), measured="one mat-effnet-predict --video run per video "
                                             "(start-up, model load and TF import included)"),
        seconds=sum(cli))
    figures["inference.many.speedup_over_cli_loop"] = ctx.figure(
        (sum(cli) / len(cli)) / per_video, "x", dict(many, measured="CLI s/video over "
                                                                     "predict_many s/video"))
    figures["inference.many.per_video_over_flow_and_models"] = ctx.figure(
        per_video / (sw_flow.seconds + models_per_video), "x",
        dict(many, measured="predict_many s/video over (one video's flow pass + its rows' "
                            "mean model seconds); the goal is <= 1.15 with one flow "
                            "process"),
        flow_s=sw_flow.seconds, models_s=models_per_video, per_video_s=per_video)

    # The timeline at two lengths, each in its own process.
    for label, seconds in (("short", s.timeline_short_s), ("long", s.timeline_long_s)):
        path = os.path.join(work, f"timeline_{label}.avi")
        frames_written = prep_figures.write_long_video(path, seconds, VIDEO_FPS, s.predict_height,
                                               s.predict_width, ctx.seed)
        out = _child(f"from mat_effnet.benchmark.inference import timeline_child; "
                     f"timeline_child({path!r}, {spatial_path!r}, {temporal_path!r}, "
                     f"{s.timeline_window_s!r}, {s.timeline_stride_s!r}, {segments!r})")
        conf = dict(base, video_seconds=seconds, video_frames=frames_written,
                    window_s=s.timeline_window_s, stride_s=s.timeline_stride_s)
        total = out["seconds"]["total"]
        figures[f"inference.timeline.{label}.frames_per_s"] = ctx.figure(
            out["frames"] / total, "frames/s",
            dict(conf, measured="timeline.video_timeline in a fresh process, models loaded "
                                "before"), seconds=out["seconds"], windows=out["windows"])
        figures[f"inference.timeline.{label}.peak_rss_mb"] = ctx.figure(
            out["peak_rss_mb"], "MB", dict(conf, measured="ru_maxrss of that process"),
            rss_before_mb=out["rss_before_mb"], max_frames_held=out["max_frames_held"])
        figures[f"inference.timeline.{label}.window_latency_s"] = ctx.figure(
            out["seconds"]["models"] / max(out["windows"], 1), "s",
            dict(conf, measured="both streams' clip and model time per window"))
    return figures
