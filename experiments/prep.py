"""``mat-effnet-prep``: the command line of the data preparation (see builder).

    mat-effnet-prep --dataset=ucf101 --data_root=/data/ucf101 --split=1 \\
        --out_dir=/data/ucf101_tfr --flow=tvl1 --workers=8

Re-running the same command after a kill resumes; a finished run is a no-op.

Import of frames people already have (`data_prep.frames_import`): the lists
still come from --data_root (no video files needed there), the frames and
flow from --frames_root, and nothing is decoded or computed:

    mat-effnet-prep --dataset=ucf101 --data_root=/data/ucf101 \\
        --frames_root=/data/ucf101/rawframes --frames_layout=rawframes --out_dir=...

--short_side then defaults to keeping the stored size.
One prep at a time per --out_dir (`data_prep.out_lock`); --wait waits for the other.
"""

from __future__ import annotations

import sys

from absl import flags

from data_prep import builder, datasets, out_lock, rawframes
from mat_effnet.encoding import encode
from mat_effnet.ops import optical_flow as flow_lib
from data_prep.prep_config import AUTO, PrepConfig
from mat_effnet.common import cli, flagdefs
from mat_effnet import records

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", None, list(datasets.DATASETS), "Layout of --data_root.")
flags.DEFINE_string("data_root", None, "Folder holding the dataset as it ships.")
flags.DEFINE_integer("split", 1, "Official split number (UCF101/HMDB51: 1-3).")
flags.DEFINE_string("split_file", None, "folder layout: optional '<class>/<file> train|test' list.")
flags.DEFINE_string("out_dir", None, "Where the TFRecord shards and metadata go.")
flagdefs.define_flags(encode.EncodeSettings, exclude=("flow_implementation",))
flags.DEFINE_enum("flow_implementation", AUTO, [AUTO, *flow_lib.IMPLEMENTATIONS],
                  encode.EncodeSettings.__dataclass_fields__["flow_implementation"].metadata["help"]
                  + " auto: the one a resumed run used, else the faster one (keras for "
                  "tvl1: measured faster on CPU too).")
flags.DEFINE_integer("flow_batch", None, "Frame pairs per call of the keras TV-L1 "
                     f"(default {flow_lib.DEFAULT_BATCH}).")
flags.DEFINE_integer("workers", 1, "Worker processes (one core each).")
flags.DEFINE_integer("videos_per_shard", 32, "Videos per TFRecord shard.")
flags.DEFINE_string("name", None, "Dataset name in shard file names (default: --dataset).")
flags.DEFINE_enum("schema_version", str(records.SCHEMA_VERSION),
                  [str(v) for v in records.SCHEMA_VERSIONS],
                  "Record layout. 2: frame-addressable groups plus an index per shard, so "
                  "training reads only the frames a clip uses (for local or network disks). "
                  "1: one Example per video, read whole (suits object stores, where every seek "
                  "is a request; TFDS's builder_from_directory reads it).")
flags.DEFINE_string("runner", None,
                    "Run as an Apache Beam pipeline on this runner (DirectRunner, DataflowRunner, "
                    "FlinkRunner, SparkRunner...; needs mat-effnet[beam]); Beam's own pipeline "
                    "options go after '--'. Default: a process pool of --workers on this machine.")
flags.DEFINE_string("frames_root", None, "Import: the videos are folders of extracted frames "
                    "and flow here (found by video id); no video is decoded. --short_side "
                    "then defaults to 0 (keep the stored size).")
flags.DEFINE_enum("frames_layout", "rawframes", list(rawframes.LAYOUTS),
                  "Import: rawframes (mmaction2/denseflow: <class>/<video>/img_00001.jpg, "
                  "flow_x_00001.jpg, flow_y_00001.jpg) or twostreamfusion "
                  "(jpegs_256/<video>/frame000001.jpg, tvl1_flow/{u,v}/<video>/frame000001.jpg).")
