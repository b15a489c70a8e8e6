"""Raw videos -> RGB JPEGs + quantized TV-L1 flow -> sharded TFRecords: the local driver.

This is the data side of the two-stream network (paper Sect. 3, Fig. 1: RGB
frames feed the spatial stream, stacked optical flow the temporal stream;
Sect. 4.2 uses TV-L1 flow as in TSN).  The library entry point is
`build(PrepConfig)` (settings: `data_prep.prep_config`); `experiments.prep`
wraps it in a command line.

This module owns the run as a whole: checking the settings against an
earlier run in the same ``out_dir`` (so that a run killed at any moment can
be re-run), driving the videos through a process pool or, for the Keras
TV-L1, `mat_effnet.encoding.flow_batches`, and writing the metadata. Every driver
(this one, `data_prep.beam_pipeline` on Apache Beam) takes the same steps:
`prepare` (checks, layout, shard plan), `data_prep.work_files.video_result`
(one video -> work file + marker), `data_prep.shards.assemble_shard`
(finished videos -> one shard) and `finish` (metadata).
``mat_effnet_meta.json`` and TFDS's metadata are written last: their
presence means the dataset is complete.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time

from data_prep import datasets, layouts, repair, shards, watchdog, work_files
from mat_effnet.encoding import flow_batches
from mat_effnet.ops import optical_flow as flow_lib
from data_prep.prep_config import AUTO, PrepConfig
from mat_effnet.common.progress import Progress, fmt_seconds
from mat_effnet.common import atomic, tf_startup
from mat_effnet.records import integrity
from mat_effnet import records
from mat_effnet.common.errors import MatEffNetError

log = logging.getLogger("mat_effnet.prep")


class PrepError(MatEffNetError):
    """A problem with the whole run (not one video): one clear line."""


# ---------------------------------------------------------------------------
# The settings of an earlier run in the same out_dir
# ---------------------------------------------------------------------------

def _settings_path(out_dir: str) -> str:
    return os.path.join(out_dir, work_files.WORK_DIR, "settings.json")


def auto_flow_implementation(out_dir: str, algorithm: str) -> str:
    """The implementation ``--flow_implementation=auto`` means for this run.

    Resuming a run: the implementation it was started with (so a run
    started on a GPU machine can be finished on a CPU one without a
    settings clash). Otherwise `mat_effnet.ops.optical_flow.default_implementation`.
    """
    path = _settings_path(out_dir)
    if work_files.gfile().exists(path):
        try:
            old = work_files.read_json(path)
        except (json.JSONDecodeError, OSError):
            old = {}
        if old.get("flow") == algorithm:
            return old.get("flow_implementation", "opencv")
    return flow_lib.default_implementation(algorithm)


def _stored_settings(old: dict) -> dict:
    # Runs from before flow implementations existed used OpenCV's; runs from
    # before the frame-addressable layout wrote version 1.
    return {"flow_implementation": "opencv", "schema_version": 1, **old}


def _check_settings(out_dir: str, cfg: PrepConfig) -> None:
    gfile = work_files.gfile()
    path = _settings_path(out_dir)
    meta_path = os.path.join(out_dir, records.META_FILENAME)
    new = cfg.settings()
    if gfile.exists(path):
        old = _stored_settings(work_files.read_json(path))
        if old != new:
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in new.items()
                             if old.get(k) != v)
            hint = ""
            if old.get("schema_version") != new["schema_version"]:
                # One folder never mixes record layouts: a reader reads one.
                hint = f", or finish it with --schema_version={old.get('schema_version')}"
            raise PrepError(f"{out_dir}: holds a run with other settings ({diff}); "
                            f"use another --out_dir or delete it{hint}")
    elif gfile.exists(meta_path):
        old = work_files.read_json(meta_path).get("settings")
        if old is not None and _stored_settings(old) != new:
            raise PrepError(f"{out_dir}: holds a dataset prepared with other settings; "
                            "use another --out_dir or delete it")
    gfile.makedirs(os.path.join(out_dir, work_files.WORK_DIR))
    atomic.write_text(path, json.dumps(new, sort_keys=True))


# ---------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------

def build(cfg: PrepConfig) -> dict:
    """Prepares a dataset; returns the metadata written.  Resumable.

    Raises `layouts.LayoutError`, `ValueError` or `PrepError` (one clear
    line each) before any work when the input or the settings are wrong.
    """
    layout, plans = prepare(cfg)
    out_dir = cfg.out_dir
    start = time.monotonic()

    summaries: dict[str, list] = {}
    pending: list[work_files.Task] = []
    # Shards are assembled as soon as their last video is in, so a kill
    # loses at most the videos in flight.
    waiting: dict[tuple, int] = {}  # (split, shard index) -> videos still to process
    shard_of: dict[tuple, tuple] = {}  # (video_id, split) -> (split, shard index)
    for split, plan in plans.items():
        wd = work_files.work_dir(out_dir, split)
        summaries[split] = [shards.finished_shard(cfg, split, i) for i in range(len(plan))]
        for i, shard in enumerate(plan):
            if summaries[split][i] is None:
                todo = [work_files.Task(e, cfg, wd) for e in shard
                        if work_files.marker(wd, e) is None]
                pending += todo
                if todo:
                    waiting[split, i] = len(todo)
                for t in todo:
                    shard_of[t.entry.video_id, split] = (split, i)

    total_videos = sum(len(e) for e in layout.splits.values())
    log.info("%s: %d classes, %d videos (%s), %d to process with %d worker(s), flow=%s (%s)",
             cfg.dataset, len(layout.classes), total_videos,
             ", ".join(f"{s} {len(e)}" for s, e in layout.splits.items()), len(pending),
             cfg.workers, cfg.flow, cfg.flow_implementation)

    def assemble(split, i):
        plan = plans[split]
        summaries[split][i] = shards.assemble_shard(cfg, split, i, len(plan), plan[i])

    # Shards whose videos were all finished by an earlier, killed run.
    for split, plan in plans.items():
        for i in range(len(plan)):
            if summaries[split][i] is None and (split, i) not in waiting:
                assemble(split, i)
    progress = Progress(len(pending), cfg.progress_seconds, log)
    for result in _run_tasks(pending, cfg):
        if result["status"] == "failed":
            log.warning("skipped %s: %s", result["path"], result["reason"])
        elif result.get("warning"):
            log.warning("%s: %s", result["path"], result["warning"])
        progress.update(result["status"] == "failed")
        key = shard_of[result["video_id"], result["split"]]
        waiting[key] -= 1
        if waiting[key] == 0:
            assemble(*key)

    meta = finish(cfg, layout, summaries)
    failed = meta["failures"]
    log.info("done in %s: %d videos ok, %d failed -> %s",
             fmt_seconds(time.monotonic() - start),
             sum(s["videos"] for s in meta["splits"].values()), len(failed), out_dir)
    for f in failed:
        log.info("  failed: %s (%s): %s", f["video_id"], f["split"], f["reason"])
    return meta


def _run_tasks(tasks: list[work_files.Task], cfg: PrepConfig):
    """Processes ``tasks``, yielding each video's result (its marker's content) when done."""
    if not tasks:
        return
    if cfg.flow != "none" and cfg.flow_implementation == "keras" and cfg.frames_root is None:
        steps = flow_batches.Steps(work_files.decode_task, work_files.encode_task,
                                   work_files.write_failure)
        try:
            yield from flow_batches.run(tasks, cfg.flow_schedule(), steps)
        except flow_batches.FlowProcessError as e:
            raise PrepError(str(e)) from None
        return
    if cfg.video_timeout_s:
        yield from watchdog.run(tasks, cfg.workers, cfg.video_timeout_s)
        return
    if cfg.workers == 1:
        for t in tasks:
            yield work_files.process_video(t)
        return
    # spawn, not fork: the parent may already hold TensorFlow's threads.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(cfg.workers, initializer=tf_startup.import_tensorflow_if_quiet) as pool:
        yield from pool.imap_unordered(work_files.process_video, tasks, chunksize=1)


# ---------------------------------------------------------------------------
# The steps every driver takes before and after the videos (`build` above,
# data_prep.beam_pipeline); the ones between live in work_files and shards
# ---------------------------------------------------------------------------

def prepare(cfg: PrepConfig) -> tuple[layouts.Layout, dict[str, list[list]]]:
    """Checks everything, reads the layout and plans the shards, before any work.

    Resolves ``cfg.flow_implementation="auto"`` in place. Returns the
    layout and, per split that has videos (in the layout's split order),
    its shards as lists of `layouts.VideoEntry` in write order.  Raises as
    `build` documents.
    """
    cfg.validate()
    layout = datasets.load_layout(cfg.dataset, cfg.data_root, split=cfg.split,
                                  split_file=cfg.split_file, frames_root=cfg.frames_root,
                                  frames_layout=cfg.frames_layout)
    if cfg.frames_root is not None:
        # Imported flow is not computed here; settings() names it "imported".
        cfg.flow_implementation = "opencv" if cfg.flow != "none" else cfg.flow_implementation
        if cfg.flow_implementation == AUTO:
            cfg.flow_implementation = "opencv"
    if cfg.flow_implementation == AUTO:
        cfg.flow_implementation = auto_flow_implementation(cfg.out_dir, cfg.flow)
    _check_settings(cfg.out_dir, cfg)
    plans = {split: shards.plan_shards(entries, cfg.videos_per_shard)
             for split, entries in layout.splits.items() if entries}
    for split in plans:
        work_files.gfile().makedirs(work_files.work_dir(cfg.out_dir, split))
    if cfg.rebuild_damaged:
        repair.reset_damaged(cfg, plans)
    return layout, plans


def finish(cfg: PrepConfig, layout: layouts.Layout, summaries: dict[str, list]) -> dict:
    """Writes TFDS's metadata, then ``mat_effnet_meta.json``; returns the latter's content.

    ``summaries`` holds, per split in `prepare`'s order, every shard's
    summary in shard order.  Of ``layout`` only ``classes`` and
    ``failures`` are read.  ``mat_effnet_meta.json`` goes last: its presence
    means the dataset is complete.
    """
    meta = _metadata(cfg, layout, summaries)
    if cfg.schema_version == 1:  # TFDS reads one Example per video only
        records.write_tfds_metadata(
            cfg.out_dir, cfg.dataset_name, layout.classes,
            {split: [s["records"] for s in summaries[split]] for split in summaries},
            {split: sum(s["num_bytes"] for s in summaries[split]) for split in summaries},
            description=f"mat-effnet prepared {cfg.dataset} (split {cfg.split}), "
                        f"flow={cfg.flow} ({cfg.flow_implementation})")
    records.write_metadata(cfg.out_dir, meta, cfg.schema_version)
    return meta


def _common_short_side(sizes: dict[str, int]) -> int | None:
    """The short side every stored video shares, or None."""
    sides = {min(int(n) for n in size.split("x")) for size in sizes}
    return sides.pop() if len(sides) == 1 else None


def _metadata(cfg, layout, summaries) -> dict:
    splits, shard_files, failures, checks, warnings = {}, {}, [], {}, []
    frames = rgb_bytes = flow_bytes = 0
    sizes: dict[str, int] = {}
    for f in layout.failures:
        failures.append({"video_id": f.video_id, "path": f.path, "reason": f.reason,
                         "split": getattr(f, "split", None)})
    for split in summaries:
        vids = [v for s in summaries[split] for v in s["videos"]]
        ok = [v for v in vids if v["status"] == "done"]
        failures += [{"video_id": v["video_id"], "path": v["path"], "reason": v["reason"],
                      "split": split} for v in vids if v["status"] != "done"]
        warnings += [{"video_id": v["video_id"], "path": v["path"], "warning": v["warning"],
                      "decoded": v["frames"], "announced": v["announced_frames"],
                      "split": split} for v in ok if v.get("warning")]
        split_frames = sum(v["frames"] for v in ok)
        splits[split] = {"videos": len(ok), "failed": len(vids) - len(ok),
                         "records": sum(v["records"] for v in ok), "frames": split_frames}
        shard_files[split] = [s["file"] for s in summaries[split]]
        for s in summaries[split]:
            index = s.get("index")
            checks[s["file"]] = integrity.record(
                s["num_bytes"], s[integrity.CHECKSUM],
                work_files.gfile().stat(os.path.join(cfg.out_dir, index)).length if index else None)
        frames += split_frames
        rgb_bytes += sum(v["rgb_bytes"] for v in ok)
        flow_bytes += sum(v["flow_bytes"] for v in ok)
        for v in ok:
            size = f"{v['height']}x{v['width']}"
            sizes[size] = sizes.get(size, 0) + 1
    flow_frames = sum(splits[s]["frames"] - splits[s]["records"] for s in splits)
    settings = cfg.settings()
    flow = {"algorithm": cfg.flow, "implementation": settings["flow_implementation"],
            "bound": cfg.flow_bound,
            "quantization": "q = round((clip(v, -bound, bound) + bound) * 255 / (2 * bound)), "
                            "uint8 JPEG, x and y separately; flow[i] is rgb[i] -> rgb[i+1]",
            "flow_frames": flow_frames if cfg.flow != "none" else 0}
    jpeg_quality = cfg.jpeg_quality
    if cfg.frames_root is not None:
        # What was copied keeps the source's JPEG quality, which nobody wrote down.
        bound, rounding, came_from = cfg.frames_conventions()
        flow.update(source=cfg.frames_layout, source_bound=bound, source_rounding=rounding,
                    # 'file' (the conventions file beside the frames), 'flags', or
                    # 'assumed' (denseflow's, no file and no flag)
                    source_conventions=came_from,
                    rounding=settings["flow_rounding"],
                    requantized=bound != cfg.flow_bound or cfg.short_side > 0,
                    quantization=f"as the source: ±{bound:g}, {rounding} rounding"
                    if bound == cfg.flow_bound and cfg.short_side == 0 else flow["quantization"])
        jpeg_quality = {"rgb": cfg.jpeg_quality if cfg.short_side > 0 else None,
                        "flow": cfg.jpeg_quality if flow["requantized"] else None,
                        "note": "None: bytes copied from the frame folders, quality unknown; "
                                "with short_side, frames already that size are copied too"}
    return {
        "dataset": cfg.dataset,
        "name": cfg.dataset_name,
        "split_id": cfg.split,
        "classes": list(layout.classes),
        "num_classes": len(layout.classes),
        "splits": splits,
        "shards": shard_files,
        "frame_size": {"short_side": cfg.short_side, "sizes": sizes,
                       # What the records hold: with an import that keeps the stored
                       # size (short_side 0) this is the size to prepare new videos at.
                       "stored_short_side": _common_short_side(sizes)},
        "flow": flow,
        "jpeg_quality": jpeg_quality,
        # Each shard's size and checksum, and its index's size (mat_effnet.records.integrity).
        "shard_files": checks,
        "chunk_frames": cfg.chunk_frames,
        "bytes_per_frame": {
            "rgb": rgb_bytes / frames if frames else 0.0,
            "flow_xy": flow_bytes / flow_frames if flow_frames and cfg.flow != "none" else 0.0,
        },
        "failures": failures,
        # Videos kept with fewer frames than their container announces.
        "warnings": warnings,
        "settings": settings,
    }
