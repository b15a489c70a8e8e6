"""Raw videos -> RGB JPEGs + quantized TV-L1 flow -> sharded TFRecords.

This is the data side of the two-stream network (paper Sect. 3, Fig. 1: RGB
frames feed the spatial stream, stacked optical flow the temporal stream;
Sect. 4.2 uses TV-L1 flow as in TSN).  The library entry point is
`build(PrepConfig)`; `data_prep.build` wraps it in a command line.

One function turns a video into records, `video_to_records`, whatever drives
it: this module's process pool, or `data_prep.beam_pipeline` (Apache Beam).
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
import uuid
from typing import Iterator

from data_prep import layouts
from mat_effnet import records
from mat_effnet.errors import MatEffNetError

log = logging.getLogger("mat_effnet.prep")

WORK_DIR = ".work"
FLOW_ALGORITHMS = ("tvl1", "dis", "none")


@dataclasses.dataclass
class PrepConfig:
    """Everything that decides what `build` writes."""

    dataset: str
    data_root: str
    out_dir: str
    split: int = 1
    split_file: str | None = None
    flow: str = "tvl1"
    flow_bound: float = 20.0
    short_side: int = 256
    jpeg_quality: int = 90
    workers: int = 1
    videos_per_shard: int = 32
    # Long videos are cut into records of at most this many frames so that
    # one record (and the memory to build it) stays bounded: 1000 frames is
    # 40 s at 25 fps, longer than nearly every UCF101/HMDB51/Kinetics clip.
    chunk_frames: int = 1000
    name: str | None = None
    progress_seconds: float = 10.0

    def validate(self) -> None:
        """Raises ValueError naming the flag for any bad value, before work."""
        if self.flow not in FLOW_ALGORITHMS:
            raise ValueError(f"--flow={self.flow!r}: expected one of {', '.join(FLOW_ALGORITHMS)}")
        if not self.flow_bound > 0:
            raise ValueError(f"--flow_bound={self.flow_bound}: must be > 0")
        if self.short_side < 0:
            raise ValueError(f"--short_side={self.short_side}: must be >= 0 (0 keeps the size)")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"--jpeg_quality={self.jpeg_quality}: must be in 1..100")
        if self.workers < 1:
            raise ValueError(f"--workers={self.workers}: must be >= 1")
        if self.videos_per_shard < 1:
            raise ValueError(f"--videos_per_shard={self.videos_per_shard}: must be >= 1")
        if self.chunk_frames < 2:
            raise ValueError(f"--chunk_frames={self.chunk_frames}: must be >= 2")

    @property
    def dataset_name(self) -> str:
        return self.name or self.dataset

    def settings(self) -> dict:
        """The settings that change the bytes written (checked on resume)."""
        return {
            "dataset": self.dataset, "split": self.split, "split_file": self.split_file,
            "flow": self.flow, "flow_bound": self.flow_bound, "short_side": self.short_side,
            "jpeg_quality": self.jpeg_quality, "videos_per_shard": self.videos_per_shard,
            "chunk_frames": self.chunk_frames, "name": self.dataset_name,
        }


class PrepError(MatEffNetError):
    """A problem with the whole run (not one video): one clear line."""


# ---------------------------------------------------------------------------
# One video -> records
# ---------------------------------------------------------------------------

def _encode_jpeg(image, quality: int) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def video_to_records(entry: layouts.VideoEntry, cfg: PrepConfig,
                     stats: dict | None = None) -> Iterator[records.VideoRecord]:
    """Decodes one video and yields its records (one per chunk), streaming.

    Frames are decoded one at a time, so memory is bounded by one chunk's
    JPEGs.  Flow is computed between consecutive frames *within* a chunk;
    the pair that straddles two chunks is not stored, which keeps every
    record self-contained (``num_frames - 1`` flow fields).

    Raises `data_prep.video.VideoError` for videos that cannot be used.
    ``stats``, if given, is filled with frame and byte counts.
    """
    import cv2

    from data_prep import flow as flow_lib
    from data_prep import video

    info = video.probe(entry.path)
    flow_fn = flow_lib.create_flow(cfg.flow) if cfg.flow != "none" else None
    stats = stats if stats is not None else {}
    stats.update(frames=0, records=0, rgb_bytes=0, flow_bytes=0, fps=info.fps)

    def make(rgb, fx, fy, chunk, offset, shape):
        return records.VideoRecord(
            video_id=entry.video_id, label=entry.label, class_name=entry.class_name,
            fps=info.fps, height=shape[0], width=shape[1], rgb=rgb, flow_x=fx, flow_y=fy,
            chunk_index=chunk, frame_offset=offset)

    rgb, fx, fy = [], [], []
    chunk, offset, prev_gray, shape = 0, 0, None, None
    total = 0
    for frame in video.iter_frames(entry.path, cfg.short_side):
        if shape is None:
            shape = frame.shape[:2]
            stats.update(height=int(shape[0]), width=int(shape[1]))
        # OpenCV encodes BGR; frames are RGB, and TF's decode_jpeg returns
        # RGB, so swap here once.
        rgb.append(_encode_jpeg(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), cfg.jpeg_quality))
        gray = flow_lib.to_gray(frame) if flow_fn else None
        if flow_fn is not None and prev_gray is not None:
            field = flow_fn(prev_gray, gray)
            fx.append(_encode_jpeg(records.quantize_flow(field[..., 0], cfg.flow_bound),
                                   cfg.jpeg_quality))
            fy.append(_encode_jpeg(records.quantize_flow(field[..., 1], cfg.flow_bound),
                                   cfg.jpeg_quality))
        prev_gray = gray
        total += 1
        if len(rgb) == cfg.chunk_frames:
            _count(stats, rgb, fx, fy)
            yield make(rgb, fx, fy, chunk, offset, shape)
            chunk, offset = chunk + 1, offset + len(rgb)
            rgb, fx, fy, prev_gray = [], [], [], None
    if total == 0:
        raise video.VideoError(entry.path, video.REASON_NO_FRAMES)
    if total == 1:
        raise video.VideoError(entry.path, video.REASON_ONE_FRAME)
    # A 1-frame tail has no flow; dropping it loses at most one frame.
    if len(rgb) >= 2:
        _count(stats, rgb, fx, fy)
        yield make(rgb, fx, fy, chunk, offset, shape)


def _count(stats, rgb, fx, fy):
    stats["frames"] += len(rgb)
    stats["records"] += 1
    stats["rgb_bytes"] += sum(map(len, rgb))
    stats["flow_bytes"] += sum(map(len, fx)) + sum(map(len, fy))


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


def _tmp_name(path: str) -> str:
    # The pid alone is not unique across machines: under a distributed
    # runner a retried work item can race the original on another host.
    return f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def process_video(task: _Task) -> dict:
    """Worker: one video -> its TFRecord file + a marker.  Never raises for bad videos."""
    import cv2
    import tensorflow as tf

    from data_prep import video

    # One worker is one core: OpenCV's own thread pool would fight the
    # other workers for the same cores.
    cv2.setNumThreads(1)
    key = _video_key(task.entry)
    base = os.path.join(task.work_dir, key)
    tmp = _tmp_name(f"{base}.tfrecord")
    start = time.perf_counter()
    stats: dict = {}
    result = {"video_id": task.entry.video_id, "key": key, "path": task.entry.path,
              "split": os.path.basename(task.work_dir)}
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for rec in video_to_records(task.entry, task.cfg, stats):
                writer.write(records.serialize(rec))
        tf.io.gfile.rename(tmp, f"{base}.tfrecord", overwrite=True)
        result.update(stats, status="done", seconds=time.perf_counter() - start)
        records.atomic_write_text(f"{base}.done.json", json.dumps(result))
    except video.VideoError as e:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
        result.update(status="failed", reason=getattr(e, "reason", None) or str(e))
        records.atomic_write_text(f"{base}.failed.json", json.dumps(result))
    except Exception as e:  # an unexpected decoder/flow error must not kill the run
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
        result.update(status="failed", reason=f"{type(e).__name__}: {e}")
        records.atomic_write_text(f"{base}.failed.json", json.dumps(result))
    return result


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

def _check_settings(out_dir: str, cfg: PrepConfig) -> None:
    gfile = _gfile()
    path = os.path.join(out_dir, WORK_DIR, "settings.json")
    meta_path = os.path.join(out_dir, records.META_FILENAME)
    if gfile.exists(path):
        old = _read_json(path)
        if old != cfg.settings():
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in cfg.settings().items()
                             if old.get(k) != v)
            raise PrepError(f"--out_dir {out_dir} holds a run with other settings ({diff}); "
                            "use another --out_dir or delete it")
    elif gfile.exists(meta_path):
        old = _read_json(meta_path).get("settings")
        if old is not None and old != cfg.settings():
            raise PrepError(f"--out_dir {out_dir} holds a dataset prepared with other settings; "
                            "use another --out_dir or delete it")
    gfile.makedirs(os.path.join(out_dir, WORK_DIR))
    records.atomic_write_text(path, json.dumps(cfg.settings(), sort_keys=True))


def _assemble_shard(out_dir: str, work_dir: str, name: str, split: str, index: int,
                    count: int, entries: list) -> dict:
    """Concatenates finished per-video files into one shard (atomically)."""
    gfile = _gfile()
    filename = records.shard_filename(name, split, index, count)
    final = os.path.join(out_dir, filename)
    tmp = _tmp_name(final)
    videos = []
    with gfile.GFile(tmp, "wb") as out:
        out.write(b"")  # GFile creates the file on first write; a shard may be empty
        for entry in entries:
            marker = _marker(work_dir, entry)
            videos.append(marker)
            if marker["status"] == "done":
                with gfile.GFile(os.path.join(work_dir, marker["key"] + ".tfrecord"), "rb") as f:
                    while chunk := f.read(1 << 22):
                        out.write(chunk)
    gfile.rename(tmp, final, overwrite=True)
    summary = {"file": filename, "num_bytes": gfile.stat(final).length,
               "records": sum(v.get("records", 0) for v in videos), "videos": videos}
    records.atomic_write_text(os.path.join(work_dir, f"shard-{index:05d}.json"), json.dumps(summary))
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
    return summary if _gfile().exists(os.path.join(out_dir, summary["file"])) else None


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
    log.info("%s: %d classes, %d videos (%s), %d to process with %d worker(s), flow=%s",
             cfg.dataset, len(layout.classes), total_videos,
             ", ".join(f"{s} {len(e)}" for s, e in layout.splits.items()), len(pending),
             cfg.workers, cfg.flow)

    def assemble(split, i):
        shards = plans[split]
        summaries[split][i] = assemble_shard(cfg, split, i, len(shards), shards[i])

    # Shards whose videos were all finished by an earlier, killed run.
    for split, shards in plans.items():
        for i in range(len(shards)):
            if summaries[split][i] is None and (split, i) not in waiting:
                assemble(split, i)
    progress = _Progress(len(pending), cfg.progress_seconds)
    for result in _run_tasks(pending, cfg.workers):
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

    Returns the layout and, per split that has videos (in the layout's
    split order), its shards as lists of `layouts.VideoEntry` in write
    order.  Raises as `build` documents.
    """
    cfg.validate()
    layout = layouts.load_layout(cfg.dataset, cfg.data_root, split=cfg.split,
                                 split_file=cfg.split_file)
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
        entries)


