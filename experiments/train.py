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

from absl import flags

from mat_effnet.common import cli, flagdefs
from mat_effnet.training import config

FLAGS = flags.FLAGS
# Every flag comes from a field of mat_effnet.training.config.TrainConfig: its default,
# type, choices and help text are defined there once.
flagdefs.define_flags(config.TrainConfig)
flags.mark_flags_as_required(["stream", "data_dir", "model_dir"])


def main(argv):
    del argv
    cfg = flagdefs.build(config.TrainConfig)
    # Imported after flag parsing so --help is instant and TF starts once.
    from mat_effnet.training import trainer

    print(json.dumps(trainer.train(cfg)))
    return 0


def run():
    cli.run(main, "mat-effnet-train")


if __name__ == "__main__":
    run()
