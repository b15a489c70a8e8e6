"""One object for a trained two-stream model: load it, predict a video, export it.

    from mat_effnet import VideoClassifier
    clf = VideoClassifier.load(spatial="spatial.keras", temporal="temporal.keras")
    result = clf.predict("clip.mp4")
    print(result.top(5))

The door in front of the prediction modules, in the shape of keras-hub's task
models (``from_preset`` then ``predict``): `VideoClassifier.load` takes the
``.keras`` stream files (either stream alone is allowed) or an export folder
written by ``mat-effnet-export``; `VideoClassifier.predict` takes a video
file, a uint8 RGB frames array ``(T, H, W, 3)``, or an iterable of
``(frame, time_s)``, and returns a `Prediction`. Everything it computes is
computed by the modules ``mat-effnet-predict`` runs (`predict_video`,
`timeline`, `saved_model_export`), so its answer is the binary's: the same
``--json`` object (`Prediction.to_dict`).

With ``window_s`` (and ``stride_s``) the video is predicted window by window,
the timeline of ``mat-effnet-predict --window_s``; `Prediction.scores` is then
the mean of the windows' fused scores.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from mat_effnet.common.errors import MatEffNetError
from mat_effnet.serving import predict_video

STREAMS = ("spatial", "temporal")
EXPORT_METADATA = "assets.mat_effnet.json"


@dataclasses.dataclass
class Prediction:
    """What `VideoClassifier.predict` found: fused and per-stream scores, in class order."""

    scores: np.ndarray
    stream_scores: dict
    class_names: tuple
    frames: int
    seconds: dict
    windows: list | None = None
    source: str | None = None
    extra: dict = dataclasses.field(default_factory=dict)  # the rest of the --json object
    records: list | None = dataclasses.field(default=None, repr=False)

    @property
    def spatial(self) -> np.ndarray | None:
        return self.stream_scores.get("spatial")

    @property
    def temporal(self) -> np.ndarray | None:
        return self.stream_scores.get("temporal")

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The k most likely classes of the fused scores: ``(class_name, probability)``."""
        return [(t["class"], t["probability"]) for t in self._top(k)]

    def _top(self, k: int) -> list[dict]:
        order = np.argsort(-self.scores, kind="stable")[:k]
        return [{"class": self.class_names[i], "index": int(i),
                 "probability": float(self.scores[i])} for i in order]

    def to_dict(self, k: int = 5) -> dict[str, Any]:
        """The object ``mat-effnet-predict --json`` prints for this video."""
        if self.windows is not None:
            return {"video": self.source, **self.extra}
        return {"video": self.source, "top": self._top(k), "frames": self.frames,
                "seconds": self.seconds, **self.extra}


