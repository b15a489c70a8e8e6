"""Input-pipeline figures: clips/s of the tf.data pipeline alone, per stream and mode.

`mat_effnet.data.input_pipeline.build_dataset` at the training clip (TSN
sampling, paper Sect. 4.2: 224 px, K = 3, L = 10, random crop and flip) and
at test time (25 segments x 1 crop), on records that ``mat-effnet-prep``
wrote at short side 256 from 340x256 synthetic videos (DIS flow, which only
changes how fast they are to prepare). Each rate is timed for at least a
minimum time after one warm-up batch, so the batches the prefetch buffer
filled meanwhile do not inflate a fast pipeline's rate.

The measurements themselves (decode-only bound, pipeline, levers) are
`mat_effnet.benchmark.pipeline`'s; this module prepares the records and
turns its results into figures.
"""

from __future__ import annotations

import os

from mat_effnet.benchmark import prep_figures
from mat_effnet.benchmark.report import Context
from mat_effnet.benchmark.settings import ClipSettings, PipelineSettings


def records_set(work_dir: str, videos_per_class: int, num_frames: int, short_side: int,
                seed: int) -> tuple[str, str]:
    """Synthetic UCF101-like videos at 340x256 prepared (DIS flow) at ``short_side``.

    Returns the folders of the same videos in the record layout written by
    default (version 2) and in version 1, for the layout's lever and read figures.
    """
    data = os.path.join(work_dir, "pipeline_videos")
    out = os.path.join(work_dir, "pipeline_records")
    out_v1 = os.path.join(work_dir, "pipeline_records_v1")
    # 340x256 when short_side is 256; smaller sizes keep the ratio, with an
    # even width (the video writer rounds odd widths down).
    height = max(short_side, 16)
    width = 2 * int(round(height * 340 / 256 / 2))
    prep_figures.generate_set(data, videos_per_class, num_frames, height, width, seed)
    prep_figures.build(data, out, workers=1, flow="dis", short_side=short_side)
    prep_figures.build(data, out_v1, workers=1, flow="dis", short_side=short_side, schema_version=1)
    return out, out_v1


_MODES = {"train": "train", "test_1crop": "test", "test_10crop": "test10"}


def measure(s: PipelineSettings, clip: ClipSettings, ctx: Context,
            streams=("spatial", "temporal")) -> dict:
    """The input pipeline against its decode-only bound.

    Per stream and mode (training clip; test time with 25 segments x 1 and
    x 10 crops): clips/s of `mat_effnet.data.input_pipeline` and of the
    decode-only bound on the same records and cores; the share of the
    bound; clips/s per core; the cores one A100 would need; host bytes per
    clip; peak RSS; the bytes a training clip reads in either layout; and,
    with ``pipeline_levers``, the pipeline over itself with each lever off.
    """
    from mat_effnet import records
    from mat_effnet.benchmark import pipeline

    data, data_v1 = records_set(ctx.work_dir, s.pipeline_videos_per_class, s.pipeline_frames,
                                s.pipeline_short_side, ctx.seed)
    meta = records.read_metadata(data)
    result = pipeline.compare(
        data, streams=streams, modes=tuple(_MODES), version1_dir=data_v1,
        batch_size=s.pipeline_batch,
        min_seconds=s.pipeline_min_seconds, bound_clips=s.pipeline_bound_clips,
        num_segments=clip.num_segments, flow_length=clip.flow_length,
        image_size=clip.image_size, test_segments=clip.test_segments, rounds=s.pipeline_rounds,
        levers=None if s.pipeline_levers else {}, log=ctx.log)
    base = {"records": meta["splits"]["train"]["records"], "frames_per_record": s.pipeline_frames,
            "schema_version": meta["schema_version"],
            "stored_size": prep_figures.stored_sizes(meta), "short_side": s.pipeline_short_side,
            "flow": "dis", "image_size": clip.image_size, "flow_length": clip.flow_length,
            "cores": result["cores"], "rounds": s.pipeline_rounds,
            "parallelism": "tf.data AUTOTUNE on every core"}
    figures = {}
    for stream in streams:
        for mode, name in _MODES.items():
            entry = result[stream][mode]
            new = entry["new"]
            settings = dict(base, stream=stream, mode=name,
                            segments=clip.num_segments if mode == "train" else clip.test_segments,
                            crops={"train": 1, "test_1crop": 1, "test_10crop": 10}[mode],
                            batch_size=s.pipeline_batch if mode == "train" else 1)
            key = f"pipeline.{stream}.{name}"
            figures[f"{key}.clips_per_s"] = ctx.figure(
                new["clips_per_s"], "clips/s", settings, cpu_ms_per_clip=new["cpu_ms_per_clip"])
            figures[f"{key}.decode_bound_clips_per_s"] = ctx.figure(
                entry["bound"]["clips_per_s"], "clips/s", settings,
                jpegs_per_clip=new["jpegs_per_clip"],
                jpeg_bytes_per_clip=new["jpeg_bytes_per_clip"],
                what="the JPEGs a clip needs, decoded through tf.data on all cores, nothing else")
            figures[f"{key}.share_of_bound"] = ctx.figure(
                new["share_of_bound"], "fraction", settings,
                cpu_share_of_bound=new["cpu_share_of_bound"])
            figures[f"{key}.clips_per_s_per_core"] = ctx.figure(
                new["clips_per_s_per_core"], "clips/s/core", settings)
            figures[f"{key}.cores_per_a100"] = ctx.figure(
                new["cores_per_a100"], "cores", settings,
                a100_clips_per_s=new["a100_clips_per_s"], source=new["a100_source"],
                derived="a100_clips_per_s / clips_per_s_per_core")
            figures[f"{key}.host_bytes_per_clip"] = ctx.figure(
                new["host_bytes_per_clip"], "bytes", settings, clip_dtype=new["clip_dtype"])
            figures[f"{key}.peak_rss"] = ctx.figure(
                new["peak_rss_bytes"] / 2**20, "MiB", settings,
                note="one process runs every measurement: the peak includes earlier ones")
            if "read" in entry:
                figures[f"{key}.read_bytes_per_clip"] = ctx.figure(
                    entry["read"]["read_bytes_per_clip"], "bytes", settings,
                    version1=entry["read_version1"]["read_bytes_per_clip"],
                    read_only_clips_per_s=entry["read"]["clips_per_s"],
                    version1_read_only_clips_per_s=entry["read_version1"]["clips_per_s"],
                    what="bytes a clip reads from the record files (header and frames; "
                         "version 1: the whole record)")
            for lever, fig in entry.get("levers", {}).items():
                figures[f"{key}.lever.{lever}"] = ctx.figure(
                    fig["new_over_variant"], "x", settings, cpu_saving=fig["new_cpu_saving"],
                    what=f"new pipeline's clips/s over the same without lever {lever!r}")
    return figures
