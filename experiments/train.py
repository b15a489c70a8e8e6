"""``mat-effnet-train``: train one stream of MAT-EffNet (paper Sect. 4.2).

    mat-effnet-train --flagfile=experiments/configs/ucf101_efficientnet_b0_attention_spatial.cfg \\
        --data_dir=/data/ucf101_s1 --model_dir=runs/ucf101/spatial

Killed and started again with the same command, it continues from its last
backup (every --backup_every_steps steps) instead of from scratch.

Across machines: --strategy=multi_worker (MultiWorkerMirroredStrategy), the
cluster in TF_CONFIG, the same command on every machine; worker 0 (the chief)
alone writes --model_dir.  Two machines, 10.0.0.1 and 10.0.0.2:

    # on 10.0.0.1 (the chief)
    export TF_CONFIG='{"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},
                       "task": {"type": "worker", "index": 0}}'
    mat-effnet-train --strategy=multi_worker --flagfile=... --data_dir=/data/ucf101_s1 \\
        --model_dir=runs/ucf101/spatial
    # on 10.0.0.2: the same, with "index": 1

--batch_size stays the global batch (split over all replicas of all
machines).  A killed worker stops the others; start all of them again with
the same command and training continues from the chief's last checkpoint.
"""

from __future__ import annotations

import json
import logging
import re
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_enum("stream", None, ["spatial", "temporal"], "Which stream to train.")
flags.DEFINE_string("data_dir", None, "A folder written by mat-effnet-prep.")
flags.DEFINE_string("model_dir", None, "Checkpoints, logs and model.keras go here.")
flags.DEFINE_enum("backbone", "efficientnet_b0",
                  ["efficientnet_b0", "resnet18", "resnet34", "resnet50"], "CNN backbone.")
flags.DEFINE_bool("attention", True, "Multi-head attention over segments (MAT-EffNet) or not.")
flags.DEFINE_string("weights", "imagenet",
                    "imagenet (Keras download), none (from scratch) or a local weights file.")
flags.DEFINE_integer("epochs", 50, "Training epochs.")
flags.DEFINE_integer("batch_size", 16, "Global batch size (split over replicas).")
flags.DEFINE_float("learning_rate", 1e-2, "Peak SGD learning rate.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum (TSN's 0.9; not in the paper).")
flags.DEFINE_float("weight_decay", 5e-4, "Decoupled weight decay (TSN's 5e-4; not in the paper).")
flags.DEFINE_float("dropout", 0.2, "Dropout before the classifier.")
flags.DEFINE_integer("num_segments", 3, "TSN segments per clip (K).")
flags.DEFINE_integer("image_size", 224, "Crop size (paper: 112 ResNet-18, 168 ResNet-34, else 224).")
flags.DEFINE_integer("flow_length", 10, "Flow fields per segment (L); 2L input channels.")
flags.DEFINE_enum("lr_schedule", "cosine", ["cosine", "step", "constant"],
                  "cosine: half-cosine decay to 0 over the run; step: x0.1 at --lr_decay_epochs.")
flags.DEFINE_list("lr_decay_epochs", ["30", "40"], "Epochs where the step schedule divides by 10.")
flags.DEFINE_float("warmup_epochs", 0.0, "Linear warm-up from 0 over this many epochs.")
flags.DEFINE_float("bn_momentum", None, "Override BatchNorm momentum (Keras: 0.99). "
                   "0.9 trains from scratch on small data much more reliably.")
flags.DEFINE_float("clip_norm", None, "Clip the global gradient norm to this (TSN: 40); "
                   "off by default, as in the paper.")
flags.DEFINE_bool("multiscale", False, "TSN multi-scale crop instead of a plain random crop.")
flags.DEFINE_integer("shuffle_buffer", 64, "Shuffle buffer, in clips.")
flags.DEFINE_string("validation_split", "test", "Split evaluated after each epoch ('' for none).")
flags.DEFINE_integer("steps_per_epoch", None, "Default: training records // batch size.")
flags.DEFINE_integer("backup_every_steps", 100, "Resume checkpoint frequency, in steps.")
flags.DEFINE_enum("strategy", "auto", ["auto", "default", "mirrored", "multi_worker"],
                  "auto: MirroredStrategy over all GPUs when there are several; "
                  "multi_worker: MultiWorkerMirroredStrategy over the machines in TF_CONFIG.")
flags.DEFINE_enum("loop", "auto", ["auto", "fit", "custom"],
                  "Training loop: auto = the custom loop for multi_worker and for "
                  "jit_compile over several replicas, Keras fit otherwise.")
flags.DEFINE_enum("shard_policy", "auto", ["auto", "file", "data"],
                  "Custom loop: how workers split the input (file: disjoint shard files; "
                  "data: every worker reads all; auto: file when each worker gets >= 4 files).")
flags.DEFINE_bool("mixed_precision", False, "Mixed precision: float16 compute on GPU, "
                  "bfloat16 on TPU/CPU (often slower on CPU).")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the training step (often much slower on CPU).")
flags.DEFINE_integer("seed", None, "Random seed (weights, sampling, augmentation).")
flags.mark_flags_as_required(["stream", "data_dir", "model_dir"])


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    # Imported after flag parsing so --help is instant and TF starts once.
    from mat_effnet import records, training

    try:
        decay = tuple(int(e) for e in FLAGS.lr_decay_epochs)
    except ValueError:
        print(f"mat-effnet-train: error: --lr_decay_epochs={','.join(FLAGS.lr_decay_epochs)}: "
              "expected integers", file=sys.stderr)
        return 2
    cfg = training.TrainConfig(
        stream=FLAGS.stream, data_dir=FLAGS.data_dir, model_dir=FLAGS.model_dir,
        backbone=FLAGS.backbone, attention=FLAGS.attention, weights=FLAGS.weights,
        epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate,
        momentum=FLAGS.momentum, weight_decay=FLAGS.weight_decay, dropout=FLAGS.dropout,
        num_segments=FLAGS.num_segments, image_size=FLAGS.image_size,
        flow_length=FLAGS.flow_length, lr_schedule=FLAGS.lr_schedule, lr_decay_epochs=decay,
        warmup_epochs=FLAGS.warmup_epochs, bn_momentum=FLAGS.bn_momentum,
        clip_norm=FLAGS.clip_norm,
        multiscale=FLAGS.multiscale, shuffle_buffer=FLAGS.shuffle_buffer,
        validation_split=FLAGS.validation_split or None, steps_per_epoch=FLAGS.steps_per_epoch,
        backup_every_steps=FLAGS.backup_every_steps, strategy=FLAGS.strategy, seed=FLAGS.seed,
        mixed_precision=FLAGS.mixed_precision, jit_compile=FLAGS.jit_compile, loop=FLAGS.loop,
        shard_policy=FLAGS.shard_policy)
    try:
        summary = training.train(cfg)
    except (ValueError, records.MetadataError, FileNotFoundError) as e:
        print(f"mat-effnet-train: error: {as_flag_message(e)}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


def as_flag_message(error) -> str:
    """The library names bad arguments as 'name=value: why'; flags share those names."""
    text = str(error)
    return f"--{text}" if re.match(r"^[a-z_]+=", text) else text


def run():
    app.run(main)


if __name__ == "__main__":
    run()
