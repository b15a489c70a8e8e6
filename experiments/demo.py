"""``mat-effnet-demo``: the whole MAT-EffNet pipeline on one laptop, offline.

1. generates a small synthetic dataset in the UCF101 layout (classes that
   need appearance for some distinctions and motion for others),
2. prepares it with TV-L1 flow (``mat-effnet-prep``),
3. trains the spatial and the temporal stream briefly at a small image size
   (from scratch: there are no ImageNet weights offline),
4. evaluates both (TSN test protocol), fuses them by late averaging (paper
   Sect. 3.3) and prints the paper's table layout.

Everything lands under ``--output_dir`` (default ``demo_output``): the
videos, the TFRecords, each stream's TensorBoard logs and ``model.keras``,
the score files, ``fusion.json`` and ``confusion.png``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "demo_output", "Where everything is written.")
flags.DEFINE_integer("seed", 0, "Seed of the data and of training.")
flags.DEFINE_integer("videos_per_class", 16, "Synthetic videos per class.")
flags.DEFINE_integer("num_frames", 16, "Frames per synthetic video.")
flags.DEFINE_enum("flow", "tvl1", ["tvl1", "dis"], "Optical flow algorithm.")
flags.DEFINE_integer("short_side", 64, "Stored frame size (short side).")
flags.DEFINE_integer("image_size", 56, "Training crop size.")
flags.DEFINE_string("backbone", "efficientnet_b0", "Backbone of both streams.")
flags.DEFINE_integer("epochs", 40, "Training epochs per stream.")
flags.DEFINE_integer("batch_size", 8, "Training batch size.")
flags.DEFINE_float("learning_rate", 1e-2, "Peak SGD learning rate.")
flags.DEFINE_float("warmup_epochs", 1.0, "Linear warm-up epochs.")
flags.DEFINE_float("bn_momentum", 0.9, "BatchNorm momentum (Keras's 0.99 lags on tiny data).")
flags.DEFINE_float("clip_norm", 5.0, "Global gradient-norm clip: from scratch, the loss "
                   "can otherwise run away after a few hundred steps.")
flags.DEFINE_integer("flow_length", 5, "Flow fields per segment.")
flags.DEFINE_integer("test_segments", 8, "Positions per video at test time.")
flags.DEFINE_integer("workers", None, "Prep workers (default: all cores).")


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    from data_prep import builder, synthetic
    from mat_effnet import evaluation, fusion, training

    out = os.path.abspath(FLAGS.output_dir)
    timings = {}
    t0 = time.monotonic()

    videos = os.path.join(out, "videos")
    if not os.path.exists(os.path.join(videos, "ucfTrainTestlist", "testlist01.txt")):
        synthetic.generate_ucf101_like(videos, videos_per_class=FLAGS.videos_per_class,
                                       num_frames=FLAGS.num_frames, height=96, width=128,
                                       seed=FLAGS.seed)
    timings["generate_s"] = time.monotonic() - t0

    t = time.monotonic()
    data = os.path.join(out, "data")
    builder.build(builder.PrepConfig(
        dataset="ucf101", data_root=videos, out_dir=data, flow=FLAGS.flow,
        short_side=FLAGS.short_side, workers=FLAGS.workers or os.cpu_count() or 1,
        videos_per_shard=16))
    timings["prep_s"] = time.monotonic() - t

    score_files = []
    for stream in ("spatial", "temporal"):
        t = time.monotonic()
        model_dir = os.path.join(out, "models", stream)
        shutil.rmtree(model_dir, ignore_errors=True)  # a demo run starts its training afresh
        summary = training.train(training.TrainConfig(
            stream=stream, data_dir=data, model_dir=model_dir, backbone=FLAGS.backbone,
            weights=None, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size,
            learning_rate=FLAGS.learning_rate, warmup_epochs=FLAGS.warmup_epochs,
            bn_momentum=FLAGS.bn_momentum, clip_norm=FLAGS.clip_norm,
            image_size=FLAGS.image_size,
            flow_length=FLAGS.flow_length, num_segments=3, validation_split=None,
            seed=FLAGS.seed, verbose=2))
        timings[f"train_{stream}_s"] = time.monotonic() - t
        t = time.monotonic()
        model = evaluation.load_model(summary["model"])
        result = evaluation.evaluate(model, data, "test", num_segments=FLAGS.test_segments,
                                     crops=1, batch_size=4)
        path = os.path.join(out, f"scores_{stream}.npz")
        fusion.save_scores(path, result["video_ids"], result["labels"], result["scores"],
                           result["classes"], result["split"], result["dataset"], stream)
        score_files.append(path)
        timings[f"eval_{stream}_s"] = time.monotonic() - t
        print(json.dumps(dict(result["metrics"], stream=stream)), flush=True)

    from mat_effnet import report as report_lib

    report = report_lib.fuse_files(score_files, None, out)  # prints the paper's table layout
    timings["total_s"] = time.monotonic() - t0
    print(json.dumps({"fusion": {k: report[k] for k in ("spatial", "temporal", "two_stream")},
                      "seconds": {k: round(v, 1) for k, v in timings.items()}}))
    print(f"\nEverything is in {out}:\n"
          f"  models:      {out}/models/{{spatial,temporal}}/model.keras\n"
          f"  TensorBoard: tensorboard --logdir {out}/models\n"
          f"  fusion:      {out}/fusion.json, {out}/confusion.png")
    return 0


def _main_or_error(argv):
    from mat_effnet import metrics

    try:
        return main(argv)
    except metrics.MetricsError as e:
        # Non-finite scores: training diverged (TerminateOnNaN stopped it).
        print(f"mat-effnet-demo: error: {e}: training diverged; rerun with another --seed "
              "or a lower --learning_rate", file=sys.stderr)
        return 1


def run():
    app.run(_main_or_error)


if __name__ == "__main__":
    sys.exit(run())
