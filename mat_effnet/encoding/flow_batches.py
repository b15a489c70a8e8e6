"""Batched flow across videos: the Keras TV-L1 scheduled over a preparation run.

OpenCV's flow computes one pair at a time on one core, so `data_prep.work_files`
runs it inside each worker, next to the decoding. The Keras TV-L1
(`mat_effnet.ops.tvl1`) is fast on batches of pairs, on the GPU when the backend
sees one, so its work is split across processes instead:

* workers decode each video (RGB JPEGs, gray frames);
* the flow process (`run_batched`) gathers frame pairs from several
  videos in one queue per exact frame size, so that each batch is one
  compiled program and nothing is padded (padding would change the
  pyramid and the borders); it computes and quantizes their flow a batch
  at a time;
* a video whose pairs are all done goes back to a worker, which JPEGs its
  flow and writes its work file and marker.

With several GPUs there is one flow process per GPU, each seeing only its
own (`run_on_devices`); without a GPU, one per worker, each decoding its
own videos (XLA's CPU code keeps about one core busy). Each pair's flow does
not depend on its batch-mates (`mat_effnet.ops.tvl1` stops each pair on its
own), so the records are those of pairwise computation with the same flow
function, whichever batches the pairs landed in.

What is done to one video (decode, encode, record a failure) belongs to
the caller, which passes it as `Steps`; this module only schedules.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import multiprocessing
import os
import queue as queue_lib
from typing import Callable, Iterator, NamedTuple

import numpy as np

from mat_effnet.encoding import encode
from mat_effnet.ops import optical_flow as flow_lib
from mat_effnet.common import tf_startup
from mat_effnet.common.errors import MatEffNetError
from mat_effnet.ops import quantize


@dataclasses.dataclass(frozen=True)
class FlowSchedule:
    """How flow is computed across videos: which flow, its bound, and the processes.

    flow_batch: pairs per call of the Keras TV-L1 (None: its default).
    flow_devices: flow processes (None: one per GPU, at least one).
    workers: processes that decode and encode videos.
    """

    flow: str
    flow_implementation: str
    flow_bound: float
    flow_batch: int | None = None
    flow_devices: int | None = None
    workers: int = 1


class Steps(NamedTuple):
    """The caller's work on one video, run in the decoding workers.

    Module-level functions, so that spawned workers can be handed them.
    Each returns a result dict (the video's marker content) once the video
    is finished, failed or not; none raises for a bad video.
    """

    # task -> (task, encode.DecodedVideo, seconds), or the failure's result
    decode: Callable
    # (task, decoded, quantized flow per chunk, seconds) -> result
    encode: Callable
    # (task, error) -> result, the failure recorded
    fail: Callable


class FlowProcessError(MatEffNetError):
    """A flow process died (killed, out of memory): the run stops, resumable."""


def run(tasks: list, cfg: FlowSchedule, steps: Steps) -> Iterator[dict]:
    """Flow for ``tasks`` in batches on each accelerator; yields each video's result when done.

    ``cfg.flow_devices`` flow processes (None: one per GPU; on a machine
    without one, one per worker).
    """
    devices = cfg.flow_devices or default_devices(cfg.workers)
    if devices > 1:
        return run_on_devices(tasks, cfg, steps, devices)
    return run_batched(tasks, cfg, steps)


def default_devices(workers: int) -> int:
    """Flow processes when none are asked for: one per GPU, else one per worker.

    On CPU the compiled TV-L1 runs mostly on one core (XLA's CPU code is
    largely single-threaded): one flow process kept 1.2 of 2 cores busy
    (144 small videos, 135 s), one per worker, each decoding its own
    videos, kept both busy (86 and 94 s in two runs). On a GPU one process per device feeds it.
    """
    return flow_lib.accelerators() or max(1, workers)


# ---------------------------------------------------------------------------
# One flow process

class _InProcess:
    """The executor of ``workers=1``: runs each call when it is submitted."""

    def submit(self, fn, *args):
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args))
        except Exception as e:  # noqa: BLE001  # a kill (BaseException) propagates
            future.set_exception(e)
        return future

    def shutdown(self, wait=True, cancel_futures=False):
        pass


def _hide_gpus():
    # Decoding workers never need a GPU; keep TF from claiming one there.
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    tf_startup.import_tensorflow_if_quiet()


@dataclasses.dataclass(eq=False)
class _Video:
    """A decoded video whose flow is being computed: where each pair's result goes."""

    task: object
    decoded: encode.DecodedVideo
    quantized: list  # per chunk: (T - 1, H, W, 2) uint8, filled as batches finish
    left: int  # pairs still to compute
    seconds: float
    failed: bool = False


class _FlowLoop:
    """The flow process's loop: keeps workers decoding, runs batches, hands videos back.

    A batch runs as soon as one frame-size queue holds ``flow_batch``
    pairs; a smaller one only when no decoding in flight could fill it (the
    end of the run) or too many pairs wait. Decoding stays at most
    ``2 * workers`` videos and ``2 * flow_batch`` queued pairs ahead, which
    bounds the frames held in memory.
    """

    def __init__(self, tasks: list, cfg: FlowSchedule, steps: Steps):
        self.cfg, self.steps = cfg, steps
        self.flow_fn = flow_lib.create_batch_flow(cfg.flow, cfg.flow_implementation,
                                                  cfg.flow_batch)
        self.batch = self.flow_fn.batch_size
        self.todo = collections.deque(tasks)
        self.decoding: set = set()
        self.encoding: set = set()
        self.queues: dict[tuple, collections.deque] = {}  # (height, width) -> (video, chunk, pair)
        self.queued = 0
        if cfg.workers == 1:
            self.executor = _InProcess()
        else:
            self.executor = concurrent.futures.ProcessPoolExecutor(
                cfg.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_hide_gpus)

    def results(self) -> Iterator[dict]:
        """Each video's result, in the order they finish; the workers are shut down at the end."""
        try:
            while self.todo or self.decoding or self.encoding or self.queued:
                while (self.todo and len(self.decoding) < 2 * self.cfg.workers
                       and self.queued < 2 * self.batch):
                    self.decoding.add(self.executor.submit(self.steps.decode,
                                                           self.todo.popleft()))
                done = [f for f in (*self.decoding, *self.encoding) if f.done()]
                for f in done:
                    yield from self._collect(f)
                if not done:
                    yield from self._flow_or_wait()
        finally:
            self.executor.shutdown(wait=True, cancel_futures=True)

    def _collect(self, future) -> Iterator[dict]:
        """A worker's finished call: a video's result, or a decoded video to queue."""
        if future in self.encoding:
            self.encoding.discard(future)
            yield future.result()
            return
        self.decoding.discard(future)
        out = future.result()
        if isinstance(out, dict):  # the video failed; its marker is written
            yield out
            return
        task, decoded, seconds = out
        v = _Video(task, decoded, [np.empty((len(g) - 1, decoded.height, decoded.width, 2),
                                            np.uint8) for g in decoded.grays],
                   decoded.pairs, seconds)
        queue = self.queues.setdefault((decoded.height, decoded.width), collections.deque())
        for c, g in enumerate(decoded.grays):
            queue.extend((v, c, i) for i in range(len(g) - 1))
        self.queued += v.left

    def _flow_or_wait(self) -> Iterator[dict]:
        full = [q for q in self.queues.values() if len(q) >= self.batch]
        if full:
            yield from self._flow(full[0], self.batch)
        elif self.queued and (not self.decoding or self.queued >= 2 * self.batch):
            largest = max(self.queues.values(), key=len)
            yield from self._flow(largest, len(largest))
        else:
            concurrent.futures.wait((*self.decoding, *self.encoding),
                                    return_when=concurrent.futures.FIRST_COMPLETED)

    def _flow(self, queue: collections.deque, n: int) -> Iterator[dict]:
        """Flow of the first ``n`` pairs of ``queue``; videos it completes go to encoding."""
        refs = [queue.popleft() for _ in range(n)]
        self.queued -= n
        refs = [r for r in refs if not r[0].failed]
        if not refs:
            return
        prev = np.stack([v.decoded.grays[c][i] for v, c, i in refs])
        nxt = np.stack([v.decoded.grays[c][i + 1] for v, c, i in refs])
        try:
            fields = quantize.quantize_flow(self.flow_fn(prev, nxt), self.cfg.flow_bound)
        except Exception as e:  # noqa: BLE001  # an unexpected flow error fails these videos only
            for v in dict.fromkeys(v for v, _, _ in refs):
                v.failed, v.decoded = True, None
                yield self.steps.fail(v.task, e)
            return
        for (v, c, i), field in zip(refs, fields):
            v.quantized[c][i] = field
            v.left -= 1
            if v.left == 0:
                v.decoded.grays = []  # not needed to encode: do not ship them
                self.encoding.add(self.executor.submit(self.steps.encode, v.task, v.decoded,
                                                       v.quantized, v.seconds))


def run_batched(tasks: list, cfg: FlowSchedule, steps: Steps) -> Iterator[dict]:
    """``cfg.workers`` workers decode and encode; this process computes flow in batches."""
    # A generator: no flow function or worker pool exists before the first result is asked for.
    yield from _FlowLoop(tasks, cfg, steps).results()


# ---------------------------------------------------------------------------
# One flow process per GPU, or per worker on CPU

def run_on_devices(tasks: list, cfg: FlowSchedule, steps: Steps, devices: int) -> Iterator[dict]:
    """One `run_batched` process per GPU (or CPU process), each seeing only its GPU; merged.

    Videos are dealt round-robin, so every shard's videos finish at about
    the same pace on every device; the decoding workers are split evenly.
    Raises `FlowProcessError` if a flow process dies.
    """
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not flow_lib.accelerators():
        ids = ["-1"] * devices  # CPU processes: none looks for a GPU
    else:
        ids = visible.split(",") if visible else [str(i) for i in range(devices)]
    count = min(devices, len(ids), len(tasks))
    per_device = dataclasses.replace(cfg, workers=max(1, cfg.workers // count), flow_devices=1)
    procs = [ctx.Process(target=_device_main,
                         args=(ids[i], tasks[i::count], per_device, steps, results))
             for i in range(count)]
    for p in procs:
        p.start()
    running = len(procs)
    try:
        while running:
            try:
                result = results.get(timeout=1.0)
            except queue_lib.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise FlowProcessError(f"a flow process exited with code "
                                           f"{dead[0].exitcode}; re-run to resume") from None
                continue
            if result is None:
                running -= 1
            else:
                yield result
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()


def _device_main(device: str, tasks: list, cfg: FlowSchedule, steps: Steps, results) -> None:
    # Set before this process imports TensorFlow (or JAX): it sees one GPU.
    os.environ["CUDA_VISIBLE_DEVICES"] = device
    tf_startup.import_tensorflow_if_quiet()
    for result in run_batched(tasks, cfg, steps):
        results.put(result)
    results.put(None)
