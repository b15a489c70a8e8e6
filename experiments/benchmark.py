"""``mat-effnet-benchmark``: throughput, memory and latency figures of the whole system.

    mat-effnet-benchmark [--quick] [--output=benchmark.json] [--sections=flow,prep,...]

Writes one JSON document (``--output``) and prints a short table.  Every
figure is ``{"value", "unit", "settings", "machine"}`` (see
`mat_effnet.benchmarking.figure`); the document's ``machine`` block holds
the CPU model, cores, clock, SIMD flags, GPUs and the TensorFlow / Keras /
OpenCV versions.  Sections:

* ``flow``: TV-L1 and DIS pairs/s at 340x256 with 1 worker and with a pool
  of ``os.cpu_count()`` one-thread workers, and DIS's mean end-point error
  against TV-L1 on the same synthetic pairs with real motion.
* ``prep``: ``data_prep.builder.build`` on a small generated UCF101-like set
  (videos/s, MB written per minute of video, 2-worker speed-up over 1
  worker), and the peak RSS of a child process preparing a generated
  5-minute video (and, for comparison, a 10-second one).
* ``pipeline``: clips/s of the tf.data pipeline alone per stream, training
  and test mode, on records prepared at short side 256.
* ``training``: forward+backward images/s of each stream (EfficientNet-B0 +
  attention) on a fixed in-memory batch, and the fraction of the device's
  peak FLOP/s this is; with ``pipeline``, the headline ratio
  pipeline clips/s / train-step clips/s per stream.
* ``inference``: clips/s of the fused two-stream model at 25 segments x 1
  crop, and the latency of `mat_effnet.inference.predict_video` on a
  generated 10-second video split into decode / flow / JPEG+records / models.

``--quick`` shrinks the data and iteration counts so that the run takes a few
minutes on 2 CPU cores; each figure's ``settings`` says what it ran with.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import traceback

import numpy as np

SECTIONS = ("flow", "prep", "pipeline", "training", "inference")
SCHEMA = "mat-effnet-benchmark/1"
VIDEO_FPS = 25.0  # data_prep.synthetic.write_video's default
MOVING_PX = 1.0  # TV-L1 magnitude from which a pixel counts as moving (EPE on motion)


@dataclasses.dataclass
class Settings:
    """Sizes and iteration counts of one benchmark run (defaults: full mode)."""

    mode: str = "full"
    seed: int = 0
    # flow
    flow_height: int = 256
    flow_width: int = 340
    tvl1_pairs: int = 20
    dis_pairs: int = 200
    flow_workers: int | None = None  # None: os.cpu_count()
    # prep
    prep_videos_per_class: int = 2
    prep_frames: int = 32
    prep_height: int = 240
    prep_width: int = 320
    prep_flow: str = "tvl1"
    prep_short_side: int = 256
    prep_workers: int = 2
    long_seconds: float = 300.0
    long_height: int = 120
    long_width: int = 160
    long_flow: str = "dis"
    short_seconds: float = 10.0
    # input pipeline
    pipeline_videos_per_class: int = 2
    pipeline_frames: int = 100
    pipeline_short_side: int = 256
    image_size: int = 224
    num_segments: int = 3
    flow_length: int = 10
    test_segments: int = 25
    pipeline_batch: int = 8
    pipeline_train_batches: int = 10
    pipeline_test_clips: int = 20
    pipeline_min_seconds: float = 5.0
    # training
    backbone: str = "efficientnet_b0"
    train_batch: int | None = None  # None: 8 on CPU, 16 on GPU
    train_steps: int = 5
    # inference
    infer_clips: int = 5
    predict_seconds: float = 10.0
    predict_height: int = 240
    predict_width: int = 320
    predict_flow: str = "tvl1"
    predict_short_side: int = 256


def quick_settings(**overrides) -> Settings:
    """The ``--quick`` run: a few minutes on 2 CPU cores.

    Same figure definitions (340x256 flow, 224 px, K = 3, L = 10, 25 test
    segments, batch 8, 5-minute long video) with fewer pairs, videos,
    frames and iterations; prep uses TV-L1 at short side 64 and predict
    uses DIS flow (TV-L1 at 256 costs ~1 s per pair on one core).
    """
    values = dict(mode="quick", tvl1_pairs=3, dis_pairs=60, prep_videos_per_class=1,
                  prep_frames=16, prep_height=120, prep_width=160, prep_short_side=64,
                  pipeline_videos_per_class=1, pipeline_frames=40, pipeline_train_batches=4,
                  pipeline_test_clips=6, pipeline_min_seconds=2.0, train_steps=2, infer_clips=2, predict_flow="dis")
    values.update(overrides)
    return Settings(**values)


# ---------------------------------------------------------------------------
# Sections (plain arguments; each returns {name: figure})
# ---------------------------------------------------------------------------

def _fig(*args, **kwargs):
    from mat_effnet import benchmarking

    return benchmarking.figure(*args, **kwargs)


def bench_flow(machine: str, *, height: int = 256, width: int = 340, tvl1_pairs: int = 20,
               dis_pairs: int = 200, workers: int | None = None, seed: int = 0) -> dict:
    """TV-L1 / DIS pairs/s (1 worker, all cores) and DIS's EPE against TV-L1."""
    from mat_effnet import benchmarking as B

    workers = workers or os.cpu_count() or 1
    pairs = B.motion_pairs(max(tvl1_pairs, dis_pairs), height, width, seed)
    base = {"frame_size": f"{width}x{height}", "frames": "data_prep.synthetic.render_clip, all "
            "6 classes in turn (moving squares, growing/spinning cross), grayscale"}
    figures = {}
    results = {}
    for algorithm, n in (("tvl1", tvl1_pairs), ("dis", dis_pairs)):
        one = B.flow_throughput(pairs[:n], algorithm, 1, keep_flows=True)
        results[algorithm] = one
        figures[f"flow.{algorithm}.pairs_per_s.1_worker"] = _fig(
            one["pairs_per_s"], "pairs/s", dict(base, algorithm=algorithm, workers=1,
                                                cv2_threads=1, pairs=one["pairs"]),
            machine, seconds=one["seconds"])
        pool = B.flow_throughput(pairs[:n], algorithm, workers, pairs_per_worker=n)
        figures[f"flow.{algorithm}.pairs_per_s.all_cores"] = _fig(
            pool["pairs_per_s"], "pairs/s",
            dict(base, algorithm=algorithm, workers=workers, cv2_threads_per_worker=1,
                 pairs=pool["pairs"], pool="multiprocessing spawn pool of os.cpu_count() "
                 "workers; timed after every worker has started and run one pair"),
            machine, seconds=pool["seconds"])
    n = min(tvl1_pairs, dis_pairs)
    tvl1, dis = np.stack(results["tvl1"]["flows"][:n]), np.stack(results["dis"]["flows"][:n])
    moving = B.flow_magnitude(tvl1) >= MOVING_PX
    figures["flow.dis_vs_tvl1.epe"] = _fig(
        B.endpoint_error(dis, tvl1), "px",
        dict(base, pairs=n, reference="tvl1 (OpenCV defaults)", compared="dis (PRESET_MEDIUM)",
             definition="mean over pairs and pixels of ||dis - tvl1||_2"),
        machine, epe_moving_pixels_px=B.endpoint_error(dis, tvl1, moving),
        moving_pixels=f"TV-L1 magnitude >= {MOVING_PX} px ({100 * moving.mean():.1f} % of pixels)",
        tvl1_mean_magnitude_px=float(B.flow_magnitude(tvl1).mean()),
        tvl1_mean_magnitude_moving_px=float(B.flow_magnitude(tvl1)[moving].mean())
        if moving.any() else None)
    figures["flow.dis_over_tvl1.speed"] = _fig(
        figures["flow.dis.pairs_per_s.1_worker"]["value"]
        / figures["flow.tvl1.pairs_per_s.1_worker"]["value"], "x",
        dict(base, definition="DIS pairs/s / TV-L1 pairs/s, 1 worker"), machine)
    return figures


