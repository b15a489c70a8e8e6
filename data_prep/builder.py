"""Raw videos -> RGB JPEGs + quantized TV-L1 flow -> sharded TFRecords.

This is the data side of the two-stream network (paper Sect. 3, Fig. 1: RGB
frames feed the spatial stream, stacked optical flow the temporal stream;
Sect. 4.2 uses TV-L1 flow as in TSN).  The library entry point is
`build(PrepConfig)`; `data_prep.build` wraps it in a command line.

One function turns a video into records, `data_prep.encode.encode_video`,
whatever drives it: this module's process pool, `data_prep.beam_pipeline`
(Apache Beam), or prediction.
Both drivers take the same steps, which live here: `prepare` (checks, layout,
shard plan), `video_result` (one video -> work file + marker),
`assemble_shard` (finished videos -> one shard) and `finish` (metadata).

How the work is laid out so that a run killed at any moment can be re-run:

* The videos of each split are put in a fixed, seeded order and cut into
  shards of ``videos_per_shard`` videos before any work starts, so the shard
  a video lands in never depends on timing or on which videos fail.
* Each video is processed by a worker into its own small TFRecord file under
  ``out_dir/.work/<split>/`` (temp name, then rename) followed by a
  ``.done.json``/``.failed.json`` marker.  A re-run skips videos that have a
  marker.
* When every video of a shard is finished, the parent concatenates their
  files (TFRecord files are plain sequences of framed records, so byte
  concatenation is a valid file) into the shard under a temp name, renames
  it, writes the shard's summary, and only then deletes the per-video files.
* ``mat_effnet_meta.json`` and TFDS's metadata are written last: their
  presence means the dataset is complete.

Where flow runs: OpenCV's flow (one pair at a time on one core) runs inside
each worker, next to the decoding (`process_video`). The Keras TV-L1
(`data_prep.tvl1`) runs batched across videos in a flow process per GPU,
which `data_prep.flow_batches` schedules; the workers then only decode
(`_decode_task`) and, once a video's flow is back, JPEG it and write its
work file and marker (`_encode_task`). Both routes write the same bytes for
the same flow function.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
import random
import time

from data_prep import encode, flow_batches, layouts
from data_prep import flow as flow_lib
from mat_effnet import atomic, quiet, records
from mat_effnet.errors import MatEffNetError, bad_argument

log = logging.getLogger("mat_effnet.prep")

WORK_DIR = ".work"
FLOW_ALGORITHMS = flow_lib.ALGORITHMS
FLOW_IMPLEMENTATIONS = flow_lib.IMPLEMENTATIONS
_ENCODE_FIELDS = tuple(f.name for f in dataclasses.fields(encode.EncodeSettings))
_DEFAULT = encode.EncodeSettings()
AUTO = "auto"


@dataclasses.dataclass
class PrepConfig:
    """Everything that decides what `build` writes, and how it runs.

    The fields named like `encode.EncodeSettings`'s (short_side, flow,
    flow_implementation, flow_bound, jpeg_quality, chunk_frames) take their
    defaults from it; `encoding` returns them as one `EncodeSettings`.
    flow_implementation may also be "auto": `prepare` replaces it (in place)
    with `auto_flow_implementation`'s choice before any work.
    flow_batch: pairs per call of the Keras TV-L1 (None: its default).
    flow_devices: flow processes for the Keras TV-L1 (None: one per GPU).
    schema_version: the record layout (`mat_effnet.records`): 2, frame-
        addressable groups with an index per shard (clips read only their
        frames), or 1, one Example per video (streams whole records; the
        layout TFDS reads).
    """

    dataset: str
    data_root: str
    out_dir: str
    split: int = 1
    split_file: str | None = None
    flow: str = _DEFAULT.flow
    flow_bound: float = _DEFAULT.flow_bound
    short_side: int = _DEFAULT.short_side
    jpeg_quality: int = _DEFAULT.jpeg_quality
    workers: int = 1
    videos_per_shard: int = 32
    chunk_frames: int = _DEFAULT.chunk_frames
    name: str | None = None
    progress_seconds: float = 10.0
    flow_implementation: str = _DEFAULT.flow_implementation
    flow_batch: int | None = None
    flow_devices: int | None = None
    schema_version: int = records.SCHEMA_VERSION

    @property
    def encoding(self) -> encode.EncodeSettings:
        """The settings that decide a video's bytes (validated on creation)."""
        if self.flow_implementation == AUTO:
            raise bad_argument("flow_implementation", AUTO, "not resolved yet (see prepare)")
        return encode.EncodeSettings(**{name: getattr(self, name) for name in _ENCODE_FIELDS})

    def validate(self) -> None:
        """Raises MatEffNetError (``name=value: why``) for any bad value, before work."""
        if self.flow_implementation == AUTO:
            dataclasses.replace(self, flow_implementation=_DEFAULT.flow_implementation).encoding
        else:
            self.encoding  # noqa: B018  # validates
        if self.workers < 1:
            raise bad_argument("workers", self.workers, "must be >= 1")
        if self.videos_per_shard < 1:
            raise bad_argument("videos_per_shard", self.videos_per_shard, "must be >= 1")
        if self.flow_batch is not None and self.flow_batch < 1:
            raise bad_argument("flow_batch", self.flow_batch, "must be >= 1")
        if self.flow_devices is not None and self.flow_devices < 1:
            raise bad_argument("flow_devices", self.flow_devices, "must be >= 1")
        if self.schema_version not in records.SCHEMA_VERSIONS:
            raise bad_argument("schema_version", self.schema_version,
                               f"must be one of {records.SCHEMA_VERSIONS}")

    @property
    def dataset_name(self) -> str:
        return self.name or self.dataset

    def settings(self) -> dict:
        """The settings that change the bytes written (checked on resume)."""
        return {
            "dataset": self.dataset, "split": self.split, "split_file": self.split_file,
            **self.encoding.to_dict(), "videos_per_shard": self.videos_per_shard,
            "name": self.dataset_name, "schema_version": self.schema_version,
        }


