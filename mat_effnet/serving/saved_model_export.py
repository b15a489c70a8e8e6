"""Raw frames in, fused answer out: one SavedModel with TV-L1 inside the graph.

MAT-EffNet's test protocol (paper Sect. 3.3 and 4.2: TV-L1 flow as in TSN,
N positions, the crops, late average fusion of the two streams' softmax) is
traced into one TensorFlow graph, so a client needs TensorFlow and nothing
else. ``serving_default`` takes ``frames``, uint8 (T, H, W, 3) RGB with any
T >= 2 and any H, W, and does what ``mat-effnet-predict`` does to a video
file, with each model's own preparation settings (its identity):

1. resize to the short side, with `mat_effnet.ops.video.resized_size`'s rounding:
   TF's area resize when shrinking (OpenCV's ``INTER_AREA`` is the same
   average over each pixel's footprint; measured within 1 grey level),
   bilinear with half-pixel centres when enlarging (``INTER_LINEAR``);
2. chunks of ``chunk_frames`` frames, no flow across a chunk edge and a
   1-frame tail dropped, scores averaged over chunks (`mat_effnet.encoding.encode`);
3. grey levels by OpenCV 5's fixed-point BT.601 weights,
   ``(9798 R + 19235 G + 3735 B + 2^14) >> 15`` (bit-exact with
   ``cv2.cvtColor(RGB2GRAY)``);
4. TV-L1 by `mat_effnet.ops.tvl1` itself (`tvl1.flow_graph`), for the pairs the
   test positions use only (a flow field depends on its two frames alone, so
   the others are never needed);
5. quantization by prep's own `mat_effnet.ops.quantize.quantize_flow` (keras.ops
   on the graph's tensors);
6. optionally the JPEG round trip that prep applies (``tf.io.encode_jpeg``
   at the model's quality; on by default, since the models were trained on
   JPEG frames);
7. each stream's clip prediction,
   `mat_effnet.evaluation.clip_prediction.StreamPredictor` (the test views,
   the model, the crops averaged), chunks averaged, and the fusion.

Frame sizes and XLA.  TV-L1's pyramid is built from static sizes and a loaded
SavedModel cannot retrace, so the flow is traced at export time for a set of
*working sizes*, one per aspect ratio (``frame_sizes``) at the temporal
model's short side, and ``serving_default`` dispatches a video to the
working size of the nearest aspect. A video whose resized frame is exactly a
working size (every 4:3 or 16:9 video, for the defaults) gets exactly
prep's flow. Any other is resized to the working size for the flow only;
that stretches x and y by different factors, so the flow is resized back to
the frame and each component divided by its axis's stretch. The RGB stream
always sees the frame at its own aspect.

Models trained on DIS flow are refused: OpenCV's DIS is not a TensorFlow op,
and TV-L1 in its place would be another input than the model learnt.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

from mat_effnet.ops import quantize
from mat_effnet.serving import prep_graph
from mat_effnet.common.flagdefs import setting
from mat_effnet.common.errors import MatEffNetError, bad_argument

# Aspect ratios (width:height) traced by default: 4:3 (UCF101, HMDB51), 16:9
# (most of Kinetics and phones in landscape) and their portrait versions.
DEFAULT_FRAME_SIZES = ("4:3", "16:9", "3:4", "9:16")


class ExportError(MatEffNetError):
    """A model or a setting that cannot be exported."""


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    """What an export fixes besides the models; its flags derive from these fields."""

    num_segments: int = setting(25, "Test positions per video, for a model whose identity "
                                "does not fix them (TSN tests with 25).")
    crops: int = setting(1, "Views per position: 1 (centre), 3 or 10 (TSN's corners, "
                         "centre and mirrors).")
    chunk_frames: int = setting(1000, "Videos longer than this are cut into chunks (no flow "
                                "across a cut) and their scores averaged, as prep does.")
    frame_sizes: tuple = setting(DEFAULT_FRAME_SIZES, "Aspect ratios W:H for which the flow "
                                 "is traced; a video goes to the nearest.")
    top_k: int = setting(5, "Classes in top_classes (clamped to the number of classes).")
    fusion_weights: tuple = setting((1.0, 1.0), "Spatial,temporal weights of the late "
                                    "fusion (normalised to sum 1).")
    jpeg: bool = setting(True, "JPEG each frame and flow field in the graph as prep stores "
                         "them (the models were trained on JPEG frames).")
    onnx: bool = setting(False, "Also write each stream as ONNX (spatial.onnx, temporal.onnx: "
                         "the clip in, the softmax out) and TV-L1 at the first working size "
                         "(flow.onnx); needs pip install -e .[onnx].")

    def __post_init__(self):
        from mat_effnet.evaluation.fusion import normalize_weights

        if self.num_segments < 1:
            raise bad_argument("num_segments", self.num_segments, "must be >= 1")
        if self.crops not in (1, 3, 10):
            raise bad_argument("crops", self.crops, "expected 1, 3 or 10")
        if self.chunk_frames < 2:
            raise bad_argument("chunk_frames", self.chunk_frames, "must be >= 2")
        if self.top_k < 1:
            raise bad_argument("top_k", self.top_k, "must be >= 1")
        object.__setattr__(self, "frame_sizes", tuple(self.frame_sizes))
        if not self.frame_sizes:
            raise bad_argument("frame_sizes", "", "give at least one aspect ratio W:H")
        for ratio in self.frame_sizes:
            parse_aspect(ratio)
        try:
            weights = normalize_weights([float(w) for w in self.fusion_weights], 2)
        except (ValueError, TypeError, MatEffNetError):
            raise bad_argument("fusion_weights", ",".join(map(str, self.fusion_weights)),
                               "expected two non-negative numbers, not both 0") from None
        object.__setattr__(self, "fusion_weights", tuple(float(w) for w in weights))


def parse_aspect(text: str) -> tuple[int, int]:
    """``"16:9"`` -> (16, 9)."""
    try:
        w, h = (int(x) for x in str(text).split(":"))
    except ValueError:
        raise bad_argument("frame_sizes", text, "expected W:H, e.g. 16:9") from None
    if w < 1 or h < 1:
        raise bad_argument("frame_sizes", text, "both sides must be >= 1")
    return w, h


def working_sizes(short_side: int, frame_sizes) -> list[tuple[int, int]]:
    """(height, width) of each aspect at ``short_side``, rounded as prep rounds.

    Distinct sizes only: 4:3 and 8:6 give one.
    """
    from mat_effnet.ops.video import resized_size

    out = []
    for ratio in frame_sizes:
        w, h = parse_aspect(ratio)
        # resized_size scales a (w, h) frame; scale the ratio up first so the
        # rounding is that of a real frame of this aspect.
        rw, rh = resized_size(w * 1000, h * 1000, short_side)
        if (rh, rw) not in out:
            out.append((rh, rw))
    return out


# ---------------------------------------------------------------------------
# The serving graph
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class _Stream:
    """One stream model and how its input is made."""

    predictor: object      # mat_effnet.evaluation.clip_prediction.StreamPredictor
    settings: object       # mat_effnet.encoding.encode.EncodeSettings (its preparation)

    @property
    def cfg(self):
        return self.predictor.cfg


class _Serving:
    """The functions traced into the export (called inside tf.function only)."""

    def __init__(self, spatial: _Stream, temporal: _Stream, settings: ExportSettings,
                 class_names: list[str]):
        self.spatial, self.temporal, self.settings = spatial, temporal, settings
        self.class_names = list(class_names)
        self.flow = prep_graph.FlowAtSizes(working_sizes(temporal.settings.short_side,
                                               settings.frame_sizes))

    def spatial_scores(self, chunk):
        import tensorflow as tf

        s = self.spatial.settings
        frames = prep_graph.resize_short_side(chunk, s.short_side)
        if self.settings.jpeg:
            frames = prep_graph.jpeg_round_trip(frames, s.jpeg_quality)
        return self.spatial.predictor(tf.ensure_shape(frames, [None, None, None, 3]))

    def temporal_scores(self, chunk):
        import tensorflow as tf

        s, predictor = self.temporal.settings, self.temporal.predictor
        grey = prep_graph.to_grey(prep_graph.resize_short_side(chunk, s.short_side))
        t, h, w = tf.shape(grey)[0], tf.shape(grey)[1], tf.shape(grey)[2]
        fields = t - 1
        # Only the flow fields the test positions read (the others never reach
        # the model): positions p, fields p .. p+L-1 clamped to the last.
        unique = predictor.fields_needed(t)
        flow = self.flow(tf.gather(grey, unique), tf.gather(grey, unique + 1))
        q = quantize.quantize_flow(flow, float(s.flow_bound))
        if self.settings.jpeg:
            planes = tf.reshape(tf.transpose(q, [0, 3, 1, 2]), [-1, h, w, 1])
            planes = prep_graph.jpeg_round_trip(planes, s.jpeg_quality)
            q = tf.transpose(tf.reshape(planes, [-1, 2, h, w]), [0, 2, 3, 1])
        full = tf.fill(tf.stack([fields, h, w, 2]), tf.constant(128, tf.uint8))
        full = tf.tensor_scatter_nd_update(full, unique[:, None], q)
        return predictor(tf.ensure_shape(full, [None, None, None, 2]))

    def serve(self, frames):
        """frames (T, H, W, 3) uint8 -> the fused answer (the signature's outputs)."""
        import tensorflow as tf

        t = tf.shape(frames)[0]
        check = tf.debugging.assert_greater_equal(
            t, 2, message="frames: need at least 2 frames (T >= 2) for the flow")
        with tf.control_dependencies([check]):
            chunk = self.settings_chunk
            starts = tf.range(0, t, chunk)
            ends = tf.minimum(starts + chunk, t)
            # A 1-frame tail has no flow and is dropped, as prep drops it.
            keep = ends - starts >= 2
            starts, ends = tf.boolean_mask(starts, keep), tf.boolean_mask(ends, keep)
        n = tf.size(starts)
        c = len(self.class_names)

        def body(i, s_sum, t_sum):
            part = frames[starts[i]:ends[i]]
            return (i + 1, s_sum + self.spatial_scores(part), t_sum + self.temporal_scores(part))

        zero = tf.zeros([c], tf.float32)
        _, s_sum, t_sum = tf.while_loop(lambda i, *_: i < n, body, (0, zero, zero))
        spatial = s_sum / tf.cast(n, tf.float32)
        temporal = t_sum / tf.cast(n, tf.float32)
        ws, wt = self.settings.fusion_weights
        fused = ws * spatial + wt * temporal
        k = min(self.settings.top_k, c)
        top = tf.math.top_k(fused, k=k)
        return {"scores": fused, "spatial_scores": spatial, "temporal_scores": temporal,
                "top_classes": tf.gather(tf.constant(self.class_names), top.indices),
                "top_scores": top.values}

    @property
    def settings_chunk(self) -> int:
        # The temporal model's chunking decides where flow stops; both
        # streams' records are cut at the same frames by prep.
        return int(self.temporal.settings.chunk_frames or self.settings.chunk_frames)


# ---------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------

def _load_stream(path: str, stream: str, settings: ExportSettings):
    from mat_effnet.evaluation import protocol

    model = protocol.load_model(path)
    spec = protocol.stream_spec(model)
    if spec.stream != stream:
        raise ExportError(f"--{stream}_model={path}: a {spec.stream} stream model")
    return model, spec


def build(spatial_path: str, temporal_path: str, settings: ExportSettings):
    """Loads both models and returns (serving, metadata dict), nothing traced yet."""
    from mat_effnet.encoding.encode import EncodeSettings
    from mat_effnet.evaluation import protocol
    from mat_effnet.serving import predict_video
    from mat_effnet.evaluation.clip_prediction import StreamPredictor
    from mat_effnet.modeling.model_identity import identity

    loaded = {s: (p, *_load_stream(p, s, settings))
              for s, p in (("spatial", spatial_path), ("temporal", temporal_path))}
    default = EncodeSettings(chunk_frames=settings.chunk_frames)
    resolved = predict_video.resolve({s: (p, m) for s, (p, m, _) in loaded.items()}, default)
    flow = resolved.settings["temporal"].flow
    if flow != "tvl1":
        raise ExportError(
            f"--temporal_model={temporal_path}: trained on {flow} flow, which cannot run inside "
            "a TensorFlow graph (OpenCV DIS is not a TF op); export a model trained on TV-L1 "
            "flow, or use mat-effnet-predict")
    streams = {s: _Stream(StreamPredictor(model, settings.num_segments, settings.crops, stream=s),
                          resolved.settings[s])
               for s, (path, model, spec) in loaded.items()}
    num_classes = {s: spec.num_classes for s, (_, _, spec) in loaded.items()}
    if num_classes["spatial"] != num_classes["temporal"]:
        raise ExportError(f"the models have {num_classes['spatial']} and "
                          f"{num_classes['temporal']} classes")
    names = resolved.class_names or [f"class_{i}" for i in range(num_classes["spatial"])]
    serving = _Serving(streams["spatial"], streams["temporal"], settings, names)
    metadata = {
        "format": "mat-effnet-export", "version": 1,
        "class_names": names, "class_names_source": resolved.class_names_source,
        "preparation": {s: dict(st.settings.to_dict(), source=resolved.sources[s])
                        for s, st in streams.items()},
        "models": {s: identity(m).to_dict() for s, (_, m, _) in loaded.items()},
        "test_segments": {s: st.cfg.test_segments for s, st in streams.items()},
        "crops": settings.crops, "chunk_frames": serving.settings_chunk,
        "fusion_weights": list(settings.fusion_weights), "jpeg_round_trip": settings.jpeg,
        "working_sizes": [list(x) for x in serving.flow.sizes],
        "flow": {"algorithm": "tvl1", "in_graph": "mat_effnet.ops.tvl1 (keras.ops, XLA)"},
        "source_models": {"spatial": os.path.abspath(spatial_path),
                          "temporal": os.path.abspath(temporal_path)},
    }
    del protocol
    return serving, metadata


def export(spatial_path: str, temporal_path: str, output_dir: str,
           settings: ExportSettings | None = None) -> dict:
    """Writes the SavedModel to ``output_dir`` (atomically: whole or not at all),
    with ``settings.onnx`` the ONNX files of both streams and the flow in it too
    (`mat_effnet.serving.onnx_export`).

    Returns the metadata, plus the export's size in bytes.
    """
    import tensorflow as tf

    from mat_effnet.common import atomic

    settings = settings or ExportSettings()
    serving, metadata = build(spatial_path, temporal_path, settings)
    onnx_files = {}
    if settings.onnx:  # before the metadata is fixed: it states the files and their opset
        from mat_effnet.serving import onnx_export

        onnx_files = onnx_export.for_export(serving, metadata)
    text = json.dumps(metadata, sort_keys=True)

    serve = tf.function(serving.serve, autograph=False, input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.uint8, name="frames")])

    @tf.function(autograph=False, input_signature=[])
    def describe():
        return {"metadata": tf.constant(text)}

    # The models' variables are folded into the graph as constants: the
    # export is for serving, and `saved_model_cli run` (a TF1 session
    # loader) cannot find Keras 3 variables in a TF2 SavedModel ("Could not
    # find variable ..."), while a graph of constants runs under both loaders.
    # (Not keras.export.ExportArchive either: in Keras 3.15 it saves every
    # variable twice, 8.19 M values for a 4.09 M-parameter stream.)
    from tensorflow.python.framework import convert_to_constants

    concrete = serve.get_concrete_function()
    frozen = convert_to_constants.convert_variables_to_constants_v2(concrete)
    names = sorted(concrete.structured_outputs)  # the frozen outputs' (flattened) order

    @tf.function(autograph=False, input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.uint8, name="frames")])
    def serving_default(frames):
        return dict(zip(names, frozen(frames)))

    module = tf.Module()
    module.serve, module.describe = serving_default, describe
    signatures = {"serving_default": serving_default.get_concrete_function(),
                  "metadata": describe.get_concrete_function()}
    output_dir = os.path.abspath(output_dir)
    tmp = atomic.tmp_name(output_dir)
    try:
        # No gradients are served; the activations' custom gradients capture
        # tensors of the unfrozen graph and cannot be saved with it.
        tf.saved_model.save(module, tmp, signatures=signatures,
                            options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
        with open(os.path.join(tmp, "assets.mat_effnet.json"), "w") as f:
            f.write(json.dumps(metadata, indent=2) + "\n")
        if onnx_files:
            onnx_export.write_files(tmp, onnx_files)
        old = None
        if os.path.exists(output_dir):
            old = atomic.tmp_name(output_dir)
            os.replace(output_dir, old)
        os.replace(tmp, output_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        from mat_effnet.common import faults

        # Named by the folder asked for, not the half-written temporary one
        # (gone by now, and its free space counted after its removal).
        code = faults.machine_errno(e)
        if code is not None:
            raise faults.MachineFault(faults.describe(e, output_dir), code) from e
        raise
    size = sum(os.path.getsize(os.path.join(d, f))
               for d, _, files in os.walk(output_dir) for f in files)
    return dict(metadata, size_bytes=size)
