"""``mat-effnet-verify``: read a prepared dataset end to end and report what is damaged.

    mat-effnet-verify /data/ucf101_tfr [--decode] [--split=train]

Reads every record of every shard (TFRecord's CRCs), checks each shard's
size and SHA-256 and each index against the metadata prep wrote, and each
group against its header; ``--decode`` also decodes every JPEG
(`mat_effnet.records.integrity`). Prints one line per problem and a summary; exits
0 when the dataset is sound, 1 when anything is damaged: then the prep
command that wrote it, run again with ``--rebuild_damaged``, remakes just
the damaged shards from their videos (`data_prep.repair`).
"""

from __future__ import annotations

import sys

from absl import flags

from mat_effnet.common import cli
from mat_effnet.common.errors import MatEffNetError

FLAGS = flags.FLAGS
flags.DEFINE_bool("decode", False, "Also decode every JPEG (slower: reads and decodes all).")
flags.DEFINE_multi_string("split", None, "Only these splits (default: all).")

PROG = "mat-effnet-verify"


def main(argv):
    if len(argv) != 2:
        raise MatEffNetError(f"usage: {PROG} DATA_DIR [--decode] [--split=NAME]")
    from mat_effnet.records import integrity

    data_dir = argv[1]
    problems = integrity.verify(data_dir, decode=FLAGS.decode, splits=FLAGS.split)
    for p in problems:
        print(p)
    checked = "records, sizes, checksums and indexes" + (", JPEGs" if FLAGS.decode else "")
    if problems:
        print(f"{PROG}: {data_dir}: {len(problems)} problem(s) ({checked} checked); "
              "to remake the damaged shards, run the mat-effnet-prep command that wrote "
              "them again with --rebuild_damaged", file=sys.stderr)
        return 1
    print(f"{PROG}: {data_dir}: ok ({checked} checked)", file=sys.stderr)
    return 0


def run():
    cli.run(main, PROG)


if __name__ == "__main__":
    run()
