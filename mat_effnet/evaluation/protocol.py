"""Multi-segment, multi-crop evaluation of one stream (TSN protocol, paper Sect. 4).

Each test video is sampled at N uniformly spaced positions (25 by default)
in 1, 3 or 10 crops.  The N positions of one crop are one clip for the
model (its attention runs over the N segment tokens); the softmax scores of
the crops are averaged, and the records of a video that was cut into chunks
are averaged too, giving one score vector per video.  Those are what late
fusion (`mat_effnet.evaluation.fusion`) averages across streams.

What the model expects comes from its identity (`mat_effnet.modeling.model_identity.identity`);
data prepared differently from the model's training data (another flow
algorithm or bound, other class names) is refused, naming both values.
Another implementation of the same flow algorithm is allowed and noted.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from mat_effnet.common.errors import MatEffNetError

log = logging.getLogger("mat_effnet.eval")


class EvalError(MatEffNetError):
    """The model and the data do not fit together (one clear line)."""


def load_model(path: str):
    """Loads a ``.keras`` stream or two-stream model with safe_mode on."""
    import keras
    import tensorflow as tf

    from mat_effnet.modeling import model_identity, layers  # noqa: F401  (registers the model classes)

    if not tf.io.gfile.exists(path):
        raise EvalError(f"model file {path} does not exist")
    try:
        return keras.models.load_model(path, safe_mode=True)
    except Exception as e:  # keras raises several types for a bad file
        raise EvalError(f"cannot load {path} as a Keras model: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}") from e


def stream_spec(model):
    """The `mat_effnet.modeling.stream_spec.StreamSpec` of a one-stream model (what it expects)."""
    from mat_effnet.modeling.model_identity import identity

    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 5:
        raise EvalError(f"{model.name} is not a one-stream model (inputs {model.inputs})")
    return identity(model)


#: Preparation settings that may differ between the model's data and the
#: evaluated data, with a note: the same flow algorithm computed by another
#: implementation, and the frame size / JPEG quality.
_NOTED = ("flow_implementation", "short_side", "jpeg_quality")


def check_data(ident, meta: dict, data_dir: str) -> list[str]:
    """Refuses data the model cannot be evaluated on; returns notes on allowed differences.

    ``ident`` is the model's `mat_effnet.modeling.stream_spec.StreamSpec`, ``meta``
    the data's metadata. Unknown values (models saved before identities) are
    not compared. Flow settings matter to temporal streams only.
    """
    from mat_effnet.modeling.stream_spec import PREPARATION_MUST_MATCH, data_identity

    if ident.num_classes != int(meta["num_classes"]):
        raise EvalError(f"the model has {ident.num_classes} classes but {data_dir} has "
                        f"{meta['num_classes']}: wrong model or wrong --data_dir")
    data = data_identity(meta)
    ours, theirs = ident.class_names, data["class_names"]
    if ours is not None and theirs is not None and list(ours) != list(theirs):
        i = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
        raise EvalError(f"{data_dir}: class {i} is {theirs[i]!r} but the model's class {i} "
                        f"is {ours[i]!r} (class_names differ: the model was trained on other "
                        "classes or another class order)")
    flow_keys = ("flow", "flow_bound", "flow_implementation")
    mine, data_prep = ident.preparation or {}, data["preparation"] or {}
    notes = []
    for key in PREPARATION_MUST_MATCH + _NOTED:
        if ident.stream != "temporal" and key in flow_keys:
            continue
        a, b = mine.get(key), data_prep.get(key)
        if a is None or b is None or a == b:
            continue
        if key in PREPARATION_MUST_MATCH:
            raise EvalError(f"{data_dir}: prepared with {key}={b!r} but the model was trained "
                            f"on data prepared with {key}={a!r}; prepare the data with "
                            f"--{key}={a}")
        notes.append(f"{key}: {data_dir} was prepared with {b!r}, the model's training data "
                     f"with {a!r} (allowed)")
    for note in notes:
        log.warning("%s", note)
    return notes


def _score_batch(predict, clips, batch_labels, ids, crops, max_clips_per_step, sums, counts,
                 labels, done) -> int:
    """Adds one batch's video scores (averaged over crops) to the sums; returns records done."""
    import tensorflow as tf

    b = int(clips.shape[0])
    flat = tf.reshape(clips, [-1, *clips.shape[2:]])  # (B*crops, N, S, S, C)
    probs = np.concatenate([predict(flat[i:i + max_clips_per_step]).numpy()
                            for i in range(0, int(flat.shape[0]), max_clips_per_step)])
    probs = probs.reshape(b, crops, -1).mean(axis=1)
    for vid, label, p in zip(ids.numpy(), batch_labels.numpy(), probs):
        vid = vid.decode("utf-8")
        sums[vid] = sums.get(vid, 0) + p.astype(np.float64)
        counts[vid] = counts.get(vid, 0) + 1
        labels[vid] = int(label)
    return done + b


