"""Live two-stream prediction: frames in, one prediction per time window out.

`StreamingPredictor.push(frame, timestamp)` takes frames from any source (a
camera through OpenCV, an RTSP reader, a decoded file: `mat_effnet.serving.timeline`)
and returns the windows that frame completed.  Windows are cut by time, not
by frame count: window k covers ``[t0 + k * stride_s, t0 + k * stride_s +
window_s)`` in the caller's timestamps (t0: the first frame's), so a
variable-frame-rate source is windowed by when its frames were shown.

Each window is scored as the single-clip path scores a video of the same
frames (paper Fig. 1, Sect. 3.3; TSN's test sampling, ref. [13]): the
frames are prepared as the training data was (short side resized by
`mat_effnet.ops.video.resize_frame`, flow between consecutive frames by the
model's algorithm, quantized and both JPEG'd as in `mat_effnet.encoding.encode`), and
each stream scores them as one clip
(`mat_effnet.evaluation.clip_prediction.StreamPredictor`, which gives a
record of those frames the scores the single-clip path gives it).  The
window's N positions are spread over its own frames; each stream's softmax
is averaged over the crops, and the streams are fused as
`mat_effnet.serving.predict_video.predict_video` fuses them.

Bounded work and memory:

* each flow pair (frame i -> i + 1) is computed once, when frame i + 1
  arrives, and shared by every window that holds both frames;
* a frame is dropped as soon as no window still to come can hold it, so at
  most one window's frames are held (one stride's, when the stride is the
  longer), whatever the stream's length (`held`); the frame that closes a
  window comes in after that window's first frames are dropped.

A pair straddling a window's end belongs to no window that ends there, as
a record's flow never crosses its video's end.
"""

from __future__ import annotations

import collections
import dataclasses
import time

import numpy as np

from mat_effnet.common.errors import MatEffNetError, bad_argument
from mat_effnet.ops import quantize


@dataclasses.dataclass
class WindowPrediction:
    """One window's prediction; scores are softmax probabilities (numpy, one per class)."""

    start_s: float
    end_s: float
    frames: int
    fused: np.ndarray
    spatial: np.ndarray | None = None
    temporal: np.ndarray | None = None
    seconds: dict = dataclasses.field(default_factory=dict)  # model time per stream

    def top(self, k: int, class_names=None) -> list[dict]:
        """The k best classes of the fused scores: class, index, probability."""
        order = np.argsort(-self.fused, kind="stable")[:k]
        return [{"class": class_names[i] if class_names else f"class_{i}", "index": int(i),
                 "probability": float(self.fused[i])} for i in order]

    def to_dict(self, k: int = 5, class_names=None) -> dict:
        """The JSON row of `mat_effnet.serving.timeline`: times, top-k and both streams' scores."""
        return {"start_s": round(self.start_s, 6), "end_s": round(self.end_s, 6),
                "frames": self.frames, "top": self.top(k, class_names),
                "spatial": None if self.spatial is None else [float(v) for v in self.spatial],
                "temporal": None if self.temporal is None else [float(v) for v in self.temporal]}


