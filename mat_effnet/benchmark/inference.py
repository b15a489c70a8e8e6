"""Inference figures: the fused two-stream model's clips/s, and prediction latency by part.

The fused model (paper Fig. 1: both streams, late fusion) runs
`predict_on_batch` on one in-memory clip of TSN's 25 test segments x 1 crop.
`mat_effnet.inference.predict_video` then runs on a generated 10-second
video at UCF101's 320x240, prepared exactly as the training data (decode,
resize, flow, JPEG, records); its wall time is split into decode, flow,
JPEG+records and the models by timing decode and flow again in separate
passes.
"""

from __future__ import annotations

import os

from data_prep.encode import EncodeSettings
from mat_effnet.benchmark import prep
from mat_effnet.benchmark.report import VIDEO_FPS, Context, Stopwatch, rate, timed_iterations
from mat_effnet.benchmark.settings import ClipSettings, InferenceSettings


def _flow_pass(frames, flow: str, implementation: str) -> None:
    """Flow over consecutive decoded frames, as prediction computes it."""
    from data_prep import flow as flow_lib

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

    from data_prep import video
    from mat_effnet import inference, models

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
    frames_written = prep.write_long_video(path, s.predict_seconds, VIDEO_FPS, s.predict_height,
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
        out = inference.predict_video(path, spatial, temporal, settings, num_segments=segments)
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
    return figures
