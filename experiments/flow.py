"""``mat-effnet-flow``: a pip-installable denseflow (videos -> frame folders, TV-L1 flow).

Writes what denseflow writes for an mmaction2 data preparation, in its
names and quantization (`data_prep.rawframes`, `data_prep.frames_export`),
with this project's TV-L1 (keras, batched on the GPU when there is one):

    mat-effnet-flow --videos=data/ucf101/videos --out_dir=data/ucf101/rawframes
    mat-effnet-flow --dataset=ucf101 --data_root=data/ucf101 --split=1 \\
        --out_dir=data/ucf101/rawframes          # + ucf101_{train,val}_split_1_rawframes.txt

``--videos`` is a folder (every video below it; ids are relative paths) or
a list file (one path a line); ``--dataset``/``--data_root`` take the
videos from the dataset's layout instead and also write mmaction2's file
lists. Re-running the same command after a kill resumes.
"""

from __future__ import annotations

import sys

from absl import flags

from data_prep import datasets, frames_export
from mat_effnet.common import cli, flagdefs

FLAGS = flags.FLAGS
flags.DEFINE_string("videos", None, "A folder of videos (searched recursively) or a list file.")
flags.DEFINE_enum("dataset", None, list(datasets.DATASETS),
                  "Take the videos from this dataset's layout under --data_root, and write "
                  "mmaction2's file lists for its splits.")
flags.DEFINE_string("data_root", None, "With --dataset: the dataset as it ships.")
flags.DEFINE_integer("split", 1, "With --dataset: the official split of the file lists (1-3).")
flags.DEFINE_string("out_dir", None, "Where the frame folders, file lists and "
                    "mat_effnet_flow.json go.")
flagdefs.define_flags(frames_export.FlowExportSettings)
flags.mark_flags_as_required(["out_dir"])


def main(argv):
    del argv
    settings = flagdefs.build(frames_export.FlowExportSettings)
    if bool(FLAGS.videos) == bool(FLAGS.dataset):
        print("mat-effnet-flow: error: give either --videos or --dataset with --data_root",
              file=sys.stderr)
        return 2
    layout = split_id = None
    if FLAGS.dataset:
        if not FLAGS.data_root:
            print("mat-effnet-flow: error: --dataset needs --data_root",
                  file=sys.stderr)
            return 2
        layout = datasets.load_layout(FLAGS.dataset, FLAGS.data_root, split=FLAGS.split)
        videos = [frames_export.Video(e.video_id, e.path)
                  for entries in layout.splits.values() for e in entries]
        split_id = FLAGS.split if FLAGS.dataset in ("ucf101", "hmdb51") else None
    else:
        videos = frames_export.find_videos(FLAGS.videos)
    if not videos:
        print("mat-effnet-flow: error: no videos found", file=sys.stderr)
        return 2
    result = frames_export.export(videos, settings, FLAGS.out_dir, layout=layout,
                                  split_id=split_id)
    return 1 if not result["frames"] else 0


def run():
    cli.run(main, "mat-effnet-flow")


if __name__ == "__main__":
    run()