def auto_flow_implementation(out_dir: str, algorithm: str) -> str:
    """The implementation ``--flow_implementation=auto`` means for this run.

    Resuming a run: the implementation it was started with (so a run
    started on a GPU machine can be finished on a CPU one without a
    settings clash). Otherwise `data_prep.flow.default_implementation`.
    """
    path = os.path.join(out_dir, WORK_DIR, "settings.json")
    if _gfile().exists(path):
        try:
            old = _read_json(path)
        except (json.JSONDecodeError, OSError):
            old = {}
        if old.get("flow") == algorithm:
            return old.get("flow_implementation", "opencv")
    return flow_lib.default_implementation(algorithm)


class PrepError(MatEffNetError):
    """A problem with the whole run (not one video): one clear line."""


# ---------------------------------------------------------------------------
# Work units
# ---------------------------------------------------------------------------

def _video_key(entry: layouts.VideoEntry) -> str:
    """A filesystem-safe, unique file stem for a video's work files."""
    digest = hashlib.sha1(entry.video_id.encode("utf-8")).hexdigest()[:10]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in entry.video_id)[-80:]
    return f"{safe}-{digest}"


@dataclasses.dataclass(frozen=True)
class _Task:
    entry: layouts.VideoEntry
    cfg: PrepConfig
    work_dir: str


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def _read_json(path):
    with _gfile().GFile(path) as f:
        return json.load(f)


def _write_video(task: _Task, produce, result: dict | None = None,
                 seconds: float = 0.0) -> dict:
    """Writes the records ``produce(stats)`` yields to the video's work file, then its marker.

    Never raises for a bad video: `data_prep.video.VideoError` and any
    other error (an unexpected decoder or flow failure must not kill the
    run) become a ``.failed.json`` marker with the reason.
    """
    import tensorflow as tf

    key = _video_key(task.entry)
    base = os.path.join(task.work_dir, key)
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
        result.update(stats, status="done", seconds=seconds + time.perf_counter() - start)
        atomic.write_text(f"{base}.done.json", json.dumps(result))
    except Exception as e:  # noqa: BLE001
        _write_failure(task, e, result)
    return result


def _result(task: _Task) -> dict:
    return {"video_id": task.entry.video_id, "key": _video_key(task.entry),
            "path": task.entry.path, "split": os.path.basename(task.work_dir)}


def _write_failure(task: _Task, error: Exception, result: dict | None = None) -> dict:
    from data_prep import video

    result = result if result is not None else _result(task)
    if isinstance(error, video.VideoError):
        reason = getattr(error, "reason", None) or str(error)
    else:
        reason = f"{type(error).__name__}: {error}"
    result.update(status="failed", reason=reason)
    atomic.write_text(os.path.join(task.work_dir, _video_key(task.entry) + ".failed.json"),
                      json.dumps(result))
    return result


def _one_core() -> None:
    import cv2

    # One worker is one core: OpenCV's own thread pool would fight the
    # other workers for the same cores.
    cv2.setNumThreads(1)


