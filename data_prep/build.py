"""``mat-effnet-prep``: the command line of the data preparation (see builder).

    mat-effnet-prep --dataset=ucf101 --data_root=/data/ucf101 --split=1 \\
        --out_dir=/data/ucf101_tfr --flow=tvl1 --workers=8

Re-running the same command after a kill resumes; a finished run is a no-op.
"""

from __future__ import annotations

import logging
import os
import sys

# One clear error line on bad input, not TensorFlow's C++ INFO chatter.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

from data_prep import builder, layouts

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", None, list(layouts.DATASETS), "Layout of --data_root.")
flags.DEFINE_string("data_root", None, "Folder holding the dataset as it ships.")
flags.DEFINE_integer("split", 1, "Official split number (UCF101/HMDB51: 1-3).")
flags.DEFINE_string("split_file", None, "folder layout: optional '<class>/<file> train|test' list.")
flags.DEFINE_string("out_dir", None, "Where the TFRecord shards and metadata go.")
flags.DEFINE_enum("flow", "tvl1", list(builder.FLOW_ALGORITHMS),
                  "Optical flow: TV-L1 (the paper's), DIS (~100x faster on CPU) or none.")
flags.DEFINE_float("flow_bound", 20.0, "Flow is clipped to +-bound pixels before quantization.")
flags.DEFINE_integer("workers", 1, "Worker processes (one core each).")
flags.DEFINE_integer("short_side", 256, "Frames are resized so the short side is this (0: keep).")
flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality of RGB and flow frames.")
flags.DEFINE_integer("videos_per_shard", 32, "Videos per TFRecord shard.")
flags.DEFINE_integer("chunk_frames", 1000, "Longer videos are cut into records of this many frames.")
flags.DEFINE_string("name", None, "Dataset name in shard file names (default: --dataset).")
flags.DEFINE_string("runner", None,
                    "Run as an Apache Beam pipeline on this runner (DirectRunner, DataflowRunner, "
                    "FlinkRunner, SparkRunner...; needs mat-effnet[beam]); Beam's own pipeline "
                    "options go after '--'. Default: a process pool of --workers on this machine.")
flags.mark_flags_as_required(["dataset", "data_root", "out_dir"])


def main(argv):
    pipeline_args = argv[1:]  # what follows "--": Beam's pipeline options
    if pipeline_args and not FLAGS.runner:
        print(f"mat-effnet-prep: error: {' '.join(pipeline_args)}: options after '--' are "
              "Beam pipeline options and need --runner", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    cfg = builder.PrepConfig(
        dataset=FLAGS.dataset, data_root=FLAGS.data_root, out_dir=FLAGS.out_dir,
        split=FLAGS.split, split_file=FLAGS.split_file, flow=FLAGS.flow,
        flow_bound=FLAGS.flow_bound, short_side=FLAGS.short_side,
        jpeg_quality=FLAGS.jpeg_quality, workers=FLAGS.workers,
        videos_per_shard=FLAGS.videos_per_shard, chunk_frames=FLAGS.chunk_frames,
        name=FLAGS.name)
    try:
        if FLAGS.runner:
            from data_prep import beam_pipeline

            meta = beam_pipeline.build_with_beam(cfg, [f"--runner={FLAGS.runner}", *pipeline_args])
            if meta is None:  # a detached job writes the metadata when it completes
                return 0
        else:
            meta = builder.build(cfg)
    except (layouts.LayoutError, builder.PrepError, ValueError) as e:
        print(f"mat-effnet-prep: error: {e}", file=sys.stderr)
        return 2
    return 1 if not any(s["videos"] for s in meta["splits"].values()) else 0


def run():
    app.run(main)


if __name__ == "__main__":
    run()
