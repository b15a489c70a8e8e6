"""``mat-effnet-export``: one SavedModel from raw frames to the fused answer.

    mat-effnet-export --spatial_model=runs/spatial/model.keras \\
        --temporal_model=runs/temporal/model.keras --output_dir=export/ \\
        [--fusion_weights=1,1.5] [--num_segments=25] [--crops=1|3|10] [--tflite] [--onnx]

The SavedModel's ``serving_default`` takes ``frames`` (uint8, T x H x W x 3,
RGB) and returns ``scores``, ``spatial_scores``, ``temporal_scores``,
``top_classes`` and ``top_scores``; TV-L1 runs inside it
(`mat_effnet.serving.saved_model_export`). Its ``metadata`` signature returns the class names,
the preparation settings and both models' identities as JSON. With
``--tflite`` each stream is also written as ``.tflite`` files, float32 and
dynamic-range int8 (`mat_effnet.serving.tflite_export`). With ``--onnx``
each stream is also written as ``spatial.onnx`` and ``temporal.onnx``, the
clip in and the softmax out, and TV-L1 at the first working size as
``flow.onnx`` (`mat_effnet.serving.onnx_export`; needs ``pip install -e .[onnx]``).
"""

from __future__ import annotations

import json
import logging
import os

from absl import flags

from mat_effnet.common import cli, flagdefs
from mat_effnet.serving import saved_model_export as export_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("spatial_model", None, "Spatial stream model (.keras).")
flags.DEFINE_string("temporal_model", None, "Temporal stream model (.keras), TV-L1 flow.")
flags.DEFINE_string("output_dir", None, "Where the SavedModel is written (replaced whole).")
flags.DEFINE_bool("tflite", False, "Also write each stream as .tflite (float32 and int8).")
flags.DEFINE_integer("tflite_segments", 25, "The fixed number of segments of the .tflite files.")
flagdefs.define_flags(export_lib.ExportSettings)
flags.mark_flags_as_required(["spatial_model", "temporal_model", "output_dir"])

PROG = "mat-effnet-export"


def main(argv):
    del argv
    settings = flagdefs.build(export_lib.ExportSettings)
    if settings.onnx:  # missing packages are said before minutes of export
        from mat_effnet.serving import onnx_export

        onnx_export.require()
    for name in ("spatial_model", "temporal_model"):
        if not os.path.isfile(FLAGS[name].value):
            raise export_lib.ExportError(f"--{name}={FLAGS[name].value}: no such file")
    out = export_lib.export(FLAGS.spatial_model, FLAGS.temporal_model, FLAGS.output_dir,
                            settings)
    summary = {"output_dir": os.path.abspath(FLAGS.output_dir), "size_bytes": out["size_bytes"],
               "class_names": len(out["class_names"]), "working_sizes": out["working_sizes"]}
    if "onnx" in out:
        files = sorted(out["onnx"]["files"].values())
        if "flow" in out["onnx"]:
            files.append(out["onnx"]["flow"]["file"])
        summary["onnx"] = {"opset": out["onnx"]["opset"], "files": files}
    if FLAGS.tflite:
        from mat_effnet.serving import tflite_export

        summary["tflite"] = tflite_export.write_streams(
            {"spatial": FLAGS.spatial_model, "temporal": FLAGS.temporal_model},
            FLAGS.output_dir, segments=FLAGS.tflite_segments)
    print(json.dumps(summary))
    return 0


def run():
    cli.run(main, PROG, logging.WARNING)


if __name__ == "__main__":
    run()