def _stored_sizes(meta: dict) -> str:
    """The prepared frame sizes as WIDTHxHEIGHT (the metadata keeps HEIGHTxWIDTH)."""
    sizes = []
    for size in sorted(meta["frame_size"]["sizes"]):
        h, _, w = size.partition("x")
        sizes.append(f"{w}x{h}")
    return ", ".join(sizes)


def _generate_set(root: str, videos_per_class: int, num_frames: int, height: int, width: int,
                  seed: int) -> dict:
    from data_prep import synthetic

    return synthetic.generate_ucf101_like(root, videos_per_class=videos_per_class,
                                          num_frames=num_frames, height=height, width=width,
                                          seed=seed)


def _build(data_root: str, out_dir: str, **kwargs) -> tuple[dict, float]:
    """builder.build on a UCF101-layout set in this process; (meta, seconds)."""
    import cv2

    from data_prep import builder

    threads = cv2.getNumThreads()  # process_video sets 1 thread in-process
    try:
        cfg = builder.PrepConfig(dataset="ucf101", data_root=data_root, out_dir=out_dir,
                                 progress_seconds=3600.0, **kwargs)
        start = time.perf_counter()
        meta = builder.build(cfg)
        return meta, time.perf_counter() - start
    finally:
        cv2.setNumThreads(threads)


