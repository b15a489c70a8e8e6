"""Two-stream prediction on one video file (paper Fig. 1, Sect. 3.3).

The video goes through exactly the path the training data took: the same
`mat_effnet.encoding.encode.encode_video` (decode, resize, flow, quantize, JPEG), the
same record format, then each stream's prediction of each record's clip
(`mat_effnet.evaluation.clip_prediction.StreamPredictor`: the test-time sampling
and views, the model, the crops averaged), chunks averaged, and the streams'
late average fusion (`mat_effnet.evaluation.fusion.normalize_weights`).

The preparation settings (short side, flow algorithm, implementation and
bound, JPEG quality) and the class names come from the models themselves
(`mat_effnet.modeling.model_identity.identity`), so the ``.keras`` files alone are enough.
For models saved before they carried that, the older chain is followed,
``train_config.json`` beside the model -> the training data's metadata,
and failing that the caller's defaults; each fallback is said once on
stderr.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import numpy as np

from mat_effnet.encoding.encode import EncodeSettings
from mat_effnet.common.errors import MatEffNetError


# The preparation settings are defined once, by the preparation itself.
PrepSettings = EncodeSettings


def from_preparation(preparation: dict, default: PrepSettings) -> PrepSettings:
    """A model's ``preparation`` dict as settings; keys it lacks come from ``default``."""
    from mat_effnet.ops import optical_flow as flow_lib

    names = {f.name for f in dataclasses.fields(PrepSettings)}
    known = {k: v for k, v in preparation.items() if k in names and v is not None}
    if "flow" in known and "flow_implementation" not in known:
        known["flow_implementation"] = "opencv"  # identities without it: OpenCV made their flow
    if known.get("flow", "none") not in flow_lib.ALGORITHMS:
        raise MatEffNetError(f"the model was trained on {known['flow']} flow, which this "
                             f"project cannot compute (only {', '.join(flow_lib.ALGORITHMS)})")
    if known.get("flow_implementation") not in (None, *flow_lib.IMPLEMENTATIONS):
        # Flow imported from frame folders (mat-effnet-prep --frames_root): the
        # same algorithm, computed here by our own implementation.
        source = preparation.get("flow_source", known["flow_implementation"])
        rounding = preparation.get("flow_rounding", "half_up")
        known["flow_implementation"] = default.flow_implementation \
            if known["flow"] == "tvl1" else "opencv"
        _say_once(f"the model's {known['flow']} flow was imported ({source}, rounding "
                  f"{rounding}); computing it with {known['flow_implementation']} "
                  f"{known['flow']}, rounded half up (at most one quantization step apart)")
    return dataclasses.replace(default, **known)


def _train_config(model_path: str) -> dict | None:
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "train_config.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


def settings_for(model_path: str, default: PrepSettings) -> tuple[PrepSettings, list | None]:
    """Prep settings and class names from ``train_config.json`` -> the training
    data's metadata (models saved before they carried their identity)."""
    from mat_effnet import records

    cfg = _train_config(model_path)
    if not cfg:
        return default, None
    # train_config.json is flat (older runs) or nested by section.
    data_dir = cfg.get("data_dir") or (cfg.get("data") or {}).get("data_dir")
    try:
        meta = records.read_metadata(data_dir)
    except (records.MetadataError, KeyError, OSError, TypeError):
        return default, cfg.get("classes")
    s = meta.get("settings", {})
    return from_preparation(
        {k: s.get(k) for k in ("short_side", "flow", "flow_bound", "jpeg_quality",
                               "flow_implementation")}, default), \
        meta.get("classes") or cfg.get("classes")


@dataclasses.dataclass
class Resolved:
    """What prediction uses for each stream, and where it came from."""

    settings: dict          # stream -> PrepSettings
    class_names: list | None
    sources: dict           # stream -> "model" | "train_config.json" | "defaults"
    class_names_source: str


def _say_once(message: str, _said=set()) -> None:  # noqa: B006 -- a per-process memo
    if message not in _said:
        _said.add(message)
        print(f"mat-effnet: warning: {message}", file=sys.stderr, flush=True)


