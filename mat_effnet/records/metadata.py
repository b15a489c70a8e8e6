"""A prepared dataset's metadata: our ``mat_effnet_meta.json``, TFDS's files, shard names.

``mat_effnet_meta.json`` is written last, so its presence means the dataset is
complete; for schema version 1, TFDS's ``dataset_info.json``/``features.json``
are written too, through TFDS's own ``tfds.folder_dataset.write_metadata``.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from mat_effnet.common import atomic
from mat_effnet.records.schema import (CHUNK_INDEX, CLASS_NAME, FILENAME_TEMPLATE, FLOW_X, FLOW_Y, FPS,
                                       FRAME_OFFSET, HEIGHT, LABEL, META_FILENAME, NUM_FRAMES, RGB,
                                       SCHEMA_VERSION, SCHEMA_VERSIONS, VIDEO_ID, WIDTH)
from mat_effnet.records.shard_index import MetadataError


def shard_filename(dataset_name: str, split: str, index: int, count: int) -> str:
    """The shard's file name, following `FILENAME_TEMPLATE`."""
    return f"{dataset_name}-{split}.tfrecord-{index:05d}-of-{count:05d}"


def tfds_features(classes: Sequence[str]):
    """The TFDS FeaturesDict that decodes exactly what `serialize` writes."""
    import tensorflow_datasets as tfds

    frames = lambda channels: tfds.features.Sequence(  # noqa: E731
        tfds.features.Image(shape=(None, None, channels), encoding_format="jpeg"))
    int64 = lambda: tfds.features.Tensor(shape=(), dtype=np.int64)  # noqa: E731
    return tfds.features.FeaturesDict({
        VIDEO_ID: tfds.features.Text(),
        LABEL: tfds.features.ClassLabel(names=list(classes)),
        CLASS_NAME: tfds.features.Text(),
        NUM_FRAMES: int64(),
        FPS: tfds.features.Tensor(shape=(), dtype=np.float32),
        HEIGHT: int64(),
        WIDTH: int64(),
        CHUNK_INDEX: int64(),
        FRAME_OFFSET: int64(),
        RGB: frames(3),
        FLOW_X: frames(1),
        FLOW_Y: frames(1),
    })


def write_tfds_metadata(out_dir: str, dataset_name: str, classes: Sequence[str],
                        shard_lengths: dict[str, list[int]], num_bytes: dict[str, int],
                        description: str = "") -> None:
    """Writes TFDS's dataset_info.json/features.json for our shards.

    Uses TFDS's own library so the files stay valid across TFDS versions.
    """
    import tensorflow_datasets as tfds

    split_infos = [
        tfds.core.SplitInfo(name=split, shard_lengths=list(lengths),
                            num_bytes=int(num_bytes.get(split, 0)),
                            filename_template=tfds.core.ShardedFileTemplate(
                                data_dir=out_dir, template=FILENAME_TEMPLATE,
                                dataset_name=dataset_name, split=split,
                                filetype_suffix="tfrecord"))
        for split, lengths in shard_lengths.items()
    ]
    tfds.folder_dataset.write_metadata(
        data_dir=out_dir, features=tfds_features(classes), split_infos=split_infos,
        filename_template=FILENAME_TEMPLATE, description=description,
        check_data=False)


def write_metadata(out_dir: str, meta: dict, version: int = SCHEMA_VERSION) -> str:
    """Writes ``mat_effnet_meta.json`` atomically; returns its path."""
    path = os.path.join(out_dir, META_FILENAME)
    meta = dict(meta, schema_version=int(version))
    atomic.write_text(path, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def read_metadata(data_dir: str) -> dict:
    """Reads and checks ``mat_effnet_meta.json``; one clear error otherwise."""
    import tensorflow as tf

    path = os.path.join(data_dir, META_FILENAME)
    if not tf.io.gfile.exists(path):
        raise MetadataError(
            f"{data_dir} is not a prepared dataset: {META_FILENAME} is missing "
            "(run mat-effnet-prep first, or let an interrupted run finish)")
    with tf.io.gfile.GFile(path) as f:
        meta = json.load(f)
    if meta.get("schema_version") not in SCHEMA_VERSIONS:
        raise MetadataError(
            f"{path}: schema version {meta.get('schema_version')} is not supported "
            f"(this code reads versions {', '.join(map(str, SCHEMA_VERSIONS))}); "
            "re-run mat-effnet-prep")
    return meta


def split_files(data_dir: str, meta: dict, split: str) -> list[str]:
    """The shard paths of one split, in order; clear error for an unknown split."""
    shards = meta.get("shards", {})
    if split not in shards:
        raise MetadataError(
            f"{data_dir} has no split {split!r}; it has {sorted(shards)}")
    return [os.path.join(data_dir, name) for name in shards[split]]