def bench_prep(work_dir: str, machine: str, *, videos_per_class: int = 2, num_frames: int = 32,
               height: int = 240, width: int = 320, flow: str = "tvl1", short_side: int = 256,
               workers: int = 2, long_seconds: float = 300.0, long_height: int = 120,
               long_width: int = 160, long_flow: str = "dis", short_seconds: float = 10.0,
               seed: int = 0) -> dict:
    """Prep videos/s, MB per minute of video, N-worker speed-up, peak RSS on a long video."""
    from mat_effnet import benchmarking as B

    data = os.path.join(work_dir, "prep_videos")
    summary = _generate_set(data, videos_per_class, num_frames, height, width, seed)
    videos = summary["num_videos"]
    minutes = videos * num_frames / VIDEO_FPS / 60.0
    prep = dict(flow=flow, short_side=short_side, jpeg_quality=90, chunk_frames=1000)
    base = {"videos": videos, "frames_per_video": num_frames, "source_size": f"{width}x{height}",
            "fps": VIDEO_FPS, "video_minutes": minutes, "prep": prep,
            "set": "data_prep.synthetic.generate_ucf101_like (6 classes, MJPG .avi)"}
    try:  # a one-off import of the first build (TFDS metadata), not a per-video cost
        importlib.import_module("tensorflow_datasets")
    except ImportError:
        pass
    meta1, t1 = _build(data, os.path.join(work_dir, "prep_1"), workers=1, **prep)
    meta2, tn = _build(data, os.path.join(work_dir, f"prep_{workers}"), workers=workers, **prep)
    startup = B.spawn_pool_startup_seconds(workers, ("tensorflow", "cv2", "data_prep.builder"))
    written = B.dir_bytes(os.path.join(work_dir, "prep_1"))
    ok = sum(s["videos"] for s in meta1["splits"].values())
    stored = _stored_sizes(meta1)
    figures = {
        "prep.videos_per_s.1_worker": _fig(
            B.rate(ok, t1), "videos/s", dict(base, workers=1, stored_size=stored), machine,
            seconds=t1, failed=len(meta1["failures"])),
        "prep.mb_per_video_minute": _fig(
            written / 1e6 / minutes, "MB per minute of video",
            dict(base, workers=1, stored_size=stored,
                 definition="bytes under out_dir (shards + metadata) / 1e6 / minutes of source video"),
            machine, bytes=written, bytes_per_frame=meta1["bytes_per_frame"]),
        f"prep.speedup_{workers}_workers": _fig(
            t1 / tn, "x", dict(base, workers=workers, stored_size=stored,
                               definition=f"wall time with 1 worker (in-process) / wall time with "
                               f"{workers} workers (spawn pool; includes starting the workers, "
                               "each of which imports TensorFlow)"),
            machine, seconds_1_worker=t1, seconds_n_workers=tn, worker_startup_seconds=startup,
            speedup_excluding_startup=t1 / max(tn - startup, 1e-9),
            videos_per_s_n_workers=B.rate(sum(s["videos"] for s in meta2["splits"].values()), tn)),
    }

    # Peak memory: a long and a short video prepared by child processes
    # (run together: only their memory is measured, not their time).
    children = {}
    for name, seconds in (("long", long_seconds), ("short", short_seconds)):
        root = os.path.join(work_dir, f"rss_{name}")
        os.makedirs(os.path.join(root, "video"), exist_ok=True)
        path = os.path.join(root, "video", f"{name}.avi")
        with B.Stopwatch() as sw:
            frames = B.write_long_video(path, seconds, VIDEO_FPS, long_height, long_width, seed)
        proc = B.start_prep_child(root, os.path.join(work_dir, f"rss_{name}_out"), flow=long_flow,
                                  short_side=0, chunk_frames=1000)
        children[name] = (proc, frames, os.path.getsize(path), sw.seconds)
    got = {name: dict(B.finish_prep_child(proc), video_frames=frames, video_bytes=size,
                      generate_seconds=gen)
           for name, (proc, frames, size, gen) in children.items()}
    long, short = got["long"], got["short"]
    figures["prep.long_video.peak_rss"] = _fig(
        long["peak_rss"] / B.MIB, "MiB",
        {"video_seconds": long["video_frames"] / VIDEO_FPS, "video_frames": long["video_frames"],
         "fps": VIDEO_FPS, "size": f"{long_width}x{long_height}", "codec": "MJPG .avi",
         "flow": long_flow, "short_side": 0, "chunk_frames": 1000, "workers": 1,
         "measured": "ru_maxrss of a child process running data_prep.builder.build "
                     "(folder layout, 1 video); the child imports TensorFlow, TFDS and OpenCV "
                     "first (baseline_rss_mib)",
         "video": "benchmarking.long_video_frames: 10-s synthetic clips back to back, "
                  "written streaming"},
        machine,
        baseline_rss_mib=long["baseline_rss"] / B.MIB,
        increase_over_baseline_mib=(long["peak_rss"] - long["baseline_rss"]) / B.MIB,
        prep_seconds=long["seconds"], records=long["records"], frames_prepared=long["frames"],
        video_mb=long["video_bytes"] / 1e6,
        short_video={"seconds": short["video_frames"] / VIDEO_FPS,
                     "frames": short["video_frames"], "peak_rss_mib": short["peak_rss"] / B.MIB,
                     "baseline_rss_mib": short["baseline_rss"] / B.MIB})
    return figures