def resolve(streams: dict, default: PrepSettings) -> Resolved:
    """Settings and class names for ``{stream: (model_path, model)}``.

    From each model's identity; for a model without them, from its
    ``train_config.json`` chain, then ``default`` and class indices (said
    once on stderr, in one line per model). Two streams that name different
    classes are refused.
    """
    from mat_effnet.modeling.model_identity import identity

    settings, sources, names = {}, {}, {}
    for stream, (path, model) in streams.items():
        ident = identity(model)
        legacy = None
        if ident.preparation is None or ident.class_names is None:
            legacy = settings_for(path, default)
        if ident.preparation is not None:
            settings[stream] = from_preparation(ident.preparation, default)
            sources[stream] = "model"
        elif legacy[0] is not default:
            settings[stream], sources[stream] = legacy[0], "train_config.json"
        else:
            settings[stream], sources[stream] = default, "defaults"
        if ident.class_names is not None:
            names[stream] = (list(ident.class_names), "model")
        elif legacy[1]:
            names[stream] = (list(legacy[1]), "train_config.json")
        unknown = [what for what, missing in (
            (f"preparation settings (using {default.to_dict()})",
             sources[stream] == "defaults"),
            ("class names (showing class indices)", stream not in names)) if missing]
        if unknown:
            _say_once(f"{path}: the model does not carry its {' or its '.join(unknown)}, "
                      "and no train_config.json beside it leads to its training data")
    class_names, source = None, "unknown"
    if names:
        first_stream, (class_names, source) = next(iter(names.items()))
        for stream, (n, _) in names.items():
            if n != class_names:
                i = next((i for i, (x, y) in enumerate(zip(n, class_names)) if x != y),
                         min(len(n), len(class_names)) - 1)
                raise MatEffNetError(
                    f"{stream}_model={streams[stream][0]}: its class names differ from "
                    f"those of {first_stream}_model={streams[first_stream][0]} "
                    f"(class {i}: {n[i]!r} vs {class_names[i]!r})")
    return Resolved(settings, class_names, sources, source)


#: The name a frames array goes by in errors and results.
FRAMES = "<frames>"
#: The frame rate assumed for a frames array given without one.
DEFAULT_FPS = 25.0


def video_records(source, settings: PrepSettings, with_flow: bool = True,
                  fps: float | None = None) -> tuple[list, dict]:
    """The video's serialized records, as mat-effnet-prep would write them.

    ``source``: a video file, or decoded frames, uint8 RGB ``(T, H, W, 3)``,
    resized as the decoder resizes (`mat_effnet.ops.video.resize_frame`);
    ``fps`` dates a frames array (default `DEFAULT_FPS`).
    """
    from mat_effnet import records
    from mat_effnet.encoding import encode
    from mat_effnet.ops import video

    stats: dict = {}
    prep = encode.EncodeSettings.from_dict(dict(
        settings.to_dict(), flow=settings.flow if with_flow else "none",
        flow_implementation=settings.flow_implementation if with_flow else "opencv"))
    if isinstance(source, (str, os.PathLike)):
        made = encode.encode_video(source, prep, stats=stats)
        return [records.serialize(r) for r in made], stats
    frames = check_frames(source)
    runs = ((0, video.resize_frame(f, prep.short_side)) for f in frames)
    made = encode.encode_frames(runs, float(fps or DEFAULT_FPS), prep, video_id=FRAMES,
                                stats=stats)
    serialized = []
    while True:
        try:
            serialized.append(records.serialize(next(made)))
        except StopIteration as done:  # its value: the frames seen (a 1-frame tail is dropped)
            encode.check_length(FRAMES, done.value)
            return serialized, stats


