"""``mat-effnet-fuse``: late average fusion of the streams' score files.

The paper (Sect. 3, Fig. 1) obtains the final prediction by averaging the
softmax scores of the spatial and temporal streams; Tables 2 and 3 list the
spatial, temporal and two-stream accuracy, Table 4 top-1 and top-5. This
binary reads the score files written by the evaluation of each stream, fuses
them and prints that table:

    mat-effnet-fuse --scores=runs/spatial/scores.npz,runs/temporal/scores.npz \\
        --output_dir=runs/fused [--weights=1,1.5]

It writes ``fusion.json`` (accuracies as fractions in 0..1) and
``confusion.png`` (the fused predictions' row-normalised confusion matrix) to
``--output_dir``, both atomically, the JSON last.
"""

from __future__ import annotations

import json
import logging
import sys

from absl import flags

from mat_effnet.common import cli
from mat_effnet.evaluation import fusion_report as report_lib
from mat_effnet.common.errors import MatEffNetError

FLAGS = flags.FLAGS
flags.DEFINE_list("scores", None, "Comma-separated score files (.npz), one per stream.")
flags.DEFINE_list("weights", None,
                  "Optional comma-separated fusion weights, one per score file "
                  "(normalised to sum 1; default equal, the paper's average).")
flags.DEFINE_string("output_dir", None, "Where fusion.json and confusion.png go.")
flags.mark_flags_as_required(["scores", "output_dir"])

PROG = "mat-effnet-fuse"
class UsageError(MatEffNetError):
    """A flag value that cannot be used."""


def parse_weights(values) -> list[float] | None:
    if not values:
        return None
    out = []
    for v in values:
        try:
            out.append(float(v))
        except ValueError:
            raise UsageError(f"--weights: {v!r} is not a number") from None
    return out


def main(argv):
    if len(argv) > 1:
        print(f"{PROG}: error: unexpected arguments {' '.join(argv[1:])!r}", file=sys.stderr)
        return 2
    try:
        report = report_lib.fuse_files(FLAGS.scores, parse_weights(FLAGS.weights), FLAGS.output_dir)
    except OSError as e:  # e.g. --output_dir not writable
        print(f"{PROG}: error: cannot write to {FLAGS.output_dir}: {e}", file=sys.stderr)
        return 2
    # One machine-readable line last, for scripts that scrape stdout.
    print(json.dumps(report, sort_keys=True))
    return 0


def run():
    cli.run(main, PROG, logging.WARNING, uses_tensorflow=False)


if __name__ == "__main__":
    run()
