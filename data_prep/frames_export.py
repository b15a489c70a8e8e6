"""Videos -> denseflow-style frame folders, mmaction2 file lists and a conventions JSON.

``mat-effnet-flow`` (`experiments.flow`) replaces denseflow in an mmaction2
data preparation: it writes the RGB frames and the TV-L1 flow of the paper's
temporal stream (Sect. 4.2, TV-L1 as in TSN) in the layouts of
`data_prep.rawframes` (its names, denseflow's ``cvRound`` quantization at
``±bound`` and its JPEG quality 95 by default), with this project's TV-L1
(`mat_effnet.ops.tvl1`, batched on the accelerator when there is one, or
OpenCV's), installable with pip.

* Frames are decoded and resized as ``mat-effnet-prep`` decodes them
  (`mat_effnet.ops.video.iter_frames`, ``short_side``; or exactly
  ``new_width`` x ``new_height`` like ``build_rawframes.py``'s
  ``--new-width/--new-height``, one of them 0 keeping the aspect ratio), and
  flow is computed between consecutive frames by the same functions
  (`mat_effnet.ops.optical_flow`), so an export imported back
  (`data_prep.frames_import`) gives the records of ``mat-effnet-prep``
  from the videos up to the JPEG and rounding conventions -- and byte for
  byte with ``jpeg_quality=90 rounding=half_up`` (the prep's own).
  Unlike denseflow, ``short_side`` also enlarges small videos, as the prep
  does.
* T frames give T images and T - 1 flow fields, field k = image k -> k + 1
  (denseflow's count; `data_prep.rawframes.align`).
* Resumable: a video's folders are written under ``.partial`` names, renamed
  when complete, then its marker is written in ``<out_dir>/.mat_effnet_flow/``;
  a re-run skips videos with a marker and redoes the others. A video that
  cannot be used gets a failure marker with the reason (never fatal). A
  fault of the machine (`mat_effnet.common.faults.machine_fault`: no space,
  an I/O error, a lost mount, out of memory) stops the run with one line and
  marks no video; the same command, once it is cleared, completes them.
* ``<out_dir>/mat_effnet_flow.json`` (`data_prep.rawframes.CONVENTIONS_FILE`)
  records the conventions and each video's fps and counts; with a dataset
  layout, mmaction2's file lists (`write_file_lists`) go beside it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import shutil
import time

import cv2
import numpy as np

from mat_effnet.ops import optical_flow as flow_lib
from data_prep import layouts, rawframes
from mat_effnet.ops import quantize, video
from mat_effnet.common.progress import Progress, fmt_seconds
from mat_effnet.common import atomic, faults, tf_startup
from mat_effnet.common.flagdefs import setting
from mat_effnet.common.errors import bad_argument

log = logging.getLogger("mat_effnet.flow")

MARKER_DIR = ".mat_effnet_flow"
# What the user lowers when memory runs out (mat_effnet.common.faults).
MEMORY_ADVICE = ("lower --flow_batch or the frame size (--short_side, --new_width/--new_height), "
                 "or run fewer --workers")


@dataclasses.dataclass(frozen=True)
class FlowExportSettings:
    """Everything that decides the bytes ``mat-effnet-flow`` writes; flags derive from it."""

    layout: str = setting("rawframes", "Folder layout: rawframes (mmaction2 / denseflow) or "
                          "twostreamfusion (jpegs_256 + tvl1_flow/{u,v}).",
                          choices=rawframes.LAYOUTS)
    flow: str = setting("tvl1", "Optical flow: TV-L1 (the paper's), DIS or none (RGB only).",
                        choices=flow_lib.ALGORITHMS)
    flow_implementation: str = setting(
        "keras", "TV-L1's implementation: keras (batched, on the GPU when there is one) or "
        "opencv (one pair at a time per worker).", choices=flow_lib.IMPLEMENTATIONS)
    flow_batch: int = setting(flow_lib.DEFAULT_BATCH, "Frame pairs per call of the keras TV-L1.")
    bound: float = setting(rawframes.DENSEFLOW_BOUND, "Flow is clipped to +-bound pixels "
                           "(denseflow's -b).")
    rounding: str = setting(rawframes.DENSEFLOW_ROUNDING, "Quantization rounding: cvround "
                            "(denseflow), truncate (mmaction2 flow_extraction.py) or half_up "
                            "(mat-effnet-prep).", choices=rawframes.ROUNDINGS)
    jpeg_quality: int = setting(rawframes.DENSEFLOW_JPEG_QUALITY,
                                "JPEG quality (denseflow: OpenCV's default, 95).")
    short_side: int = setting(0, "Resize so the short side is this (0: keep; like "
                              "build_rawframes.py --new-short).")
    new_width: int = setting(0, "Resize to this width (with --new_height; 0: keep aspect).")
    new_height: int = setting(0, "Resize to this height (with --new_width; 0: keep aspect).")
    workers: int = setting(1, "Worker processes (one core each; the keras TV-L1 runs in one).")

    def __post_init__(self):
        flow_lib.check_implementation(self.flow, self.flow_implementation)
        rawframes.check_layout(self.layout)
        rawframes.check_rounding(self.rounding)
        if not self.bound > 0:
            raise bad_argument("bound", self.bound, "must be > 0")
        if not 1 <= self.jpeg_quality <= 100:
            raise bad_argument("jpeg_quality", self.jpeg_quality, "must be in 1..100")
        for name in ("short_side", "new_width", "new_height"):
            if getattr(self, name) < 0:
                raise bad_argument(name, getattr(self, name), "must be >= 0")
        if self.short_side and (self.new_width or self.new_height):
            raise bad_argument("short_side", self.short_side,
                               "set either it or --new_width/--new_height")
        if self.workers < 1:
            raise bad_argument("workers", self.workers, "must be >= 1")
        if self.flow_batch < 1:
            raise bad_argument("flow_batch", self.flow_batch, "must be >= 1")


@dataclasses.dataclass(frozen=True)
class Video:
    """One video to export: its id ('/'-separated, no extension) and file."""

    video_id: str
    path: str


# ---------------------------------------------------------------------------
# Which videos
# ---------------------------------------------------------------------------

def find_videos(source: str) -> list[Video]:
    """The videos of a folder (every video file below it) or of a list file (one path a line).

    A list's relative paths are relative to the list's folder; ids are
    paths relative to that folder (or the file stem when outside it).
    """
    source = os.path.abspath(os.path.expanduser(source))
    if os.path.isdir(source):
        found = []
        for dirpath, name in layouts.walk_files(source):
            if layouts.is_video_name(name):
                rel = os.path.relpath(os.path.join(dirpath, name), source).replace(os.sep, "/")
                found.append(Video(layouts.strip_ext(rel), os.path.join(dirpath, name)))
        return found
    if not os.path.isfile(source):
        raise bad_argument("videos", source, "is neither a folder nor a list file")
    base = os.path.dirname(source)
    found = []
    for _, line in layouts.read_lines(source):
        raw = line.split()[0]
        path = raw if os.path.isabs(raw) else os.path.join(base, raw)
        rel = layouts.normalize_rel(os.path.relpath(path, base))
        vid = layouts.strip_ext(rel) if rel else os.path.splitext(os.path.basename(path))[0]
        found.append(Video(vid, path))
    return found


# ---------------------------------------------------------------------------
# One video
# ---------------------------------------------------------------------------

def _marker(out_dir: str, video_id: str) -> str:
    from data_prep.work_files import video_key  # the prep's file-safe key

    return os.path.join(out_dir, MARKER_DIR, video_key(layouts.VideoEntry(
        video_id, "", 0, "", "")) + ".json")


def read_marker(out_dir: str, video_id: str) -> dict | None:
    """The video's marker, else None (redo it).

    A failure that was the machine's (a run that recorded a full disk, an
    I/O error or out of memory against the video) is no marker.
    """
    try:
        with open(_marker(out_dir, video_id), encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        return None
    if found.get("status") == "failed" and faults.is_machine_reason(found.get("reason"), out_dir):
        return None
    return found


def _frames(path: str, s: FlowExportSettings):
    if not (s.new_width or s.new_height):
        yield from video.iter_frames(path, s.short_side)
        return
    for frame in video.iter_frames(path, 0):
        h, w = frame.shape[:2]
        out_w = s.new_width or max(1, int(round(w * s.new_height / h)))
        out_h = s.new_height or max(1, int(round(h * s.new_width / w)))
        if (out_w, out_h) != (w, h):
            interp = cv2.INTER_AREA if out_w * out_h < w * h else cv2.INTER_LINEAR
            frame = cv2.resize(frame, (out_w, out_h), interpolation=interp)
        yield frame


def _write(path: str, image: np.ndarray, quality: int) -> int:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    with open(path, "wb") as f:
        f.write(buf.tobytes())
    return len(buf)


def export_video(item: Video, s: FlowExportSettings, out_dir: str, flow_fn=None) -> dict:
    """Writes one video's folders, then its marker; returns the marker. Never raises for bad input."""
    start = time.perf_counter()
    result = {"video_id": item.video_id, "path": item.path}
    naming = rawframes.NAMINGS[s.layout]
    finals = list(dict.fromkeys(rawframes.folders(out_dir, s.layout, item.video_id)))
    partials = [d + ".partial" for d in finals]
    with_flow = s.flow != "none"
    try:
        for d in finals + partials:
            shutil.rmtree(d, ignore_errors=True)  # left by a killed run
        for d in partials:
            os.makedirs(d)
        rgb_dir, fx_dir, fy_dir = (partials * 3)[:3] if len(partials) == 1 else partials
        if with_flow and flow_fn is None:
            flow_fn = flow_lib.create_batch_flow(
                s.flow, s.flow_implementation,
                s.flow_batch if s.flow_implementation == "keras" else None)
        step = max(1, int(getattr(flow_fn, "batch_size", 1) or 1))
        grays: list = []
        count = flows = 0
        info = video.probe(item.path)

        def run_flow():
            nonlocal grays, flows
            if len(grays) >= 2:
                fields = flow_fn(np.stack(grays[:-1]), np.stack(grays[1:]))
                for field in fields:
                    for axis, (d, prefix) in enumerate(((fx_dir, naming.flow_x_prefix),
                                                        (fy_dir, naming.flow_y_prefix))):
                        q = quantize.quantize_flow(field[..., axis], s.bound, s.rounding)
                        _write(os.path.join(d, rawframes.file_name(prefix, flows, naming)),
                               q, s.jpeg_quality)
                    flows += 1
            grays = grays[-1:]

        for frame in _frames(item.path, s):
            _write(os.path.join(rgb_dir, rawframes.file_name(naming.rgb_prefix, count, naming)),
                   cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), s.jpeg_quality)
            count += 1
            if with_flow:
                grays.append(flow_lib.to_gray(frame))
                if len(grays) > step:
                    run_flow()
        if count < 2:
            raise video.VideoError(item.path, video.REASON_ONE_FRAME if count else
                                   video.REASON_NO_FRAMES)
        if with_flow:
            run_flow()
        for partial, final in zip(partials, finals):
            os.replace(partial, final)
        result.update(status="done", frames=count, flows=flows, fps=info.fps,
                      seconds=time.perf_counter() - start)
    except Exception as e:  # noqa: BLE001  # a bad video must not end the run
        for d in partials:
            shutil.rmtree(d, ignore_errors=True)
        # ... but the machine's fault ends it, recorded against no video.
        faults.raise_if_machine(e, out_dir=out_dir, inputs=[item.path], path=finals[0],
                                memory_advice=MEMORY_ADVICE)
        reason = getattr(e, "reason", None) or f"{type(e).__name__}: {e}"
        result.update(status="failed", reason=reason)
    atomic.write_json(_marker(out_dir, item.video_id), result)
    return result


