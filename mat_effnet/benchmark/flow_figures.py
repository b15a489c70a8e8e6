"""Optical-flow figures: speed, accuracy against known flow, and a roofline.

TV-L1 (Zach, Pock & Bischof 2007) is what the two-stream networks read
(paper Sect. 4.2), and it is the cost of preparing their data. Measured at
340x256 (UCF101 at the standard short side 256):

* pairs/s of OpenCV's TV-L1 in one process (``cv2.setNumThreads(1)``) and in
  a spawn pool of one-thread processes on every core; the same for DIS;
* pairs/s of the Keras TV-L1 (`mat_effnet.ops.tvl1.batch_tvl1`, XLA-compiled) at
  each batch size, in one process where TensorFlow places it (every CPU
  core, or the GPU), and its ratio to OpenCV's all-core figure;
* the mean end-point error (EPE) to the exact flow of
  `data_prep.known_flow.accuracy_set` (translation, rotation, zoom, two
  objects; sub-pixel to 15 px) of each: OpenCV and Keras TV-L1, DIS at its
  presets ultrafast / fast / medium; and the EPE between the two TV-L1s;
* the Keras TV-L1's FLOPs and bytes per pair (`mat_effnet.benchmark.roofline.cost_per_pair`)
  at the worst case and at the inner iterations its epsilon-stop actually
  ran, and the pairs/s they bound an H100 to: a roofline, labelled "derived,
  not measured" when the machine has no GPU.

Every pair of the accuracy set is timed too, so speed and accuracy come from
the same frames. On a Keras backend `batch_tvl1` cannot run on (it needs
TensorFlow or JAX) the Keras figures have no value and say why, and the
roofline prices the worst case. Nothing here imports TensorFlow at module
level: the pool's worker processes import this module.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from typing import Sequence

import numpy as np

from data_prep import known_flow
from mat_effnet.ops import tvl1
from mat_effnet.benchmark.report import Context, Stopwatch, rate
from mat_effnet.benchmark.settings import FlowSettings
from mat_effnet.common.errors import MatEffNetError
from mat_effnet.benchmark import roofline

DIS_PRESETS = ("ultrafast", "fast", "medium")
# NVIDIA H100 SXM data sheet: 3.35 TB/s HBM3, 67 TFLOP/s dense FP32.
H100 = {"name": "H100 SXM", "bytes_per_s": 3.35e12, "flops": 67.0e12,
        "source": "NVIDIA H100 SXM data sheet: 3.35 TB/s HBM3, 67 TFLOP/s FP32"}


# ---------------------------------------------------------------------------
# Frames

class Frames:
    """The pairs every flow figure runs on: `data_prep.known_flow.accuracy_set`, exact flow known.

    Masks (``masks[i]``) leave out pixels whose exact flow cannot be seen in both frames.
    """

    source = ("data_prep.known_flow.accuracy_set: textured translation, rotation, "
              "zoom and two objects, 0.4 to 14.5 px, exact flow")

    def __init__(self, height: int, width: int, seed: int):
        items = known_flow.accuracy_set(height, width, seed, with_masks=True)
        self.names = [item[0] for item in items]
        self.pairs = [(item[1], item[2]) for item in items]
        self.truth = [np.asarray(item[3], np.float32) for item in items]
        self.masks = [item[4] for item in items]

    def __len__(self):
        return len(self.pairs)

    def cycle(self, count: int, start: int = 0) -> list:
        return [self.pairs[(start + i) % len(self.pairs)] for i in range(count)]

    def epe(self, flow_a, flow_b, mask=None) -> float:
        """Mean end-point error (px) of two fields."""
        return known_flow.endpoint_error(flow_a, flow_b, mask)

    def epe_to_truth(self, flows: Sequence) -> tuple[float, dict]:
        """Mean over pairs of each pair's EPE to the exact flow (on its mask), and per pair."""
        per = {name: self.epe(flows[i], self.truth[i], self.masks[i])
               for i, name in enumerate(self.names)}
        return float(np.mean(list(per.values()))), per


# ---------------------------------------------------------------------------
# OpenCV timing: this process, or a pool of one-thread workers

_WORKER: dict = {}


