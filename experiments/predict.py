"""``mat-effnet-predict``: the fused two-stream prediction for videos.

    mat-effnet-predict --video=clip.mp4 \\
        --spatial_model=runs/ucf101/spatial/model.keras \\
        --temporal_model=runs/ucf101/temporal/model.keras [--json] [--attention_png=att.png]

Three ways at scale: ``--videos=DIR|GLOB|LIST.txt --output=preds.jsonl``
(or ``.csv``) predicts many videos in one process, one row each, and a rerun
resumes (`mat_effnet.serving.predict_many`); ``--video=LONG --window_s=W
[--stride_s=S] [--timeline_png=t.png]`` gives a timeline of windows dated by
the decoder's timestamps (`mat_effnet.serving.timeline`); live frames go through
`mat_effnet.serving.streaming.StreamingPredictor` from Python.

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

from mat_effnet.common import cli
from mat_effnet.common.errors import MatEffNetError, bad_argument

FLAGS = flags.FLAGS
flags.DEFINE_string("video", None, "The video file (give this or --videos).")
flags.DEFINE_string("videos", None, "Many videos: a folder, a glob, or a LIST.txt of paths "
                    "(one a line); needs --output.")
flags.DEFINE_string("output", None, "--videos: the rows file, JSON lines or .csv; a rerun "
                    "skips the videos already in it.")
flags.DEFINE_integer("workers", 1, "--videos: decoding processes.")
flags.DEFINE_integer("batch_clips", 8, "--videos: clips per model call.")
flags.DEFINE_float("window_s", None, "--video: predict windows of this many seconds (a "
                   "timeline) instead of the whole video.")
flags.DEFINE_float("stride_s", None, "--window_s: seconds between window starts "
                   "(default: --window_s).")
flags.DEFINE_string("timeline_png", None, "--window_s: write the timeline picture here.")
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

PROG = "mat-effnet-predict"


def _weights() -> list[float]:
    from mat_effnet.evaluation import fusion

    text = ",".join(FLAGS.fusion_weights)
    try:
        weights = [float(w) for w in FLAGS.fusion_weights]
        return fusion.normalize_weights(weights, 2).tolist()
    except (ValueError, MatEffNetError):
        raise bad_argument("fusion_weights", text,
                           "expected two non-negative numbers, not both 0") from None


def _check_modes() -> None:
    """Exactly one of --video / --videos, and each mode's flags only with it."""
    if bool(FLAGS.video) == bool(FLAGS.videos):
        raise MatEffNetError("give exactly one of --video (one video, or a timeline with "
                             "--window_s) and --videos (many, with --output)")
    if FLAGS.videos and not FLAGS.output:
        raise MatEffNetError("--videos needs --output (a .jsonl or .csv rows file)")
    if FLAGS.video and FLAGS.output:
        raise MatEffNetError("--output is for --videos; --video prints its result")
    if FLAGS.window_s is None and (FLAGS.stride_s is not None or FLAGS.timeline_png):
        raise MatEffNetError("--stride_s and --timeline_png need --window_s")
    if FLAGS.videos and FLAGS.window_s is not None:
        raise MatEffNetError("--window_s is for one long --video")
    if not FLAGS.spatial_model and not FLAGS.temporal_model:
        raise MatEffNetError("give --spatial_model, --temporal_model or both")
    if FLAGS.video and not os.path.isfile(FLAGS.video):
        raise bad_argument("video", FLAGS.video, "no such file")


