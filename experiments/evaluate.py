"""``mat-effnet-eval``: multi-segment, multi-crop evaluation of one stream.

    mat-effnet-eval --data_dir=/data/ucf101_s1 --model=runs/ucf101/spatial/model.keras \\
        --split=test --num_segments=25 --crops=1 --output=scores_spatial.npz

Writes per-video softmax scores (.npz: video ids, labels, probabilities,
class names, the model's identity) for mat-effnet-fuse and prints top-1,
top-5 and mean class accuracy as one JSON line. What the model is (stream,
image size, classes, how its training data was prepared) is read from the
model itself; data prepared with another flow algorithm or bound, or with
other classes, is refused.
"""

from __future__ import annotations

import json
import logging

from absl import flags

from mat_effnet.common import cli
from mat_effnet.common.errors import bad_argument

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "A folder written by mat-effnet-prep.")
flags.DEFINE_string("model", None, "A stream model (.keras) written by mat-effnet-train.")
flags.DEFINE_string("split", "test", "Split to evaluate.")
flags.DEFINE_integer("num_segments", 25, "Uniformly spaced positions per video (TSN: 25).")
flags.DEFINE_enum("crops", "1", ["1", "3", "10"], "Crops per position.")
flags.DEFINE_integer("batch_size", 1, "Videos decoded at a time.")
flags.DEFINE_string("output", None, "Where to write the scores (.npz).")
flags.mark_flags_as_required(["data_dir", "model", "output"])

PROG = "mat-effnet-eval"


def main(argv):
    del argv
    from mat_effnet.evaluation import protocol, fusion

    for name in ("num_segments", "batch_size"):
        if FLAGS[name].value < 1:
            raise bad_argument(name, FLAGS[name].value, "must be >= 1")
    model = protocol.load_model(FLAGS.model)
    result = protocol.evaluate(model, FLAGS.data_dir, FLAGS.split, FLAGS.num_segments,
                                 int(FLAGS.crops), FLAGS.batch_size)
    fusion.save_scores(FLAGS.output, result["video_ids"], result["labels"],
                       result["scores"], result["classes"], result["split"],
                       result["dataset"], result["stream"],
                       model_identity=result["model_identity"])
    line = dict(result["metrics"], stream=result["stream"], split=FLAGS.split,
                output=FLAGS.output)
    if result["notes"]:
        line["notes"] = result["notes"]
    print(json.dumps(line))
    return 0


def run():
    cli.run(main, PROG, logging.INFO)


if __name__ == "__main__":
    run()