def _flow_worker_init(pairs, algorithm, barrier):
    import cv2

    from mat_effnet.ops import optical_flow

    cv2.setNumThreads(1)  # one worker = one core
    _WORKER.update(pairs=pairs, fn=optical_flow.create_flow(algorithm), barrier=barrier)


def _flow_worker_warm(_):
    # Each warm-up task blocks until every worker holds one, so all workers
    # are started and have run their solver once before the clock starts.
    prev, nxt = _WORKER["pairs"][0]
    _WORKER["fn"](prev, nxt)
    _WORKER["barrier"].wait(timeout=120)
    return os.getpid()


def _flow_worker_run(count):
    # One task per worker (the barrier makes every worker take exactly one,
    # and start together), with no inter-process traffic per pair.
    _WORKER["barrier"].wait(timeout=120)
    pairs, fn = _WORKER["pairs"], _WORKER["fn"]
    for i in range(count):
        prev, nxt = pairs[i % len(pairs)]
        fn(prev, nxt)
    return count


def flow_throughput(pairs: Sequence, algorithm: str, workers: int = 1,
                    pairs_per_worker: int | None = None, keep_flows: bool = False,
                    solver=None) -> dict:
    """Times `mat_effnet.ops.optical_flow.create_flow(algorithm)` (or ``solver``) on frame pairs.

    ``workers == 1``: in this process with ``cv2.setNumThreads(1)`` (restored
    afterwards), every pair once after one untimed warm-up pair; with
    ``keep_flows`` the fields are returned too. ``workers > 1``: a spawn
    pool, each worker with ``cv2.setNumThreads(1)``; once every worker has
    started and run one pair, each computes ``pairs_per_worker`` pairs, all
    starting together, and the whole is timed. Returns ``{"pairs",
    "seconds", "pairs_per_s"}`` (+ ``"flows"``).
    """
    import cv2

    from mat_effnet.ops import optical_flow

    if not pairs:
        raise MatEffNetError("pairs: none given")
    if workers < 1:
        raise MatEffNetError(f"workers={workers}: must be >= 1")
    if workers == 1:
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            fn = solver or optical_flow.create_flow(algorithm)
            fn(*pairs[0])
            flows = []
            with Stopwatch() as sw:
                for prev, nxt in pairs:
                    field = fn(prev, nxt)
                    if keep_flows:
                        flows.append(field)
        finally:
            cv2.setNumThreads(threads)
        out = {"pairs": len(pairs), "seconds": sw.seconds,
               "pairs_per_s": rate(len(pairs), sw.seconds)}
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