def finish(cfg: PrepConfig, layout: layouts.Layout, summaries: dict[str, list]) -> dict:
    """Writes TFDS's metadata, then ``mat_effnet_meta.json``; returns the latter's content.

    ``summaries`` holds, per split in `prepare`'s order, every shard's
    summary in shard order.  Of ``layout`` only ``classes`` and
    ``failures`` are read.  ``mat_effnet_meta.json`` goes last: its presence
    means the dataset is complete.
    """
    meta = _metadata(cfg, layout, summaries)
    records.write_tfds_metadata(
        cfg.out_dir, cfg.dataset_name, layout.classes,
        {split: [s["records"] for s in summaries[split]] for split in summaries},
        {split: sum(s["num_bytes"] for s in summaries[split]) for split in summaries},
        description=f"mat-effnet prepared {cfg.dataset} (split {cfg.split}), flow={cfg.flow}")
    records.write_metadata(cfg.out_dir, meta)
    return meta


def _run_tasks(tasks: list[_Task], workers: int):
    if not tasks:
        return
    if workers == 1:
        for t in tasks:
            yield process_video(t)
        return
    # spawn, not fork: the parent may already hold TensorFlow's threads.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
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
        "flow": {"algorithm": cfg.flow, "bound": cfg.flow_bound,
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