flags.DEFINE_float("frames_bound", None, "Import: the bound the stored flow was quantized with "
                   f"(default: the folder's {rawframes.CONVENTIONS_FILE}, else denseflow's "
                   f"{rawframes.DENSEFLOW_BOUND:g}). Re-quantized to --flow_bound if different.")
flags.DEFINE_enum("frames_rounding", None, list(rawframes.ROUNDINGS),
                  "Import: the stored flow's rounding: cvround (denseflow), truncate (mmaction2's "
                  "tools/misc/flow_extraction.py) or half_up (default: the folder's "
                  f"{rawframes.CONVENTIONS_FILE}, else cvround).")
flags.DEFINE_float("min_decoded_fraction", 0.9, "A video that decodes to fewer than this "
                   "fraction of the frames its container announces is listed under the "
                   "metadata's warnings (kept), or with --strict_decode under failures.")
flags.DEFINE_bool("strict_decode", False, "Leave out, as failed, videos under "
                  "--min_decoded_fraction.")
flags.DEFINE_float("video_timeout_s", None, "Seconds one video may take; a video still "
                   "decoding then has its process killed and is listed as failed (one "
                   "process per video: for datasets with files that hang a decoder).")
flags.DEFINE_bool("rebuild_damaged", False, "Check every finished shard of --out_dir (size "
                  "and SHA-256: one read of each) and make the damaged ones again from their "
                  "videos; sound shards are kept (after mat-effnet-verify reports damage).")
flags.DEFINE_bool("wait", False, "When another prep holds --out_dir's lock, wait for it to "
                  "finish instead of stopping.")
flags.mark_flags_as_required(["dataset", "data_root", "out_dir"])


def main(argv):
    pipeline_args = argv[1:]  # what follows "--": Beam's pipeline options
    if pipeline_args and not FLAGS.runner:
        print(f"mat-effnet-prep: error: {' '.join(pipeline_args)}: options after '--' are "
              "Beam pipeline options and need --runner", file=sys.stderr)
        return 2
    encoding = flagdefs.flat_values(encode.EncodeSettings, exclude=("flow_implementation",))
    if FLAGS.frames_root and not FLAGS["short_side"].present:
        encoding["short_side"] = 0  # an import keeps the stored size unless told
    cfg = PrepConfig(
        dataset=FLAGS.dataset, data_root=FLAGS.data_root, out_dir=FLAGS.out_dir,
        split=FLAGS.split, split_file=FLAGS.split_file, **encoding,
        frames_root=FLAGS.frames_root, frames_layout=FLAGS.frames_layout,
        frames_bound=FLAGS.frames_bound, frames_rounding=FLAGS.frames_rounding,
        flow_implementation=FLAGS.flow_implementation, flow_batch=FLAGS.flow_batch,
        workers=FLAGS.workers, videos_per_shard=FLAGS.videos_per_shard, name=FLAGS.name,
        schema_version=int(FLAGS.schema_version),
        min_decoded_fraction=FLAGS.min_decoded_fraction, strict_decode=FLAGS.strict_decode,
        video_timeout_s=FLAGS.video_timeout_s, rebuild_damaged=FLAGS.rebuild_damaged)
    if FLAGS.runner:
        from data_prep import beam_pipeline

        meta = beam_pipeline.build_with_beam(cfg, [f"--runner={FLAGS.runner}", *pipeline_args])
        if meta is None:  # a detached job writes the metadata when it completes
            return 0
    else:
        meta = builder.build(cfg)
    return 1 if not any(s["videos"] for s in meta["splits"].values()) else 0


def run():
    # The lock is taken before TensorFlow is imported: the first to start holds it.
    cli.run(main, "mat-effnet-prep",
            hold=lambda: out_lock.holding(FLAGS.out_dir, wait=FLAGS.wait))


if __name__ == "__main__":
    run()
