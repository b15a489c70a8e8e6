"""Many videos in one process: one row per video, resumable.

`predict_many` prepares each video exactly as `mat_effnet.serving.predict_video`
does for one (the records of `mat_effnet.encoding.encode`, then each record's clip
through `mat_effnet.evaluation.clip_prediction.StreamPredictor`, paper Sect. 3.3) but pays the start-up
once: the models load once, the Keras TV-L1 compiles once per frame size,
decoding runs in ``workers`` processes and the models take batches of
clips from several videos.  Where flow runs follows the preparation's own
rule (`data_prep.builder`): OpenCV's flow inside each decoding worker, the
Keras TV-L1 batched across videos by frame size in this process, through
`mat_effnet.encoding.flow_batches`' `Steps` seam (clips only: it holds whole videos).

The output (`Output`) is JSON lines or CSV, by its extension, one row per
video keyed by its absolute path; a failed video's row has an ``error``.
Rows are appended and flushed one whole line at a time, so a killed run
leaves at most a trailing half line: the rerun cuts it off and redoes that
video, and skips every video that has a row (error rows included). A
fault of the machine (`mat_effnet.common.faults.machine_fault`: no space, an
I/O error, a lost input mount, out of memory) is no video's error: the run
stops with one line and writes no row, and error rows that recorded one are
dropped by the rerun, which predicts those videos.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import json
import logging
import multiprocessing
import os
import time

import numpy as np

from mat_effnet.common.errors import MatEffNetError, bad_argument

log = logging.getLogger("mat_effnet.predict")

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".flv",
                    ".wmv", ".3gp")
CSV_FIELDS = ("path", "error", "top", "spatial", "temporal", "frames", "preparation", "seconds")


# ---------------------------------------------------------------------------
# Which videos

def list_videos(spec: str) -> list[str]:
    """``DIR`` (its video files, recursively), ``LIST.txt`` (one path a line; relative
    paths are relative to the list's folder; blank lines and ``#`` comments skipped)
    or a glob; absolute paths, sorted, each once."""
    if os.path.isdir(spec):
        paths = [os.path.join(root, f) for root, _, files in os.walk(spec) for f in files
                 if f.lower().endswith(VIDEO_EXTENSIONS)]
    elif spec.endswith(".txt") and os.path.isfile(spec):
        base = os.path.dirname(os.path.abspath(spec))
        with open(spec) as f:
            lines = [ln.strip() for ln in f]
        paths = [os.path.join(base, ln) for ln in lines if ln and not ln.startswith("#")]
    else:
        paths = [p for p in glob.glob(spec, recursive=True) if os.path.isfile(p)]
    if not paths:
        raise bad_argument("videos", spec, "no videos found (a folder, a LIST.txt or a glob)")
    return sorted(dict.fromkeys(os.path.abspath(p) for p in paths))


# ---------------------------------------------------------------------------
# The output file

class Output:
    """The rows file: JSON lines, or CSV when the name ends in ``.csv``; appended, resumable."""

    def __init__(self, path: str):
        self.path = path
        self.csv = path.lower().endswith(".csv")
        self.done: set = set()
        self.cut = 0  # bytes of a torn last line removed
        self._recover()
        self._file = open(path, "a", newline="")
        if self.csv and os.path.getsize(path) == 0:
            self._write(",".join(CSV_FIELDS) + "\r\n")

    def _recover(self) -> None:
        """Reads the rows a previous run finished; cuts a trailing half line off."""
        if not os.path.exists(self.path):
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
            return
        with open(self.path, "rb") as f:
            data = f.read()
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            self.cut = len(data) - keep
            with open(self.path, "r+b") as f:
                f.truncate(keep)
            log.warning("%s: cut off a half-written last row (%d bytes); its video is redone",
                        self.path, self.cut)
        text = data[:keep].decode("utf-8", errors="replace")
        kept, dropped = [], 0
        if self.csv:
            for row in csv.DictReader(io.StringIO(text, newline="")):
                if _machine_row(row):
                    dropped += 1
                    continue
                kept.append(_csv_line(row))
                if row.get("path"):
                    self.done.add(row["path"])
            kept.insert(0, ",".join(CSV_FIELDS) + "\r\n")
        else:
            for line in text.splitlines(keepends=True):
                try:
                    row = json.loads(line)
                    path = row["path"]
                except (ValueError, KeyError, TypeError):
                    kept.append(line)
                    continue  # not a row of ours; left as it is
                if _machine_row(row):
                    dropped += 1
                    continue
                kept.append(line)
                self.done.add(path)
        if dropped:
            from mat_effnet.common import atomic

            atomic.write_text(self.path, "".join(kept))
            log.warning("%s: %d error row(s) were the machine's fault (no space, I/O error, "
                        "lost mount, out of memory), not their videos'; those videos are redone",
                        self.path, dropped)

    def _write(self, text: str) -> None:
        # One write of one whole line, flushed: a kill tears at most this line.
        try:
            self._file.write(text)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as e:
            self._give_up(e)

    def _give_up(self, error: OSError) -> None:
        """A write failed (a full disk): one error naming the rows file; the rerun resumes.

        The torn line stays for the rerun to cut off; the file is closed
        without flushing again, so the interpreter's exit does not retry the
        write and print a second error.
        """
        from mat_effnet.common import faults

        broken, self._file = self._file, None
        try:
            os.close(broken.fileno())
        except OSError:
            pass
        try:
            broken.close()
        except (OSError, ValueError):
            pass
        fault = faults.machine_fault(error, out_dir=os.path.dirname(os.path.abspath(self.path)),
                                     path=self.path)
        if fault is None:
            raise error
        raise fault from error

    def append(self, row: dict) -> None:
        if self.csv:
            self._write(_csv_line(row))
        else:
            self._write(json.dumps(row) + "\n")
        self.done.add(row["path"])

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as e:
                self._give_up(e)


def _machine_row(row: dict) -> bool:
    """An error row that a run recorded for the machine's fault; its video is redone."""
    from mat_effnet.common import faults

    return bool(row.get("error")) and faults.is_machine_reason(row["error"])


def _csv_line(row: dict) -> str:
    buf = io.StringIO(newline="")
    csv.DictWriter(buf, CSV_FIELDS, extrasaction="ignore").writerow(
        {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in row.items()})
    return buf.getvalue()


# What the user lowers when memory runs out (mat_effnet.common.faults).
MEMORY_ADVICE = "lower --batch_clips, --flow_batch or the frame size, or run fewer --workers"


# ---------------------------------------------------------------------------
# Preparing one video (in the workers)

@dataclasses.dataclass(frozen=True)
class Task:
    """One video and the settings of each stream (`mat_effnet.serving.predict_video.PrepSettings`)."""

    path: str
    settings: dict  # stream -> PrepSettings
    video_id: str = ""


def _same_frames(a, b) -> bool:
    return (a.short_side, a.jpeg_quality) == (b.short_side, b.jpeg_quality)


def _failure(task: Task, error: BaseException) -> dict:
    """The video's error row; raises `mat_effnet.common.faults.MachineFault` instead
    when the error is the machine's (no row: the rerun predicts the video)."""
    from mat_effnet.common import faults

    faults.raise_if_machine(error, inputs=[task.path], memory_advice=MEMORY_ADVICE)
    reason = getattr(error, "reason", None) or f"{type(error).__name__}: {error}"
    return {"path": task.path, "error": reason}


def _extra_spatial(task: Task, prepared: dict) -> None:
    """The spatial stream's records when its frames differ from the temporal stream's."""
    from mat_effnet.serving import predict_video

    s = task.settings
    if "spatial" in s and "spatial" not in prepared:
        if "temporal" in prepared and _same_frames(s["spatial"], s["temporal"]):
            prepared["spatial"] = prepared["temporal"]
        else:
            prepared["spatial"], _ = predict_video.video_records(task.path, s["spatial"],
                                                             with_flow=False)


def prepare_video(task: Task) -> dict:
    """A whole video prepared in one worker (OpenCV flow): its records, or its error."""
    from mat_effnet.serving import predict_video

    t = time.perf_counter()
    try:
        prepared: dict = {}
        if "temporal" in task.settings:
            prepared["temporal"], stats = predict_video.video_records(task.path,
                                                                  task.settings["temporal"])
        else:
            prepared["spatial"], stats = predict_video.video_records(
                task.path, task.settings["spatial"], with_flow=False)
        _extra_spatial(task, prepared)
    except Exception as e:  # noqa: BLE001  # a bad video is a row, never fatal
        return _failure(task, e)
    return {"path": task.path, "records": prepared, "frames": stats.get("frames"),
            "prepare_s": time.perf_counter() - t}


def decode_step(task: Task):
    """`flow_batches.Steps.decode`: decode for flow computed in the flow process."""
    from mat_effnet.encoding import encode

    t = time.perf_counter()
    try:
        decoded = encode.decode_video(task.path, task.settings["temporal"])
    except Exception as e:  # noqa: BLE001
        return _failure(task, e)
    return task, decoded, time.perf_counter() - t


def encode_step(task: Task, decoded, quantized, seconds: float) -> dict:
    """`flow_batches.Steps.encode`: the flow back -> the video's records."""
    from mat_effnet.encoding import encode
    from mat_effnet import records

    t = time.perf_counter()
    try:
        stats: dict = {}
        prepared = {"temporal": [records.serialize(r) for r in encode.assemble_records(
            decoded, quantized, task.settings["temporal"], video_id=task.path, stats=stats)]}
        _extra_spatial(task, prepared)
    except Exception as e:  # noqa: BLE001
        return _failure(task, e)
    return {"path": task.path, "records": prepared, "frames": stats.get("frames"),
            "prepare_s": seconds + time.perf_counter() - t}


def _prepared(tasks: list, workers: int):
    """Each task's prepared records (or error), in the order they finish."""
    from mat_effnet.encoding import flow_batches
    from mat_effnet.common import tf_startup

    temporal = next((t.settings.get("temporal") for t in tasks), None)
    if temporal is not None and temporal.flow_implementation == "keras":
        cfg = flow_batches.FlowSchedule(temporal.flow, temporal.flow_implementation,
                                        temporal.flow_bound, workers=workers)
        yield from flow_batches.run(tasks, cfg, flow_batches.Steps(decode_step, encode_step,
                                                                   _failure))
        return
    if workers == 1:
        for t in tasks:
            yield prepare_video(t)
        return
    ctx = multiprocessing.get_context("spawn")  # this process holds TF's threads
    with ctx.Pool(workers, initializer=tf_startup.import_tensorflow_if_quiet) as pool:
        yield from pool.imap_unordered(prepare_video, tasks, chunksize=1)


# ---------------------------------------------------------------------------
# Models on batches of clips (this process)

class _Scorer:
    """Clips of finished videos, scored by each stream model a batch at a time."""

    def __init__(self, models: dict, num_segments: int, batch_clips: int):
        from mat_effnet.evaluation.clip_prediction import StreamPredictor

        self.predictors = {stream: StreamPredictor(model, num_segments, stream=stream)
                           for stream, model in models.items()}
        self.batch = batch_clips
        self.waiting: list = []  # (result, {stream: [clip views per record]})

    def add(self, result: dict) -> None:
        from mat_effnet.serving.predict_video import RecordFrames

        t = time.perf_counter()
        clips = {}
        for stream, predictor in self.predictors.items():
            clips[stream] = [predictor.views(RecordFrames(s, stream))
                             for s in result["records"][stream]]
        result["clips_s"] = time.perf_counter() - t
        del result["records"]
        self.waiting.append((result, clips))

    def ready(self) -> bool:
        return sum(len(next(iter(c.values()))) for _, c in self.waiting) >= self.batch

    def score(self) -> list:
        """Scores every waiting video: [(result, {stream: softmax})]."""
        from keras import ops

        out = [(r, {}) for r, _ in self.waiting]
        for stream, predictor in self.predictors.items():
            t = time.perf_counter()
            per_video = [c[stream] for _, c in self.waiting]
            flat = [clip for clips in per_video for clip in clips]
            probs = ops.convert_to_numpy(predictor.scores_of_views(flat))  # one row per clip
            seconds = (time.perf_counter() - t) / max(len(flat), 1)
            start = 0
            for (r, scores), clips in zip(out, per_video):
                scores[stream] = probs[start:start + len(clips)].mean(axis=0)
                r[f"{stream}_model_s"] = seconds * len(clips)
                start += len(clips)
        self.waiting = []
        return out


def _row(result: dict, scores: dict, weights, class_names, top_k: int, preparation) -> dict:
    fused = np.sum([w * scores[s] for w, s in zip(weights, scores)], axis=0)
    names = class_names or [f"class_{i}" for i in range(len(fused))]
    order = np.argsort(-fused, kind="stable")[:top_k]
    return {"path": result["path"],
            "top": [{"class": names[i], "index": int(i), "probability": float(fused[i])}
                    for i in order],
            "spatial": [float(v) for v in scores["spatial"]] if "spatial" in scores else None,
            "temporal": [float(v) for v in scores["temporal"]] if "temporal" in scores else None,
            "frames": result.get("frames"), "preparation": preparation,
            "seconds": {k: round(v, 4) for k, v in result.items() if k.endswith("_s")}}


def predict_many(paths: list, models: dict, resolved, output: str, *, workers: int = 1,
                 num_segments: int = 25, top_k: int = 5, fusion_weights=(1.0, 1.0),
                 batch_clips: int = 8, progress_seconds: float = 10.0) -> dict:
    """Predicts every video of ``paths`` not yet in ``output``; returns the summary.

    ``models``: ``{stream: model}``; ``resolved``: `mat_effnet.serving.predict_video.resolve`'s
    answer for them. Summary: videos, skipped (already in the output), done,
    failed, seconds, videos_per_s.
    """
    from mat_effnet.common.progress import Progress
    from mat_effnet.evaluation import fusion

    if workers < 1:
        raise bad_argument("workers", workers, "must be >= 1")
    if not models:
        raise MatEffNetError("give a spatial model, a temporal model or both")
    out = Output(output)
    todo = [p for p in paths if p not in out.done]
    weights = fusion.normalize_weights(
        [w for k, w in zip(("spatial", "temporal"), fusion_weights) if k in models], len(models))
    settings = {s: resolved.settings[s] for s in models}
    preparation = {s: dict(settings[s].to_dict(), source=resolved.sources[s]) for s in models}
    log.info("%d videos: %d already in %s, %d to predict with %d worker(s)",
             len(paths), len(paths) - len(todo), output, len(todo), workers)
    progress = Progress(len(todo), progress_seconds, log)
    scorer = _Scorer(models, num_segments, batch_clips)
    start = time.perf_counter()
    failed = 0

    def flush():
        for result, scores in scorer.score():
            out.append(_row(result, scores, weights, resolved.class_names, top_k, preparation))
            progress.update(False)

    try:
        for result in _prepared([Task(p, settings) for p in todo], workers):
            if "error" in result:
                failed += 1
                out.append(result)
                progress.update(True)
                continue
            try:
                scorer.add(result)
            except Exception as e:  # noqa: BLE001  # a record the models cannot take
                failed += 1
                out.append(_failure(Task(result["path"], settings), e))
                progress.update(True)
                continue
            if scorer.ready():
                flush()
        if scorer.waiting:
            flush()
    finally:
        out.close()
    seconds = time.perf_counter() - start
    return {"videos": len(paths), "skipped": len(paths) - len(todo), "done": len(todo) - failed,
            "failed": failed, "seconds": round(seconds, 3),
            "videos_per_s": round(len(todo) / seconds, 3) if todo and seconds > 0 else None,
            "output": output}
