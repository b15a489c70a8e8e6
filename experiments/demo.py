"""``mat-effnet-demo``: the whole MAT-EffNet pipeline on one laptop, offline.

1. generates a small synthetic dataset in the UCF101 layout (classes that
   need appearance for some distinctions and motion for others),
2. prepares it with TV-L1 flow (``mat-effnet-prep``),
3. trains the spatial and the temporal stream briefly at a small image size
   (from scratch: there are no ImageNet weights offline), side by side in
   two processes on a machine with two cores or more,
4. evaluates both (TSN test protocol), fuses them by late averaging (paper
   Sect. 3.3) and prints the paper's table layout, how the pairs of classes
   only motion separates came out, the files it wrote and its wall time by
   stage.

Everything lands under ``--output_dir`` (default ``demo_output``): the
videos, the TFRecords, each stream's TensorBoard logs and ``model.keras``,
the score files, ``fusion.json`` and ``confusion.png``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

from absl import flags

from mat_effnet.common import cli, flagdefs
from mat_effnet.training import config

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "demo_output", "Where everything is written.")
flags.DEFINE_integer("videos_per_class", 24, "Synthetic videos per class.")
# Half for test: the 72 training videos of before, and 72 test videos instead
# of 24. Each stream can only guess between the classes it cannot see (the
# temporal stream among three rightward squares); on 24 test videos that
# guess alone moved a stream's top-1 by +-7 points from seed to seed
#, on 72 by about +-4.
flags.DEFINE_float("train_fraction", 0.5, "Share of each class's videos used for training.")
flags.DEFINE_integer("num_frames", 16, "Frames per synthetic video.")
flags.DEFINE_enum("flow", "tvl1", ["tvl1", "dis"], "Optical flow algorithm.")
# 56, with 48-px crops: the 64/56 of before kept the same share of the frame
# in a crop and cost TV-L1 a quarter more pixels.
flags.DEFINE_integer("short_side", 56, "Stored frame size (short side).")
flags.DEFINE_integer("test_segments", 8, "Positions per video at test time.")
flags.DEFINE_integer("workers", None, "Prep workers (default: all cores).")
# The training settings the demo exposes are mat-effnet-train's own fields
# (mat_effnet.training.config); only their defaults differ: a short from-scratch run
# at a small size on tiny data. BatchNorm momentum 0.9, because Keras's 0.99
# lags on tiny data; a gradient-norm clip of 5, because from scratch the loss
# can otherwise run away after a few hundred steps. Learning rate 3e-2, not
# the paper's 1e-2 (which fine-tunes ImageNet weights): in the demo's 360
# steps from scratch, 1e-2 left the temporal stream unable to fit even its
# training clips (44 % train accuracy, right and down confused), 3e-2 fits
# them and separates every motion; 1e-1 was unstable.
# 48 px and 50 epochs (450 steps): at 56 px and 60 epochs seed 0's temporal
# stream reached 59.7 % in 5 min of training; at 48 px and 50 epochs 65.3 %
# in 3.6 min (a step at 48 px costs 15 % less; below 40 epochs the temporal
# stream still confused spin and down on some seeds: 58.3 % at 40 on seeds
# 0-2 at 56 px).
# No flips: the demo's classes are directions ("Right" never moves left), so a
# flipped clip is a motion no test video has; with flips the temporal stream
# spent its 540 steps learning both and reached 54-63 % top-1 and 88-99 %
# motion accuracy over seeds 0-2, without them 63-65 % and 97-100 %.
DEMO_TRAINING = {"seed": 0, "image_size": 48, "backbone": "efficientnet_b0", "epochs": 50,
                 "batch_size": 8, "learning_rate": 3e-2, "warmup_epochs": 1.0,
                 "bn_momentum": 0.9, "clip_norm": 5.0, "flow_length": 5, "flip": False}
flagdefs.define_flags(config.TrainConfig, only=DEMO_TRAINING, overrides=DEMO_TRAINING)
# Not flags: best.keras and last.keras every 20 epochs, not after each 9-step
# epoch: a write costs about 1 s of CPU, two a quarter of such an epoch.
DEMO_RUNTIME = {"checkpoint_every_epochs": 20}
flags.DEFINE_bool("side_by_side", True, "Train (and evaluate) the two streams at the same "
                  "time, one process each with half the cores (on a machine with >= 2 cores).")
STREAMS = ("spatial", "temporal")


def main(argv):
    del argv
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    from data_prep import builder, synthetic
    from data_prep.prep_config import AUTO, PrepConfig

    out = os.path.abspath(FLAGS.output_dir)
    timings = {}
    t0 = time.monotonic()

    videos = os.path.join(out, "videos")
    if not os.path.exists(os.path.join(videos, "ucfTrainTestlist", "testlist01.txt")):
        synthetic.generate_ucf101_like(videos, videos_per_class=FLAGS.videos_per_class,
                                       num_frames=FLAGS.num_frames, height=96, width=128,
                                       seed=FLAGS.seed, train_fraction=FLAGS.train_fraction)
    timings["generate_s"] = time.monotonic() - t0

    t, cpu = time.monotonic(), _cpu_seconds(children=True)
    data = os.path.join(out, "data")
    builder.build(PrepConfig(
        dataset="ucf101", data_root=videos, out_dir=data, flow=FLAGS.flow,
        # As mat-effnet-prep does by default: the Keras TV-L1 for tvl1.
        flow_implementation=AUTO, short_side=FLAGS.short_side,
        workers=FLAGS.workers or os.cpu_count() or 1, videos_per_shard=16))
    timings["prep_s"] = time.monotonic() - t
    timings["prep_cpu_s"] = _cpu_seconds(children=True) - cpu

    configs = {stream: flagdefs.build(
        config.TrainConfig, only=DEMO_TRAINING, stream=stream, data_dir=data,
        model_dir=os.path.join(out, "models", stream), weights=None, num_segments=3,
        validation_split=None, verbose=0, **DEMO_RUNTIME) for stream in STREAMS}
    cores = os.cpu_count() or 1
    side_by_side = FLAGS.side_by_side and cores >= 2
    if side_by_side:
        # One process per stream, each with half the cores. A training step
        # at 56 px is a chain of small ops that two threads share poorly: on
        # 2 cores one thread spent 17 ms of CPU per image, two threads 21-22
        # (both streams). The streams cost about the same, so side by side
        # each keeps a core busy on the cheaper single-thread step.
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(
                len(STREAMS), initializer=_start_stream_process,
                initargs=(max(1, cores // len(STREAMS)),)) as pool:
            results = pool.map(_train_and_score,
                               [(configs[s], out, FLAGS.test_segments) for s in STREAMS])
    else:
        results = [_train_and_score((configs[s], out, FLAGS.test_segments)) for s in STREAMS]
    score_files = []
    for stream, (path, stage_times) in zip(STREAMS, results):
        score_files.append(path)
        timings.update(stage_times)
    timings["side_by_side"] = side_by_side

    from mat_effnet.evaluation import fusion_report as report_lib

    t = time.monotonic()
    report_lib.fuse_files(score_files, None, out)  # prints the table, writes fusion.json
    timings["fuse_s"] = time.monotonic() - t
    timings["total_s"] = time.monotonic() - t0
    print(motion_pairs_line(score_files))
    print(files_block(out, FLAGS.flow))
    print(stage_times_line(timings), flush=True)
    return 0


def _start_stream_process(threads: int) -> None:
    """In a spawned stream process: TensorFlow on ``threads`` threads, quiet if asked."""
    from mat_effnet.common import tf_startup

    tf_startup.import_tensorflow_if_quiet()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def _train_and_score(job) -> tuple[str, dict]:
    """Trains one stream, evaluates it on the test split, writes its score file.

    Returns the score file and the stage times. Runs in its own process when
    the streams train side by side, so it takes everything as arguments.
    """
    cfg, out, test_segments = job
    from mat_effnet.evaluation import fusion, protocol
    from mat_effnet.training import trainer

    stream = cfg.stream
    t, cpu = time.monotonic(), _cpu_seconds()
    shutil.rmtree(cfg.runtime.model_dir, ignore_errors=True)  # a demo run starts afresh
    summary = trainer.train(cfg, callbacks=[_epoch_lines(stream)])
    times = {f"train_{stream}_s": time.monotonic() - t,
             f"train_{stream}_cpu_s": _cpu_seconds() - cpu}
    t, cpu = time.monotonic(), _cpu_seconds()
    model = protocol.load_model(summary["model"])
    result = protocol.evaluate(model, cfg.data.data_dir, "test", num_segments=test_segments,
                               crops=1, batch_size=4)
    path = os.path.join(out, f"scores_{stream}.npz")
    fusion.save_scores(path, result["video_ids"], result["labels"], result["scores"],
                       result["classes"], result["split"], result["dataset"], stream)
    times[f"eval_{stream}_s"] = time.monotonic() - t
    times[f"eval_{stream}_cpu_s"] = _cpu_seconds() - cpu
    print(json.dumps(dict(result["metrics"], stream=stream)), flush=True)
    return path, times


def _cpu_seconds(children: bool = False) -> float:
    """CPU time of this process (and of its finished child processes)."""
    t = os.times()
    return t.user + t.system + ((t.children_user + t.children_system) if children else 0.0)


def _epoch_lines(stream: str):
    """A callback printing one line per epoch, named by stream (two may train at once)."""
    import keras

    class EpochLines(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            print(f"{stream:8s} epoch {epoch + 1}/{self.params.get('epochs')}: "
                  f"loss {logs.get('loss', float('nan')):.3f}, "
                  f"accuracy {logs.get('accuracy', float('nan')):.3f} "
                  f"({time.monotonic() - self.start:.0f} s)", flush=True)

    return EpochLines()


def motion_pairs_line(score_files) -> str:
    """How the fused model tells apart the classes only motion separates."""
    import numpy as np

    from data_prep import synthetic
    from mat_effnet.evaluation import fusion, metrics

    fused = fusion.fuse([fusion.load_scores(p) for p in score_files])
    names = list(fused.class_names)
    cm = metrics.confusion_matrix(metrics.predictions(fused.scores), fused.labels, len(names))
    parts, apart = [], True
    for a, b in synthetic.motion_pairs():
        i, j = names.index(a), names.index(b)
        for x, y in ((i, j), (j, i)):
            total = int(np.sum(cm[x]))
            parts.append(f"{names[x]} {int(cm[x, x])}/{total} right, {int(cm[x, y])} called "
                         f"{names[y]}")
            apart &= bool(cm[x, x] > cm[x, y])
    return ("Motion pairs (two-stream): " + "; ".join(parts)
            + (": every pair apart" if apart else ": NOT every pair apart"))


def files_block(out: str, flow: str) -> str:
    """What the demo left under ``out``, one line each."""
    flow = {"tvl1": "TV-L1", "dis": "DIS"}.get(flow, flow)
    rows = [("videos/", "the generated videos (UCF101 layout)"),
            ("data/", f"TFRecords with RGB and {flow} flow"),
            ("models/{spatial,temporal}/model.keras", "the trained streams"),
            ("models/{spatial,temporal}/logs/", f"TensorBoard: tensorboard --logdir {out}/models"),
            ("scores_spatial.npz, scores_temporal.npz", "test-set softmax scores"),
            ("fusion.json, confusion.png", "the table above, its confusion matrix")]
    return f"\nWritten under {out}:\n" + "\n".join(f"  {a:40s} {b}" for a, b in rows)


def stage_times_line(timings: dict) -> str:
    """Wall time by stage: prep (videos + TV-L1), each stream's training, evaluation + fusion.

    With the streams side by side, their training and evaluation overlap:
    the stages then add up to more than the total.
    """
    from mat_effnet.common.progress import fmt_seconds

    evaluation = sum(timings.get(k, 0.0) for k in ("eval_spatial_s", "eval_temporal_s", "fuse_s"))
    stages = [("prep", timings.get("generate_s", 0.0) + timings.get("prep_s", 0.0)),
              ("train spatial", timings.get("train_spatial_s", 0.0)),
              ("train temporal", timings.get("train_temporal_s", 0.0)),
              ("eval/fuse", evaluation)]
    line = ("Wall time: " + ", ".join(f"{name} {fmt_seconds(v)}" for name, v in stages)
            + f"; total {fmt_seconds(timings.get('total_s', sum(v for _, v in stages)))}")
    if timings.get("side_by_side"):
        line += " (the streams trained and were evaluated side by side)"
    cpu = [(name, timings.get(f"{key}_cpu_s")) for name, key in (
        ("prep", "prep"), ("train spatial", "train_spatial"), ("train temporal", "train_temporal"))]
    if all(v is not None for _, v in cpu):
        line += "\nCPU time: " + ", ".join(f"{name} {fmt_seconds(v)}" for name, v in cpu)
    return line


def _main_or_error(argv):
    from mat_effnet.evaluation import metrics

    try:
        return main(argv)
    except metrics.MetricsError as e:
        # Non-finite scores: training diverged (TerminateOnNaN stopped it).
        print(f"mat-effnet-demo: error: {e}: training diverged; rerun with another --seed "
              "or a lower --learning_rate", file=sys.stderr)
        return 1


def run():
    cli.run(_main_or_error, "mat-effnet-demo")


if __name__ == "__main__":
    sys.exit(run())
