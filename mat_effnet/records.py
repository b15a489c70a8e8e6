"""The on-disk record schema: one module owns the writer, the parser and the metadata.

Every prepared dataset is a folder of sharded TFRecord files plus two kinds of
metadata, all described here so that writer and reader can never drift apart:

* One ``tf.train.Example`` per video (or per fixed-length chunk of a long
  video).  It holds the RGB frames and the quantized optical flow (x and y
  separately) as JPEG byte strings, the label and the video's identity.  The
  two-stream network of the paper (Sect. 3, Fig. 1) reads RGB frames in its
  spatial stream and stacked flow in its temporal stream; both come from the
  same record so they stay aligned: ``flow_x[i]``/``flow_y[i]`` is the flow
  from ``rgb[i]`` to ``rgb[i + 1]``, so a record of ``num_frames`` frames holds
  ``num_frames - 1`` flow fields (or none with ``--flow=none``).
* ``mat_effnet_meta.json`` (ours, written last, so its presence means the
  dataset is complete): schema version, classes, counts, flow settings,
  failures.
* ``dataset_info.json``/``features.json`` written through TFDS's own
  ``tfds.folder_dataset.write_metadata`` so that
  ``tfds.builder_from_directory(out_dir)`` reads the same shards.

Flow quantization follows the convention of the two-stream literature (TSN,
denseflow): each component is clipped to ``±bound`` pixels and mapped
linearly to 0..255, ``q = round((v + bound) * 255 / (2 * bound))``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Iterable, Sequence

import numpy as np

from mat_effnet import atomic
from mat_effnet.errors import MatEffNetError

SCHEMA_VERSION = 1
META_FILENAME = "mat_effnet_meta.json"
# TFDS's filename template; {DATASET}, {SPLIT}, {FILEFORMAT} and
# {SHARD_X_OF_Y} are TFDS placeholders, so the shard names follow TFDS's own
# convention (name-split.tfrecord-00000-of-00004).
FILENAME_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"

# Feature keys.  They are flat (no nesting) because TFDS flattens nested
# FeaturesDicts with "/" and a flat schema keeps the plain parser simple.
VIDEO_ID = "video_id"
LABEL = "label"
CLASS_NAME = "class_name"
NUM_FRAMES = "num_frames"
FPS = "fps"
HEIGHT = "height"
WIDTH = "width"
CHUNK_INDEX = "chunk_index"
FRAME_OFFSET = "frame_offset"
RGB = "rgb"
FLOW_X = "flow_x"
FLOW_Y = "flow_y"


# ---------------------------------------------------------------------------
# Flow quantization (numpy on the writer side, TF or numpy on the reader side)
# ---------------------------------------------------------------------------

def _check_bound(bound: float) -> float:
    bound = float(bound)
    if not math.isfinite(bound) or bound <= 0:
        raise ValueError(f"bound must be a positive finite number, got {bound}")
    return bound


def quantize_flow(component: np.ndarray, bound: float) -> np.ndarray:
    """Maps flow values to uint8: q = round((clip(v, ±bound) + bound) * 255 / (2 bound)).

    Rounding is half up, so v = 0 lands exactly on 127.5 and maps to 128.
    The step is 2*bound/255; values beyond ±bound saturate at 0 / 255. NaN
    maps to 128 (no motion) rather than to an undefined integer.
    """
    bound = _check_bound(bound)
    v = np.nan_to_num(np.asarray(component, dtype=np.float64), nan=0.0)
    v = np.clip(v, -bound, bound)
    # (v/bound + 1) * 127.5 is the formula rearranged so that v = 0 gives
    # exactly 127.5 in floating point (bound*255/(2*bound) can land a hair
    # below .5 and flip the rounding).
    q = np.floor((v / bound + 1.0) * 127.5 + 0.5)
    return np.clip(q, 0, 255).astype(np.uint8)


def dequantize_flow(q, bound: float):
    """Inverse of `quantize_flow`: v = q * 2*bound/255 - bound (float32).

    For |v| <= bound the round trip error is at most half a step, bound/255.
    Works on numpy arrays and on TF tensors (inside tf.data graphs) alike.
    """
    bound = _check_bound(bound)
    scale = 2.0 * bound / 255.0
    if isinstance(q, (np.ndarray, np.generic, int, float, list)):
        return (np.asarray(q, np.float64) * scale - bound).astype(np.float32)
    import tensorflow as tf  # only readers of tensors need TF

    return tf.cast(q, tf.float32) * scale - bound


# ---------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class VideoRecord:
    """One record's content; JPEG bytes are already encoded."""

    video_id: str
    label: int
    class_name: str
    fps: float
    height: int
    width: int
    rgb: Sequence[bytes]
    flow_x: Sequence[bytes] = ()
    flow_y: Sequence[bytes] = ()
    chunk_index: int = 0
    frame_offset: int = 0

    def __post_init__(self):
        n = len(self.rgb)
        if len(self.flow_x) != len(self.flow_y):
            raise ValueError(
                f"{self.video_id}: {len(self.flow_x)} flow_x vs {len(self.flow_y)} flow_y frames")
        if self.flow_x and len(self.flow_x) != n - 1:
            raise ValueError(
                f"{self.video_id}: {n} RGB frames need {n - 1} flow frames, got {len(self.flow_x)}")


