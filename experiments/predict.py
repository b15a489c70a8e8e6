"""``mat-effnet-predict``: the fused two-stream prediction for one video file.

    mat-effnet-predict --video=clip.mp4 \\
        --spatial_model=runs/ucf101/spatial/model.keras \\
        --temporal_model=runs/ucf101/temporal/model.keras [--json] [--attention_png=att.png]

Any resolution, avi or mp4 (whatever OpenCV decodes). The ``.keras`` files
are enough: each model carries its class names and the preparation settings
of its training data, and the video is prepared with exactly those. For
models saved before they carried them, the settings come from the training
data that a ``train_config.json`` beside the model names, else from the
flags below (a warning says which).
"""

from __future__ import annotations

import json
import logging
import os

from absl import flags

from experiments import cli
from mat_effnet.errors import MatEffNetError, bad_argument

FLAGS = flags.FLAGS
flags.DEFINE_string("video", None, "The video file.")
flags.DEFINE_string("spatial_model", None, "Spatial stream model (.keras).")
flags.DEFINE_string("temporal_model", None, "Temporal stream model (.keras).")
flags.DEFINE_integer("num_segments", 25, "Positions sampled per video.")
flags.DEFINE_integer("top_k", 5, "How many classes to print.")
flags.DEFINE_list("fusion_weights", ["1", "1"], "Spatial,temporal weights of the late fusion.")
flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
flags.DEFINE_string("attention_png", None, "Write the spatial stream's attention picture here.")
flags.DEFINE_integer("short_side", 256, "Used only for a model that does not carry its "
                     "preparation settings (saved before they were stored).")
flags.DEFINE_enum("flow", "tvl1", ["tvl1", "dis"], "Used only for a model that does not carry "
                  "its preparation settings.")
flags.DEFINE_float("flow_bound", 20.0, "Used only for a model that does not carry its "
                   "preparation settings.")
flags.mark_flags_as_required(["video"])

PROG = "mat-effnet-predict"


def _weights() -> list[float]:
    from mat_effnet import fusion

    text = ",".join(FLAGS.fusion_weights)
    try:
        weights = [float(w) for w in FLAGS.fusion_weights]
        return fusion.normalize_weights(weights, 2).tolist()
    except (ValueError, MatEffNetError):
        raise bad_argument("fusion_weights", text,
                           "expected two non-negative numbers, not both 0") from None


def main(argv):
    del argv
    if not FLAGS.spatial_model and not FLAGS.temporal_model:
        raise MatEffNetError("give --spatial_model, --temporal_model or both")
    if not os.path.isfile(FLAGS.video):
        raise bad_argument("video", FLAGS.video, "no such file")
    weights = _weights()

    from data_prep import video
    from mat_effnet import evaluation, inference
    from mat_effnet.identity import identity

    default = inference.PrepSettings(short_side=FLAGS.short_side, flow=FLAGS.flow,
                                     flow_bound=FLAGS.flow_bound)
    streams = {}
    for stream in ("spatial", "temporal"):
        path = FLAGS[f"{stream}_model"].value
        if not path:
            continue
        model = evaluation.load_model(path)
        got = evaluation.stream_spec(model).stream
        if got != stream:
            raise MatEffNetError(f"--{stream}_model is a {got} stream model")
        streams[stream] = (path, model)
    resolved = inference.resolve(streams, default)
    try:
        result = inference.predict_video(
            FLAGS.video, streams.get("spatial", (None, None))[1],
            streams.get("temporal", (None, None))[1], resolved.settings,
            FLAGS.num_segments, tuple(weights))
    except video.VideoError as e:
        raise bad_argument("video", FLAGS.video, f"not a usable video ({e.reason})") from None
    picture = None
    if FLAGS.attention_png:
        model = next(iter(streams.values()))[1]
        picture = inference.attention_figure(model, result["records"][0], FLAGS.attention_png,
                                             min(FLAGS.num_segments, 8), resolved.class_names)

    fused = result["fused"]
    names = resolved.class_names or [f"class_{i}" for i in range(len(fused))]
    order = fused.argsort()[::-1][:FLAGS.top_k]
    top = [{"class": names[i], "index": int(i), "probability": float(fused[i])} for i in order]
    timing = {k: round(v, 3) for k, v in result.items() if k.endswith("_s")}
    preparation = {s: dict(resolved.settings[s].to_dict(), source=resolved.sources[s])
                   for s in streams}
    if FLAGS.json:
        print(json.dumps({"video": FLAGS.video, "top": top, "frames": result["frames"],
                          "seconds": timing, "attention": picture,
                          "preparation": preparation,
                          "class_names_source": resolved.class_names_source,
                          "models": {s: identity(m).to_dict()
                                     for s, (_, m) in streams.items()}}))
    else:
        print(f"{FLAGS.video}: {result['frames']} frames")
        for rank, t in enumerate(top, 1):
            print(f"  {rank}. {t['class']:<30s} {100 * t['probability']:6.2f} %")
        print("  seconds: " + ", ".join(f"{k} {v}" for k, v in timing.items()))
        for s, p in preparation.items():
            print(f"  {s} prepared with: " + ", ".join(f"{k} {v}" for k, v in p.items()))
        if picture:
            print(f"  attention picture: {FLAGS.attention_png}")
    return 0


def run():
    cli.run(main, PROG, logging.WARNING)


if __name__ == "__main__":
    run()
