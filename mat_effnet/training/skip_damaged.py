"""``--on_corrupt=skip``: damaged videos left out of training, counted and named.

By default a read error stops training with one line naming the shard and
the video (`mat_effnet.records.integrity.locate`). With ``on_corrupt="skip"`` the
trainer instead, on the first read error:

1. scans the splits it reads once, group by group through their indexes
   (`mat_effnet.records.integrity.damaged_groups`), so every damaged video is found
   in one pass, not one per crash;
2. adds them to ``model_dir/skipped_videos.json`` (written atomically; a
   rerun reads it and leaves them out from its first step);
3. fits again: ``BackupAndRestore`` resumes from the last backup, as after a
   kill, and the datasets leave those groups out (`SkipList.keys`).

``training_log.csv`` carries a ``skipped`` column (`SkippedCount`) from
epoch 1 in every run, because Keras's CSVLogger fixes its columns at its
first write.  TensorFlow's ``ignore_errors`` is not used: it drops elements
without a word and, on a TFRecord, the rest of the file.  Only version-2
data can be skipped group by group (a version-1 record is a stream).
"""

from __future__ import annotations

import json
import logging
import os

import keras
import tensorflow as tf

from mat_effnet.common import atomic
from mat_effnet.records import integrity

log = logging.getLogger("mat_effnet.train")
SKIPPED_FILE = "skipped_videos.json"


class SkipList:
    """The damaged groups a run leaves out; persisted beside its checkpoints."""

    def __init__(self, model_dir: str):
        self.path = os.path.join(model_dir, SKIPPED_FILE)
        self.entries: list[dict] = []
        if tf.io.gfile.exists(self.path):
            with tf.io.gfile.GFile(self.path) as f:
                self.entries = json.load(f)["skipped"]

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def keys(self) -> frozenset:
        """(shard file name, byte offset) of every skipped group."""
        return frozenset((e["shard"], int(e["offset"])) for e in self.entries)

    def videos(self) -> list[str]:
        return [e["video"] for e in self.entries]

    def add(self, found: list[integrity.DamagedGroup], split: str) -> int:
        """Adds the new ones, saves, logs one warning each; how many were new."""
        known = self.keys
        new = [d for d in found if d.key not in known]
        for d in new:
            self.entries.append({"split": split, "shard": d.shard, "offset": d.offset,
                                 "video": d.video, "problem": d.problem})
            log.warning("%s: %s: %s; skipped (--on_corrupt=skip), %d so far; "
                        "mat-effnet-verify lists them all", d.shard, d.video, d.problem,
                        len(self.entries))
        if new:
            atomic.write_text(self.path, json.dumps({"skipped": self.entries}, indent=2) + "\n")
        return len(new)

    def scan(self, data_dir: str, meta: dict, splits, error: BaseException) -> int:
        """After ``error``: every damaged group of ``splits`` added; how many were new."""
        decode = integrity.decode_error(error)
        return sum(self.add(integrity.damaged_groups(data_dir, meta, split, decode, self.keys),
                            split) for split in splits)


class SkippedCount(keras.callbacks.Callback):
    """Puts the number of skipped videos in each epoch's logs, as ``skipped``.

    Placed before the CSV logger and TensorBoard, which read the same logs
    dict. A run resumed from a CSV written without the column keeps that CSV's
    columns (a column added mid-file would shift every later row).
    """

    def __init__(self, skip_list: SkipList | None, csv_path: str):
        super().__init__()
        self.skip_list, self.csv_path = skip_list, csv_path
        self.enabled = True

    def on_train_begin(self, logs=None):
        if tf.io.gfile.exists(self.csv_path):
            with tf.io.gfile.GFile(self.csv_path) as f:
                header = f.readline().strip()
            self.enabled = not header or "skipped" in header.split(",")

    def on_epoch_end(self, epoch, logs=None):
        if self.enabled and logs is not None:
            logs["skipped"] = float(len(self.skip_list) if self.skip_list is not None else 0)