def _bytes(values: Iterable[bytes]):
    import tensorflow as tf

    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _int(value: int):
    import tensorflow as tf

    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def _float(value: float):
    import tensorflow as tf

    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))


def serialize(record: VideoRecord) -> bytes:
    """Turns a `VideoRecord` into a serialized ``tf.train.Example``."""
    import tensorflow as tf

    feature = {
        VIDEO_ID: _bytes([record.video_id.encode("utf-8")]),
        LABEL: _int(record.label),
        CLASS_NAME: _bytes([record.class_name.encode("utf-8")]),
        NUM_FRAMES: _int(len(record.rgb)),
        FPS: _float(record.fps),
        HEIGHT: _int(record.height),
        WIDTH: _int(record.width),
        CHUNK_INDEX: _int(record.chunk_index),
        FRAME_OFFSET: _int(record.frame_offset),
        RGB: _bytes(record.rgb),
        FLOW_X: _bytes(record.flow_x),
        FLOW_Y: _bytes(record.flow_y),
    }
    # deterministic=True sorts the feature map: without it the byte order
    # depends on the process's string hashing, and the same video would
    # give different bytes in different workers.
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
        deterministic=True)


# ---------------------------------------------------------------------------
# Parser (graph mode: usable inside tf.data.Dataset.map)
# ---------------------------------------------------------------------------

def feature_spec():
    """The ``tf.io.parse_single_example`` spec of a record."""
    import tensorflow as tf

    scalar = lambda dtype: tf.io.FixedLenFeature((), dtype)  # noqa: E731
    frames = tf.io.FixedLenSequenceFeature((), tf.string, allow_missing=True)
    return {
        VIDEO_ID: scalar(tf.string),
        LABEL: scalar(tf.int64),
        CLASS_NAME: scalar(tf.string),
        NUM_FRAMES: scalar(tf.int64),
        FPS: scalar(tf.float32),
        HEIGHT: scalar(tf.int64),
        WIDTH: scalar(tf.int64),
        CHUNK_INDEX: scalar(tf.int64),
        FRAME_OFFSET: scalar(tf.int64),
        RGB: frames,
        FLOW_X: frames,
        FLOW_Y: frames,
    }


def parse(serialized):
    """Parses one serialized record into a dict of tensors (JPEGs undecoded).

    Decoding is left to the caller so that the input pipeline decodes only
    the frames it samples.
    """
    import tensorflow as tf

    return tf.io.parse_single_example(serialized, feature_spec())


def parse_numpy(serialized: bytes) -> dict[str, Any]:
    """Eager, numpy-valued parse for tools and tests (not for tf.data)."""
    parsed = parse(serialized)
    out = {}
    for key, value in parsed.items():
        value = value.numpy()
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        elif isinstance(value, np.ndarray) and value.dtype == object:
            value = list(value)
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


# ---------------------------------------------------------------------------
# Files and metadata
# ---------------------------------------------------------------------------

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


def write_metadata(out_dir: str, meta: dict) -> str:
    """Writes ``mat_effnet_meta.json`` atomically; returns its path."""
    path = os.path.join(out_dir, META_FILENAME)
    meta = dict(meta, schema_version=SCHEMA_VERSION)
    atomic.write_text(path, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


class MetadataError(MatEffNetError):
    """A prepared-data folder is missing, incomplete or of another schema."""


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
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise MetadataError(
            f"{path}: schema version {meta.get('schema_version')} is not supported "
            f"(this code reads version {SCHEMA_VERSION}); re-run mat-effnet-prep")
    return meta


def split_files(data_dir: str, meta: dict, split: str) -> list[str]:
    """The shard paths of one split, in order; clear error for an unknown split."""
    shards = meta.get("shards", {})
    if split not in shards:
        raise MetadataError(
            f"{data_dir} has no split {split!r}; it has {sorted(shards)}")
    return [os.path.join(data_dir, name) for name in shards[split]]
