"""Helpers for ``mat-effnet-benchmark``: figures, the machine, peaks, flow timing.

Everything here takes plain arguments (the binary maps its flags onto them)
and nothing imports TensorFlow at module level, so the flow worker processes
this module starts stay light.

* `figure` is the one shape every benchmark number has: value, unit, the
  settings it was measured with, and the machine it ran on.
* `machine_info` describes the machine: CPU model, cores, clock, SIMD flags,
  GPUs, library versions, load average.
* `cpu_flops_per_cycle` / `cpu_peak_flops` / `gpu_peak_flops` give the
  device's peak FP32 FLOP/s (and say how they got it), `model_flops_per_image`
  counts a stream's forward FLOPs with TensorFlow's profiler.
* `endpoint_error` is the mean end-point error between two flow fields.
* `flow_throughput` times an optical-flow algorithm on frame pairs, in this
  process or in a pool of one-thread workers.
* `write_long_video` streams a long synthetic video to disk,
  `prep_peak_rss` prepares a video in a child process and reports its peak
  resident memory.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

MIB = 1024 * 1024


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------

def figure(value, unit: str, settings: dict, machine: str, **extra) -> dict:
    """One benchmark figure: ``{"value", "unit", "settings", "machine", ...extra}``.

    ``value`` is a float (or None when it could not be measured; ``extra``
    then says why), ``unit`` a human unit string ("pairs/s", "MiB", "x"),
    ``settings`` everything needed to reproduce the number, ``machine`` the
    short machine description (`machine_label`).
    """
    if not unit:
        raise ValueError("a figure needs a unit")
    if not isinstance(settings, dict):
        raise ValueError("settings must be a dict")
    out = {"value": None if value is None else float(value), "unit": unit,
           "settings": dict(settings), "machine": machine}
    out.update(extra)
    return out


class Stopwatch:
    """``with Stopwatch() as sw: ...``; then ``sw.seconds`` (perf_counter)."""

    def __enter__(self):
        self.start = time.perf_counter()
        self.seconds = None
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False


def rate(count: float, seconds: float) -> float:
    """count / seconds, guarded against a zero duration."""
    return float(count) / max(float(seconds), 1e-9)


# ---------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------

def parse_cpuinfo(text: str) -> dict:
    """The fields of the first processor block of /proc/cpuinfo, plus every ``cpu MHz``.

    Returns ``{"model", "vendor", "family", "model_number", "flags" (set),
    "mhz" (list of floats, one per processor)}``; missing fields are None.
    """
    first: dict[str, str] = {}
    mhz = []
    for block in text.strip().split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if ":" in line:
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
        if "cpu MHz" in fields:
            try:
                mhz.append(float(fields["cpu MHz"]))
            except ValueError:
                pass
        if not first and fields:
            first = fields

    def as_int(key):
        try:
            return int(first[key], 0)
        except (KeyError, ValueError):
            return None

    flags = first.get("flags") or first.get("Features") or ""
    return {"model": first.get("model name") or first.get("Processor") or first.get("cpu model"),
            "vendor": first.get("vendor_id"), "family": as_int("cpu family"),
            "model_number": as_int("model"), "flags": set(flags.split()), "mhz": mhz}


def cpu_flops_per_cycle(flags: Iterable[str], vendor: str | None = None,
                        family: int | None = None, model: int | None = None) -> tuple[int, str]:
    """Peak FP32 FLOPs per cycle per core from the CPU flags; returns (value, how).

    Rule: lanes of the widest FMA datapath x 2 (an FMA is 2 FLOPs) x 2 FMA
    pipes per core (every recent x86 server core has two; a few low-end
    Xeons have only one 512-bit pipe, which flags cannot show):

    * ``avx512f``: 16 lanes -> 64; except AMD Zen 4 (family 0x19), which
      runs 512-bit instructions on 256-bit pipes -> 32;
    * ``avx2`` + ``fma``: 8 lanes -> 32; except AMD Zen/Zen+ (family 0x17,
      model < 0x30), whose FMA pipes are 128 bits -> 16;
    * ``avx`` without FMA: one 8-lane multiply + one 8-lane add -> 16;
    * ``sse2``: 4-lane multiply + add -> 8; anything else 2 (scalar mul + add).
    """
    flags = set(flags)
    amd = (vendor or "").lower() == "authenticamd"
    if "avx512f" in flags:
        if amd and family == 0x19:
            return 32, "avx512f on AMD Zen 4 (512-bit ops on 2 x 256-bit FMA pipes): 8 lanes x 2 FLOPs x 2 pipes"
        return 64, "avx512f: 16 FP32 lanes x 2 FLOPs (FMA) x 2 FMA pipes"
    if "avx2" in flags and "fma" in flags:
        if amd and family == 0x17 and model is not None and model < 0x30:
            return 16, "avx2+fma on AMD Zen/Zen+ (128-bit FMA pipes): 4 lanes x 2 FLOPs x 2 pipes"
        return 32, "avx2+fma: 8 FP32 lanes x 2 FLOPs (FMA) x 2 FMA pipes"
    if "avx" in flags:
        return 16, "avx (no FMA): 8-lane multiply + 8-lane add per cycle"
    if "sse2" in flags:
        return 8, "sse2: 4-lane multiply + 4-lane add per cycle"
    return 2, "no SIMD flags recognised: scalar multiply + add per cycle"


def cpu_peak_flops(cores: int, clock_hz: float, flops_per_cycle: float) -> float:
    """cores x clock x FLOPs per cycle."""
    if cores < 1 or clock_hz <= 0 or flops_per_cycle <= 0:
        raise ValueError(f"need cores >= 1, clock > 0, FLOPs/cycle > 0; got "
                         f"{cores}, {clock_hz}, {flops_per_cycle}")
    return float(cores) * float(clock_hz) * float(flops_per_cycle)


# Dense (no sparsity) peaks from NVIDIA's data sheets, in FLOP/s: FP32 on the
# CUDA cores and, where the card has them, TF32 tensor cores (what TensorFlow
# uses for float32 matmuls/convolutions on Ampere and newer by default).
# More specific names first.
GPU_PEAKS = (
    ("H200", {"fp32": 67.0e12, "tf32": 494.7e12}),
    ("H100 PCIe", {"fp32": 51.2e12, "tf32": 378.0e12}),
    ("H100 NVL", {"fp32": 60.0e12, "tf32": 417.5e12}),
    ("H100", {"fp32": 67.0e12, "tf32": 494.7e12}),  # SXM ("H100 80GB HBM3")
    ("GH200", {"fp32": 67.0e12, "tf32": 494.7e12}),
    ("A100", {"fp32": 19.5e12, "tf32": 156.0e12}),
    ("A10G", {"fp32": 31.2e12, "tf32": 62.5e12}),
    ("A10", {"fp32": 31.2e12, "tf32": 62.5e12}),
    ("L40S", {"fp32": 91.6e12, "tf32": 183.0e12}),
    ("L4", {"fp32": 30.3e12, "tf32": 60.0e12}),
    ("V100", {"fp32": 15.7e12}),
    ("T4", {"fp32": 8.1e12}),
    ("RTX 4090", {"fp32": 82.6e12, "tf32": 82.6e12}),
    ("RTX 3090", {"fp32": 35.6e12, "tf32": 35.6e12}),
)


def gpu_peak_flops(name: str) -> dict | None:
    """``{"fp32": FLOP/s, "tf32": FLOP/s (if any), "matched": key}`` for a GPU name, or None."""
    for key, peaks in GPU_PEAKS:
        if key.lower() in (name or "").lower():
            return dict(peaks, matched=key)
    return None


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _gpus() -> list[dict]:
    """Name and compute capability of every GPU TensorFlow sees (TF imported here)."""
    import tensorflow as tf

    out = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(gpu)
        except Exception:  # noqa: BLE001 -- details are optional
            details = {}
        out.append({"device": gpu.name, "name": details.get("device_name", gpu.name),
                    "compute_capability": details.get("compute_capability")})
    return out


def machine_info(with_gpus: bool = True) -> dict:
    """CPU model and cores, clock, SIMD flags, memory, GPUs, library versions, load."""
    import cv2
    import psutil

    cpu = parse_cpuinfo(_read("/proc/cpuinfo"))
    logical = os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or logical
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = logical
    freq = psutil.cpu_freq()
    if freq is not None and freq.max and freq.max > 0:
        clock_mhz, clock_source = float(freq.max), "psutil.cpu_freq().max"
    elif cpu["mhz"]:
        clock_mhz, clock_source = max(cpu["mhz"]), "/proc/cpuinfo 'cpu MHz' (no cpufreq: the nominal clock a VM reports)"
    elif freq is not None and freq.current:
        clock_mhz, clock_source = float(freq.current), "psutil.cpu_freq().current"
    else:
        clock_mhz, clock_source = None, "unknown"
    simd = sorted(f for f in cpu["flags"] if f in {"sse2", "avx", "avx2", "fma", "avx512f",
                                                   "avx512_bf16", "avx512_vnni", "amx_bf16"})
    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "opencv": cv2.__version__}
    gpus: list = []
    if with_gpus:
        import keras
        import tensorflow as tf

        versions.update(tensorflow=tf.__version__, keras=keras.__version__)
        gpus = _gpus()
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "cpu_model": cpu["model"] or platform.processor() or platform.machine(),
        "cpu_vendor": cpu["vendor"], "cpu_family": cpu["family"], "cpu_model_number": cpu["model_number"],
        "logical_cpus": logical, "physical_cores": physical, "usable_cpus": usable,
        "cores_for_peak": max(1, min(physical, usable)),
        "clock_mhz": clock_mhz, "clock_source": clock_source, "simd_flags": simd,
        "cpu_flags": sorted(cpu["flags"]),
        "memory_gib": round(psutil.virtual_memory().total / 1024 ** 3, 1),
        "gpus": gpus, "versions": versions, "platform": platform.platform(),
        "load_average_1_5_15": load,
    }


def machine_label(info: dict) -> str:
    """A one-line description of `machine_info` for each figure."""
    gpu = ", ".join(g["name"] for g in info.get("gpus") or []) or "no GPU"
    return (f"{info.get('cpu_model')} ({info.get('cores_for_peak')} cores, "
            f"{info.get('logical_cpus')} logical CPUs) / {gpu}")


def device_peak(info: dict) -> dict:
    """The peak FLOP/s of the device training runs on, and how it was obtained.

    GPU (the first one): `gpu_peak_flops` by name; ``flops`` is the TF32
    tensor-core peak when TensorFlow runs float32 in TF32 (its default on
    Ampere and newer) and the table has one, else the FP32 peak.  CPU:
    `cpu_peak_flops` of the usable physical cores, the clock and
    `cpu_flops_per_cycle`.  ``flops`` is None when unknown.
    """
    gpus = info.get("gpus") or []
    if gpus:
        name = gpus[0]["name"]
        peaks = gpu_peak_flops(name)
        if peaks is None:
            return {"device": name, "flops": None, "how": f"GPU {name!r} not in the table"}
        tf32 = False
        try:
            import tensorflow as tf

            tf32 = bool(tf.config.experimental.tensor_float_32_execution_enabled())
        except Exception:  # noqa: BLE001
            pass
        cc = gpus[0].get("compute_capability") or (0, 0)
        use_tf32 = tf32 and "tf32" in peaks and tuple(cc) >= (8, 0)
        precision = "tf32" if use_tf32 else "fp32"
        return {"device": name, "flops": peaks[precision], "precision": precision,
                "fp32_flops": peaks["fp32"], "tf32_flops": peaks.get("tf32"),
                "how": f"data-sheet dense {precision.upper()} peak of {peaks['matched']} "
                       "(benchmarking.GPU_PEAKS)"}
    per_cycle, why = cpu_flops_per_cycle(info.get("cpu_flags", ()), info.get("cpu_vendor"),
                                         info.get("cpu_family"), info.get("cpu_model_number"))
    cores, mhz = info.get("cores_for_peak") or 1, info.get("clock_mhz")
    if not mhz:
        return {"device": info.get("cpu_model"), "flops": None, "how": "CPU clock unknown"}
    return {"device": info.get("cpu_model"), "precision": "fp32",
            "flops": cpu_peak_flops(cores, mhz * 1e6, per_cycle),
            "cores": cores, "clock_mhz": mhz, "flops_per_cycle": per_cycle,
            "how": f"{cores} cores x {mhz:.0f} MHz ({info.get('clock_source')}) x "
                   f"{per_cycle} FP32 FLOPs/cycle ({why}, from /proc/cpuinfo flags)"}


# ---------------------------------------------------------------------------
# Model FLOPs
# ---------------------------------------------------------------------------

# Tan & Le (2019), Table 2: EfficientNet-B0 at 224 px, 0.39 G multiply-adds.
EFFICIENTNET_B0_PUBLISHED_FLOPS = 2 * 0.39e9


def model_flops_per_image(model, segments: int = 1) -> float:
    """Forward FLOPs of one segment image through a stream model (TF profiler).

    Traces ``model`` on one clip of ``segments`` images, freezes the graph
    and sums TensorFlow's per-op FLOP counts (a multiply-add is 2 FLOPs),
    then divides by ``segments``; the head (Fc, attention, classifier),
    which runs once per clip, is a negligible share.
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