class VideoClassifier:
    """A trained MAT-EffNet: one or two stream models, or an export folder."""

    def __init__(self, *, models: dict | None = None, resolved=None, paths: dict | None = None,
                 export_dir: str | None = None, num_segments: int = 25,
                 fusion_weights=(1.0, 1.0)):
        from mat_effnet.evaluation import fusion

        self.num_segments = int(num_segments)
        self.fusion_weights = tuple(fusion.normalize_weights(
            [float(w) for w in fusion_weights], 2).tolist())
        self.models = models or {}
        self.paths = paths or {}
        self.resolved = resolved
        self.export_dir = export_dir
        self._serve = None
        self.metadata: dict = {}
        if export_dir is not None:
            self._open_export(export_dir)

    # -- building ------------------------------------------------------------
    @classmethod
    def load(cls, export_dir: str | os.PathLike | None = None, *, spatial=None, temporal=None,
             num_segments: int = 25, fusion_weights=(1.0, 1.0)) -> "VideoClassifier":
        """From ``.keras`` files (``spatial=``, ``temporal=``, or both) or an export folder."""
        if export_dir is not None:
            if spatial is not None or temporal is not None:
                raise MatEffNetError("give an export folder or .keras files, not both")
            return cls(export_dir=os.fspath(export_dir), num_segments=num_segments,
                       fusion_weights=fusion_weights)
        paths = {s: os.fspath(p) for s, p in zip(STREAMS, (spatial, temporal)) if p is not None}
        if not paths:
            raise MatEffNetError("give spatial=, temporal= (.keras files) or an export folder")
        from mat_effnet.evaluation import protocol

        models = {}
        for stream, path in paths.items():
            model = protocol.load_model(path)
            got = protocol.stream_spec(model).stream
            if got != stream:
                raise MatEffNetError(f"{stream}={path}: a {got} stream model")
            models[stream] = model
        return cls.from_models(models, paths, num_segments=num_segments,
                               fusion_weights=fusion_weights)

    @classmethod
    def from_models(cls, models: dict, paths: dict | None = None, *, default=None,
                    num_segments: int = 25, fusion_weights=(1.0, 1.0)) -> "VideoClassifier":
        """From loaded stream models ``{stream: model}``; ``default``: the `PrepSettings`
        for a model that does not carry its preparation (``mat-effnet-predict``'s flags)."""
        paths = dict(paths or {})
        resolved = predict_video.resolve(
            {s: (paths.get(s, f"<{s} model>"), m) for s, m in models.items()},
            default or predict_video.PrepSettings())
        return cls(models=dict(models), resolved=resolved, paths=paths,
                   num_segments=num_segments, fusion_weights=fusion_weights)

    def _open_export(self, export_dir: str) -> None:
        meta_path = os.path.join(export_dir, EXPORT_METADATA)
        if not os.path.isfile(meta_path):
            raise MatEffNetError(f"{export_dir} is not a mat-effnet-export folder "
                                 f"({EXPORT_METADATA} is missing)")
        with open(meta_path, encoding="utf-8") as f:
            self.metadata = json.load(f)
        import tensorflow as tf

        self._serve = tf.saved_model.load(export_dir).signatures["serving_default"]

    # -- what it is ----------------------------------------------------------
    @property
    def streams(self) -> tuple[str, ...]:
        if self.export_dir is not None:
            return STREAMS
        return tuple(s for s in STREAMS if s in self.models)

    @property
    def class_names(self) -> tuple[str, ...]:
        if self.export_dir is not None:
            return tuple(self.metadata["class_names"])
        names = self.resolved.class_names
        if names:
            return tuple(names)
        count = int(next(iter(self.models.values())).outputs[0].shape[-1])
        return tuple(f"class_{i}" for i in range(count))

    @property
    def preparation(self) -> dict:
        """Each stream's preparation settings, and where they came from."""
        if self.export_dir is not None:
            return self.metadata["preparation"]
        return {s: dict(self.resolved.settings[s].to_dict(), source=self.resolved.sources[s])
                for s in self.streams}

    @property
    def identities(self) -> dict:
        """Each stream model's identity (what it is, as saved in it)."""
        if self.export_dir is not None:
            return self.metadata["models"]
        from mat_effnet.modeling.model_identity import identity

        return {s: identity(m).to_dict() for s, m in self.models.items()}

    def __repr__(self) -> str:
        where = self.export_dir or ", ".join(f"{s}={p}" for s, p in self.paths.items())
        return f"VideoClassifier({where}; {len(self.class_names)} classes)"

    # -- predicting ----------------------------------------------------------
    def predict(self, video, *, window_s: float | None = None, stride_s: float | None = None,
                fps: float | None = None, top_k: int = 5) -> Prediction:
        """Predicts one video: a file path, uint8 RGB frames ``(T, H, W, 3)``, or an
        iterable of ``(frame, time_s)``. ``fps`` dates a frames array (default 25);
        ``window_s``/``stride_s`` ask for the timeline; ``top_k`` sizes ``to_dict``'s lists."""
        if stride_s is not None and window_s is None:
            raise MatEffNetError("stride_s needs window_s")
        source, frames, timed = _source(video, fps)
        if self.export_dir is not None:
            return self._predict_export(source, frames, timed, window_s, stride_s)
        if window_s is not None:
            return self._timeline(source, frames, timed, window_s, stride_s, top_k)
        return self._whole(source, frames, timed)

    def _given(self) -> tuple:
        return self.models.get("spatial"), self.models.get("temporal")

    def _whole(self, source, frames, timed) -> Prediction:
        what = source if frames is None else frames
        result = predict_video.predict_video(what, *self._given(), self.resolved.settings,
                                             self.num_segments, self.fusion_weights,
                                             fps=_fps(timed))
        seconds = {k: round(v, 3) for k, v in result.items() if k.endswith("_s")}
        extra = {"attention": None, "preparation": self.preparation,
                 "class_names_source": self.resolved.class_names_source,
                 "models": self.identities}
        return Prediction(scores=result["fused"],
                          stream_scores={s: result[s] for s in self.streams},
                          class_names=self.class_names, frames=int(result["frames"]),
                          seconds=seconds, source=source, extra=extra, records=result["records"])

    def _timeline(self, source, frames, timed, window_s, stride_s, top_k) -> Prediction:
        from mat_effnet.serving import timeline

        args = dict(num_segments=self.num_segments, fusion_weights=self.fusion_weights,
                    top_k=top_k, class_names=self.class_names)
        if frames is None and timed is None:
            result = timeline.video_timeline(source, *self._given(), self.resolved.settings,
                                             window_s, stride_s, **args)
        else:
            pairs = timed if timed is not None else _dated(frames, predict_video.DEFAULT_FPS)
            result = timeline.frames_timeline(((t, f) for f, t in pairs), *self._given(),
                                              self.resolved.settings, window_s, stride_s, **args)
        result["preparation"] = self.preparation
        return self._from_windows(source, result)

    def _from_windows(self, source, result) -> Prediction:
        windows = result["windows"]
        streams = {}
        for s in self.streams:
            got = [w[s] for w in windows if w.get(s) is not None]
            streams[s] = np.mean(got, axis=0) if got else np.zeros(len(self.class_names))
        weights = result.get("fusion_weights") or dict(zip(self.streams, self.fusion_weights))
        fused = sum(float(weights[s]) * streams[s] for s in self.streams)
        return Prediction(scores=np.asarray(fused), stream_scores=streams,
                          class_names=self.class_names, frames=int(result["frames"]),
                          seconds=result.get("seconds", {}), windows=windows, source=source,
                          extra={k: v for k, v in result.items() if k != "video"})

    def _predict_export(self, source, frames, timed, window_s, stride_s) -> Prediction:
        import time

        t0 = time.perf_counter()
        if frames is None:  # a file: decoded at its own size, the export resizes
            from mat_effnet.ops import video

            timed = [(f, t) for t, f in video.iter_timed_frames(source, 0)]
            frames = np.stack([f for f, _ in timed]) if timed else np.zeros((0, 1, 1, 3), np.uint8)
        if timed is None:
            timed = _dated(frames, predict_video.DEFAULT_FPS)
        stamps = np.asarray([t for _, t in timed], float)
        decode_s = time.perf_counter() - t0
        if len(frames) < 2:
            raise MatEffNetError(f"{source}: a video needs at least 2 frames, got {len(frames)}")
        if window_s is None:
            out = self._run_export(frames)
            return Prediction(scores=out["scores"], stream_scores={
                "spatial": out["spatial_scores"], "temporal": out["temporal_scores"]},
                class_names=self.class_names, frames=len(frames),
                seconds={"decode_s": round(decode_s, 3), "model_s": out["seconds"]},
                source=source, extra={"preparation": self.preparation,
                                      "models": self.identities})
        stride = window_s if stride_s is None else stride_s
        windows, start = [], float(stamps[0])
        while start < stamps[-1] or not windows:
            pick = (stamps >= start) & (stamps < start + window_s)
            if pick.sum() >= 2:
                out = self._run_export(frames[pick])
                order = np.argsort(-out["scores"], kind="stable")[:5]
                windows.append({
                    "start_s": round(start, 6), "end_s": round(start + window_s, 6),
                    "frames": int(pick.sum()),
                    "top": [{"class": self.class_names[i], "index": int(i),
                             "probability": float(out["scores"][i])} for i in order],
                    "spatial": out["spatial_scores"].tolist(),
                    "temporal": out["temporal_scores"].tolist()})
            start += stride
            if start >= stamps[-1]:
                break
        result = {"windows": windows, "frames": len(frames), "window_s": window_s,
                  "stride_s": stride, "fusion_weights": dict(zip(STREAMS, self.fusion_weights)),
                  "preparation": self.preparation}
        return self._from_windows(source, result)

    def _run_export(self, frames: np.ndarray) -> dict:
        import time

        import tensorflow as tf

        t = time.perf_counter()
        out = self._serve(frames=tf.constant(frames))
        got = {k: out[k].numpy() for k in ("scores", "spatial_scores", "temporal_scores")}
        got["seconds"] = round(time.perf_counter() - t, 3)
        return got

    # -- deploying -----------------------------------------------------------
    def export(self, output_dir: str | os.PathLike, **settings) -> dict:
        """Writes the SavedModel that takes raw frames (``mat-effnet-export``); returns its metadata.

        ``settings``: fields of `mat_effnet.serving.saved_model_export.ExportSettings`.
        Needs both streams, loaded from ``.keras`` files.
        """
        from mat_effnet.serving import saved_model_export

        if self.export_dir is not None:
            raise MatEffNetError(f"this classifier is the export {self.export_dir}: copy "
                                 "that folder instead")
        if set(self.paths) != set(STREAMS):
            raise MatEffNetError("an export needs both streams, loaded from .keras files")
        return saved_model_export.export(self.paths["spatial"], self.paths["temporal"],
                                         os.fspath(output_dir),
                                         saved_model_export.ExportSettings(**settings))


