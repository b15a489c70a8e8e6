"""``mat-effnet-eval``: multi-segment, multi-crop evaluation of one stream.

    mat-effnet-eval --data_dir=/data/ucf101_s1 --model=runs/ucf101/spatial/model.keras \\
        --split=test --num_segments=25 --crops=1 --output=scores_spatial.npz

Writes per-video softmax scores (.npz: video ids, labels, probabilities,
class names) for mat-effnet-fuse and prints top-1, top-5 and mean class
accuracy as one JSON line.
"""

from __future__ import annotations

import json
import logging
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "A folder written by mat-effnet-prep.")
flags.DEFINE_string("model", None, "A stream model (.keras) written by mat-effnet-train.")
flags.DEFINE_string("split", "test", "Split to evaluate.")
flags.DEFINE_integer("num_segments", 25, "Uniformly spaced positions per video (TSN: 25).")
flags.DEFINE_enum("crops", "1", ["1", "3", "10"], "Crops per position.")
flags.DEFINE_integer("batch_size", 1, "Videos decoded at a time.")
flags.DEFINE_string("output", None, "Where to write the scores (.npz).")
flags.mark_flags_as_required(["data_dir", "model", "output"])


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    from mat_effnet import evaluation, fusion, records

    if FLAGS.num_segments < 1 or FLAGS.batch_size < 1:
        print("mat-effnet-eval: error: --num_segments and --batch_size must be >= 1",
              file=sys.stderr)
        return 2
    try:
        model = evaluation.load_model(FLAGS.model)
        result = evaluation.evaluate(model, FLAGS.data_dir, FLAGS.split, FLAGS.num_segments,
                                     int(FLAGS.crops), FLAGS.batch_size)
        fusion.save_scores(FLAGS.output, result["video_ids"], result["labels"],
                           result["scores"], result["classes"], result["split"],
                           result["dataset"], result["stream"])
    except (evaluation.EvalError, records.MetadataError, fusion.ScoresError, ValueError) as e:
        print(f"mat-effnet-eval: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(dict(result["metrics"], stream=result["stream"], split=FLAGS.split,
                          output=FLAGS.output)))
    return 0


def run():
    app.run(main)


if __name__ == "__main__":
    run()