# ---------------------------------------------------------------------------
# Optical flow
# ---------------------------------------------------------------------------

def endpoint_error(flow_a, flow_b, mask=None) -> float:
    """Mean end-point error: mean over pixels of ||flow_a - flow_b||_2 (pixels).

    Both are (H, W, 2) arrays (or stacks (..., H, W, 2)) of equal shape.
    ``mask`` (boolean, the shape without the last axis) restricts the mean
    to its True pixels; an empty mask gives NaN.
    """
    a = np.asarray(flow_a, np.float64)
    b = np.asarray(flow_b, np.float64)
    if a.shape != b.shape or a.shape[-1] != 2:
        raise ValueError(f"flows must share a (..., H, W, 2) shape, got {a.shape} and {b.shape}")
    err = np.sqrt(np.sum((a - b) ** 2, axis=-1))
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != err.shape:
            raise ValueError(f"mask shape {mask.shape} != flow shape {err.shape}")
        return float(err[mask].mean()) if mask.any() else float("nan")
    return float(err.mean())


def flow_magnitude(flow) -> np.ndarray:
    """Per-pixel ||flow||_2 of an (..., H, W, 2) field."""
    f = np.asarray(flow, np.float64)
    return np.sqrt(np.sum(f ** 2, axis=-1))