class _Lane:
    """One stream's frames as its training data stored them, keyed by frame number."""

    def __init__(self, stream: str, model, settings, num_segments: int, flow_fn=None):
        from mat_effnet.evaluation.clip_prediction import StreamPredictor

        self.stream, self.model, self.settings = stream, model, settings
        self.predictor = StreamPredictor(model, num_segments, stream=stream)
        self.items: dict[int, np.ndarray] = {}  # spatial: rgb[i]; temporal: flow[i] (i -> i+1)
        self.flow_fn = flow_fn
        self.prev_gray = None
        self.pending: list = []  # (frame number, prev gray, gray) waiting for a flow batch

    def _stored(self, rgb=None, flow=None) -> np.ndarray:
        """The pixels a record's reader decodes (JPEG round trip through TF's decoder)."""
        import tensorflow as tf

        from mat_effnet.encoding import encode

        image, fx, fy = encode.stored_jpegs(rgb, flow, self.settings.jpeg_quality)
        if image is not None:
            return tf.io.decode_jpeg(image, channels=3).numpy()
        return np.concatenate([tf.io.decode_jpeg(fx, channels=1).numpy(),
                               tf.io.decode_jpeg(fy, channels=1).numpy()], axis=-1)

    def add(self, number: int, frame: np.ndarray, times: dict) -> None:
        from mat_effnet.ops import optical_flow as flow_lib
        from mat_effnet.ops import video

        t = time.perf_counter()
        frame = video.resize_frame(frame, self.settings.short_side)
        times["resize"] += time.perf_counter() - t
        if self.stream == "spatial":
            t = time.perf_counter()
            self.items[number] = self._stored(rgb=frame)
            times["jpeg"] += time.perf_counter() - t
            return
        gray = flow_lib.to_gray(frame)
        if self.prev_gray is not None:
            if gray.shape != self.prev_gray.shape:
                raise MatEffNetError(f"frame {number}: size {gray.shape} differs from the "
                                     f"previous frame's {self.prev_gray.shape}")
            self.pending.append((number - 1, self.prev_gray, gray))
            if len(self.pending) >= self.flow_fn.batch_size:
                self.flush(times)
        self.prev_gray = gray

    def flush(self, times: dict) -> None:
        """Computes the flow of the pairs waiting for a batch (Keras TV-L1 batches them)."""
        from mat_effnet.encoding import encode

        if not self.pending:
            return
        t = time.perf_counter()
        fields = self.flow_fn(np.stack([p for _, p, _ in self.pending]),
                              np.stack([n for _, _, n in self.pending]))
        times["flow"] += time.perf_counter() - t
        t = time.perf_counter()
        quantized = quantize.quantize_flow(fields, self.settings.flow_bound)
        times["quantize"] += time.perf_counter() - t
        t = time.perf_counter()
        for (number, _, _), q in zip(self.pending, quantized):
            self.items[number] = self._stored(flow=q)
        times["jpeg"] += time.perf_counter() - t
        self.pending = []

    def scores(self, first: int, last: int, times: dict) -> np.ndarray | None:
        """Softmax over the window of frames first..last, crops averaged (None: too short)."""
        from keras import ops

        stop = last + 1 if self.stream == "spatial" else last  # T frames, T - 1 fields
        if stop <= first:
            return None
        t = time.perf_counter()
        frames = np.stack([self.items[i] for i in range(first, stop)])
        probs = ops.convert_to_numpy(self.predictor(frames))
        times["models"] += time.perf_counter() - t
        return probs

    def drop_before(self, number: int) -> None:
        for i in [i for i in self.items if i < number]:
            del self.items[i]


