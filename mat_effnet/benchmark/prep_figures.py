"""Data-preparation figures: videos/s, bytes per minute of video, worker speed-up, peak memory.

`data_prep.builder.build` (what ``mat-effnet-prep`` runs) on a small
UCF101-layout set written by `data_prep.synthetic.generate_ucf101_like`, with
1 worker in this process and with N spawned workers; and, in child
processes, the peak resident memory of preparing a 5-minute video beside a
10-second one, which shows that prep memory does not grow with a video's
length (records are cut every ``chunk_frames`` frames).

Also the helpers the other sections share: generated sets and videos, an
in-process build, the stored frame size.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import subprocess
import sys
import time
from typing import Iterator, Sequence

import numpy as np

from mat_effnet.benchmark.report import MIB, VIDEO_FPS, Context, Stopwatch, rate
from mat_effnet.benchmark.settings import PrepSettings


# ---------------------------------------------------------------------------
# Generated videos and sets

def render_clip(cls, seed_parts, num_frames, height, width, tries: int = 20):
    """`data_prep.synthetic.render_clip` with a fresh seed when a draw trips its rounding edge.

    For long clips the square classes' speed is capped at room / steps, and
    ``room - speed * steps`` can round to a tiny negative number, which
    numpy's ``uniform(0, negative)`` rejects; another seed avoids it.
    """
    from data_prep import synthetic

    for attempt in range(tries):
        rng = np.random.default_rng(list(seed_parts) + ([attempt] if attempt else []))
        try:
            return synthetic.render_clip(cls, rng, num_frames, height, width)
        except ValueError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def long_video_frames(seconds: float, fps: float = VIDEO_FPS, height: int = 120, width: int = 160,
                      seed: int = 0, clip_seconds: float = 10.0) -> Iterator[np.ndarray]:
    """Frames of a long synthetic video, generated lazily (one clip in memory).

    Synthetic clips of ``clip_seconds`` back to back (cycling through the
    classes; a scene cut between clips), cut to ``round(seconds * fps)``.
    """
    from data_prep import synthetic

    total = int(round(seconds * fps))
    per_clip = max(2, int(round(clip_seconds * fps)))
    produced, clip = 0, 0
    while produced < total:
        n = min(per_clip, total - produced)
        cls = synthetic.CLASSES[clip % len(synthetic.CLASSES)]
        for frame in render_clip(cls, (seed, clip), max(n, 2), height, width)[:n]:
            yield frame
        produced += n
        clip += 1


def write_long_video(path: str, seconds: float, fps: float = VIDEO_FPS, height: int = 120,
                     width: int = 160, seed: int = 0) -> int:
    """Writes `long_video_frames` to ``path`` (streaming); returns the frame count."""
    from data_prep import synthetic

    return synthetic.write_video(path, long_video_frames(seconds, fps, height, width, seed), fps)


def generate_set(root: str, videos_per_class: int, num_frames: int, height: int, width: int,
                 seed: int) -> dict:
    from data_prep import synthetic

    return synthetic.generate_ucf101_like(root, videos_per_class=videos_per_class,
                                          num_frames=num_frames, height=height, width=width,
                                          seed=seed)


def build(data_root: str, out_dir: str, **kwargs) -> tuple[dict, float]:
    """`data_prep.builder.build` on a UCF101-layout set in this process; (meta, seconds)."""
    import cv2

    from data_prep import builder
    from data_prep.prep_config import PrepConfig

    threads = cv2.getNumThreads()  # process_video sets 1 thread in-process
    try:
        cfg = PrepConfig(dataset="ucf101", data_root=data_root, out_dir=out_dir,
                         progress_seconds=3600.0, **kwargs)
        start = time.perf_counter()
        meta = builder.build(cfg)
        return meta, time.perf_counter() - start
    finally:
        cv2.setNumThreads(threads)


def stored_sizes(meta: dict) -> str:
    """The prepared frame sizes as WIDTHxHEIGHT (the metadata keeps HEIGHTxWIDTH)."""
    sizes = []
    for size in sorted(meta["frame_size"]["sizes"]):
        h, _, w = size.partition("x")
        sizes.append(f"{w}x{h}")
    return ", ".join(sizes)


def dir_bytes(path: str) -> int:
    """Total size of the files under ``path``."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


# ---------------------------------------------------------------------------
# Worker start-up and peak memory, in other processes

_WORKER: dict = {}