def _records_set(work_dir: str, videos_per_class: int, num_frames: int, short_side: int,
                 seed: int) -> str:
    """Synthetic UCF101-like videos at 340x256 prepared (DIS flow) at ``short_side``."""
    data = os.path.join(work_dir, "pipeline_videos")
    out = os.path.join(work_dir, "pipeline_records")
    # 340x256 when short_side is 256; smaller sizes keep the ratio, with an
    # even width (the video writer rounds odd widths down).
    height = max(short_side, 16)
    width = 2 * int(round(height * 340 / 256 / 2))
    _generate_set(data, videos_per_class, num_frames, height, width, seed)
    _build(data, out, workers=1, flow="dis", short_side=short_side)
    return out


def _clips_per_s(ds, min_batches: int, min_seconds: float, warmup: int = 1,
                 max_batches: int | None = None) -> tuple[float, int, int, float]:
    """(clips/s, clips, batches, seconds): at least min_batches and min_seconds.

    Running for a minimum time keeps the batches that the prefetch buffer
    filled during the warm-up from inflating the rate of a fast pipeline.
    ``max_batches`` stops a finite (test-mode) dataset before its end.
    """
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    clips = batches = 0
    start = time.perf_counter()
    while batches < min_batches or time.perf_counter() - start < min_seconds:
        if max_batches is not None and batches >= max_batches:
            break
        clips += int(next(it)[0].shape[0])
        batches += 1
    seconds = time.perf_counter() - start
    return clips / max(seconds, 1e-9), clips, batches, seconds


def bench_pipeline(work_dir: str, machine: str, *, videos_per_class: int = 2,
                   num_frames: int = 100, short_side: int = 256, image_size: int = 224,
                   num_segments: int = 3, flow_length: int = 10, test_segments: int = 25,
                   batch_size: int = 8, train_batches: int = 10, test_clips: int = 20,
                   min_seconds: float = 3.0, streams=("spatial", "temporal"),
                   seed: int = 0) -> dict:
    """clips/s of `mat_effnet.input_pipeline.build_dataset` alone, per stream and mode."""
    from mat_effnet import input_pipeline, records

    data = _records_set(work_dir, videos_per_class, num_frames, short_side, seed)
    meta = records.read_metadata(data)
    files = records.split_files(data, meta, "train")
    n_records = meta["splits"]["train"]["records"]
    base = {"records": n_records, "frames_per_record": num_frames,
            "stored_size": _stored_sizes(meta),
            "short_side": short_side, "flow": "dis", "image_size": image_size,
            "flow_length": flow_length}
    figures = {}
    for stream in streams:
        train_cfg = input_pipeline.PipelineConfig(stream=stream, num_segments=num_segments,
                                                  image_size=image_size, flow_length=flow_length)
        ds = input_pipeline.build_dataset(data, "train", train_cfg, batch_size)
        value, clips, batches, seconds = _clips_per_s(ds, train_batches, min_seconds)
        figures[f"pipeline.{stream}.train.clips_per_s"] = _fig(
            value, "clips/s", dict(base, stream=stream, mode="train", segments=num_segments,
                                   batch_size=batch_size, batches=batches,
                                   min_batches=train_batches, min_seconds=min_seconds,
                                   augmentation="random crop + flip (defaults)",
                                   parallelism="tf.data AUTOTUNE on every core"),
            machine, clips=clips, seconds=seconds)
        test_cfg = input_pipeline.PipelineConfig(stream=stream, image_size=image_size,
                                                 flow_length=flow_length, training=False,
                                                 test_segments=test_segments, crops=1)
        # Test mode is one pass: repeat the shard list so that it lasts.
        repeats = max(1, math.ceil((test_clips + 1) / max(n_records, 1)))
        if min_seconds > 0:
            repeats = max(repeats, 50)
        ds = input_pipeline.build_dataset(data, "train", test_cfg, 1, files=list(files) * repeats)
        value, clips, batches, seconds = _clips_per_s(ds, test_clips, min_seconds,
                                                      max_batches=repeats * n_records - 1)
        figures[f"pipeline.{stream}.test.clips_per_s"] = _fig(
            value, "clips/s", dict(base, stream=stream, mode="test", segments=test_segments,
                                   crops=1, batch_size=1, clips=clips, min_clips=test_clips,
                                   min_seconds=min_seconds,
                                   parallelism="tf.data AUTOTUNE on every core"),
            machine, seconds=seconds)
    return figures


