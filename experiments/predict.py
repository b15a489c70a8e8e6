"""``mat-effnet-predict``: the fused two-stream prediction for one video file.

    mat-effnet-predict --video=clip.mp4 \\
        --spatial_model=runs/ucf101/spatial/model.keras \\
        --temporal_model=runs/ucf101/temporal/model.keras [--json] [--attention_png=att.png]

Any resolution, avi or mp4 (whatever OpenCV decodes).  The video is prepared
exactly as mat-effnet-prep prepared the training data (settings read from the
data's metadata when the models' train_config.json points at it).
"""

from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("video", None, "The video file.")
flags.DEFINE_string("spatial_model", None, "Spatial stream model (.keras).")
flags.DEFINE_string("temporal_model", None, "Temporal stream model (.keras).")
flags.DEFINE_integer("num_segments", 25, "Positions sampled per video.")
flags.DEFINE_integer("top_k", 5, "How many classes to print.")
flags.DEFINE_list("fusion_weights", ["1", "1"], "Spatial,temporal weights of the late fusion.")
flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
flags.DEFINE_string("attention_png", None, "Write the spatial stream's attention picture here.")
flags.DEFINE_integer("short_side", 256, "Used when the training data's settings are unknown.")
flags.DEFINE_enum("flow", "tvl1", ["tvl1", "dis"], "Used when the training data's settings are unknown.")
flags.DEFINE_float("flow_bound", 20.0, "Used when the training data's settings are unknown.")
flags.mark_flags_as_required(["video"])

PROG = "mat-effnet-predict"


def main(argv):
    del argv
    logging.basicConfig(level=logging.WARNING)
    if not FLAGS.spatial_model and not FLAGS.temporal_model:
        print(f"{PROG}: error: give --spatial_model, --temporal_model or both", file=sys.stderr)
        return 2
    if not os.path.isfile(FLAGS.video):
        print(f"{PROG}: error: --video={FLAGS.video}: no such file", file=sys.stderr)
        return 2
    try:
        weights = [float(w) for w in FLAGS.fusion_weights]
        assert len(weights) == 2 and min(weights) >= 0 and sum(weights) > 0
    except (ValueError, AssertionError):
        print(f"{PROG}: error: --fusion_weights={','.join(FLAGS.fusion_weights)}: "
              "expected two non-negative numbers, not both 0", file=sys.stderr)
        return 2

    from data_prep import video
    from mat_effnet import evaluation, inference

    default = inference.PrepSettings(short_side=FLAGS.short_side, flow=FLAGS.flow,
                                     flow_bound=FLAGS.flow_bound)
    try:
        spatial = evaluation.load_model(FLAGS.spatial_model) if FLAGS.spatial_model else None
        temporal = evaluation.load_model(FLAGS.temporal_model) if FLAGS.temporal_model else None
        for flag, model, stream in (("spatial_model", spatial, "spatial"),
                                    ("temporal_model", temporal, "temporal")):
            if model is not None and evaluation.stream_spec(model).stream != stream:
                raise evaluation.EvalError(f"--{flag} is a {evaluation.stream_spec(model).stream}"
                                           " stream model")
        settings, classes = inference.settings_for(FLAGS.spatial_model or FLAGS.temporal_model,
                                                   default)
        result = inference.predict_video(FLAGS.video, spatial, temporal, settings,
                                         FLAGS.num_segments, tuple(weights))
        picture = None
        if FLAGS.attention_png:
            model = spatial or temporal
            picture = inference.attention_figure(model, result["records"][0],
                                                 FLAGS.attention_png, min(FLAGS.num_segments, 8),
                                                 classes)
    except video.VideoError as e:
        print(f"{PROG}: error: --video={FLAGS.video}: not a usable video ({e.reason})",
              file=sys.stderr)
        return 2
    except (evaluation.EvalError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2

    fused = result["fused"]
    names = classes or [f"class_{i}" for i in range(len(fused))]
    order = fused.argsort()[::-1][:FLAGS.top_k]
    top = [{"class": names[i], "index": int(i), "probability": float(fused[i])} for i in order]
    timing = {k: round(v, 3) for k, v in result.items() if k.endswith("_s")}
    if FLAGS.json:
        print(json.dumps({"video": FLAGS.video, "top": top, "frames": result["frames"],
                          "seconds": timing, "attention": picture}))
    else:
        print(f"{FLAGS.video}: {result['frames']} frames")
        for rank, t in enumerate(top, 1):
            print(f"  {rank}. {t['class']:<30s} {100 * t['probability']:6.2f} %")
        print("  seconds: " + ", ".join(f"{k} {v}" for k, v in timing.items()))
        if picture:
            print(f"  attention picture: {FLAGS.attention_png}")
    return 0


def run():
    app.run(main)


if __name__ == "__main__":
    run()