def check_frames(frames) -> np.ndarray:
    """A caller's frames as uint8 ``(T, H, W, 3)``; a one-line error naming what is wrong."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise MatEffNetError(f"frames must be uint8 RGB of shape (T, H, W, 3), got "
                             f"{frames.dtype} {frames.shape}")
    return frames


class RecordFrames:
    """One record's frames of a stream, decoded (as a record's reader decodes them) on demand.

    The frame source of `mat_effnet.data.views.views_from_frames`: ``len()``
    is its RGB frames (spatial) or flow fields (temporal), ``frames_at`` decodes
    only the frames a clip reads, each once.
    """

    def __init__(self, serialized: bytes, stream: str):
        from mat_effnet import records

        parsed = records.parse_numpy(serialized)
        self.jpegs = ([parsed[records.RGB]] if stream == "spatial" else
                      [parsed[records.FLOW_X], parsed[records.FLOW_Y]])

    def __len__(self) -> int:
        return len(self.jpegs[0])

    def frames_at(self, indices) -> np.ndarray:
        import tensorflow as tf

        indices = np.asarray(indices)
        unique, inverse = np.unique(indices, return_inverse=True)
        channels = 3 if len(self.jpegs) == 1 else 1
        planes = [np.stack([tf.io.decode_jpeg(jpegs[i], channels=channels).numpy()
                            for i in unique]) for jpegs in self.jpegs]
        frames = planes[0] if channels == 3 else np.concatenate(planes, axis=-1)
        return frames[inverse.reshape(indices.shape)]


def stream_scores(model, serialized: list, num_segments: int = 25, crops: int = 1,
                  predictor=None) -> np.ndarray:
    """One stream's scores of a video's records: each record's clip
    (`mat_effnet.evaluation.clip_prediction.StreamPredictor`), chunks averaged."""
    from keras import ops

    from mat_effnet.evaluation.clip_prediction import StreamPredictor

    predictor = predictor or StreamPredictor(model, num_segments, crops)
    return np.mean([ops.convert_to_numpy(predictor(RecordFrames(s, predictor.stream)))
                    for s in serialized], axis=0)


def _same_frames(a: PrepSettings, b: PrepSettings) -> bool:
    """The RGB frames (and so the spatial stream's input) would be the same."""
    return (a.short_side, a.jpeg_quality) == (b.short_side, b.jpeg_quality)


def predict_video(path, spatial_model, temporal_model, settings,
                  num_segments: int = 25, fusion_weights=(1.0, 1.0), fps: float | None = None
                  ) -> dict:
    """Decodes, computes flow, runs both streams; fused scores and timings.

    ``path``: a video file, or a frames array (see `video_records`; ``fps``
    dates it).
    ``settings``: one :class:`PrepSettings` (or
    `mat_effnet.encoding.encode.EncodeSettings`) for both streams, or a dict
    ``{stream: PrepSettings}`` (see :func:`resolve`). The video is prepared
    once when the streams' frames agree, else once per stream.
    """
    from mat_effnet.evaluation import fusion

    given = {"spatial": spatial_model, "temporal": temporal_model}
    given = {k: m for k, m in given.items() if m is not None}
    if not isinstance(settings, dict):
        settings = {k: settings for k in given}
    w = fusion.normalize_weights(
        [w for k, w in zip(("spatial", "temporal"), fusion_weights) if k in given], len(given))
    t0 = time.perf_counter()
    if "temporal" in given:
        flow_records, stats = video_records(path, settings["temporal"], with_flow=True, fps=fps)
        prepared = {"temporal": flow_records}
        if "spatial" in given:
            if _same_frames(settings["spatial"], settings["temporal"]):
                prepared["spatial"] = flow_records
            else:
                prepared["spatial"], _ = video_records(path, settings["spatial"], with_flow=False,
                                                       fps=fps)
    else:
        prepared = {}
        prepared["spatial"], stats = video_records(path, settings["spatial"], with_flow=False,
                                                   fps=fps)
    t1 = time.perf_counter()
    out = {"prepare_s": t1 - t0, "frames": stats.get("frames", 0)}
    parts = []
    for name, model in given.items():
        t = time.perf_counter()
        out[name] = stream_scores(model, prepared[name], num_segments)
        out[f"{name}_model_s"] = time.perf_counter() - t
        parts.append(out[name])
    out["fused"] = np.sum([wi * p for wi, p in zip(w, parts)], axis=0)
    out["records"] = prepared[next(iter(given))]
    return out


def attention_figure(model, serialized_record: bytes, path: str, num_segments: int = 8,
                     class_names=None) -> dict:
    """Writes a PNG of the sampled frames with the attention they receive (Fig. 9).

    Each token's weight is the attention it receives, averaged over heads and
    queries; with spatial tokens the weights are drawn over each frame as a
    heat map, with segment tokens as a bar under each frame.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tensorflow as tf

    from mat_effnet.evaluation import protocol
    from mat_effnet.modeling import models
    from mat_effnet import records
    from mat_effnet.data.clips import make_clip
    from mat_effnet.data.sampling import PipelineConfig, sample_positions

    spec = protocol.stream_spec(model)
    if spec.num_segments is not None:
        num_segments = spec.num_segments
    att = models.build_attention_model(model)
    cfg = PipelineConfig(
        stream=spec.stream, image_size=spec.image_size[0], flow_length=spec.flow_length or 1,
        training=False, test_segments=num_segments, crops=1)
    parsed = records.parse(tf.constant(serialized_record))
    clip, _ = make_clip(parsed, cfg)
    out = att(clip, training=False)
    probs = out["probabilities"].numpy()[0]
    scores = out["attention_scores"].numpy()[0]  # (heads, tokens, tokens)
    received = scores.mean(axis=(0, 1))  # attention each token receives
    positions = sample_positions(
        tf.shape(parsed[records.RGB])[0], cfg, training=False).numpy()
    frames = clip.numpy()[0]
    n = frames.shape[0]
    per_frame = received.reshape(n, -1)
    fig, axes = plt.subplots(1, n, figsize=(1.8 * n, 2.4), squeeze=False)
    for i, ax in enumerate(axes[0]):
        img = frames[i]
        if img.shape[-1] != 3:  # flow: show the magnitude of the first x/y pair
            fx, fy = img[..., 0] - 127.5, img[..., 1] - 127.5
            img = np.repeat(np.sqrt(fx ** 2 + fy ** 2)[..., None], 3, axis=-1)
            img = img / max(img.max(), 1e-6) * 255
        ax.imshow(np.clip(img, 0, 255).astype(np.uint8))
        if per_frame.shape[1] > 1:
            side = int(round(np.sqrt(per_frame.shape[1])))
            if side * side == per_frame.shape[1]:
                ax.imshow(per_frame[i].reshape(side, side), cmap="jet", alpha=0.4,
                          extent=(0, img.shape[1], img.shape[0], 0), interpolation="bilinear")
        ax.set_title(f"frame {positions[i]}\nw={per_frame[i].sum():.2f}", fontsize=8)
        ax.axis("off")
    top = int(np.argmax(probs))
    label = class_names[top] if class_names else str(top)
    fig.suptitle(f"{spec.stream} stream attention; top-1 {label} ({probs[top]:.2f})", fontsize=9)
    fig.tight_layout()
    from mat_effnet.common import atomic

    with atomic.replacing(path, ".png") as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return {"positions": positions.tolist(), "weights": per_frame.sum(axis=1).tolist()}