class StreamingPredictor:
    """Pushes frames, returns window predictions; see the module docstring.

    ``spatial``, ``temporal``: the stream models (either may be None).
    ``settings``: one `mat_effnet.serving.predict_video.PrepSettings` for both streams or
    ``{stream: PrepSettings}`` (`mat_effnet.serving.predict_video.resolve` gives them from
    the models).  ``num_segments``: positions per window for a model that
    does not fix them.  ``flow_fn``: a batch flow function
    (`mat_effnet.ops.optical_flow.create_batch_flow`'s contract); default: the one the
    temporal settings name.
    """

    def __init__(self, spatial, temporal, window_s: float, stride_s: float | None = None, *,
                 settings, num_segments: int = 25, fusion_weights=(1.0, 1.0), flow_fn=None):
        from mat_effnet.ops import optical_flow as flow_lib
        from mat_effnet.evaluation import fusion

        stride_s = window_s if stride_s is None else stride_s
        if not window_s > 0:
            raise bad_argument("window_s", window_s, "must be > 0")
        if not 0 < stride_s:
            raise bad_argument("stride_s", stride_s, "must be > 0")
        given = {k: m for k, m in (("spatial", spatial), ("temporal", temporal)) if m is not None}
        if not given:
            raise MatEffNetError("give a spatial model, a temporal model or both")
        if not isinstance(settings, dict):
            settings = {k: settings for k in given}
        if "temporal" in given and flow_fn is None:
            s = settings["temporal"]
            flow_fn = flow_lib.create_batch_flow(s.flow, s.flow_implementation)
        self.lanes = [_Lane(k, m, settings[k], num_segments,
                            flow_fn if k == "temporal" else None) for k, m in given.items()]
        self.weights = fusion.normalize_weights(
            [w for k, w in zip(("spatial", "temporal"), fusion_weights) if k in given],
            len(given))
        self.window_s, self.stride_s = float(window_s), float(stride_s)
        self.times: collections.Counter = collections.Counter(
            {k: 0.0 for k in ("resize", "flow", "quantize", "jpeg", "models")})
        self._stamps: collections.deque = collections.deque()  # (number, timestamp) held
        self._count = 0  # frames pushed
        self._t0 = None
        self._next = 0  # the next window to emit
        self._last_end = None  # where the last emitted window ended
        self._last_gap = 0.0  # the last frame interval (to date the stream's end)
        self.max_held = 0
        self.windows_skipped = 0  # windows with too few frames (a gap in the stream)

    # -- what the caller sees ------------------------------------------------
    @property
    def held(self) -> int:
        """Frames held now (each lane holds at most one item per frame)."""
        return len(self._stamps)

    def push(self, frame: np.ndarray, timestamp: float) -> list[WindowPrediction]:
        """Adds one RGB uint8 (H, W, 3) frame shown at ``timestamp`` seconds.

        Returns the windows this frame closed (its timestamp is at or past
        their end), oldest first; usually none or one.
        """
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise MatEffNetError(f"frame: expected uint8 RGB (H, W, 3), got {frame.dtype} "
                                 f"{frame.shape}")
        timestamp = float(timestamp)
        if self._stamps and not timestamp > self._stamps[-1][1]:
            raise bad_argument("timestamp", timestamp,
                               f"not after the previous frame's ({self._stamps[-1][1]})")
        if self._t0 is None:
            self._t0 = timestamp
        elif self._stamps:
            self._last_gap = timestamp - self._stamps[-1][1]
        out = self._emit_until(timestamp)
        for lane in self.lanes:
            lane.add(self._count, frame, self.times)
        self._stamps.append((self._count, timestamp))
        self._count += 1
        self.max_held = max(self.max_held, self.held)
        return out

    def finish(self) -> list[WindowPrediction]:
        """The end of the stream: the last, shorter window, if frames are left uncovered.

        A window is emitted only for frames that no full window covered, so
        every frame is in some window and no window is a subset of an earlier one.
        """
        if not self._stamps:
            return []
        last = self._stamps[-1][1]
        if self._last_end is not None and self._last_end > last:
            return []
        start = self._start(self._next)
        end = min(self._end(self._next), last + self._last_gap)
        window = self._window(start, end, self._end(self._next))
        self._next += 1
        return [window] if window is not None else []

    # -- windows -------------------------------------------------------------
    def _start(self, k: int) -> float:
        # Rounded to the nanosecond, so that a frame dated exactly on a window
        # edge (1.4 s at 25 fps) is not put on the wrong side by float error.
        return round(self._t0 + k * self.stride_s, 9)

    def _end(self, k: int) -> float:
        return round(self._t0 + k * self.stride_s + self.window_s, 9)

    def _emit_until(self, timestamp: float) -> list[WindowPrediction]:
        out = []
        while self._t0 is not None and self._end(self._next) <= timestamp:
            start, end = self._start(self._next), self._end(self._next)
            window = self._window(start, end, end)
            self._next += 1
            if window is not None:
                out.append(window)
        return out

    def _window(self, start: float, end_s: float, end: float) -> WindowPrediction | None:
        """Scores the frames with start <= timestamp < end, then drops what no window needs."""
        numbers = [n for n, t in self._stamps if start <= t < end]
        result = None
        if numbers:
            for lane in self.lanes:
                lane.flush(self.times)
            first, last = numbers[0], numbers[-1]
            scores, seconds = {}, {}
            for lane in self.lanes:
                t = time.perf_counter()
                scores[lane.stream] = lane.scores(first, last, self.times)
                seconds[lane.stream] = time.perf_counter() - t
            if all(s is not None for s in scores.values()):
                fused = np.sum([w * scores[lane.stream]
                                for w, lane in zip(self.weights, self.lanes)], axis=0)
                result = WindowPrediction(start, end_s, len(numbers), fused,
                                          scores.get("spatial"), scores.get("temporal"),
                                          seconds)
                self._last_end = end
        if result is None:
            self.windows_skipped += 1
        self._drop_before(self._start(self._next + 1))
        return result

    def _drop_before(self, start: float) -> None:
        while self._stamps and self._stamps[0][1] < start:
            self._stamps.popleft()
        keep = self._stamps[0][0] if self._stamps else self._count
        for lane in self.lanes:
            lane.drop_before(keep)