def _source(video, fps):
    """(name, frames array or None, [(frame, t)] or None) of what `predict` was given."""
    if isinstance(video, (str, os.PathLike)):
        path = os.fspath(video)
        if not os.path.isfile(path):
            raise MatEffNetError(f"{path}: no such video file")
        return path, None, None
    if isinstance(video, np.ndarray):
        frames = predict_video.check_frames(video)
        return predict_video.FRAMES, frames, (_dated(frames, fps) if fps else None)
    timed = []
    for item in video:
        try:
            frame, t = item
        except (TypeError, ValueError):
            raise MatEffNetError("an iterable of (frame, time_s) pairs was expected") from None
        timed.append((np.asarray(frame), float(t)))
    frames = predict_video.check_frames(np.stack([f for f, _ in timed])) if timed else None
    if frames is None:
        raise MatEffNetError("no frames were given")
    return predict_video.FRAMES, frames, timed


def _dated(frames, fps):
    return [(f, i / float(fps)) for i, f in enumerate(frames)]


def _fps(timed) -> float | None:
    """The frame rate of dated frames: the median interval's inverse."""
    if not timed or len(timed) < 2:
        return None
    gaps = np.diff([t for _, t in timed])
    gap = float(np.median(gaps))
    return 1.0 / gap if gap > 0 else None