def _train_batch_default() -> int:
    import tensorflow as tf

    return 16 if tf.config.list_physical_devices("GPU") else 8


def bench_training(machine: str, peak: dict, *, streams=("spatial", "temporal"),
                   image_size: int = 224, num_segments: int = 3, flow_length: int = 10,
                   batch_size: int | None = None, steps: int = 5, warmup_steps: int = 1,
                   backbone: str = "efficientnet_b0", num_classes: int = 101,
                   seed: int = 0) -> dict:
    """Forward+backward images/s per stream on a fixed batch, and the fraction of peak."""
    import keras
    import tensorflow as tf

    from mat_effnet import benchmarking as B
    from mat_effnet import models, training

    batch_size = batch_size or _train_batch_default()
    figures = {}
    if peak.get("flops"):
        figures["device.peak_flops"] = _fig(peak["flops"], "FLOP/s",
                                            {"precision": peak.get("precision"), "how": peak["how"]},
                                            machine, device=peak.get("device"))
    for stream in streams:
        keras.utils.set_random_seed(seed)
        model = models.build_stream(num_classes, stream, num_segments=None, image_size=image_size,
                                    flow_length=flow_length, backbone=backbone, weights=None)
        cfg = training.TrainConfig(stream=stream, data_dir="", model_dir="", weights=None,
                                   backbone=backbone, image_size=image_size,
                                   num_segments=num_segments, flow_length=flow_length)
        training.compile_model(model, cfg, num_classes)
        channels = models.input_channels(stream, flow_length)
        x = tf.random.uniform((batch_size, num_segments, image_size, image_size, channels), 0, 255,
                              seed=seed)
        y = tf.random.uniform((batch_size,), 0, num_classes, tf.int32, seed=seed)
        seconds = B.timed_iterations(lambda: model.train_on_batch(x, y), steps, warmup_steps)
        clips_per_s = B.rate(steps * batch_size, seconds)
        images_per_s = clips_per_s * num_segments
        settings = {"stream": stream, "backbone": backbone, "attention": True,
                    "image_size": image_size, "segments_per_clip": num_segments,
                    "channels": channels, "batch_size_clips": batch_size,
                    "images_per_step": batch_size * num_segments, "steps": steps,
                    "warmup_steps": warmup_steps, "classes": num_classes,
                    "step": "keras Model.train_on_batch (SGD momentum 0.9, weight decay 5e-4, "
                            "as mat_effnet.training.compile_model), fixed in-memory batch",
                    "dtype": "float32"}
        figures[f"train_step.{stream}.clips_per_s"] = _fig(clips_per_s, "clips/s", settings,
                                                           machine, seconds=seconds)
        figures[f"training.{stream}.images_per_s"] = _fig(images_per_s, "images/s", settings,
                                                          machine, seconds=seconds)
        try:
            fwd, how = B.model_flops_per_image(model, num_segments), "tf.compat.v1.profiler on the frozen forward graph"
        except Exception as e:  # noqa: BLE001 -- fall back to the published count
            if backbone != "efficientnet_b0" or image_size != 224:
                fwd, how = None, f"profiler failed ({type(e).__name__})"
            else:
                fwd = B.EFFICIENTNET_B0_PUBLISHED_FLOPS
                how = "published 0.39 G multiply-adds of EfficientNet-B0 at 224 x 2 (profiler failed)"
        achieved = None if fwd is None else images_per_s * 3.0 * fwd
        fraction = None if achieved is None or not peak.get("flops") else achieved / peak["flops"]
        figures[f"training.{stream}.fraction_of_peak"] = _fig(
            fraction, f"fraction of peak {str(peak.get('precision') or 'fp32').upper()} FLOP/s",
            dict(settings, forward_flops_per_image=fwd, flops_count=how,
                 train_flops_per_image="3 x forward (forward + backward = 1 + 2)",
                 peak_flops=peak.get("flops"), peak_how=peak.get("how")),
            machine, achieved_flops=achieved)
        keras.backend.clear_session()
    return figures


