"""Train-step figures: forward+backward clips/s per stream, its share of peak, input vs step.

A stream of MAT-EffNet (paper Sect. 3.3: a backbone per segment, attention
over segments) built as training builds it and compiled by
`mat_effnet.training.trainer.compile_model` (SGD, Sect. 4.2) takes `train_on_batch`
steps on a fixed in-memory batch, so the input pipeline is left out. Its
forward FLOPs per image come from TensorFlow's profiler on the frozen graph
(a multiply-add is 2 FLOPs); a training step is counted as 3 x forward
(backward = 2 x forward). The fraction of peak divides the achieved FLOP/s by
`machine.device_peak`.

The step is timed at the clip's size (224 px, as the paper trains) and at a
small size (``train_small_size``: 48 px with L = 5, as ``mat-effnet-demo``
trains from scratch on CPU).

`input_over_train` then divides the input pipeline's clips/s by the train
step's, per stream: how many times over the host keeps the device fed.
"""

from __future__ import annotations

import dataclasses
import os
import time

from mat_effnet.benchmark.report import Context, rate, timed_iterations
from mat_effnet.benchmark.settings import ClipSettings, TrainStepSettings

# Tan & Le (2019), Table 2: EfficientNet-B0 at 224 px, 0.39 G multiply-adds.
EFFICIENTNET_B0_PUBLISHED_FLOPS = 2 * 0.39e9


def model_flops_per_image(model, segments: int = 1) -> float:
    """Forward FLOPs of one segment image through a stream model (TF profiler).

    Traces ``model`` on one clip of ``segments`` images, freezes the graph
    and sums TensorFlow's per-op FLOP counts, then divides by ``segments``;
    the head (Fc, attention, classifier), which runs once per clip, is a
    negligible share.
    """
    import tensorflow as tf
    from tensorflow.python.framework import convert_to_constants

    shape = list(model.inputs[0].shape)
    shape[0], shape[1] = 1, segments
    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec(shape, tf.float32))
    frozen = convert_to_constants.convert_variables_to_constants_v2(concrete)
    graph_def = frozen.graph.as_graph_def()
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")  # the v1 profiler warns about its own deprecated calls
    try:
        with tf.Graph().as_default() as graph:
            tf.compat.v1.import_graph_def(graph_def, name="")
            options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
            options["output"] = "none"
            profile = tf.compat.v1.profiler.profile(graph=graph, cmd="op", options=options)
    finally:
        logger.setLevel(level)
    return profile.total_float_ops / float(segments)


def default_batch() -> int:
    import tensorflow as tf

    return 16 if tf.config.list_physical_devices("GPU") else 8


def _forward_flops(model, clip: ClipSettings) -> tuple[float | None, str]:
    try:
        return (model_flops_per_image(model, clip.num_segments),
                "tf.compat.v1.profiler on the frozen forward graph")
    except Exception as e:  # noqa: BLE001 -- fall back to the published count
        if clip.backbone != "efficientnet_b0" or clip.image_size != 224:
            return None, f"profiler failed ({type(e).__name__})"
        return (EFFICIENTNET_B0_PUBLISHED_FLOPS,
                "published 0.39 G multiply-adds of EfficientNet-B0 at 224 x 2 (profiler failed)")


def sizes(s: TrainStepSettings, clip: ClipSettings) -> list[tuple[str, ClipSettings]]:
    """(figure-name prefix, clip) of each timed size: the clip's, then the small one."""
    out = [("training", clip)]
    if s.train_small_size and s.train_small_size != clip.image_size:
        out.append((f"training.{s.train_small_size}px", dataclasses.replace(
            clip, image_size=s.train_small_size, flow_length=s.train_small_flow_length)))
    return out


def measure(s: TrainStepSettings, clip: ClipSettings, ctx: Context,
            streams=("spatial", "temporal"), num_classes: int = 101,
            warmup_steps: int = 1) -> dict:
    """Forward+backward images/s per stream on a fixed batch, and the fraction of peak.

    At the clip's size (the ``training.*`` and ``train_step.*`` figures) and
    at ``train_small_size`` (``training.<S>px.*``), as the demo trains.
    """
    peak = ctx.peak
    figures = {}
    if peak.get("flops"):
        figures["device.peak_flops"] = ctx.figure(
            peak["flops"], "FLOP/s", {"precision": peak.get("precision"), "how": peak["how"]},
            device=peak.get("device"))
    for prefix, size_clip in sizes(s, clip):
        for stream in streams:
            figures.update(_measure_stream(s, size_clip, ctx, stream, num_classes, warmup_steps,
                                           prefix, with_clips=prefix == "training"))
    return figures


