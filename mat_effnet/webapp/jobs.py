"""Predictions as jobs: upload checks, a bounded queue, one worker thread, stage progress.

The model is called from one thread only, the worker's, so two predictions
never run at once on one device (a second concurrent call would only halve
each one's speed and double the memory). Requests wait in a queue of at most
``max_queue`` jobs; past it `QueueFull` says how long to wait, the
``Retry-After`` of the 503.

Progress: `VideoClassifier.predict` is one call (decode, flow and both
streams inside), so the stage a running job is in is read off the worker
thread's stack (`sys._current_frames`, the sampling that profilers such as
py-spy do from outside), every `SAMPLE_S`: a frame of the decoder is
"decoding", of the flow functions "flow", of a stream model's scoring
"streams". The same samples split the measured preparation time (decode and
flow together, ``prepare_s`` of ``mat-effnet-predict``) between decoding
and flow; the streams' times are measured by the prediction itself.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
import traceback
import uuid
from concurrent.futures import Future

import numpy as np

from mat_effnet.common.errors import MatEffNetError

log = logging.getLogger("mat_effnet.webapp")

SAMPLE_S = 0.02
#: How many classes each stream shows side by side.
STREAM_TOP = 3

# Where a stack frame places the worker: by module, then by function name.
_STAGE_OF_MODULE = {
    "mat_effnet.ops.optical_flow": "flow",
    "mat_effnet.ops.tvl1": "flow",
    "mat_effnet.ops.quantize": "flow",
    "mat_effnet.ops.video": "decoding",
}
_STAGE_OF_FUNCTION = {
    "run_flow": "flow", "_flow_jpegs": "flow",
    "stream_scores": "streams", "scores": "streams",
    "attention_figure": "attention",
    "encode_frames": "decoding", "encode_video": "decoding", "video_records": "decoding",
}


def stage_of(frame) -> str | None:
    """The stage of the innermost recognised frame of a stack, or None."""
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith("mat_effnet."):
            stage = _STAGE_OF_MODULE.get(module) or _STAGE_OF_FUNCTION.get(frame.f_code.co_name)
            if stage:
                return stage
        frame = frame.f_back
    return None


class UploadError(MatEffNetError):
    """An upload that cannot be predicted: the HTTP status and one line saying why."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


class QueueFull(MatEffNetError):
    """The queue is at its bound; ``retry_after_s``: a guess of when a place frees."""

    def __init__(self, bound: int, retry_after_s: int):
        super().__init__(f"the server is busy: {bound} predictions are already waiting; "
                         f"try again in about {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclasses.dataclass
class Upload:
    """A checked upload in the server's temporary folder."""

    path: str
    name: str  # the file name the client gave
    bytes: int
    duration_s: float | None  # the container's frame count over its frame rate, if it says
    seconds: dict = dataclasses.field(default_factory=dict)


def check_video(path: str, name: str) -> float | None:
    """Refuses what is not a video of at least 2 frames, naming the upload; its duration.

    Decodes two frames only: enough to know there is a flow pair, cheap for
    any length; the rest is decoded by the prediction.
    """
    from mat_effnet.ops import video

    if os.path.getsize(path) == 0:
        raise UploadError(f"{name}: empty file (0 bytes)")
    try:
        info = video.probe(path)
        frames = 0
        for _ in video.iter_timed_frames(path, 0):
            frames += 1
            if frames == 2:
                break
    except video.VideoError as e:
        raise UploadError(f"{name}: not a usable video ({e.reason})") from None
    if frames == 0:
        raise UploadError(f"{name}: not a usable video ({video.REASON_NO_FRAMES})")
    if frames == 1:
        raise UploadError(f"{name}: a video with 1 frame; a prediction needs at least 2 "
                          "(the temporal stream's optical flow is between frames)")
    return info.frame_count / info.fps if info.frame_count else None


@dataclasses.dataclass
class Job:
    """One prediction asked for: its upload, options, progress and answer."""

    upload: Upload
    window_s: float | None = None
    stride_s: float | None = None
    attention: bool = False
    top_k: int = 5
    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:16])
    state: str = "queued"  # queued -> running -> done | failed
    phase: str = "queued"  # predict, attention, timeline
    stage: str = "queued"
    created: float = dataclasses.field(default_factory=time.perf_counter)
    started: float | None = None
    sampled: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(float))
    result: dict | None = None
    error: str | None = None
    status: int = 200
    attention_png: bytes | None = None
    future: Future = dataclasses.field(default_factory=Future)

    def progress(self, ahead: int | None = None) -> dict:
        """What the page shows while it waits, and the answer once there is one."""
        out = {"job": self.id, "state": self.state, "stage": self.stage, "phase": self.phase,
               "video": self.upload.name}
        if ahead is not None:
            out["ahead"] = ahead
        if self.state == "done":
            out["result"] = self.result
        if self.state == "failed":
            out["error"] = self.error
            out["status"] = self.status
        return out