def process_video(task: _Task) -> dict:
    """Worker: one video -> its TFRecord file + a marker.  Never raises for bad videos."""
    _one_core()
    entry = task.entry
    return _write_video(task, lambda stats: encode.encode_video(
        entry.path, task.cfg.encoding, video_id=entry.video_id, label=entry.label,
        class_name=entry.class_name, stats=stats, flow_fn=_flow_fn(task.cfg)))


def _flow_fn(cfg: PrepConfig):
    """A new batch flow function for one video with ``cfg`` (None without flow).

    New per video: a video's flow must not depend on which videos the same
    process handled before, and OpenCV's solvers keep state between calls
    (DIS's results move in the last bits). The Keras TV-L1 keeps none, and
    its compiled programs are shared by the whole process (see
    `data_prep.flow`), so making its function per video costs nothing.
    """
    if cfg.flow == "none":
        return None
    batch = cfg.flow_batch if cfg.flow_implementation == "keras" else None
    return flow_lib.create_batch_flow(cfg.flow, cfg.flow_implementation, batch)


# The two halves of process_video when flow is computed elsewhere, batched
# across videos (`data_prep.flow_batches`).

def _decode_task(task: _Task):
    """Worker: decode one video for flow computed elsewhere; a failure writes its marker."""
    _one_core()
    start = time.perf_counter()
    try:
        decoded = encode.decode_video(task.entry.path, task.cfg.encoding)
    except Exception as e:  # noqa: BLE001  # see _write_video
        return _write_failure(task, e)
    return task, decoded, time.perf_counter() - start


def _encode_task(task: _Task, decoded: encode.DecodedVideo, quantized: list,
                 seconds: float) -> dict:
    """Worker: JPEG a decoded video's quantized flow; write its work file and marker."""
    _one_core()
    return _write_video(task, lambda stats: encode.assemble_records(
        decoded, quantized, task.cfg.encoding, video_id=task.entry.video_id,
        label=task.entry.label, class_name=task.entry.class_name, stats=stats), seconds=seconds)


def _marker(work_dir: str, entry) -> dict | None:
    base = os.path.join(work_dir, _video_key(entry))
    for suffix in (".done.json", ".failed.json"):
        if _gfile().exists(base + suffix):
            try:
                return _read_json(base + suffix)
            except (json.JSONDecodeError, OSError):
                return None  # a torn marker: redo the video
    return None


def plan_shards(entries: list, videos_per_shard: int) -> list[list]:
    """Fixed, seeded order then contiguous shards (classes mixed per shard)."""
    ordered = sorted(entries, key=lambda e: e.video_id)
    random.Random(0).shuffle(ordered)
    count = max(1, math.ceil(len(ordered) / videos_per_shard))
    return [ordered[i * videos_per_shard:(i + 1) * videos_per_shard] for i in range(count)]


class _Progress:
    """Logs videos done / total, rate and ETA at most every few seconds."""

    def __init__(self, total: int, every: float):
        self.total, self.every = total, every
        self.done = self.failed = 0
        self.start = self.last = time.monotonic()

    def update(self, failed: bool, force: bool = False):
        self.done += 1
        self.failed += int(failed)
        now = time.monotonic()
        if force or now - self.last >= self.every or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            log.info("%d/%d videos (%.0f%%), %.2f videos/s, ETA %s, %d failed",
                     self.done, self.total, 100.0 * self.done / max(self.total, 1), rate,
                     _fmt_seconds(eta), self.failed)


def _fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# ---------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------

def _stored_settings(old: dict) -> dict:
    # Runs from before flow implementations existed used OpenCV's; runs from
    # before the frame-addressable layout wrote version 1.
    return {"flow_implementation": "opencv", "schema_version": 1, **old}


def _check_settings(out_dir: str, cfg: PrepConfig) -> None:
    gfile = _gfile()
    path = os.path.join(out_dir, WORK_DIR, "settings.json")
    meta_path = os.path.join(out_dir, records.META_FILENAME)
    new = cfg.settings()
    if gfile.exists(path):
        old = _stored_settings(_read_json(path))
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
        old = _read_json(meta_path).get("settings")
        if old is not None and _stored_settings(old) != new:
            raise PrepError(f"{out_dir}: holds a dataset prepared with other settings; "
                            "use another --out_dir or delete it")
    gfile.makedirs(os.path.join(out_dir, WORK_DIR))
    atomic.write_text(path, json.dumps(new, sort_keys=True))