def _import_worker_init(modules, barrier):
    for name in modules:
        importlib.import_module(name)
    _WORKER["barrier"] = barrier


def _wait_all(_):
    _WORKER["barrier"].wait(timeout=300)
    return os.getpid()


def spawn_pool_startup_seconds(workers: int, modules: Sequence[str]) -> float:
    """Seconds until a spawn pool of ``workers`` processes has imported ``modules`` in each.

    What `data_prep.builder`'s worker pool pays before its first video.
    """
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers)
    with Stopwatch() as sw:
        with ctx.Pool(workers, initializer=_import_worker_init,
                      initargs=(list(modules), barrier)) as pool:
            pool.map(_wait_all, range(workers), chunksize=1)
    return sw.seconds


_RSS_CHILD = r"""
import json, os, resource, sys, time
import cv2, psutil
import tensorflow as tf
try:  # imported by the prep's last step (TFDS metadata): part of the baseline
    import tensorflow_datasets
except ImportError:
    pass
from data_prep import builder
from data_prep.prep_config import PrepConfig
args = json.loads(sys.argv[1])
baseline = psutil.Process().memory_info().rss
start = time.perf_counter()
meta = builder.build(PrepConfig(**args))
seconds = time.perf_counter() - start
# The child's own peak. On Linux, ru_maxrss survives exec: a child reports its
# parent's peak when that was higher (a benchmark process that compiled TV-L1
# made every video read ~1.7 GB). VmHWM starts afresh at exec.
try:
    with open("/proc/self/status") as f:
        peak = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
except (OSError, StopIteration):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
print("RSS_RESULT " + json.dumps({"baseline_rss": baseline, "peak_rss": peak,
      "final_rss": psutil.Process().memory_info().rss, "seconds": seconds,
      "frames": sum(s["frames"] for s in meta["splits"].values()),
      "records": sum(s["records"] for s in meta["splits"].values()),
      "failures": meta["failures"]}))
"""


def _repo_root() -> str:
    here = os.path.abspath(__file__)
    return os.path.dirname(os.path.dirname(os.path.dirname(here)))


