"""One video's work in a preparation run: its work file, its marker, the worker tasks.

Each video is processed by a worker into its own small TFRecord file under
``out_dir/.work/<split>/`` (temp name, then rename) followed by a
``.done.json``/``.failed.json`` marker; a re-run skips videos that have a
marker (`marker`), and `data_prep.shards` later concatenates the work files
of a shard. The records themselves come from `mat_effnet.encoding.encode`, the one
function that turns a video into records (paper Sect. 3, Fig. 1: RGB for the
spatial stream, TV-L1 flow for the temporal one, Sect. 4.2).

Where flow runs: OpenCV's flow (one pair at a time on one core) runs inside
each worker, next to the decoding (`process_video`). The Keras TV-L1 runs
batched across videos in a flow process per GPU (`mat_effnet.encoding.flow_batches`);
the workers then only decode (`decode_task`) and, once a video's flow is
back, JPEG it and write its work file and marker (`encode_task`). Both
routes write the same bytes for the same flow function.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

from mat_effnet.encoding import encode
from data_prep import frames_import, layouts
from mat_effnet.ops import optical_flow as flow_lib
from data_prep.prep_config import PrepConfig
from mat_effnet.common import atomic, faults
from mat_effnet import records

WORK_DIR = ".work"


def work_dir(out_dir: str, split: str) -> str:
    """Where a split's per-video files, markers and shard summaries live."""
    return os.path.join(out_dir, WORK_DIR, split)


def gfile():
    """``tf.io.gfile``, imported on first use (any path it knows: ``gs://`` ...)."""
    import tensorflow as tf

    return tf.io.gfile


def read_json(path):
    with gfile().GFile(path) as f:
        return json.load(f)


def video_key(entry: layouts.VideoEntry) -> str:
    """A filesystem-safe, unique file stem for a video's work files."""
    digest = hashlib.sha1(entry.video_id.encode("utf-8")).hexdigest()[:10]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in entry.video_id)[-80:]
    return f"{safe}-{digest}"


@dataclasses.dataclass(frozen=True)
class Task:
    """One video to process, with the run's settings and its split's work dir."""

    entry: layouts.VideoEntry
    cfg: PrepConfig
    work_dir: str


def marker(work_dir: str, entry) -> dict | None:
    """The video's marker content (done or failed) if an earlier run left one, else None.

    A failure that was the machine's (a run from before `mat_effnet.common.faults`
    recorded a full disk as the video's failure) is no marker: redo the video.
    """
    base = os.path.join(work_dir, video_key(entry))
    for suffix in (".done.json", ".failed.json"):
        if gfile().exists(base + suffix):
            try:
                content = read_json(base + suffix)
            except (json.JSONDecodeError, OSError):
                return None  # a torn marker: redo the video
            if suffix == ".failed.json" and faults.is_machine_reason(
                    content.get("reason"), os.path.dirname(os.path.dirname(work_dir))):
                return None
            return content
    return None


def video_result(cfg: PrepConfig, split: str, entry: layouts.VideoEntry) -> dict:
    """One video's result: an earlier run's marker, else the video processed now.

    Never raises for a bad video (see `process_video`); afterwards the
    video's marker (and, if it succeeded, its work file) exists.
    """
    wd = work_dir(cfg.out_dir, split)
    return marker(wd, entry) or process_video(Task(entry, cfg, wd))


def _write_video(task: Task, produce, result: dict | None = None,
                 seconds: float = 0.0) -> dict:
    """Writes the records ``produce(stats)`` yields to the video's work file, then its marker.

    Never raises for a bad video: `mat_effnet.ops.video.VideoError` and any
    other error (an unexpected decoder or flow failure must not kill the
    run) become a ``.failed.json`` marker with the reason. A fault of the
    machine (full disk, I/O error, lost mount, out of memory:
    `mat_effnet.common.faults.machine_fault`) is not the video's: it raises
    `mat_effnet.common.faults.MachineFault` and the run stops, the video unmarked.
    """
    import tensorflow as tf

    base = os.path.join(task.work_dir, video_key(task.entry))
    start = time.perf_counter()
    stats: dict = {}
    result = result if result is not None else _result(task)
    try:
        with atomic.replacing(f"{base}.tfrecord") as tmp:
            with tf.io.TFRecordWriter(tmp) as writer:
                # Version 2: each group's (offset in the work file, header
                # length), which the shard's index is made of.
                groups = records.write_videos(writer, produce(stats), task.cfg.schema_version)
        if task.cfg.schema_version != 1:
            stats["groups"] = groups
        short, warning = _decoded_too_few(task, stats)
        if short and task.cfg.strict_decode:
            from mat_effnet.ops import video

            raise video.VideoError(task.entry.path, warning)
        if warning:
            result["warning"] = warning
        result.update(stats, status="done", seconds=seconds + time.perf_counter() - start)
        atomic.write_text(f"{base}.done.json", json.dumps(result))
    except Exception as e:  # noqa: BLE001
        faults.raise_if_machine(e, path=f"{base}.tfrecord", **_where(task))
        write_failure(task, e, result)
    return result