def _export_task(args) -> dict:
    cv2.setNumThreads(1)  # one worker is one core
    return export_video(*args)


# ---------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------

def export(videos: list[Video], s: FlowExportSettings, out_dir: str, *,
           layout: layouts.Layout | None = None, split_id: int | None = None,
           progress_seconds: float = 10.0) -> dict:
    """Exports ``videos`` to ``out_dir``; returns the conventions JSON written. Resumable.

    ``layout`` (the dataset's) also writes mmaction2's file lists for its
    splits (`write_file_lists`), named for ``split_id``.
    """
    os.makedirs(os.path.join(out_dir, MARKER_DIR), exist_ok=True)
    ids = [v.video_id for v in videos]
    if len(set(ids)) != len(ids):
        raise bad_argument("videos", "...", "two videos have the same id")
    todo = [v for v in videos if read_marker(out_dir, v.video_id) is None]
    log.info("%d videos, %d to export (layout=%s, flow=%s %s, bound=%g, %s, quality %d)",
             len(videos), len(todo), s.layout, s.flow, s.flow_implementation, s.bound,
             s.rounding, s.jpeg_quality)
    start = time.monotonic()
    progress = Progress(len(todo), progress_seconds, log)
    for result in _run(todo, s, out_dir):
        if result["status"] != "done":
            log.warning("skipped %s: %s", result["path"], result["reason"])
        progress.update(result["status"] != "done")
    markers = {v.video_id: read_marker(out_dir, v.video_id) or {} for v in videos}
    done = {k: m for k, m in markers.items() if m.get("status") == "done"}
    conventions = {
        "written_by": "mat-effnet-flow", "layout": s.layout,
        "naming": dataclasses.asdict(rawframes.NAMINGS[s.layout]),
        "flow": s.flow, "flow_implementation": s.flow_implementation, "bound": s.bound,
        "rounding": s.rounding, "jpeg_quality": s.jpeg_quality,
        "short_side": s.short_side, "new_width": s.new_width, "new_height": s.new_height,
        "frame_counts": "T images, T - 1 flow fields; field k is image k -> image k + 1",
        "fps": {k: m["fps"] for k, m in done.items()},
        "frames": {k: m["frames"] for k, m in done.items()},
        "failures": [{"video_id": k, "path": m.get("path"), "reason": m.get("reason")}
                     for k, m in markers.items() if m.get("status") == "failed"],
    }
    atomic.write_json(os.path.join(out_dir, rawframes.CONVENTIONS_FILE), conventions)
    if layout is not None:
        write_file_lists(out_dir, layout, done, s.layout, split_id)
    log.info("done in %s: %d videos ok, %d failed -> %s", fmt_seconds(time.monotonic() - start),
             len(done), len(conventions["failures"]), out_dir)
    return conventions