def _render_clip(cls, seed_parts, num_frames, height, width, tries: int = 20):
    """`render_clip` with a fresh seed when a draw trips its float-rounding edge.

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


def motion_pairs(num_pairs: int, height: int = 256, width: int = 340, seed: int = 0,
                 frames_per_clip: int = 16) -> list[tuple[np.ndarray, np.ndarray]]:
    """Consecutive grayscale frame pairs of synthetic clips with real motion.

    Clips of every synthetic class (translating squares, a growing and a
    spinning cross over a textured background with sensor noise) are
    rendered at height x width by `data_prep.synthetic.render_clip`
    (``frames_per_clip`` frames each, at least one clip per class), and
    their pairs are interleaved (pair 0 of every clip, then pair 1, ...) so
    that even a few pairs cover every kind of motion.
    """
    from data_prep import flow, synthetic

    if num_pairs < 1:
        raise ValueError(f"num_pairs must be >= 1, got {num_pairs}")
    if frames_per_clip < 2:
        raise ValueError(f"frames_per_clip must be >= 2, got {frames_per_clip}")
    classes = synthetic.CLASSES
    per_clip = frames_per_clip - 1
    clips = max(min(len(classes), num_pairs), math.ceil(num_pairs / per_clip))
    rendered = []
    for c in range(clips):
        gray = [flow.to_gray(f) for f in _render_clip(classes[c % len(classes)], (seed, c),
                                                       frames_per_clip, height, width)]
        rendered.append(list(zip(gray[:-1], gray[1:])))
    pairs = [clip[i] for i in range(per_clip) for clip in rendered]
    return pairs[:num_pairs]


_WORKER: dict = {}


def _flow_worker_init(pairs, algorithm, barrier):
    import cv2

    from data_prep import flow

    cv2.setNumThreads(1)  # one worker = one core
    _WORKER.update(pairs=pairs, fn=flow.create_flow(algorithm), barrier=barrier)


def _flow_worker_warm(_):
    # Each warm-up task blocks until every worker holds one, so all workers
    # are started and have run their solver once before the clock starts.
    prev, nxt = _WORKER["pairs"][0]
    _WORKER["fn"](prev, nxt)
    _WORKER["barrier"].wait(timeout=120)
    return os.getpid()


def _flow_worker_run(count):
    # One task per worker (the barrier makes every worker take exactly one,
    # and start together): ``count`` pairs, cycling through the pairs, with
    # no inter-process traffic per pair.
    _WORKER["barrier"].wait(timeout=120)
    pairs, fn = _WORKER["pairs"], _WORKER["fn"]
    for i in range(count):
        prev, nxt = pairs[i % len(pairs)]
        fn(prev, nxt)
    return count


def flow_throughput(pairs: Sequence, algorithm: str, workers: int = 1,
                    pairs_per_worker: int | None = None, keep_flows: bool = False) -> dict:
    """Times `data_prep.flow.create_flow(algorithm)` on frame pairs.

    ``workers == 1``: in this process with ``cv2.setNumThreads(1)`` (restored
    afterwards), every pair once after one untimed warm-up pair; with
    ``keep_flows`` the flow fields are returned too.  ``workers > 1``: a
    spawned process pool, each worker with ``cv2.setNumThreads(1)``; after
    every worker has started and run one pair, each worker computes
    ``pairs_per_worker`` pairs (cycling through ``pairs``), all starting
    together; the wall time of the whole is timed.  Returns ``{"pairs",
    "seconds", "pairs_per_s"}`` (+ ``"flows"``).
    """
    import cv2

    from data_prep import flow

    if not pairs:
        raise ValueError("no frame pairs")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers == 1:
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            fn = flow.create_flow(algorithm)
            fn(*pairs[0])
            flows = []
            with Stopwatch() as sw:
                for prev, nxt in pairs:
                    field = fn(prev, nxt)
                    if keep_flows:
                        flows.append(field)
        finally:
            cv2.setNumThreads(threads)
        out = {"pairs": len(pairs), "seconds": sw.seconds, "pairs_per_s": rate(len(pairs), sw.seconds)}
        if keep_flows:
            out["flows"] = flows
        return out
    per_worker = pairs_per_worker or len(pairs)
    total = workers * per_worker
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers)
    with ctx.Pool(workers, initializer=_flow_worker_init,
                  initargs=(list(pairs), algorithm, barrier)) as pool:
        pool.map(_flow_worker_warm, range(workers), chunksize=1)
        with Stopwatch() as sw:
            pool.map(_flow_worker_run, [per_worker] * workers, chunksize=1)
    return {"pairs": total, "seconds": sw.seconds, "pairs_per_s": rate(total, sw.seconds)}


def _import_worker_init(modules, barrier):
    import importlib

    for name in modules:
        importlib.import_module(name)
    _WORKER["barrier"] = barrier


def _wait_all(_):
    _WORKER["barrier"].wait(timeout=300)
    return os.getpid()


def spawn_pool_startup_seconds(workers: int, modules: Sequence[str]) -> float:
    """Seconds until a spawn pool of ``workers`` processes has imported ``modules`` in each.

    What `data_prep.builder`'s worker pool pays before its first video
    (each worker imports TensorFlow and OpenCV).
    """
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers)
    with Stopwatch() as sw:
        with ctx.Pool(workers, initializer=_import_worker_init,
                      initargs=(list(modules), barrier)) as pool:
            pool.map(_wait_all, range(workers), chunksize=1)
    return sw.seconds


# ---------------------------------------------------------------------------
# Long videos and peak memory
# ---------------------------------------------------------------------------

def long_video_frames(seconds: float, fps: float = 25.0, height: int = 120, width: int = 160,
                      seed: int = 0, clip_seconds: float = 10.0) -> Iterator[np.ndarray]:
    """Frames of a long synthetic video, generated lazily (one 10-s clip in memory).

    The video is a sequence of `data_prep.synthetic.render_clip` clips of
    ``clip_seconds`` (cycling through the synthetic classes; a scene cut
    between clips), cut to ``round(seconds * fps)`` frames.
    """
    from data_prep import synthetic

    total = int(round(seconds * fps))
    per_clip = max(2, int(round(clip_seconds * fps)))
    produced, clip = 0, 0
    while produced < total:
        n = min(per_clip, total - produced)
        cls = synthetic.CLASSES[clip % len(synthetic.CLASSES)]
        frames = _render_clip(cls, (seed, clip), max(n, 2), height, width)
        for frame in frames[:n]:
            yield frame
        produced += n
        clip += 1


def write_long_video(path: str, seconds: float, fps: float = 25.0, height: int = 120,
                     width: int = 160, seed: int = 0) -> int:
    """Writes `long_video_frames` to ``path`` (streaming); returns the frame count."""
    from data_prep import synthetic

    return synthetic.write_video(path, long_video_frames(seconds, fps, height, width, seed), fps)


_RSS_CHILD = r"""
import json, os, resource, sys, time
import cv2, psutil
import tensorflow as tf
try:  # imported by the prep's last step (TFDS metadata): part of the baseline
    import tensorflow_datasets