def _decoded_too_few(task: Task, stats: dict) -> tuple[bool, str | None]:
    """(too few frames kept, the warning) for a damaged file; (False, None) when sound.

    Kept frames, against the container's count: a chunked video drops at
    most a 1-frame tail, well inside the tolerance. Frames skipped at a
    damaged region are a warning even when enough were kept.
    """
    from mat_effnet.ops import video

    try:
        announced = video.probe(task.entry.path).frame_count
    except video.VideoError:
        return False, None
    kept = int(stats.get("frames", 0))
    stats["announced_frames"] = announced
    gaps = stats.get("gaps") or []
    # Decoding went on past damaged regions (mat_effnet.ops.video.iter_frame_runs);
    # each one ends a chunk, so no flow joins frames across it.
    skipped = (f"; frames were skipped at {len(gaps)} damaged region(s) (after decoded "
               f"frame(s) {', '.join(map(str, gaps))}), each starting a new chunk"
               if gaps else "")
    if announced and kept < task.cfg.min_decoded_fraction * announced:
        return True, (f"decoded {kept} of the {announced} frames its container announces "
                      f"(under --min_decoded_fraction={task.cfg.min_decoded_fraction})"
                      f"{skipped}")
    if gaps:
        return False, f"decoded {kept} of the {announced or '?'} frames announced{skipped}"
    return False, None


def _result(task: Task) -> dict:
    return {"video_id": task.entry.video_id, "key": video_key(task.entry),
            "path": task.entry.path, "split": os.path.basename(task.work_dir)}


# What prep's user lowers when memory runs out (mat_effnet.common.faults).
MEMORY_ADVICE = "lower --flow_batch or --short_side, or run fewer --workers"


def _where(task: Task) -> dict:
    """`mat_effnet.common.faults.machine_fault`'s keywords for one video's work."""
    return {"out_dir": task.cfg.out_dir, "inputs": [task.entry.path],
            "memory_advice": MEMORY_ADVICE}


def write_failure(task: Task, error: Exception, result: dict | None = None) -> dict:
    """Writes the video's ``.failed.json`` marker with the reason; returns its content.

    Raises `mat_effnet.common.faults.MachineFault` instead when the error is
    the machine's (`mat_effnet.common.faults.machine_fault`): nothing is
    recorded against the video.
    """
    from mat_effnet.ops import video

    faults.raise_if_machine(error, **_where(task))
    result = result if result is not None else _result(task)
    if isinstance(error, video.VideoError):
        reason = getattr(error, "reason", None) or str(error)
    else:
        reason = f"{type(error).__name__}: {error}"
    result.update(status="failed", reason=reason)
    atomic.write_text(os.path.join(task.work_dir, video_key(task.entry) + ".failed.json"),
                      json.dumps(result))
    return result


def _one_core() -> None:
    import cv2

    # One worker is one core: OpenCV's own thread pool would fight the
    # other workers for the same cores.
    cv2.setNumThreads(1)


def process_video(task: Task) -> dict:
    """Worker: one video -> its TFRecord file + a marker.  Never raises for bad videos.

    With ``cfg.frames_root`` the video is a frame folder, imported
    (`data_prep.frames_import`) rather than decoded.
    """
    _one_core()
    entry = task.entry
    if task.cfg.frames_root is not None:
        return _write_video(task, lambda stats: frames_import.import_video(
            entry.path, task.cfg, video_id=entry.video_id, label=entry.label,
            class_name=entry.class_name, stats=stats))
    return _write_video(task, lambda stats: encode.encode_video(
        entry.path, task.cfg.encoding, video_id=entry.video_id, label=entry.label,
        class_name=entry.class_name, stats=stats, flow_fn=_flow_fn(task.cfg)))


def _flow_fn(cfg: PrepConfig):
    """A new batch flow function for one video with ``cfg`` (None without flow).

    New per video: a video's flow must not depend on which videos the same
    process handled before, and OpenCV's solvers keep state between calls
    (DIS's results move in the last bits). The Keras TV-L1 keeps none, and
    its compiled programs are shared by the whole process (see
    `mat_effnet.ops.optical_flow`), so making its function per video costs nothing.
    """
    if cfg.flow == "none":
        return None
    batch = cfg.flow_batch if cfg.flow_implementation == "keras" else None
    return flow_lib.create_batch_flow(cfg.flow, cfg.flow_implementation, batch)


# The two halves of process_video when flow is computed elsewhere, batched
# across videos (`mat_effnet.encoding.flow_batches`).

def decode_task(task: Task):
    """Worker: decode one video for flow computed elsewhere; a failure writes its marker."""
    _one_core()
    start = time.perf_counter()
    try:
        decoded = encode.decode_video(task.entry.path, task.cfg.encoding)
    except Exception as e:  # noqa: BLE001  # see _write_video
        return write_failure(task, e)
    return task, decoded, time.perf_counter() - start


def encode_task(task: Task, decoded: encode.DecodedVideo, quantized: list,
                seconds: float) -> dict:
    """Worker: JPEG a decoded video's quantized flow; write its work file and marker."""
    _one_core()
    return _write_video(task, lambda stats: encode.assemble_records(
        decoded, quantized, task.cfg.encoding, video_id=task.entry.video_id,
        label=task.entry.label, class_name=task.entry.class_name, stats=stats), seconds=seconds)