def bench_inference(work_dir: str, machine: str, *, image_size: int = 224, segments: int = 25,
                    flow_length: int = 10, clips: int = 5, warmup: int = 1,
                    video_seconds: float = 10.0, video_height: int = 240, video_width: int = 320,
                    flow: str = "tvl1", short_side: int = 256,
                    backbone: str = "efficientnet_b0", num_classes: int = 101,
                    seed: int = 0) -> dict:
    """Fused two-stream clips/s, and predict_video's latency split into its parts."""
    import keras
    import tensorflow as tf

    from data_prep import flow as flow_lib
    from data_prep import video
    from mat_effnet import benchmarking as B
    from mat_effnet import inference, models

    keras.utils.set_random_seed(seed)
    kw = dict(num_segments=None, image_size=image_size, flow_length=flow_length,
              backbone=backbone, weights=None)
    spatial = models.build_stream(num_classes, "spatial", **kw)
    temporal = models.build_stream(num_classes, "temporal", **kw)
    fused = models.build_two_stream(spatial, temporal)
    rgb = tf.random.uniform((1, segments, image_size, image_size, 3), 0, 255, seed=seed)
    flw = tf.random.uniform((1, segments, image_size, image_size, 2 * flow_length), 0, 255,
                            seed=seed)
    seconds = B.timed_iterations(lambda: fused.predict_on_batch([rgb, flw]), clips, warmup)
    figures = {"inference.two_stream.clips_per_s": _fig(
        B.rate(clips, seconds), "clips/s",
        {"model": f"build_two_stream({backbone} + attention, both streams)",
         "segments": segments, "crops": 1, "image_size": image_size, "flow_length": flow_length,
         "batch_size": 1, "clips": clips, "images_per_clip": 2 * segments,
         "call": "keras Model.predict_on_batch, fixed in-memory clip"},
        machine, seconds=seconds)}

    path = os.path.join(work_dir, "predict", "clip.avi")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    frames_written = B.write_long_video(path, video_seconds, VIDEO_FPS, video_height, video_width,
                                        seed)
    with B.Stopwatch() as sw_decode:
        frames = list(video.iter_frames(path, short_side))
    fn = flow_lib.create_flow(flow)
    with B.Stopwatch() as sw_flow:
        prev = flow_lib.to_gray(frames[0])
        for frame in frames[1:]:
            gray = flow_lib.to_gray(frame)
            fn(prev, gray)
            prev = gray
    stored = f"{frames[0].shape[1]}x{frames[0].shape[0]}"
    del frames
    settings = inference.PrepSettings(short_side=short_side, flow=flow)
    with B.Stopwatch() as sw_total:
        out = inference.predict_video(path, spatial, temporal, settings, num_segments=segments)
    model_s = out["spatial_model_s"] + out["temporal_model_s"]
    base = {"video_seconds": frames_written / VIDEO_FPS, "video_frames": frames_written,
            "source_size": f"{video_width}x{video_height}", "stored_size": stored,
            "short_side": short_side, "flow": flow, "segments": segments, "crops": 1,
            "image_size": image_size, "jpeg_quality": settings.jpeg_quality,
            "cv2_threads": "OpenCV default"}
    parts = {
        "total": (sw_total.seconds, "wall time of inference.predict_video"),
        "decode": (sw_decode.seconds, "separate pass: video.iter_frames (decode + resize)"),
        "flow": (sw_flow.seconds, "separate pass: to_gray + create_flow over the decoded frames"),
        "jpeg_and_records": (max(out["prepare_s"] - sw_decode.seconds - sw_flow.seconds, 0.0),
                             "predict_video's prepare_s - decode - flow (JPEG encoding, "
                             "quantization, serialization)"),
        "models": (model_s, "predict_video's spatial_model_s + temporal_model_s (record parse, "
                            "test sampling, both streams eagerly)"),
    }
    for part, (value, how) in parts.items():
        figures[f"inference.predict.{part}_s"] = _fig(value, "s", dict(base, measured=how), machine,
                                                      **({"prepare_s": out["prepare_s"]}
                                                         if part == "total" else {}))
    return figures