except ImportError:
    pass
from data_prep import builder
args = json.loads(sys.argv[1])
baseline = psutil.Process().memory_info().rss
start = time.perf_counter()
meta = builder.build(builder.PrepConfig(**args))
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
peak *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
print("RSS_RESULT " + json.dumps({"baseline_rss": baseline, "peak_rss": peak,
      "final_rss": psutil.Process().memory_info().rss, "seconds": seconds,
      "frames": sum(s["frames"] for s in meta["splits"].values()),
      "records": sum(s["records"] for s in meta["splits"].values()),
      "failures": meta["failures"]}))
"""


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    before the prep), ``peak_rss`` (the process's ru_maxrss, bytes), ``final_rss``,
    ``seconds``, ``frames``, ``records`` and ``failures``.
    """
    out, err = proc.communicate(timeout=timeout)
    for line in out.splitlines():
        if line.startswith("RSS_RESULT "):
            return json.loads(line[len("RSS_RESULT "):])
    raise RuntimeError(f"prep child failed (exit {proc.returncode}): {err.strip()[-2000:]}")


def prep_peak_rss(data_root: str, out_dir: str, **prep_kwargs) -> dict:
    """`start_prep_child` then `finish_prep_child`."""
    return finish_prep_child(start_prep_child(data_root, out_dir, **prep_kwargs))


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


def timed_iterations(step: Callable[[], object], iterations: int, warmup: int = 1) -> float:
    """Seconds for ``iterations`` calls of ``step`` after ``warmup`` untimed calls."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    for _ in range(warmup):
        step()
    with Stopwatch() as sw:
        for _ in range(iterations):
            step()
    return sw.seconds


def round_sig(value, digits: int = 3):
    """``value`` rounded to ``digits`` significant digits (None stays None)."""
    if value is None or not math.isfinite(value) or value == 0:
        return value
    return round(value, -int(math.floor(math.log10(abs(value)))) + digits - 1)
