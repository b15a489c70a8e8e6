"""The on-disk record schema: one module owns the writers, the readers and the metadata.

Every prepared dataset is a folder of sharded TFRecord files plus metadata,
all described here so that writer and reader can never drift apart.  The
two-stream network of the paper (Sect. 3, Fig. 1) reads RGB frames in its
spatial stream and stacked flow in its temporal stream; both come from the
same record group so they stay aligned: flow ``i`` is the flow from
``rgb[i]`` to ``rgb[i + 1]``, so a video (or fixed-length chunk of a long
video) of ``num_frames`` frames holds ``num_frames - 1`` flow fields (none
with ``--flow=none``).  Frames are JPEG byte strings, flow x and y separately.

Two layouts (``schema_version`` in the metadata):

* **Version 2, frame-addressable (written by default).**  Per video (or
  chunk), a *group* of consecutive TFRecord records in one shard: a small
  header ``tf.train.Example`` (identity, label, counts and the byte length of
  every frame record that follows), then one record per RGB frame (raw JPEG
  bytes), then the flow fields as ``x_0, y_0, x_1, y_1, ...`` (raw JPEG
  bytes).  Next to each shard, ``<shard>.index.json`` lists every group's
  byte offset and header length.  A reader can so seek to the one header
  and the few frames a clip needs (``TFRecordDatasetV2``'s byte offsets)
  instead of reading the whole video: a 3-frame spatial clip of a 90-frame
  340x256 video reads about 50 KB instead of 1.6 MB.  The same idea as
  DALI's TFRecord index files; the layout and code are ours.
* **Version 1, one Example per video.**  The RGB frames and flow_x/flow_y
  as lists of JPEGs in one ``tf.train.Example``.  Still read everywhere, and
  still written with ``--schema_version=1``: it streams whole records, which
  suits object stores where every seek is a request, and it is what TFDS's
  ``builder_from_directory`` reads (TFDS metadata is written for version 1
  only: a version-2 shard is not a list of same-shaped Examples).

Metadata:

* ``mat_effnet_meta.json`` (ours, written last, so its presence means the
  dataset is complete): schema version, classes, counts, flow settings,
  failures.
* Version 1: ``dataset_info.json``/``features.json`` written through TFDS's
  own ``tfds.folder_dataset.write_metadata``.

Flow is stored quantized to 8 bits (`mat_effnet.ops.quantize`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from mat_effnet.common import atomic
from mat_effnet.records.shard_index import MetadataError, write_index

# The version written by default, and the versions every reader reads.
SCHEMA_VERSION = 2
SCHEMA_VERSIONS = (1, 2)
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
# Version 2 headers: the payload length of every frame record of the group,
# RGB frames in order, then flow as x_0, y_0, x_1, y_1, ...
RGB_BYTES = "rgb_bytes"
FLOW_BYTES = "flow_bytes"
# TFRecord framing around each payload: length (8), length CRC (4), data CRC (4).
FRAMING_BYTES = 16


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


def _ints(values: Iterable[int]):
    import tensorflow as tf

    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _float(value: float):
    import tensorflow as tf

    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))


def _scalar_features(record: VideoRecord) -> dict:
    """The features of one video (or chunk) that both versions store the same way."""
    return {
        VIDEO_ID: _bytes([record.video_id.encode("utf-8")]),
        LABEL: _int(record.label),
        CLASS_NAME: _bytes([record.class_name.encode("utf-8")]),
        NUM_FRAMES: _int(len(record.rgb)),
        FPS: _float(record.fps),
        HEIGHT: _int(record.height),
        WIDTH: _int(record.width),
        CHUNK_INDEX: _int(record.chunk_index),
        FRAME_OFFSET: _int(record.frame_offset),
    }


def _example_bytes(feature: dict) -> bytes:
    import tensorflow as tf

    # deterministic=True sorts the feature map: without it the byte order
    # depends on the process's string hashing, and the same video would
    # give different bytes in different workers.
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
        deterministic=True)


def serialize(record: VideoRecord) -> bytes:
    """Version 1: a `VideoRecord` as one serialized ``tf.train.Example``."""
    return _example_bytes({**_scalar_features(record), RGB: _bytes(record.rgb),
                           FLOW_X: _bytes(record.flow_x), FLOW_Y: _bytes(record.flow_y)})


def _flow_payloads(record: VideoRecord) -> list[bytes]:
    return [b for pair in zip(record.flow_x, record.flow_y) for b in pair]


def serialize_group(record: VideoRecord) -> list[bytes]:
    """Version 2: a `VideoRecord` as its group of record payloads, in file order.

    ``[header, rgb_0 .. rgb_{T-1}, x_0, y_0, x_1, y_1, ...]``; the header
    is a ``tf.train.Example`` with the scalar features and the payload
    lengths (``rgb_bytes``, ``flow_bytes``), the frames are raw JPEG bytes.
    Write each payload as one TFRecord record, the header first.
    """
    flow = _flow_payloads(record)
    header = _example_bytes({
        **_scalar_features(record),
        RGB_BYTES: _ints(len(b) for b in record.rgb),
        FLOW_BYTES: _ints(len(b) for b in flow)})
    return [header, *record.rgb, *flow]


def framed_size(payloads: Iterable[bytes]) -> int:
    """Bytes the payloads take in a TFRecord file (payload plus framing each)."""
    return sum(len(p) + FRAMING_BYTES for p in payloads)


def write_videos(writer, videos: Iterable[VideoRecord], version: int) -> list[list[int]]:
    """Writes ``videos`` to an open ``tf.io.TFRecordWriter`` in layout ``version``.

    Returns, for version 2, each group's [byte offset from where the writer
    started, header length] (the rows of a shard index); for version 1, [].
    """
    groups, offset = [], 0
    for video in videos:
        if version == 1:
            writer.write(serialize(video))
            continue
        payloads = serialize_group(video)
        groups.append([offset, len(payloads[0])])
        offset += framed_size(payloads)
        for payload in payloads:
            writer.write(payload)
    return groups


def write_shard(path: str, videos: Sequence[VideoRecord], version: int = SCHEMA_VERSION) -> None:
    """Writes one shard (and, for version 2, its index) of ``videos``, atomically.

    For tools and tests; `data_prep.builder` writes per-video work files
    with `write_videos` and concatenates them into shards.
    """
    import tensorflow as tf

    with atomic.replacing(path) as tmp:
        with tf.io.TFRecordWriter(tmp) as writer:
            groups = write_videos(writer, videos, version)
        if version != 1:
            write_index(path, groups)


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


def header_spec():
    """The ``tf.io.parse_single_example`` spec of a version-2 group header."""
    import tensorflow as tf

    spec = {k: v for k, v in feature_spec().items() if k not in (RGB, FLOW_X, FLOW_Y)}
    lengths = tf.io.FixedLenSequenceFeature((), tf.int64, allow_missing=True)
    return {**spec, RGB_BYTES: lengths, FLOW_BYTES: lengths}


def _payloads_at(filename, offset, count, num_bytes):
    """Dataset of the ``count`` payloads whose first record starts at byte ``offset``.

    ``TFRecordDatasetV2``'s byte offset seeks (``tf.data.TFRecordDataset``
    does not expose it); the buffer is the run's exact size, so a read
    fetches the run and no more.
    """
    import tensorflow as tf

    variant = tf.raw_ops.TFRecordDatasetV2(
        filenames=tf.reshape(filename, [1]), compression_type="",
        buffer_size=tf.minimum(tf.cast(num_bytes, tf.int64), _MAX_BUFFER),
        byte_offsets=tf.reshape(tf.cast(offset, tf.int64), [1]))
    return tf.data.experimental.from_variant(
        variant, tf.TensorSpec([], tf.string)).take(tf.cast(count, tf.int64))


_MAX_BUFFER = 8 << 20
# The header features `Group.read` parses: what clips and their seeds use.
_GRAPH_HEADER_KEYS = (VIDEO_ID, LABEL, CHUNK_INDEX, NUM_FRAMES, RGB_BYTES, FLOW_BYTES)


class Group:
    """One version-2 group in a graph: its header and where each frame record lies.

    ``Group.read(filename, offset, header_bytes)`` (graph mode: usable inside
    ``tf.data.Dataset.map``) reads and parses the header;
    `rgb` and `flow` then read only the frames asked for.
    """

    def __init__(self, filename, header: dict, first_frame):
        import tensorflow as tf

        self.filename = filename
        self.header = header
        self.num_frames = tf.size(header[RGB_BYTES], out_type=tf.int32)
        self.num_flow = tf.size(header[FLOW_BYTES], out_type=tf.int32) // 2
        framed = tf.concat([header[RGB_BYTES], header[FLOW_BYTES]], 0) + FRAMING_BYTES
        self._framed = framed
        self._starts = first_frame + tf.cumsum(framed, exclusive=True)

    @classmethod
    def read(cls, filename, offset, header_bytes):
        import tensorflow as tf

        offset = tf.cast(offset, tf.int64)
        header_bytes = tf.cast(header_bytes, tf.int64)
        serialized = _payloads_at(filename, offset, 1,
                                  header_bytes + FRAMING_BYTES).get_single_element()
        spec = {k: v for k, v in header_spec().items() if k in _GRAPH_HEADER_KEYS}
        header = tf.io.parse_single_example(serialized, spec)
        return cls(filename, header, offset + FRAMING_BYTES + header_bytes)

    def _runs(self, first, counts):
        """Payloads ``first[r] .. first[r] + counts[r] - 1`` of every run r, concatenated.

        With a static number of runs (training clips) each run is one read
        op of its own; nesting them in one pipeline (flat_map, batch) costs
        a quarter more CPU per clip.
        """
        import tensorflow as tf

        first = tf.cast(tf.reshape(first, [-1]), tf.int32)
        counts = tf.cast(tf.reshape(counts, [-1]), tf.int32)
        starts = tf.gather(self._starts, first)
        sizes = tf.gather(self._starts + self._framed, first + counts - 1) - starts
        runs = first.shape[0]
        if runs is not None and runs <= _MAX_STATIC_RUNS:
            return tf.concat([
                _payloads_at(self.filename, starts[r], counts[r], sizes[r])
                .batch(tf.cast(counts[r], tf.int64)).get_single_element()
                for r in range(runs)], 0)
        dataset = tf.data.Dataset.from_tensor_slices((starts, counts, sizes)).flat_map(
            lambda s, c, b: _payloads_at(self.filename, s, c, b))
        total = tf.cast(tf.reduce_sum(counts), tf.int64)
        return tf.ensure_shape(dataset.batch(total).get_single_element(), [None])

    def rgb(self, frames):
        """The JPEGs of RGB frames ``frames`` (1-D int), one record read each."""
        import tensorflow as tf

        frames = tf.reshape(frames, [-1])
        return self._runs(frames, tf.ones_like(frames))

    def rgb_span(self, first, last):
        """The JPEGs of RGB frames ``first .. last``, in one read."""
        return self._runs(first[None], (last - first + 1)[None])

    def flow(self, first, counts):
        """(x JPEGs, y JPEGs) of flow fields ``first[r] .. first[r] + counts[r] - 1``.

        Each run of consecutive fields is one read: x and y of a field are
        neighbours, and consecutive fields follow each other.
        """
        payloads = self._runs(self.num_frames + 2 * first, 2 * counts)
        return payloads[0::2], payloads[1::2]


_MAX_STATIC_RUNS = 16


def read_groups(path: str) -> Iterator[dict[str, Any]]:
    """Eager reader of a version-2 shard for tools and tests: `parse_numpy`'s dicts.

    Reads the file front to back (no index needed) and checks that every
    group holds the frames its header announces.
    """
    import tensorflow as tf

    it = iter(tf.data.TFRecordDataset(path))
    for serialized in it:
        header = tf.io.parse_single_example(serialized, header_spec())
        out = {}
        for key, value in header.items():
            value = value.numpy()
            out[key] = value.decode("utf-8") if isinstance(value, bytes) else (
                value.item() if isinstance(value, np.generic) else value)
        rgb_n, flow_n = len(out.pop(RGB_BYTES)), len(out.pop(FLOW_BYTES))
        payloads = [p.numpy() for _, p in zip(range(rgb_n + flow_n), it)]
        if len(payloads) != rgb_n + flow_n:
            raise MetadataError(f"{path}: {out[VIDEO_ID]}: the file ends inside its group")
        out[RGB] = payloads[:rgb_n]
        out[FLOW_X], out[FLOW_Y] = payloads[rgb_n::2], payloads[rgb_n + 1::2]
        yield out


def read_shard(path: str, version: int) -> Iterator[dict[str, Any]]:
    """Every video (or chunk) of a shard of either version, as `parse_numpy`'s dicts."""
    if version == 1:
        import tensorflow as tf

        for serialized in tf.data.TFRecordDataset(path):
            yield parse_numpy(serialized.numpy())
    else:
        yield from read_groups(path)


# ---------------------------------------------------------------------------
# Files and metadata
# ---------------------------------------------------------------------------



