def start_prep_child(data_root: str, out_dir: str, **prep_kwargs) -> subprocess.Popen:
    """Starts `data_prep.builder.build` (``dataset="folder"``, 1 worker) in a child process."""
    args = dict(dataset="folder", data_root=data_root, out_dir=out_dir, workers=1,
                progress_seconds=3600.0, **prep_kwargs)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_repo_root(), env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return subprocess.Popen([sys.executable, "-c", _RSS_CHILD, json.dumps(args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_prep_child(proc: subprocess.Popen, timeout: float | None = None) -> dict:
    """Waits for `start_prep_child`'s process; returns its measurements.

    ``baseline_rss`` (bytes, after importing TensorFlow, TFDS and OpenCV,
    before the prep), ``peak_rss`` (the process's own peak resident memory, VmHWM on Linux, bytes),
    ``final_rss``, ``seconds``, ``frames``, ``records`` and ``failures``.
    """
    out, err = proc.communicate(timeout=timeout)
    for line in out.splitlines():
        if line.startswith("RSS_RESULT "):
            return json.loads(line[len("RSS_RESULT "):])
    raise RuntimeError(f"prep child failed (exit {proc.returncode}): {err.strip()[-2000:]}")


# ---------------------------------------------------------------------------
# The section

def measure(s: PrepSettings, ctx: Context) -> dict:
    """Prep videos/s, MB per minute of video, N-worker speed-up, peak RSS on a long video."""
    work = ctx.work_dir
    data = os.path.join(work, "prep_videos")
    summary = generate_set(data, s.prep_videos_per_class, s.prep_frames, s.prep_height,
                           s.prep_width, ctx.seed)
    videos = summary["num_videos"]
    minutes = videos * s.prep_frames / VIDEO_FPS / 60.0
    prep = dict(flow=s.prep_flow, flow_implementation=s.prep_flow_implementation,
                short_side=s.prep_short_side, jpeg_quality=90, chunk_frames=1000)
    base = {"videos": videos, "frames_per_video": s.prep_frames,
            "source_size": f"{s.prep_width}x{s.prep_height}", "fps": VIDEO_FPS,
            "video_minutes": minutes, "prep": prep,
            "set": "data_prep.synthetic.generate_ucf101_like (6 classes, MJPG .avi)"}
    try:  # a one-off import of the first build (TFDS metadata), not a per-video cost
        importlib.import_module("tensorflow_datasets")
    except ImportError:
        pass
    workers = s.prep_workers
    meta1, t1 = build(data, os.path.join(work, "prep_1"), workers=1, **prep)
    meta2, tn = build(data, os.path.join(work, f"prep_{workers}"), workers=workers, **prep)
    startup = spawn_pool_startup_seconds(workers, ("tensorflow", "cv2", "data_prep.builder"))
    written = dir_bytes(os.path.join(work, "prep_1"))
    ok = sum(sp["videos"] for sp in meta1["splits"].values())
    stored = stored_sizes(meta1)
    figures = {
        "prep.videos_per_s.1_worker": ctx.figure(
            rate(ok, t1), "videos/s", dict(base, workers=1, stored_size=stored),
            seconds=t1, failed=len(meta1["failures"])),
        "prep.mb_per_video_minute": ctx.figure(
            written / 1e6 / minutes, "MB per minute of video",
            dict(base, workers=1, stored_size=stored,
                 definition="bytes under out_dir (shards + metadata) / 1e6 / minutes of source video"),
            bytes=written, bytes_per_frame=meta1["bytes_per_frame"]),
        f"prep.speedup_{workers}_workers": ctx.figure(
            t1 / tn, "x", dict(base, workers=workers, stored_size=stored,
                               definition=f"wall time with 1 worker (in-process) / wall time with "
                               f"{workers} workers (spawn pool; includes starting the workers, "
                               "each of which imports TensorFlow)"),
            seconds_1_worker=t1, seconds_n_workers=tn, worker_startup_seconds=startup,
            speedup_excluding_startup=t1 / max(tn - startup, 1e-9),
            videos_per_s_n_workers=rate(sum(sp["videos"] for sp in meta2["splits"].values()), tn)),
    }
    figures["prep.long_video.peak_rss"] = _peak_rss(s, ctx)
    return figures


def _peak_rss(s: PrepSettings, ctx: Context) -> dict:
    """A long and a short video prepared by child processes, run together (memory only)."""
    children = {}
    for name, seconds in (("long", s.long_seconds), ("short", s.short_seconds)):
        root = os.path.join(ctx.work_dir, f"rss_{name}")
        os.makedirs(os.path.join(root, "video"), exist_ok=True)
        path = os.path.join(root, "video", f"{name}.avi")
        with Stopwatch() as sw:
            frames = write_long_video(path, seconds, VIDEO_FPS, s.long_height, s.long_width,
                                      ctx.seed)
        proc = start_prep_child(root, os.path.join(ctx.work_dir, f"rss_{name}_out"),
                                flow=s.long_flow, short_side=0, chunk_frames=1000)
        children[name] = (proc, frames, os.path.getsize(path), sw.seconds)
    got = {name: dict(finish_prep_child(proc), video_frames=frames, video_bytes=size,
                      generate_seconds=gen)
           for name, (proc, frames, size, gen) in children.items()}
    long, short = got["long"], got["short"]
    return ctx.figure(
        long["peak_rss"] / MIB, "MiB",
        {"video_seconds": long["video_frames"] / VIDEO_FPS, "video_frames": long["video_frames"],
         "fps": VIDEO_FPS, "size": f"{s.long_width}x{s.long_height}", "codec": "MJPG .avi",
         "flow": s.long_flow, "flow_implementation": "opencv", "short_side": 0,
         "chunk_frames": 1000, "workers": 1,
         "measured": "peak resident memory (VmHWM) of a child process running data_prep.builder.build "
                     "(folder layout, 1 video); the child imports TensorFlow, TFDS and OpenCV "
                     "first (baseline_rss_mib)",
         "video": "prep.long_video_frames: 10-s synthetic clips back to back, written streaming"},
        baseline_rss_mib=long["baseline_rss"] / MIB,
        increase_over_baseline_mib=(long["peak_rss"] - long["baseline_rss"]) / MIB,
        prep_seconds=long["seconds"], records=long["records"], frames_prepared=long["frames"],
        video_mb=long["video_bytes"] / 1e6,
        short_video={"seconds": short["video_frames"] / VIDEO_FPS,
                     "frames": short["video_frames"], "peak_rss_mib": short["peak_rss"] / MIB,
                     "baseline_rss_mib": short["baseline_rss"] / MIB})