def _measure_stream(s: TrainStepSettings, clip: ClipSettings, ctx: Context, stream: str,
                    num_classes: int, warmup_steps: int, prefix: str, with_clips: bool) -> dict:
    import keras
    import tensorflow as tf

    from mat_effnet.training import config, trainer
    from mat_effnet.modeling import models

    batch = s.train_batch or default_batch()
    peak = ctx.peak
    figures = {}
    keras.utils.set_random_seed(ctx.seed)
    model = models.build_stream(num_classes, stream, num_segments=None,
                                image_size=clip.image_size, flow_length=clip.flow_length,
                                backbone=clip.backbone, weights=None)
    cfg = config.TrainConfig.from_flat(
        stream=stream, data_dir="", model_dir="", weights=None, backbone=clip.backbone,
        image_size=clip.image_size, num_segments=clip.num_segments,
        flow_length=clip.flow_length)
    trainer.compile_model(model, cfg, num_classes)
    channels = model.spec.channels
    x = tf.random.uniform((batch, clip.num_segments, clip.image_size, clip.image_size,
                           channels), 0, 255, seed=ctx.seed)
    y = tf.random.uniform((batch,), 0, num_classes, tf.int32, seed=ctx.seed)
    for _ in range(warmup_steps):  # traces the step
        model.train_on_batch(x, y)
    # Process CPU time of the timed steps too: on a shared machine the wall
    # time counts other people's work as well.
    cpu = _cpu_seconds()
    seconds = timed_iterations(lambda: model.train_on_batch(x, y), s.train_steps, 0)
    cpu = _cpu_seconds() - cpu
    clips_per_s = rate(s.train_steps * batch, seconds)
    images_per_s = clips_per_s * clip.num_segments
    settings = {"stream": stream, "backbone": clip.backbone, "attention": True,
                "image_size": clip.image_size, "segments_per_clip": clip.num_segments,
                "channels": channels, "batch_size_clips": batch,
                "images_per_step": batch * clip.num_segments, "steps": s.train_steps,
                "warmup_steps": warmup_steps, "classes": num_classes,
                "step": "keras Model.train_on_batch (SGD momentum 0.9, weight decay 5e-4, "
                        "as mat_effnet.training.trainer.compile_model), fixed in-memory batch",
                "dtype": "float32"}
    if with_clips:
        figures[f"train_step.{stream}.clips_per_s"] = ctx.figure(clips_per_s, "clips/s",
                                                                 settings, seconds=seconds)
    figures[f"{prefix}.{stream}.images_per_s"] = ctx.figure(
        images_per_s, "images/s", settings, seconds=seconds, cpu_seconds=cpu,
        images_per_cpu_second=rate(s.train_steps * batch * clip.num_segments, cpu),
        load_average_1=_load())
    fwd, how = _forward_flops(model, clip)
    achieved = None if fwd is None else images_per_s * 3.0 * fwd
    fraction = None if achieved is None or not peak.get("flops") else achieved / peak["flops"]
    figures[f"{prefix}.{stream}.fraction_of_peak"] = ctx.figure(
        fraction, f"fraction of peak {str(peak.get('precision') or 'fp32').upper()} FLOP/s",
        dict(settings, forward_flops_per_image=fwd, flops_count=how,
             train_flops_per_image="3 x forward (forward + backward = 1 + 2)",
             peak_flops=peak.get("flops"), peak_how=peak.get("how")),
        achieved_flops=achieved)
    keras.backend.clear_session()
    return figures


def _cpu_seconds() -> float:
    return time.process_time()  # every thread of this process, user + system


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def input_over_train(figures: dict, ctx: Context) -> dict:
    """Headline ratios from figures already measured: pipeline / train step per stream."""
    out = {}
    for stream in ("spatial", "temporal"):
        pipe = figures.get(f"pipeline.{stream}.train.clips_per_s")
        step = figures.get(f"train_step.{stream}.clips_per_s")
        if not pipe or not step or not pipe["value"] or not step["value"]:
            continue
        p, s = pipe["settings"], step["settings"]
        out[f"headline.{stream}.input_over_train"] = ctx.figure(
            pipe["value"] / step["value"], "x",
            {"definition": "tf.data pipeline clips/s (training mode, alone) / train-step clips/s "
                           "(fixed in-memory batch); >= 3 means the pipeline keeps up with room",
             "pipeline": {k: p.get(k) for k in ("image_size", "segments", "flow_length",
                                                 "batch_size")},
             "train_step": {k: s.get(k) for k in ("image_size", "segments_per_clip",
                                                   "batch_size_clips", "backbone")},
             "same_sizes": (p.get("image_size") == s.get("image_size")
                            and p.get("segments") == s.get("segments_per_clip"))})
    return out