def _run(todo: list[Video], s: FlowExportSettings, out_dir: str):
    if not todo:
        return
    if s.workers == 1 or (s.flow != "none" and s.flow_implementation == "keras"):
        # The keras TV-L1 is batched per call in this one process (one program per size).
        for v in todo:
            yield export_video(v, s, out_dir)
        return
    ctx = multiprocessing.get_context("spawn")  # the parent may hold TF's threads
    with ctx.Pool(s.workers, initializer=tf_startup.import_tensorflow_if_quiet) as pool:
        yield from pool.imap_unordered(_export_task, [(v, s, out_dir) for v in todo],
                                       chunksize=1)


def file_list_names(dataset: str, split: str, split_id: int | None) -> str:
    """mmaction2's file-list name (build_file_list.py): test splits are called ``val``."""
    subset = "train" if split == "train" else "val"
    if split_id is None:
        return f"{dataset}_{subset}_list_rawframes.txt"
    return f"{dataset}_{subset}_split_{split_id}_rawframes.txt"


def write_file_lists(out_dir: str, layout: layouts.Layout, done: dict, frames_layout: str,
                     split_id: int | None) -> list[str]:
    """``<frame_dir> <total_frames> <label>`` lists per split (RGB count, 0-based label)."""
    written = []
    for split, entries in layout.splits.items():
        lines = [f"{rawframes.video_folder(frames_layout, e.video_id)} "
                 f"{done[e.video_id]['frames']} {e.label}\n"
                 for e in entries if e.video_id in done]
        path = os.path.join(out_dir, file_list_names(layout.dataset, split, split_id))
        atomic.write_text(path, "".join(lines))
        written.append(path)
    return written
