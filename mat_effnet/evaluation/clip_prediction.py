"""One stream's prediction of one clip: decoded frames -> class scores, crops averaged.

MAT-EffNet's test protocol (paper Sect. 3.3 and 4; TSN's test sampling, ref.
[13]): N positions spread over the clip, 1, 3 or 10 views at each
(`mat_effnet.data.views`), the stream model's softmax on each view, averaged.
`StreamPredictor` is that protocol for one stream model, written in
``keras.ops`` and numpy with no TensorFlow import, and it is the one every
prediction path runs: one video (`mat_effnet.serving.predict_video`), many
videos (`mat_effnet.serving.predict_many`), live windows and the timeline
(`mat_effnet.serving.streaming`), the exported graph
(`mat_effnet.serving.saved_model_export`, on graph tensors) and the GPU check
(`mat_effnet.benchmark.device_measure`, under JAX). What differs between them
is only how the frames were prepared and decoded; a video's chunks and the
streams' fusion are averaged by the caller.
"""

from __future__ import annotations

from mat_effnet.common.errors import MatEffNetError


class StreamPredictor:
    """A stream model at test time: its test clip settings, the views, the model, the average.

    ``num_segments``: positions per clip for a model whose identity does not
    fix them. ``predict``: how the model is called on a batch of views
    (default ``model(x, training=False)``; the GPU check passes the compiled
    ``model.predict_on_batch``). ``stream``: the stream the caller expects,
    checked against the model's.
    """

    def __init__(self, model, num_segments: int = 25, crops: int = 1, *, predict=None,
                 stream: str | None = None):
        from mat_effnet.data.pipeline_config import PipelineConfig
        from mat_effnet.evaluation import protocol

        spec = protocol.stream_spec(model)
        if stream is not None and spec.stream != stream:
            raise MatEffNetError(f"the {stream} model is a {spec.stream} stream model")
        self.model = model
        self.cfg = PipelineConfig(
            stream=spec.stream, image_size=spec.image_size[0], flow_length=spec.flow_length or 1,
            training=False, test_segments=spec.num_segments or num_segments, crops=crops)
        self.predict = predict if predict is not None else (lambda x: model(x, training=False))

    @property
    def stream(self) -> str:
        return self.cfg.stream

    def views(self, frames):
        """The clip's test views (crops, N, S, S, C) uint8 (`mat_effnet.data.views.views_from_frames`).

        ``frames``: RGB uint8 (T, H, W, 3), or the quantized flow (T-1, H, W, 2),
        as an array, a backend tensor or a frame source decoded on demand.
        """
        from mat_effnet.data import views

        return views.views_from_frames(frames, self.cfg)

    def scores_of_views(self, clip_views: list):
        """The scores of several clips' views in one model call: (clips, classes) float32."""
        from keras import ops

        x = clip_views[0] if len(clip_views) == 1 else ops.concatenate(clip_views, axis=0)
        probs = ops.cast(self.predict(x), "float32")  # (clips * crops, classes)
        return ops.mean(ops.reshape(probs, (len(clip_views), self.cfg.crops, -1)), axis=1)

    def __call__(self, frames):
        """One clip's class scores (classes,) float32: softmax averaged over the views."""
        return self.scores_of_views([self.views(frames)])[0]

    def fields_needed(self, num_frames):
        """The flow fields a clip of ``num_frames`` frames reads (temporal stream)."""
        from mat_effnet.data import views

        return views.fields_needed(num_frames, self.cfg)
