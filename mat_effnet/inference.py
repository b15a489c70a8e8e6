"""Two-stream prediction on one video file (paper Fig. 1, Sect. 3.3).

The video goes through exactly the path the training data took: the same
`data_prep.builder.video_to_records` (decode, resize, flow, quantize, JPEG),
the same record parser and the same test-time sampling of
`mat_effnet.input_pipeline`; then each stream's softmax, and their late
average fusion.  Preparation settings (short side, flow algorithm and bound,
JPEG quality) are read from the metadata of the data a model was trained on
when ``train_config.json`` sits beside it, so predictions match evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np


@dataclasses.dataclass
class PrepSettings:
    short_side: int = 256
    flow: str = "tvl1"
    flow_bound: float = 20.0
    jpeg_quality: int = 90


def _train_config(model_path: str) -> dict | None:
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "train_config.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


def settings_for(model_path: str, default: PrepSettings) -> tuple[PrepSettings, list | None]:
    """Prep settings and class names of the data a model was trained on, if known."""
    from mat_effnet import records

    cfg = _train_config(model_path)
    if not cfg:
        return default, None
    try:
        meta = records.read_metadata(cfg["data_dir"])
    except (records.MetadataError, KeyError, OSError):
        return default, cfg.get("classes")
    s = meta.get("settings", {})
    return PrepSettings(short_side=int(s.get("short_side", default.short_side)),
                        flow=s.get("flow", default.flow),
                        flow_bound=float(s.get("flow_bound", default.flow_bound)),
                        jpeg_quality=int(s.get("jpeg_quality", default.jpeg_quality))), \
        meta.get("classes") or cfg.get("classes")


def video_records(path: str, settings: PrepSettings, with_flow: bool = True) -> tuple[list, dict]:
    """The video's serialized records, as mat-effnet-prep would write them."""
    from data_prep import builder, layouts
    from mat_effnet import records

    entry = layouts.VideoEntry(video_id=os.path.basename(path), path=os.path.abspath(path),
                               label=0, class_name="", split="predict")
    cfg = builder.PrepConfig(dataset="folder", data_root=os.path.dirname(path) or ".",
                             out_dir="", flow=settings.flow if with_flow else "none",
                             flow_bound=settings.flow_bound, short_side=settings.short_side,
                             jpeg_quality=settings.jpeg_quality)
    stats: dict = {}
    serialized = [records.serialize(r) for r in builder.video_to_records(entry, cfg, stats)]
    return serialized, stats


def stream_scores(model, serialized: list, num_segments: int = 25, crops: int = 1,
                  return_clips: bool = False):
    """Softmax of one stream model over a video's records (chunks averaged)."""
    import tensorflow as tf

    from mat_effnet import evaluation, input_pipeline, records

    spec = evaluation.stream_spec(model)
    if spec.num_segments is not None:
        num_segments = spec.num_segments
    cfg = input_pipeline.PipelineConfig(
        stream=spec.stream, image_size=spec.image_size, flow_length=max(spec.flow_length, 1),
        training=False, test_segments=num_segments, crops=crops)
    probs, clips = [], []
    for s in serialized:
        clip, _ = input_pipeline.make_clip(records.parse(tf.constant(s)), cfg)
        probs.append(model(clip, training=False).numpy().mean(axis=0))  # crops averaged
        clips.append(clip)
    scores = np.mean(probs, axis=0)
    return (scores, clips) if return_clips else scores


def predict_video(path: str, spatial_model, temporal_model, settings: PrepSettings,
                  num_segments: int = 25, fusion_weights=(1.0, 1.0)) -> dict:
    """Decodes, computes flow, runs both streams; fused scores and timings."""
    t0 = time.perf_counter()
    serialized, stats = video_records(path, settings, with_flow=temporal_model is not None)
    t1 = time.perf_counter()
    out = {"prepare_s": t1 - t0, "frames": stats.get("frames", 0)}
    parts, weights = [], []
    for name, model, w in (("spatial", spatial_model, fusion_weights[0]),
                           ("temporal", temporal_model, fusion_weights[1])):
        if model is None:
            continue
        t = time.perf_counter()
        out[name] = stream_scores(model, serialized, num_segments)
        out[f"{name}_model_s"] = time.perf_counter() - t
        parts.append(out[name])
        weights.append(w)
    w = np.asarray(weights, np.float64) / np.sum(weights)
    out["fused"] = np.sum([wi * p for wi, p in zip(w, parts)], axis=0)
    out["records"] = serialized
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

    from mat_effnet import evaluation, input_pipeline, models, records

    spec = evaluation.stream_spec(model)
    if spec.num_segments is not None:
        num_segments = spec.num_segments
    att = models.build_attention_model(model)
    cfg = input_pipeline.PipelineConfig(
        stream=spec.stream, image_size=spec.image_size, flow_length=max(spec.flow_length, 1),
        training=False, test_segments=num_segments, crops=1)
    parsed = records.parse(tf.constant(serialized_record))
    clip, _ = input_pipeline.make_clip(parsed, cfg)
    out = att(clip, training=False)
    probs = out["probabilities"].numpy()[0]
    scores = out["attention_scores"].numpy()[0]  # (heads, tokens, tokens)
    received = scores.mean(axis=(0, 1))  # attention each token receives
    positions = input_pipeline.sample_positions(
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
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)
    return {"positions": positions.tolist(), "weights": per_frame.sum(axis=1).tolist()}