# ---------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------

def derive(figures: dict, machine: str) -> dict:
    """Headline ratios from figures already measured: pipeline / train step per stream."""
    out = {}
    for stream in ("spatial", "temporal"):
        pipe = figures.get(f"pipeline.{stream}.train.clips_per_s")
        step = figures.get(f"train_step.{stream}.clips_per_s")
        if not pipe or not step or not pipe["value"] or not step["value"]:
            continue
        p, s = pipe["settings"], step["settings"]
        out[f"headline.{stream}.input_over_train"] = _fig(
            pipe["value"] / step["value"], "x",
            {"definition": "tf.data pipeline clips/s (training mode, alone) / train-step clips/s "
                           "(fixed in-memory batch); >= 3 means the pipeline keeps up with room",
             "pipeline": {k: p.get(k) for k in ("image_size", "segments", "flow_length",
                                                 "batch_size")},
             "train_step": {k: s.get(k) for k in ("image_size", "segments_per_clip",
                                                   "batch_size_clips", "backbone")},
             "same_sizes": (p.get("image_size") == s.get("image_size")
                            and p.get("segments") == s.get("segments_per_clip"))},
            machine)
    return out


def run_benchmark(settings: Settings, work_dir: str, sections=SECTIONS, log=None) -> dict:
    """Runs the sections; returns the JSON document (errors are recorded, not raised)."""
    from mat_effnet import benchmarking as B

    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    log = log or (lambda msg: None)
    started = time.time()
    info = B.machine_info()
    machine = B.machine_label(info)
    peak = B.device_peak(info)
    s = settings
    doc = {"schema": SCHEMA, "mode": s.mode, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "machine": info, "machine_label": machine, "device_peak": peak,
           "settings": dataclasses.asdict(s), "sections": {}, "errors": {}, "figures": {}}
    runs = {
        "flow": lambda: bench_flow(machine, height=s.flow_height, width=s.flow_width,
                                   tvl1_pairs=s.tvl1_pairs, dis_pairs=s.dis_pairs,
                                   workers=s.flow_workers, seed=s.seed),
        "prep": lambda: bench_prep(work_dir, machine, videos_per_class=s.prep_videos_per_class,
                                   num_frames=s.prep_frames, height=s.prep_height,
                                   width=s.prep_width, flow=s.prep_flow,
                                   short_side=s.prep_short_side, workers=s.prep_workers,
                                   long_seconds=s.long_seconds, long_height=s.long_height,
                                   long_width=s.long_width, long_flow=s.long_flow,
                                   short_seconds=s.short_seconds, seed=s.seed),
        "pipeline": lambda: bench_pipeline(work_dir, machine,
                                           videos_per_class=s.pipeline_videos_per_class,
                                           num_frames=s.pipeline_frames,
                                           short_side=s.pipeline_short_side,
                                           image_size=s.image_size, num_segments=s.num_segments,
                                           flow_length=s.flow_length,
                                           test_segments=s.test_segments,
                                           batch_size=s.pipeline_batch,
                                           train_batches=s.pipeline_train_batches,
                                           test_clips=s.pipeline_test_clips,
                                           min_seconds=s.pipeline_min_seconds, seed=s.seed),
        "training": lambda: bench_training(machine, peak, image_size=s.image_size,
                                           num_segments=s.num_segments, flow_length=s.flow_length,
                                           batch_size=s.train_batch, steps=s.train_steps,
                                           backbone=s.backbone, seed=s.seed),
        "inference": lambda: bench_inference(work_dir, machine, image_size=s.image_size,
                                             segments=s.test_segments, flow_length=s.flow_length,
                                             clips=s.infer_clips, video_seconds=s.predict_seconds,
                                             video_height=s.predict_height,
                                             video_width=s.predict_width, flow=s.predict_flow,
                                             short_side=s.predict_short_side,
                                             backbone=s.backbone, seed=s.seed),
    }
    for name in SECTIONS:
        if name not in sections:
            continue
        log(f"[{time.time() - started:6.1f}s] {name} ...")
        t0 = time.perf_counter()
        try:
            figures = runs[name]()
        except Exception as e:  # noqa: BLE001 -- one broken section must not lose the others
            doc["errors"][name] = f"{type(e).__name__}: {e}"
            doc["sections"][name] = {"seconds": time.perf_counter() - t0, "ok": False,
                                     "traceback": traceback.format_exc()[-4000:]}
            log(f"  {name} failed: {type(e).__name__}: {e}")
            continue
        doc["figures"].update(figures)
        doc["sections"][name] = {"seconds": time.perf_counter() - t0, "ok": True}
    doc["figures"].update(derive(doc["figures"], machine))
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    doc["finished_load_average_1_5_15"] = load
    doc["duration_s"] = time.time() - started
    return doc


