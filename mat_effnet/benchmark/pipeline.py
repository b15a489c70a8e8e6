"""Input-pipeline throughput against its JPEG-decode bound.

For one stream and mode (training clips, or test-time 25 segments x 1 or
10 crops) this measures, on the same records and the same cores:

* the pipeline's clips/s (`mat_effnet.data.input_pipeline.build_dataset`), and
  the same with one lever changed (`LEVERS`);
* the decode-only bound: the JPEGs the clips need (each distinct frame of a
  clip once, whole frames), decoded through tf.data on all cores and nothing
  else, converted to clips/s; and the pipeline's share of that bound.  A
  pipeline that decodes only the crop window can exceed 100 %;
* clips/s per core, and the cores one A100 needs at that rate:
  1,150 clips/s / (clips/s per core).  1,150 = 3,450 images/s (EfficientNet-B0,
  mixed precision, one A100, NVIDIA's TF2 EfficientNet README, DeepLearning
  Examples) / K = 3 images per clip;
* host bytes per clip (the clip tensor handed to the model) and the JPEG
  bytes a clip decodes;
* the peak resident memory of the process while the pipeline ran (in one
  process that measures several pipelines, a peak includes what earlier
  measurements left allocated; run one pipeline per process for a clean one).

On a machine shared with other work the wall rates move with the load; the
CPU time per clip (all threads of this process) is reported beside them and
is the steadier basis for shares of the bound.

Everything takes plain arguments; the binary maps its flags onto them.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from mat_effnet.benchmark.dataset_timing import time_elements, usable_cores

A100_IMAGES_PER_S = 3450.0
A100_SOURCE = ("NVIDIA DeepLearningExamples, TensorFlow2 EfficientNet README: EfficientNet-B0 "
               "training on one A100 with mixed precision, about 3,450 images/s; / K = 3 "
               "images per clip")


def a100_clips_per_s(num_segments: int = 3) -> float:
    """Clips/s one A100 trains on: 3,450 images/s / K images per clip (1,150 at K = 3)."""
    return A100_IMAGES_PER_S / num_segments


# ---------------------------------------------------------------------------
# The decode-only bound
# ---------------------------------------------------------------------------

def clip_jpegs(data_dir: str, cfg, clips: int, seed: int = 0) -> list[list[tuple[bytes, int]]]:
    """The distinct JPEGs (bytes, channels) each of ``clips`` clips needs.

    Records are taken in file order, cycling; positions follow the pipeline's
    rules (`sample_positions`) with one seed per clip; a temporal clip needs
    flow x and y of its L-frame windows.
    """
    import tensorflow as tf

    from mat_effnet import records
    from mat_effnet.data import sampling

    meta = records.read_metadata(data_dir)
    version = meta.get("schema_version", 1)
    videos = [v for f in records.split_files(data_dir, meta, "train")
              for v in records.read_shard(f, version)]
    out = []
    for i in range(clips):
        video = videos[i % len(videos)]
        positions = sampling.sample_positions(len(video[records.RGB]), cfg, cfg.training,
                                              tf.constant([seed, i], tf.int64))
        count = len(video[records.RGB] if cfg.stream == "spatial" else video[records.FLOW_X])
        idx = sampling.frame_indices(count, positions, cfg).numpy().reshape(-1)
        unique = sorted(set(int(j) for j in idx))
        if cfg.stream == "spatial":
            out.append([(video[records.RGB][j], 3) for j in unique])
        else:
            fx, fy = video[records.FLOW_X], video[records.FLOW_Y]
            out.append([(fx[j], 1) for j in unique] + [(fy[j], 1) for j in unique])
    return out


def decode_bound(jpegs: list[list[tuple[bytes, int]]], min_seconds: float = 3.0,
                 window: int | None = None) -> dict:
    """JPEGs/s and clips/s of decoding exactly ``jpegs`` through tf.data on all cores.

    One element per JPEG, ``map(decode, AUTOTUNE)``, nothing else (each decoded
    image is reduced to its height so that iterating costs nothing).
    ``window``: decode only a centred ``window`` x ``window`` crop instead
    (what a windowed pipeline needs; for information).
    """
    import tensorflow as tf

    flat = [b for clip in jpegs for b, _ in clip]
    channels = [c for clip in jpegs for _, c in clip]
    per_clip = len(flat) / len(jpegs)
    # Colour and gray JPEGs never mix within one stream's clips.
    ch = channels[0]

    def decode(b):
        if window is None:
            img = tf.io.decode_jpeg(b, channels=ch)
        else:
            shape = tf.io.extract_jpeg_shape(b)
            box = tf.stack([(shape[0] - window) // 2, (shape[1] - window) // 2, window, window])
            img = tf.io.decode_and_crop_jpeg(b, box, channels=ch)
        return tf.shape(img)[0]

    ds = (tf.data.Dataset.from_tensor_slices(tf.constant(flat)).repeat()
          .map(decode, num_parallel_calls=tf.data.AUTOTUNE).batch(256).prefetch(2))
    t = time_elements(ds, lambda e: int(e.shape[0]), min_elements=4, min_seconds=min_seconds)
    return {"jpegs_per_s": t["per_s"], "clips_per_s": t["per_s"] / per_clip,
            "jpegs_per_clip": per_clip,
            "jpeg_bytes_per_clip": sum(len(b) for b in flat) / len(jpegs),
            "cpu_ms_per_clip": t["cpu_ms_per_item"] * per_clip, "seconds": t["seconds"]}


def read_parse_rate(data_dir: str, cfg, min_seconds: float = 3.0) -> dict:
    """Clips/s of reading (and parsing) what a clip reads, with no decoding.

    Version 1: a clip reads its whole record (a record is read whole),
    so this is the ceiling that layout sets before any decoding.  Version 2:
    a clip reads its group's header and the frame records it uses
    (`mat_effnet.data.clips`' reads, the JPEGs left undecoded).
    ``read_bytes_per_clip``: bytes read from the files per clip.
    """
    import tensorflow as tf

    from mat_effnet.data import clips, sampling
    from mat_effnet import records
    from mat_effnet.data import input_pipeline as ip

    meta = records.read_metadata(data_dir)
    files = records.split_files(data_dir, meta, "train")
    if meta.get("schema_version", 1) == 1:
        parse = ip._parse_for(cfg)
        ds = (tf.data.Dataset.from_tensor_slices(files).repeat()
              .interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
              .map(lambda s: parse(s)[records.LABEL], num_parallel_calls=tf.data.AUTOTUNE)
              .batch(64).prefetch(2))
        count = meta.get("splits", {}).get("train", {}).get("records") or sum(
            1 for _ in tf.data.TFRecordDataset(files))
        per_clip = sum(os.path.getsize(f) for f in files) / int(count)
    else:
        names = tf.constant(list(files))

        def read(row, epoch):
            group = records.Group.read(tf.gather(names, row[0]), row[1], row[2])
            positions = sampling.sample_positions(group.num_frames, cfg, cfg.training,
                                                  tf.stack([epoch, row[1]]))
            count = group.num_frames if cfg.stream == "spatial" else group.num_flow
            frames, _ = clips._read_frames(group, sampling.frame_indices(count, positions, cfg),
                                           cfg)
            payload = tf.add_n([tf.reduce_sum(tf.strings.length(v)) for v in frames.values()])
            jpegs = sum(tf.size(v) for v in frames.values())
            # Framing, and the header record (its length is in the index).
            return tf.cast(payload, tf.int64) + records.FRAMING_BYTES * tf.cast(
                jpegs + 1, tf.int64) + row[2]

        table = ip._group_table(files)
        ds = (ip._training_groups(table, 0, None)
              .map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
              .batch(64).prefetch(2))
        per_clip = float(np.mean(np.concatenate([b.numpy() for b in ds.take(2)])))
    t = time_elements(ds, lambda e: int(e.shape[0]), min_elements=4, min_seconds=min_seconds)
    return {"clips_per_s": t["per_s"], "cpu_ms_per_clip": t["cpu_ms_per_item"],
            "read_bytes_per_clip": per_clip,
            "schema_version": int(meta.get("schema_version", 1))}


# ---------------------------------------------------------------------------
# Pipelines
# ---------------------------------------------------------------------------

def _clip_bytes(ds) -> float:
    spec = ds.element_spec[0]
    return float(np.prod(spec.shape.as_list()[1:])) * spec.dtype.size


def pipeline_rate(module, data_dir: str, cfg, batch_size: int, min_seconds: float = 3.0,
                  min_batches: int = 10, test_repeats: int = 50, **build_kwargs) -> dict:
    """Clips/s of ``module.build_dataset`` (`mat_effnet.data.input_pipeline`, or a stand-in).

    Test mode is one pass, so the shard list is repeated ``test_repeats`` times.
    """
    from mat_effnet import records

    files = None
    if not cfg.training:
        meta = records.read_metadata(data_dir)
        files = list(records.split_files(data_dir, meta, "train")) * test_repeats
    ds = module.build_dataset(data_dir, "train", cfg, batch_size, files=files, **build_kwargs)
    t = time_elements(ds, lambda e: int(e[0].shape[0]), min_batches, min_seconds)
    return {"clips_per_s": t["per_s"], "clips": t["items"], "seconds": t["seconds"],
            "cpu_ms_per_clip": t["cpu_ms_per_item"],
            "host_bytes_per_clip": _clip_bytes(ds), "clip_dtype": ds.element_spec[0].dtype.name,
            "peak_rss_bytes": t["peak_rss_bytes"], "rss_before_bytes": t["rss_before_bytes"]}


def summarize(rate: dict, bound: dict, cores: int, num_segments: int) -> dict:
    """Adds share of the bound, clips/s per core and cores per A100 to a `pipeline_rate`."""
    per_core = rate["clips_per_s"] / cores
    out = dict(rate)
    out.update(bound_clips_per_s=bound["clips_per_s"],
               share_of_bound=rate["clips_per_s"] / bound["clips_per_s"],
               bound_cpu_ms_per_clip=bound["cpu_ms_per_clip"],
               # The same share in CPU time: robust when other processes share the cores.
               cpu_share_of_bound=bound["cpu_ms_per_clip"] / rate["cpu_ms_per_clip"],
               clips_per_s_per_core=per_core,
               a100_clips_per_s=a100_clips_per_s(num_segments),
               cores_per_a100=a100_clips_per_s(num_segments) / per_core,
               a100_source=A100_SOURCE, cores=cores,
               jpeg_bytes_per_clip=bound["jpeg_bytes_per_clip"],
               jpegs_per_clip=bound["jpegs_per_clip"])
    return out


def stream_configs(stream: str, num_segments: int = 3, flow_length: int = 10,
                   image_size: int = 224, test_segments: int = 25, seed: int | None = None) -> dict:
    """The benchmarked modes of one stream: train, test 25 x 1 crop, test 25 x 10 crops."""
    from mat_effnet.data.sampling import PipelineConfig

    common = dict(stream=stream, num_segments=num_segments, flow_length=flow_length,
                  image_size=image_size)
    return {"train": PipelineConfig(**common, seed=seed),
            "test_1crop": PipelineConfig(**common, training=False,
                                         test_segments=test_segments, crops=1),
            "test_10crop": PipelineConfig(**common, training=False,
                                          test_segments=test_segments, crops=10)}


LEVERS = {
    # name: what differs from the new pipeline (everything else as shipped);
    # "flags" are the decoding switches of `mat_effnet.data.clips`.
    "float32_clips": {"config": {"clip_dtype": "float32"}},
    "full_decode": {"flags": {"_WINDOW": False}},
    "colour_window": {"flags": {"_WINDOW_COLOUR": True}},
    "map_fn_decode": {"flags": {"_UNROLL": False}},
    "default_tf_data_options": {"options": "default"},
    "private_threadpool": {"build": {"threads": "cores"}},
    # The frame-addressable layout: the same pipeline on version-1 records
    # of the same videos (needs ``version1_dir``; measured in every mode).
    "version1_records": {"records": "version1"},
}


def _run_variant(name, variant, cfg, data_dir, batch, min_seconds, cores, version1_dir=None):
    """`pipeline_rate` of the new pipeline with one lever changed (see `LEVERS`)."""
    import dataclasses

    import tensorflow as tf

    from mat_effnet.data import clips
    from mat_effnet.data import input_pipeline as ip

    build = {k: (cores if v == "cores" else v) for k, v in variant.get("build", {}).items()}
    if variant.get("records") == "version1":
        data_dir = version1_dir
    cfg = dataclasses.replace(cfg, **variant.get("config", {}))
    # getattr first: a switch that moved away would fail here, not be
    # created as a new attribute that nothing reads.
    saved = {k: getattr(clips, k) for k in variant.get("flags", {})}
    saved_options = ip._options
    try:
        for k, v in variant.get("flags", {}).items():
            setattr(clips, k, v)
        if variant.get("options") == "default":
            ip._options = lambda threads: tf.data.Options()
        return pipeline_rate(ip, data_dir, cfg, batch, min_seconds, **build)
    finally:
        for k, v in saved.items():
            setattr(clips, k, v)
        ip._options = saved_options


def _median_run(runs: list[dict]) -> dict:
    """The run with the median clips/s, plus every round's clips/s and the peak RSS of all."""
    ordered = sorted(runs, key=lambda r: r["clips_per_s"])
    out = dict(ordered[len(ordered) // 2])
    out["rounds_clips_per_s"] = [r["clips_per_s"] for r in runs]
    if "cpu_ms_per_clip" in out:
        out["cpu_ms_per_clip"] = float(np.median([r["cpu_ms_per_clip"] for r in runs]))
    if "peak_rss_bytes" in out:
        out["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in runs)
    return out


def compare(data_dir: str, streams=("temporal", "spatial"), modes=("train", "test_1crop",
            "test_10crop"), version1_dir: str | None = None, batch_size: int = 8,
            min_seconds: float = 3.0, bound_clips: int = 48, num_segments: int = 3,
            flow_length: int = 10, image_size: int = 224, test_segments: int = 25, rounds: int = 3,
            levers: dict | None = None, lever_modes=("train",),
            log: Callable[[str], None] = print) -> dict:
    """The pipeline, its bound and its levers on the same records and cores, per stream and mode.

    Each of ``rounds`` rounds measures, back to back, the bound, the new
    pipeline and every lever variant; the median round is reported (other
    processes on the cores then hit all of them alike).  Returns
    ``{"cores", stream: {mode: {"bound", "window_bound", "new", "levers":
    {name: ...}}}}``; training modes add "read" (and "read_version1").
    ``levers`` (default `LEVERS`) are measured in ``lever_modes`` only,
    except ``version1_records``, measured in every mode.  Test modes use
    batch size 1, as evaluation does per video.

    ``data_dir`` holds the records the pipeline reads; ``version1_dir``
    (optional) version-1 records of the same videos, for the
    ``version1_records`` lever and the version-1 read.
    """
    from mat_effnet import records
    from mat_effnet.common.errors import bad_argument
    from mat_effnet.data import input_pipeline

    levers = dict(LEVERS if levers is None else levers)
    if version1_dir is not None and records.read_metadata(version1_dir).get(
            "schema_version", 1) != 1:
        raise bad_argument("version1_dir", version1_dir, "not version-1 records "
                           "(mat-effnet-prep --schema_version=1 writes them)")
    if version1_dir is None or version1_dir == data_dir:
        levers.pop("version1_records", None)
    cores = usable_cores()
    results: dict = {"cores": cores, "records": data_dir, "version1_records": version1_dir,
                     "rounds": rounds, "min_seconds_per_measurement": min_seconds}
    for stream in streams:
        configs = stream_configs(stream, num_segments, flow_length, image_size, test_segments)
        results[stream] = {}
        for mode in modes:
            cfg = configs[mode]
            batch = batch_size if cfg.training else 1
            jpegs = clip_jpegs(data_dir, cfg, bound_clips)
            runs: dict[str, list] = {}
            names = ["new"] + [name for name in levers if mode in lever_modes
                               or name == "version1_records"]
            for r in range(rounds):
                runs.setdefault("bound", []).append(decode_bound(jpegs, min_seconds))
                if mode != "test_10crop":
                    runs.setdefault("window_bound", []).append(
                        decode_bound(jpegs, min_seconds, window=image_size))
                for name in names:
                    if name == "new":
                        rate = pipeline_rate(input_pipeline, data_dir, cfg, batch, min_seconds)
                    else:
                        rate = _run_variant(name, levers[name], cfg, data_dir, batch,
                                            min_seconds, cores, version1_dir)
                    runs.setdefault(name, []).append(rate)
                log(f"{stream} {mode} round {r + 1}: " + ", ".join(
                    f"{k} {v[-1]['clips_per_s']:.1f}" for k, v in runs.items()))
            bound = _median_run(runs["bound"])
            entry = {"bound": bound}
            if cfg.training:
                # What a clip reads, without decoding: under the new layout
                # and under version 1 (a whole record per clip).
                entry["read"] = read_parse_rate(data_dir, cfg, min_seconds)
                if version1_dir is not None:
                    entry["read_version1"] = read_parse_rate(version1_dir, cfg, min_seconds)
                entry["bound_with_read_cpu_ms_per_clip"] = (
                    bound["cpu_ms_per_clip"] + entry["read"]["cpu_ms_per_clip"])
            if "window_bound" in runs:
                entry["window_bound"] = _median_run(runs["window_bound"])
            for name in names:
                entry[name] = summarize(_median_run(runs[name]), bound, cores, num_segments)
            entry["levers"] = {name: {
                "clips_per_s": entry[name]["clips_per_s"],
                "cpu_ms_per_clip": entry[name]["cpu_ms_per_clip"],
                "new_over_variant": entry["new"]["clips_per_s"] / entry[name]["clips_per_s"],
                "new_cpu_saving": (1 - entry["new"]["cpu_ms_per_clip"]
                                   / entry[name]["cpu_ms_per_clip"]),
            } for name in names if name != "new"}
            results[stream][mode] = entry
    return results