class Worker:
    """The one thread that calls the model, fed by a bounded queue."""

    def __init__(self, classifier, *, max_queue: int = 4, keep_jobs: int = 64):
        self.classifier = classifier
        self.max_queue = int(max_queue)
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._waiting: list[Job] = []
        self._jobs: collections.OrderedDict = collections.OrderedDict()
        self._keep = int(keep_jobs)
        self.current: Job | None = None
        self.durations: collections.deque = collections.deque(maxlen=20)
        self.served = {"done": 0, "failed": 0, "refused": 0}
        self._thread = threading.Thread(target=self._run, name="mat-effnet-model", daemon=True)
        self._sampler = threading.Thread(target=self._sample, name="mat-effnet-progress",
                                         daemon=True)
        self._stopped = threading.Event()
        self.tmp_dir = tempfile.mkdtemp(prefix="mat-effnet-serve-")

    # -- the queue -----------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        self._sampler.start()

    def stop(self) -> None:
        self._stopped.set()
        self._queue.put(None)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def submit(self, job: Job) -> Job:
        """Queues ``job``; `QueueFull` past the bound (the upload is then removed)."""
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                self.served["refused"] += 1
                _remove(job.upload.path)
                raise QueueFull(self.max_queue, self.retry_after_s())
            self._waiting.append(job)
            self._remember(job)
        self._queue.put(job)
        return job

    def retry_after_s(self) -> int:
        """Seconds until the running job and those waiting are done, at the recent pace."""
        each = float(np.median(self.durations)) if self.durations else 5.0
        return max(1, math.ceil(each * (len(self._waiting) + 1)))

    def _remember(self, job: Job) -> None:
        self._jobs[job.id] = job
        while len(self._jobs) > self._keep:
            old = next(iter(self._jobs.values()))
            if old.state in ("queued", "running"):
                break
            self._jobs.popitem(last=False)

    def get(self, job_id: str) -> tuple[Job | None, int | None]:
        """The job and how many jobs are ahead of it (None once it runs)."""
        with self._lock:
            job = self._jobs.get(job_id)
            ahead = None
            if job is not None and job.state == "queued" and job in self._waiting:
                ahead = self._waiting.index(job) + (self.current is not None)
            return job, ahead

    def status(self) -> dict:
        with self._lock:
            return {"waiting": len(self._waiting), "running": self.current is not None,
                    "max_queue": self.max_queue, **self.served}

    # -- the model thread ----------------------------------------------------
    def _run(self) -> None:
        while not self._stopped.is_set():
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                self._waiting.remove(job)
                self.current = job
            job.started = time.perf_counter()
            job.state = job.phase = job.stage = "running"
            try:
                job.result = self._predict(job)
                job.state = "done"
                self.served["done"] += 1
            except MatEffNetError as e:  # the video's fault: a VideoError and the like
                self._fail(job, f"{job.upload.name}: {_reason(e, job.upload.path)}", 422)
            except Exception as e:  # noqa: BLE001  # a bug: logged, and the server goes on
                log.error("job %s (%s) failed:\n%s", job.id, job.upload.name,
                          traceback.format_exc())
                self._fail(job, f"internal error: {type(e).__name__}: {e}", 500)
            finally:
                _remove(job.upload.path)
                self.durations.append(time.perf_counter() - job.started)
                with self._lock:
                    self.current = None
                job.stage = job.state
                job.future.set_result(job)

    def _fail(self, job: Job, message: str, status: int) -> None:
        job.state, job.error, job.status = "failed", message, status
        self.served["failed"] += 1

    def _sample(self) -> None:
        """Reads the running job's stage off the model thread's stack, every `SAMPLE_S`."""
        last = time.perf_counter()
        while not self._stopped.wait(SAMPLE_S):
            now = time.perf_counter()
            job = self.current
            stack = sys._current_frames().get(self._thread.ident)
            if job is not None and stack is not None:
                stage = stage_of(stack) or job.stage
                job.stage = stage
                job.sampled[(job.phase, stage)] += now - last
            del stack
            last = now

    def _predict(self, job: Job) -> dict:
        clf, up = self.classifier, job.upload
        waited = job.started - job.created
        job.phase = "predict"
        prediction = clf.predict(up.path, top_k=job.top_k)
        result = prediction.to_dict(job.top_k)
        result["video"] = up.name
        result["streams"] = {s: [{"class": c, "probability": p}
                                 for c, p in _top(scores, clf.class_names, STREAM_TOP)]
                             for s, scores in prediction.stream_scores.items()}
        seconds = {**up.seconds, "queue_s": waited}
        if job.attention and clf.models:  # an export folder holds no attention model
            job.phase = job.stage = "attention"
            t = time.perf_counter()
            result["attention"], job.attention_png = self._attention(
                prediction, os.path.join(self.tmp_dir, f"{job.id}.png"))
            result["attention_png"] = f"/v1/jobs/{job.id}/attention.png"
            seconds["attention_s"] = time.perf_counter() - t
        if job.window_s:
            job.phase = job.stage = "timeline"
            t = time.perf_counter()
            timeline = clf.predict(up.path, window_s=job.window_s, stride_s=job.stride_s,
                                   top_k=job.top_k).to_dict(job.top_k)
            for key in ("windows", "window_s", "stride_s", "duration_s", "fusion_weights"):
                result[key] = timeline.get(key)
            result["timeline_seconds"] = timeline.get("seconds")
            seconds["timeline_s"] = time.perf_counter() - t
        seconds.update(self._split(job, result.get("seconds", {})))
        seconds["total_s"] = (time.perf_counter() - job.created + up.seconds.get("upload_s", 0)
                              + up.seconds.get("check_s", 0))
        result["server"] = {"job": job.id, "seconds": {k: round(v, 3) for k, v in seconds.items()}}
        return result

    @staticmethod
    def _split(job: Job, measured: dict) -> dict:
        """The measured preparation time split between decoding and flow by the samples
        (none when no sample fell in either: a preparation shorter than a sample)."""
        prepare = measured.get("prepare_s")
        decoding = job.sampled.get(("predict", "decoding"), 0.0)
        flow = job.sampled.get(("predict", "flow"), 0.0)
        if prepare is None or decoding + flow == 0:
            return {}
        share = decoding / (decoding + flow)
        return {"decoding_s": prepare * share, "flow_s": prepare * (1 - share)}

    # -- start-up ------------------------------------------------------------
    def warm_up(self, sizes, window_s: float | None = None) -> float:
        """Predicts a generated clip at each (width, height), before any request: compiles
        what is compiled per size (TV-L1's XLA program, the streams' first calls), draws
        an attention picture, and walks the timeline path. Seconds taken."""
        t = time.perf_counter()
        clf = self.classifier
        for width, height in sizes:
            frames = moving_texture(width, height, 12)
            prediction = clf.predict(frames, fps=25.0)
            if clf.models:
                self._attention(prediction, os.path.join(self.tmp_dir, "warm-up.png"))
            if window_s:
                clf.predict(frames, fps=25.0, window_s=0.2)
        return time.perf_counter() - t

    def _attention(self, prediction, png: str) -> tuple[dict, bytes]:
        """The spatial stream's attention picture (Fig. 9), as ``mat-effnet-predict
        --attention_png`` draws it: what it found, and the PNG."""
        from mat_effnet.serving import predict_video

        clf = self.classifier
        try:
            found = predict_video.attention_figure(
                next(iter(clf.models.values())), prediction.records[0], png,
                min(clf.num_segments, 8), list(clf.class_names))
            with open(png, "rb") as f:
                return found, f.read()
        finally:
            _remove(png)


def moving_texture(width: int, height: int, frames: int, seed: int = 0) -> np.ndarray:
    """A smooth random texture sliding 2 px a frame: uint8 RGB ``(frames, height, width, 3)``."""
    import cv2

    rng = np.random.default_rng(seed)
    big = rng.integers(0, 256, (height + 2 * frames, width + 2 * frames, 3), dtype=np.uint8)
    big = cv2.GaussianBlur(big, (0, 0), 2.0)
    return np.stack([big[i:i + height, 2 * i:2 * i + width] for i in range(frames)])


def _top(scores, class_names, k: int) -> list[tuple[str, float]]:
    order = np.argsort(-np.asarray(scores), kind="stable")[:k]
    return [(class_names[i], float(scores[i])) for i in order]


def _reason(error: Exception, path: str) -> str:
    """The error's line without the temporary path the upload was saved under."""
    reason = getattr(error, "reason", None)
    if reason:
        return f"not a usable video ({reason})"
    return str(error).replace(f"{path}: ", "").replace(path, "the upload")


def _remove(path: str) -> None:
    if path:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