def main(argv):
    del argv
    _check_modes()
    weights = _weights()

    from mat_effnet.evaluation import protocol
    from mat_effnet.ops import video
    from mat_effnet.serving import predict_video
    from mat_effnet.serving.classifier import VideoClassifier

    default = predict_video.PrepSettings(short_side=FLAGS.short_side, flow=FLAGS.flow,
                                     flow_bound=FLAGS.flow_bound)
    streams = {}
    for stream in ("spatial", "temporal"):
        path = FLAGS[f"{stream}_model"].value
        if not path:
            continue
        model = protocol.load_model(path)
        got = protocol.stream_spec(model).stream
        if got != stream:
            raise MatEffNetError(f"--{stream}_model is a {got} stream model")
        streams[stream] = (path, model)
    resolved = predict_video.resolve(streams, default)
    if FLAGS.videos:
        return _many(streams, resolved, weights)
    classifier = VideoClassifier(models={s: m for s, (_, m) in streams.items()},
                                 paths={s: p for s, (p, _) in streams.items()},
                                 resolved=resolved, num_segments=FLAGS.num_segments,
                                 fusion_weights=weights)
    if FLAGS.window_s is not None:
        return _timeline(classifier)
    try:
        result = classifier.predict(FLAGS.video)
    except video.VideoError as e:
        raise bad_argument("video", FLAGS.video, f"not a usable video ({e.reason})") from None
    out = result.to_dict(FLAGS.top_k)
    if FLAGS.attention_png:
        model = next(iter(streams.values()))[1]
        out["attention"] = predict_video.attention_figure(
            model, result.records[0], FLAGS.attention_png, min(FLAGS.num_segments, 8),
            resolved.class_names)
    if FLAGS.json:
        print(json.dumps(out))
    else:
        print(f"{FLAGS.video}: {out['frames']} frames")
        for rank, t in enumerate(out["top"], 1):
            print(f"  {rank}. {t['class']:<30s} {100 * t['probability']:6.2f} %")
        print("  seconds: " + ", ".join(f"{k} {v}" for k, v in out["seconds"].items()))
        for s, p in out["preparation"].items():
            print(f"  {s} prepared with: " + ", ".join(f"{k} {v}" for k, v in p.items()))
        if out["attention"]:
            print(f"  attention picture: {FLAGS.attention_png}")
    return 0


def _many(streams: dict, resolved, weights) -> int:
    from mat_effnet.serving import predict_many

    paths = predict_many.list_videos(FLAGS.videos)
    predict_many.log.setLevel(logging.INFO)  # the progress line
    summary = predict_many.predict_many(
        paths, {s: m for s, (_, m) in streams.items()}, resolved, FLAGS.output,
        workers=FLAGS.workers, num_segments=FLAGS.num_segments, top_k=FLAGS.top_k,
        fusion_weights=tuple(weights), batch_clips=FLAGS.batch_clips)
    print(json.dumps(summary) if FLAGS.json else
          f"{summary['videos']} videos: {summary['done']} predicted, {summary['failed']} "
          f"failed, {summary['skipped']} already in {FLAGS.output} "
          f"({summary['seconds']} s)")
    return 0


def _timeline(classifier) -> int:
    from mat_effnet.ops import video
    from mat_effnet.serving import timeline

    try:
        prediction = classifier.predict(FLAGS.video, window_s=FLAGS.window_s,
                                        stride_s=FLAGS.stride_s, top_k=FLAGS.top_k)
    except video.VideoError as e:
        raise bad_argument("video", FLAGS.video, f"not a usable video ({e.reason})") from None
    result = prediction.to_dict(FLAGS.top_k)
    if FLAGS.timeline_png and result["windows"]:
        result["timeline_png"] = FLAGS.timeline_png
        timeline.write_png(result, FLAGS.timeline_png, classifier.resolved.class_names)
    if FLAGS.json:
        print(json.dumps(result))
        return 0
    print(f"{FLAGS.video}: {result['frames']} frames, {result['duration_s']:.2f} s, "
          f"{len(result['windows'])} windows")
    for w in result["windows"]:
        t = w["top"][0]
        print(f"  {w['start_s']:9.2f} - {w['end_s']:9.2f} s  {t['class']:<30s} "
              f"{100 * t['probability']:6.2f} %")
    if FLAGS.timeline_png and result["windows"]:
        print(f"  timeline picture: {FLAGS.timeline_png}")
    return 0


def run():
    cli.run(main, PROG, logging.WARNING)


if __name__ == "__main__":
    run()