def evaluate(model, data_dir: str, split: str = "test", num_segments: int = 25,
             crops: int = 1, batch_size: int = 1, max_clips_per_step: int = 8,
             progress_seconds: float = 30.0) -> dict:
    """Scores every video of a split; returns ids, labels, scores and metrics.

    ``batch_size`` videos are decoded at a time and the model sees at most
    ``max_clips_per_step`` clips (crops x videos) per call, which bounds
    memory (a 25-segment, 10-crop temporal clip at 224 px is ~1 GB).
    """
    import tensorflow as tf

    from mat_effnet.data import input_pipeline
    from mat_effnet.records import integrity
    from mat_effnet.evaluation import metrics
    from mat_effnet import records
    from mat_effnet.data.sampling import PipelineConfig

    from mat_effnet.modeling.model_identity import identity

    meta = records.read_metadata(data_dir)
    spec = stream_spec(model)
    ident = identity(model)
    notes = check_data(ident, meta, data_dir)
    if spec.num_segments is not None and spec.num_segments != num_segments:
        raise EvalError(f"the model takes exactly {spec.num_segments} segments; "
                        f"use --num_segments={spec.num_segments}")
    cfg = PipelineConfig(
        stream=spec.stream, image_size=spec.image_size[0], flow_length=spec.flow_length or 1,
        training=False, test_segments=num_segments, crops=crops)
    ds = input_pipeline.build_dataset(data_dir, split, cfg, batch_size, with_ids=True)
    total = int(meta["splits"][split]["records"])

    @tf.function(reduce_retracing=True)
    def predict(x):
        return model(x, training=False)

    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    labels: dict[str, int] = {}
    done, start, last = 0, time.monotonic(), time.monotonic()
    integrity.check_split(data_dir, meta, split)  # sizes: a stat per shard, before any step
    try:
        for clips, batch_labels, ids in ds:
            done = _score_batch(predict, clips, batch_labels, ids, crops, max_clips_per_step,
                                sums, counts, labels, done)
            now = time.monotonic()
            if now - last >= progress_seconds:
                last = now
                rate = done / (now - start)
                log.info("%d/%d records, %.2f records/s, ETA %.0fs", done, total, rate,
                         (total - done) / max(rate, 1e-9))
    except Exception as e:  # noqa: BLE001  # a damaged shard: named, not TF's op trace
        if not integrity.read_error(e):
            raise
        raise integrity.locate(data_dir, meta, [split], e) from None
    video_ids = sorted(sums)
    scores = np.stack([sums[v] / counts[v] for v in video_ids]).astype(np.float32)
    y = np.asarray([labels[v] for v in video_ids], np.int64)
    summary = metrics.summarize(scores, y, spec.num_classes)
    return {"video_ids": video_ids, "labels": y, "scores": scores, "metrics": summary,
            "stream": spec.stream, "classes": list(meta["classes"]),
            "dataset": meta.get("name", meta.get("dataset", "")), "split": split,
            "model_identity": ident.to_dict(), "notes": notes}