def _value(fig: dict) -> str:
    from mat_effnet import benchmarking as B

    v = fig.get("value")
    if v is None:
        return "n/a"
    v = B.round_sig(v, 3)
    return f"{v:.3g}" if abs(v) < 1e5 else f"{v:.3e}"


def _short_settings(name: str, fig: dict) -> str:
    s = fig.get("settings", {})
    keys = ("frame_size", "workers", "pairs", "prep", "video_seconds", "video_frames", "size",
            "image_size", "segments", "segments_per_clip", "batch_size", "batch_size_clips",
            "flow", "stored_size")
    parts = []
    for k in keys:
        if k in s and s[k] is not None:
            v = s[k]
            if isinstance(v, dict):
                v = "/".join(f"{a}={b}" for a, b in v.items() if a in ("flow", "short_side"))
            parts.append(f"{k}={v}")
    return ", ".join(parts)[:110]


def format_table(doc: dict, markdown: bool = False) -> str:
    """The figures as a text (or Markdown) table: name, value, unit, main settings."""
    rows = [(name, _value(fig), fig["unit"], _short_settings(name, fig))
            for name, fig in doc["figures"].items()]
    if markdown:
        lines = ["| figure | value | unit | settings |", "| --- | ---: | --- | --- |"]
        lines += [f"| `{n}` | {v} | {u} | {s} |" for n, v, u, s in rows]
        return "\n".join(lines)
    width = max([len(r[0]) for r in rows] + [6])
    lines = [f"machine: {doc['machine_label']}", f"mode: {doc['mode']}, "
             f"{doc.get('duration_s', 0):.0f} s"]
    lines += [f"{n:<{width}}  {v:>10}  {u:<24} {s}" for n, v, u, s in rows]
    for section, err in doc.get("errors", {}).items():
        lines.append(f"{section}: FAILED: {err}")
    return "\n".join(lines)


def write_json(path: str, doc: dict) -> None:
    """Writes ``doc`` atomically (temp file, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def _define_flags():
    from absl import flags

    flags.DEFINE_string("output", "benchmark.json", "Where the JSON document is written.")
    flags.DEFINE_bool("quick", False, "Smaller sizes and fewer iterations (a few minutes on "
                                      "2 CPU cores); every figure records its settings.")
    flags.DEFINE_list("sections", list(SECTIONS), f"Sections to run: {', '.join(SECTIONS)}.")
    flags.DEFINE_string("work_dir", None, "Scratch folder for generated videos and records "
                                          "(default: a temporary folder, deleted afterwards).")
    flags.DEFINE_string("markdown", None, "Also write the table as Markdown to this file.")
    flags.DEFINE_integer("seed", 0, "Seed of the generated data and models.")
    return flags.FLAGS


PROG = "mat-effnet-benchmark"


def main(argv):
    from absl import flags

    FLAGS = flags.FLAGS
    if len(argv) > 1:
        print(f"{PROG}: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    unknown = [s for s in FLAGS.sections if s not in SECTIONS]
    if unknown:
        print(f"{PROG}: error: --sections: unknown {', '.join(unknown)}; known: "
              f"{', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("mat_effnet.prep").setLevel(logging.WARNING)
    settings = quick_settings(seed=FLAGS.seed) if FLAGS.quick else Settings(seed=FLAGS.seed)
    scratch = FLAGS.work_dir or tempfile.mkdtemp(prefix="mat-effnet-benchmark-")
    os.makedirs(scratch, exist_ok=True)
    try:
        doc = run_benchmark(settings, scratch, FLAGS.sections,
                            log=lambda msg: print(msg, file=sys.stderr, flush=True))
    finally:
        if not FLAGS.work_dir:
            shutil.rmtree(scratch, ignore_errors=True)
    doc["command"] = " ".join([PROG] + sys.argv[1:])
    write_json(FLAGS.output, doc)
    print(format_table(doc))
    print(f"written: {FLAGS.output}")
    if FLAGS.markdown:
        with open(FLAGS.markdown, "w", encoding="utf-8") as f:
            f.write(format_table(doc, markdown=True) + "\n")
    return 1 if doc["errors"] else 0


def run():
    from absl import app

    _define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