def _assemble_shard(out_dir: str, work_dir: str, name: str, split: str, index: int,
                    count: int, entries: list, version: int) -> dict:
    """Concatenates finished per-video files into one shard (atomically)."""
    gfile = _gfile()
    filename = records.shard_filename(name, split, index, count)
    final = os.path.join(out_dir, filename)
    videos = [_marker(work_dir, entry) for entry in entries]

    done = [m for m in videos if m["status"] == "done"]
    work_files = [os.path.join(work_dir, m["key"] + ".tfrecord") for m in done]

    def write(out):
        for path in work_files:
            with gfile.GFile(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    out.write(chunk)

    if version != 1:
        # The shard's index: each group's offset in its video's work file
        # moved by the bytes of the work files before it.  Written before the
        # shard, so a shard file never exists without the index that reads it.
        groups, base = [], 0
        for marker, path in zip(done, work_files):
            groups += [[base + offset, header] for offset, header in marker["groups"]]
            base += gfile.stat(path).length
        records.write_index(final, groups)
    atomic.write_with(final, write)
    summary = {"file": filename, "num_bytes": gfile.stat(final).length,
               "index": None if version == 1 else filename + records.INDEX_SUFFIX,
               "records": sum(v.get("records", 0) for v in videos), "videos": videos}
    atomic.write_text(os.path.join(work_dir, f"shard-{index:05d}.json"), json.dumps(summary))
    for v in videos:  # the shard summary now holds everything these said
        for suffix in (".tfrecord", ".done.json", ".failed.json"):
            p = os.path.join(work_dir, v["key"] + suffix)
            if gfile.exists(p):
                gfile.remove(p)
    return summary


def _shard_summary(work_dir: str, out_dir: str, index: int) -> dict | None:
    path = os.path.join(work_dir, f"shard-{index:05d}.json")
    if not _gfile().exists(path):
        return None
    summary = _read_json(path)
    shard = os.path.join(out_dir, summary["file"])
    needed = [shard] + ([records.index_path(shard)] if summary.get("index") else [])
    return summary if all(_gfile().exists(p) for p in needed) else None


def build(cfg: PrepConfig) -> dict:
    """Prepares a dataset; returns the metadata written.  Resumable.

    Raises `layouts.LayoutError`, `ValueError` or `PrepError` (one clear
    line each) before any work when the input or the settings are wrong.
    """
    layout, plans = prepare(cfg)
    out_dir = cfg.out_dir
    start = time.monotonic()

    summaries: dict[str, list] = {}
    pending: list[_Task] = []
    # Shards are assembled as soon as their last video is in, so a kill
    # loses at most the videos in flight.
    waiting: dict[tuple, int] = {}  # (split, shard index) -> videos still to process
    shard_of: dict[tuple, tuple] = {}  # (video_id, split) -> (split, shard index)
    for split, shards in plans.items():
        wd = work_dir(out_dir, split)
        summaries[split] = [finished_shard(cfg, split, i) for i in range(len(shards))]
        for i, shard in enumerate(shards):
            if summaries[split][i] is None:
                todo = [_Task(e, cfg, wd) for e in shard if _marker(wd, e) is None]
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
        shards = plans[split]
        summaries[split][i] = assemble_shard(cfg, split, i, len(shards), shards[i])

    # Shards whose videos were all finished by an earlier, killed run.
    for split, shards in plans.items():
        for i in range(len(shards)):
            if summaries[split][i] is None and (split, i) not in waiting:
                assemble(split, i)
    progress = _Progress(len(pending), cfg.progress_seconds)
    for result in _run_tasks(pending, cfg):
        if result["status"] == "failed":
            log.warning("skipped %s: %s", result["path"], result["reason"])
        progress.update(result["status"] == "failed")
        key = shard_of[result["video_id"], result["split"]]
        waiting[key] -= 1
        if waiting[key] == 0:
            assemble(*key)

    meta = finish(cfg, layout, summaries)
    failed = meta["failures"]
    log.info("done in %s: %d videos ok, %d failed -> %s",
             _fmt_seconds(time.monotonic() - start),
             sum(s["videos"] for s in meta["splits"].values()), len(failed), out_dir)
    for f in failed:
        log.info("  failed: %s (%s): %s", f["video_id"], f["split"], f["reason"])
    return meta


# ---------------------------------------------------------------------------
# The steps every driver takes (`build` above, data_prep.beam_pipeline)
# ---------------------------------------------------------------------------

def work_dir(out_dir: str, split: str) -> str:
    """Where a split's per-video files, markers and shard summaries live."""
    return os.path.join(out_dir, WORK_DIR, split)


def prepare(cfg: PrepConfig) -> tuple[layouts.Layout, dict[str, list[list]]]:
    """Checks everything, reads the layout and plans the shards, before any work.

    Resolves ``cfg.flow_implementation="auto"`` in place. Returns the
    layout and, per split that has videos (in the layout's split order), its shards as lists of `layouts.VideoEntry` in write
    order.  Raises as `build` documents.
    """
    cfg.validate()
    layout = layouts.load_layout(cfg.dataset, cfg.data_root, split=cfg.split,
                                 split_file=cfg.split_file)
    if cfg.flow_implementation == AUTO:
        cfg.flow_implementation = auto_flow_implementation(cfg.out_dir, cfg.flow)
    _check_settings(cfg.out_dir, cfg)
    plans = {split: plan_shards(entries, cfg.videos_per_shard)
             for split, entries in layout.splits.items() if entries}
    for split in plans:
        _gfile().makedirs(work_dir(cfg.out_dir, split))
    return layout, plans


def finished_shard(cfg: PrepConfig, split: str, index: int) -> dict | None:
    """The summary of a shard an earlier run finished (file and summary exist), else None."""
    return _shard_summary(work_dir(cfg.out_dir, split), cfg.out_dir, index)


def video_result(cfg: PrepConfig, split: str, entry: layouts.VideoEntry) -> dict:
    """One video's result: an earlier run's marker, else the video processed now.

    Never raises for a bad video (see `process_video`); afterwards the
    video's marker (and, if it succeeded, its work file) exists.
    """
    wd = work_dir(cfg.out_dir, split)
    return _marker(wd, entry) or process_video(_Task(entry, cfg, wd))


def assemble_shard(cfg: PrepConfig, split: str, index: int, count: int,
                   entries: list) -> dict:
    """Writes shard `index` of `count` from its finished videos, in `entries` order.

    Every video of `entries` must have its marker.  Idempotent: a shard that
    is already finished is returned as it is (drivers may retry this step).
    """
    return finished_shard(cfg, split, index) or _assemble_shard(
        cfg.out_dir, work_dir(cfg.out_dir, split), cfg.dataset_name, split, index, count,
        entries, cfg.schema_version)


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


def _run_tasks(tasks: list[_Task], cfg: PrepConfig):
    """Processes ``tasks``, yielding each video's result (its marker's content) when done."""
    if not tasks:
        return
    if cfg.flow != "none" and cfg.flow_implementation == "keras":
        steps = flow_batches.Steps(_decode_task, _encode_task, _write_failure)
        try:
            yield from flow_batches.run(tasks, cfg, steps)
        except flow_batches.FlowProcessError as e:
            raise PrepError(str(e)) from None
        return
    if cfg.workers == 1:
        for t in tasks:
            yield process_video(t)
        return
    # spawn, not fork: the parent may already hold TensorFlow's threads.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(cfg.workers, initializer=quiet.import_tensorflow_if_quiet) as pool:
        yield from pool.imap_unordered(process_video, tasks, chunksize=1)


def _metadata(cfg, layout, summaries) -> dict:
    splits, shards, failures = {}, {}, []
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
        split_frames = sum(v["frames"] for v in ok)
        splits[split] = {"videos": len(ok), "failed": len(vids) - len(ok),
                         "records": sum(v["records"] for v in ok), "frames": split_frames}
        shards[split] = [s["file"] for s in summaries[split]]
        frames += split_frames
        rgb_bytes += sum(v["rgb_bytes"] for v in ok)
        flow_bytes += sum(v["flow_bytes"] for v in ok)
        for v in ok:
            size = f"{v['height']}x{v['width']}"
            sizes[size] = sizes.get(size, 0) + 1
    flow_frames = sum(splits[s]["frames"] - splits[s]["records"] for s in splits)
    return {
        "dataset": cfg.dataset,
        "name": cfg.dataset_name,
        "split_id": cfg.split,
        "classes": list(layout.classes),
        "num_classes": len(layout.classes),
        "splits": splits,
        "shards": shards,
        "frame_size": {"short_side": cfg.short_side, "sizes": sizes},
        "flow": {"algorithm": cfg.flow, "implementation": cfg.flow_implementation,
                 "bound": cfg.flow_bound,
                 "quantization": "q = round((clip(v, -bound, bound) + bound) * 255 / (2 * bound)), "
                                 "uint8 JPEG, x and y separately; flow[i] is rgb[i] -> rgb[i+1]",
                 "flow_frames": flow_frames if cfg.flow != "none" else 0},
        "jpeg_quality": cfg.jpeg_quality,
        "chunk_frames": cfg.chunk_frames,
        "bytes_per_frame": {
            "rgb": rgb_bytes / frames if frames else 0.0,
            "flow_xy": flow_bytes / flow_frames if flow_frames and cfg.flow != "none" else 0.0,
        },
        "failures": failures,
        "settings": cfg.settings(),
    }