def dis_solver(preset: str):
    """flow(prev, next) of OpenCV's DIS at a named preset."""
    import cv2

    solver = cv2.DISOpticalFlow_create(getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{preset.upper()}"))
    return lambda prev, nxt: np.asarray(solver.calc(prev, nxt, None), np.float32)


# ---------------------------------------------------------------------------
# Keras TV-L1 timing

def _device(ctx: Context) -> str:
    gpus = ctx.gpus
    if gpus:
        return f"GPU: {gpus[0]['name']}"
    return f"CPU: {ctx.info.get('cpu_model')} ({ctx.info.get('usable_cpus')} usable CPUs)"


def keras_throughput(fn, frames: Frames, batch: int, pairs: int, flows: dict,
                     iterations: list) -> dict:
    """Times ``fn`` (`batch_tvl1`) on batches of ``batch`` pairs, ``pairs`` pairs at least.

    The first call compiles for this batch shape; it runs on pairs of
    identical frames (the epsilon-stop ends each warp after one inner
    iteration), so compiling costs little more than XLA's own time and is
    reported apart. Then ``ceil(pairs / batch)`` calls are timed, on pairs
    taken in turn from ``frames``. The first field computed for each pair
    of ``frames`` goes into ``flows``; the inner iterations each timed pair
    ran (``fn.last_stats``, (B, scales, warps)) go into ``iterations``.
    """
    same = np.stack([p for p, _ in frames.cycle(batch)])
    with Stopwatch() as compile_sw:
        fn(same, same)
    calls = max(1, math.ceil(pairs / batch))
    seconds = 0.0
    for call in range(calls):
        start = (call * batch) % len(frames)
        chunk = frames.cycle(batch, start)
        prev, nxt = np.stack([p for p, _ in chunk]), np.stack([n for _, n in chunk])
        with Stopwatch() as sw:
            out = fn(prev, nxt)
        seconds += sw.seconds
        iterations.append(np.asarray(fn.last_stats["iterations"], np.float64))
        for b in range(batch):
            flows.setdefault((start + b) % len(frames), out[b])
    timed = calls * batch
    return {"pairs": timed, "calls": calls, "seconds": seconds, "pairs_per_s": rate(timed, seconds),
            "compile_seconds": compile_sw.seconds}


def _fill_missing(fn, frames: Frames, batch: int, flows: dict) -> None:
    """Fields for the pairs no timed batch reached, at a batch size already compiled."""
    missing = [i for i in range(len(frames)) if i not in flows]
    for k in range(0, len(missing), batch):
        chunk = missing[k:k + batch]
        padded = [chunk[j % len(chunk)] for j in range(batch)]  # repeats fill the batch
        out = fn(np.stack([frames.pairs[i][0] for i in padded]),
                 np.stack([frames.pairs[i][1] for i in padded]))
        for j, i in enumerate(chunk):
            flows[i] = out[j]


def _mean_iterations(iterations: list) -> list[float] | None:
    """Mean inner iterations per warp at each scale (finest first), over all timed pairs."""
    if not iterations:
        return None
    stacked = np.concatenate([it.reshape(it.shape[0], it.shape[1], -1) for it in iterations])
    return [float(v) for v in stacked.mean(axis=(0, 2))]


# ---------------------------------------------------------------------------
# The section

def measure(s: FlowSettings, ctx: Context) -> dict:
    """The flow figures (module docstring); ``{name: figure}``."""
    workers = s.flow_workers or os.cpu_count() or 1
    frames = Frames(s.flow_height, s.flow_width, ctx.seed)
    n = len(frames)
    base = {"frame_size": f"{s.flow_width}x{s.flow_height}", "frames": frames.source,
            "pair_set": frames.names}
    figures: dict = {}
    flows: dict = {}

    # OpenCV: one process, then every core.
    for algorithm, count in (("tvl1", max(s.tvl1_pairs, n)), ("dis", max(s.dis_pairs, n))):
        one = flow_throughput(frames.cycle(count), algorithm, 1, keep_flows=True)
        flows[algorithm] = one["flows"][:n]
        opencv = dict(base, algorithm=algorithm, implementation="opencv",
                      preset="medium" if algorithm == "dis" else None)
        figures[f"flow.{algorithm}.pairs_per_s.1_worker"] = ctx.figure(
            one["pairs_per_s"], "pairs/s", dict(opencv, workers=1, cv2_threads=1,
                                                pairs=one["pairs"]), seconds=one["seconds"])
        per_worker = s.tvl1_pairs if algorithm == "tvl1" else s.dis_pairs
        pool = flow_throughput(frames.pairs, algorithm, workers, pairs_per_worker=per_worker)
        figures[f"flow.{algorithm}.pairs_per_s.all_cores"] = ctx.figure(
            pool["pairs_per_s"], "pairs/s",
            dict(opencv, workers=workers, cv2_threads_per_worker=1, pairs=pool["pairs"],
                 pool="multiprocessing spawn pool of one-thread workers; timed after every "
                      "worker has started and run one pair"),
            seconds=pool["seconds"])
    figures["flow.dis_over_tvl1.speed"] = ctx.figure(
        figures["flow.dis.pairs_per_s.1_worker"]["value"]
        / figures["flow.tvl1.pairs_per_s.1_worker"]["value"], "x",
        dict(base, definition="OpenCV DIS (medium) pairs/s / OpenCV TV-L1 pairs/s, 1 worker"))

    for preset in DIS_PRESETS:
        if preset == "medium":
            flows["dis_medium"] = flows["dis"]
            continue
        run = flow_throughput(frames.pairs, "dis", 1, keep_flows=True, solver=dis_solver(preset))
        flows[f"dis_{preset}"] = run["flows"]
        flows[f"dis_{preset}_pairs_per_s"] = run["pairs_per_s"]

    fn, why = _keras_flow()
    figures.update(_keras_figures(s, ctx, frames, base, figures, flows, fn, why))
    figures.update(_accuracy_figures(ctx, frames, base, flows, why))
    return figures


def _keras_flow():
    """(`mat_effnet.ops.tvl1.batch_tvl1()`, None), or (None, why it cannot run here)."""
    try:
        return tvl1.batch_tvl1(), None
    except Exception as e:  # noqa: BLE001 -- e.g. a Keras backend it cannot compile on
        return None, f"mat_effnet.ops.tvl1.batch_tvl1() failed: {type(e).__name__}: {e}"


def _keras_figures(s: FlowSettings, ctx: Context, frames: Frames, base: dict, figures: dict,
                   flows: dict, fn, why: str | None) -> dict:
    """Keras TV-L1 pairs/s per batch size, its ratio to OpenCV, and the roofline.

    ``fn`` is `_keras_flow`'s: without it, ``why`` stands in for every measured value.
    """
    import keras

    keras_base = dict(base, algorithm="tvl1", implementation="keras",
                      backend=keras.backend.backend(), device=_device(ctx), workers=1,
                      call="mat_effnet.ops.tvl1.batch_tvl1() (create_batch_flow('tvl1', 'keras') "
                           "runs it on full batches)",
                      threads="TensorFlow's default: every core" if not ctx.gpus else None)
    out: dict = {}
    kflows: dict = {}
    iterations: list = []
    best = None
    for batch in s.keras_batches:
        name = f"flow.tvl1_keras.pairs_per_s.batch_{batch}"
        if fn is None:
            out[name] = ctx.figure(None, "pairs/s", dict(keras_base, batch_size=batch), why=why)
            continue
        run = keras_throughput(fn, frames, batch, s.keras_pairs, kflows, iterations)
        out[name] = ctx.figure(run["pairs_per_s"], "pairs/s",
                               dict(keras_base, batch_size=batch, pairs=run["pairs"],
                                    calls=run["calls"]),
                               seconds=run["seconds"], compile_seconds=run["compile_seconds"])
        best = max(best or 0.0, run["pairs_per_s"])
    if fn is not None:
        _fill_missing(fn, frames, min(s.keras_batches), kflows)
        flows["tvl1_keras"] = [kflows[i] for i in range(len(frames))]

    opencv = figures["flow.tvl1.pairs_per_s.all_cores"]
    where = "the GPU" if ctx.gpus else "the same CPU cores"
    ratio = dict(base, device=_device(ctx), opencv_workers=opencv["settings"]["workers"],
                 definition=f"best Keras TV-L1 pairs/s over the batch sizes (on {where}) / "
                            "OpenCV TV-L1 pairs/s on all cores (pool of one-thread workers)")
    if best is None:
        out["flow.tvl1_keras_over_opencv.speed"] = ctx.figure(None, "x", ratio, why=why)
    else:
        per_batch = {b: out[f"flow.tvl1_keras.pairs_per_s.batch_{b}"]["value"] / opencv["value"]
                     for b in s.keras_batches}
        out["flow.tvl1_keras_over_opencv.speed"] = ctx.figure(
            best / opencv["value"], "x", ratio, per_batch=per_batch,
            over_opencv_1_worker=best / figures["flow.tvl1.pairs_per_s.1_worker"]["value"])
    out.update(_roofline_figures(s, ctx, _mean_iterations(iterations)))
    return out


def _roofline_figures(s: FlowSettings, ctx: Context, per_scale: list | None) -> dict:
    """FLOPs, bytes and iterations per pair, and the H100 bound they give."""
    derived = ("derived, not measured: no GPU on this machine" if not ctx.gpus else
               f"derived (roofline); measured on {ctx.gpus[0]['name']}: "
               "flow.tvl1_keras.pairs_per_s.batch_*")
    base = {"frame_size": f"{s.flow_width}x{s.flow_height}", "algorithm": "tvl1",
            "implementation": "keras", "params": "OpenCV DualTVL1 defaults",
            "count": "mat_effnet.benchmark.roofline.cost_per_pair (float32, fully fused iterations)"}
    names = ("flow.tvl1.roofline.flops_per_pair", "flow.tvl1.roofline.bytes_per_pair",
             "flow.tvl1.roofline.iterations_per_warp", "flow.tvl1.roofline.h100_pairs_per_s")
    iterations = None if per_scale is None else {"mean_per_warp": per_scale}
    cost = roofline.cost_per_pair(s.flow_height, s.flow_width, iterations=iterations)
    worst = cost["worst_case"]
    used = cost.get("measured", worst)
    which = ("iterations the epsilon-stop ran on the timed pairs" if "measured" in cost
             else "worst case: every iteration (no Keras TV-L1 run to measure)")

    def bound(c):
        return roofline.roofline_pairs_per_s(c, H100["bytes_per_s"], H100["flops"])

    p = tvl1.TVL1Params()
    worst_iters = p.inner_iterations * p.outer_iterations
    return {
        names[0]: ctx.figure(used["flops"], "FLOPs", dict(base, iterations=which),
                             worst_case=worst["flops"]),
        names[1]: ctx.figure(used["bytes"], "bytes", dict(base, iterations=which),
                             worst_case=worst["bytes"], intensity_flops_per_byte=used["intensity"]),
        names[2]: ctx.figure(None if per_scale is None else float(np.mean(per_scale)),
                             "inner iterations per warp",
                             dict(base, definition="mean over scales of the mean inner "
                                                   "iterations per warp of every timed pair"),
                             per_scale_finest_first=per_scale, worst_case=worst_iters,
                             **({"why": "no Keras TV-L1 run"} if per_scale is None else {})),
        names[3]: ctx.figure(bound(used), "pairs/s",
                             dict(base, iterations=which, device=H100["name"],
                                  bandwidth_bytes_per_s=H100["bytes_per_s"],
                                  peak_flops=H100["flops"], peak_source=H100["source"],
                                  derived=derived,
                                  definition="1 / max(bytes / bandwidth, FLOPs / peak)"),
                             worst_case=bound(worst), levels=cost["levels"]),
    }


def _accuracy_figures(ctx: Context, frames: Frames, base: dict, flows: dict,
                      keras_why: str | None) -> dict:
    """EPE to the exact flow per algorithm and implementation, and between the TV-L1s.

    Without Keras TV-L1 fields (``keras_why`` says why) its figures have no value.
    """
    runs = [("flow.epe.tvl1", "tvl1", "opencv", None),
            ("flow.epe.tvl1_keras", "tvl1_keras", "keras", None)]
    runs += [(f"flow.epe.dis_{p}", f"dis_{p}", "opencv", p) for p in DIS_PRESETS]
    out = {}
    definition = ("mean over the pairs of each pair's mean ||flow - exact||_2 on its valid "
                  "pixels (data_prep.known_flow mask: destination in frame, not occluded, "
                  "away from object edges)")
    for name, key, implementation, preset in runs:
        settings = dict(base, algorithm="dis" if preset else "tvl1", implementation=implementation,
                        preset=preset, pairs=len(frames), definition=definition)
        if key not in flows:
            out[name] = ctx.figure(None, "px", settings, why=keras_why)
            continue
        value, per = frames.epe_to_truth(flows[key])
        extra = {"per_pair": per}
        if f"{key}_pairs_per_s" in flows:
            extra["pairs_per_s_1_worker"] = flows[f"{key}_pairs_per_s"]
        out[name] = ctx.figure(value, "px", settings, **extra)
    if "tvl1_keras" in flows:
        per = {frames.names[i]: frames.epe(flows["tvl1_keras"][i], flows["tvl1"][i])
               for i in range(len(frames))}
        out["flow.tvl1_keras_vs_opencv.epe"] = ctx.figure(
            float(np.mean(list(per.values()))), "px",
            dict(base, pairs=len(frames), definition="mean over the pairs of the mean "
                 "||keras - opencv||_2 over all pixels (TV-L1, the two implementations)"),
            per_pair=per)
    else:
        out["flow.tvl1_keras_vs_opencv.epe"] = ctx.figure(
            None, "px", dict(base, pairs=len(frames)), why=keras_why)
    return out
