"""The tf.data datasets: which clips a split yields, in which order, on which workers.

`build_dataset` streams a split's records into batches of clips made by
`mat_effnet.data.clips` at positions `mat_effnet.data.sampling` draws.  Version-2
data (frame-addressable groups, `mat_effnet.records`) is read group by
group, in a full stateless permutation per epoch (`_training_groups`);
version-1 records are read whole, files in a per-epoch order
(`_training_files`), through a shuffle buffer of serialized records, parsing
only the features the stream needs (`_parse_for`).  Each clip's seed is
`mat_effnet.data.sampling.clip_seed` of (video id, chunk, epoch, global seed), not
its place in the stream, so the tf.data service (sharding policy DYNAMIC)
delivers the clips of a local run, in another order.  Elements are
``(clips, labels[, video_ids])``; the tf.data options give each element one
op thread (parallelism across elements, not inside one).
"""

from __future__ import annotations

import os
import random
import sys
from typing import Sequence

import numpy as np
import tensorflow as tf

from mat_effnet import records
from mat_effnet.data.clips import make_clip, make_clip_from_group
from mat_effnet.common.errors import MatEffNetError
from mat_effnet.data.sampling import PipelineConfig, clip_seed


def check_data(meta: dict, cfg: PipelineConfig) -> None:
    """Raises MatEffNetError when the prepared data cannot feed this stream."""
    algorithm = meta.get("flow", {}).get("algorithm")
    if cfg.stream == "temporal" and algorithm == "none":
        raise MatEffNetError("stream='temporal' needs optical flow, but this dataset was "
                             "prepared with --flow=none (no flow frames); re-run "
                             "mat-effnet-prep with --flow=tvl1 or use stream='spatial'")


def _parse_for(cfg: PipelineConfig):
    """A parser of only the features this stream's clips use (no copies of the rest)."""
    spec = records.feature_spec()
    keys = [records.VIDEO_ID, records.LABEL, records.NUM_FRAMES, records.CHUNK_INDEX]
    keys += [records.RGB] if cfg.stream == "spatial" else [records.FLOW_X, records.FLOW_Y]
    subset = {k: spec[k] for k in keys}
    return lambda serialized: tf.io.parse_single_example(serialized, subset)


# ---------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------

# The tf.data service splits the source range of (epoch, file) pairs between
# its workers on demand (see build_dataset).
SHARDING_POLICY = "DYNAMIC"


def _training_files(files: Sequence[str], seed: int, epochs: int | None):
    """Dataset of (file, epoch): every epoch visits all files in its own order.

    The order of epoch e is a stateless permutation of (seed, e), computed from
    a plain range, so the tf.data service can hand out its elements to
    workers dynamically and each file of each epoch is read exactly once.
    """
    n = len(files)
    names = tf.constant(list(files))
    total = sys.maxsize if epochs is None else epochs * n

    def pick(i):
        epoch = i // n
        order = tf.argsort(tf.random.stateless_uniform(
            [n], tf.random.experimental.stateless_fold_in(tf.constant([seed, 1], tf.int64),
                                                          epoch)))
        return tf.gather(names, tf.gather(order, i % n)), epoch

    return tf.data.Dataset.range(total).map(pick)


def _group_table(files: Sequence[str]):
    """(n, 3) int64 rows (file number, byte offset, header length) of every group.

    Reads the shards' index files on a few threads: on a network file system
    each is a round trip.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(16, len(files))) as pool:
        indexes = list(pool.map(records.read_index, files))
    rows = [np.concatenate([np.full((len(ix), 1), i, np.int64), ix], axis=1)
            for i, ix in enumerate(indexes)]
    return np.concatenate(rows, axis=0) if rows else np.zeros((0, 3), np.int64)


def _training_groups(table, seed: int, epochs: int | None):
    """Dataset of (row, epoch): every epoch visits every group once, in its own order.

    A version-2 group can be read wherever it lies, so the order is a full
    permutation of (seed, epoch) (`tf.random.experimental.index_shuffle`, a
    stateless bijection computed per element), not a file order plus a
    shuffle buffer.  The source is a plain range, which the tf.data service
    hands out to workers dynamically, as for version 1.
    """
    n = len(table)
    rows = tf.constant(table)
    total = sys.maxsize if epochs is None else epochs * n

    def pick(i):
        epoch = i // n
        key = tf.random.experimental.stateless_fold_in(tf.constant([seed, 2], tf.int64), epoch)
        j = tf.random.experimental.index_shuffle(i % n, key, n - 1)
        return tf.gather(rows, j), epoch

    return tf.data.Dataset.range(total).map(pick)


def _options(threads: int | None) -> tf.data.Options:
    options = tf.data.Options()
    # One op thread per element: parallelism comes from many elements at once,
    # not from ops fighting over the cores inside one element.
    options.threading.max_intra_op_parallelism = 1
    if threads is not None:
        options.threading.private_threadpool_size = threads
    return options


def build_dataset(data_dir: str, split: str, cfg: PipelineConfig, batch_size: int, *,
                  files: Sequence[str] | None = None, with_ids: bool = False,
                  epochs: int | None = None, data_service: str | None = None,
                  threads: int | None = None, meta: dict | None = None,
                  skip=frozenset()) -> tf.data.Dataset:
    """The batched dataset of one split.

    Training (``cfg.training``): endless (or ``epochs`` passes), shuffled;
    elements ``(clips (B, K, S, S, C), labels (B,) int32)``, full batches
    only.  Version-2 data (`mat_effnet.records`) is read group by group,
    each clip reading its header and its frames only, in a full permutation
    per epoch (``shuffle_buffer`` is not used); version-1 records are read
    whole, files in a per-epoch order, through the shuffle buffer.  Testing:
    one pass in file order; elements
    ``(clips (B, crops, N, S, S, C), labels (B,) int32)``, the last batch may
    be smaller.  Clips are ``cfg.clip_dtype`` (uint8 by default).
    ``with_ids`` appends ``video_ids (B,) string`` (chunks of one long video
    share their id).  ``files`` overrides the split's shard list (metadata is
    still read from ``data_dir``).

    ``data_service`` (e.g. ``"grpc://host:5050"``): the pipeline runs on the
    tf.data service workers of that dispatcher (the record files must be
    readable there, e.g. on a shared file system or GCS) with sharding policy
    DYNAMIC: the dispatcher hands each worker splits of the source range
    (version 2: (epoch, video); version 1: (epoch, file)) on demand, so every
    video of an epoch is read once by whichever worker is free
    (OFF would make every worker run every epoch, i.e. repeat each clip once
    per worker; the static FILE/DATA policies fix the worker count and let
    the slowest worker set the pace).  Clip seeds depend on the video and the
    epoch only, so the service delivers the clips of a local run, in another
    order.  Batches are formed on the workers.  ``threads``: a private
    tf.data thread pool of that many threads (default: TF's shared pool).
    ``meta``: the folder's metadata when the caller has read it already.
    ``skip``: (shard file name, byte offset) of version-2 groups to leave
    out (`mat_effnet.training.skip_damaged`).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise MatEffNetError(f"batch_size={batch_size!r}: must be an integer >= 1")
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
        raise MatEffNetError(f"epochs={epochs!r}: must be an integer >= 1 or None (endless)")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise MatEffNetError(f"threads={threads!r}: must be an integer >= 1 or None")
    if data_service is not None and (not isinstance(data_service, str) or
                                     "://" not in data_service):
        raise MatEffNetError(f"data_service={data_service!r}: expected PROTOCOL://HOST:PORT, "
                             "e.g. grpc://localhost:5050")
    meta = records.read_metadata(data_dir) if meta is None else meta
    check_data(meta, cfg)
    files = list(records.split_files(data_dir, meta, split) if files is None else files)
    if not files:
        raise MatEffNetError(f"{data_dir}: split {split!r} has no shard files")
    autotune = tf.data.AUTOTUNE
    # Unordered parallelism is faster; a seed asks for reproducible batches.
    deterministic = not cfg.training or cfg.seed is not None
    if meta.get("schema_version", 1) == 1:
        if skip:
            raise MatEffNetError(f"{data_dir}: version-1 records cannot be skipped one by "
                                 "one; re-prepare it (version 2) or repair it")
        ds = _version1_clips(files, cfg, epochs, with_ids, deterministic)
    else:
        ds = _version2_clips(files, cfg, epochs, with_ids, deterministic, skip)
    ds = ds.batch(batch_size, drop_remainder=cfg.training)
    ds = ds.with_options(_options(threads))
    if data_service is not None:
        ds = ds.apply(tf.data.experimental.service.distribute(
            processing_mode=getattr(tf.data.experimental.service.ShardingPolicy, SHARDING_POLICY),
            service=data_service))
    return ds.prefetch(autotune)


def _global_seed(cfg: PipelineConfig) -> int:
    if not cfg.training:
        return 0
    return random.SystemRandom().randrange(2**31) if cfg.seed is None else cfg.seed


def _version2_clips(files, cfg: PipelineConfig, epochs, with_ids: bool, deterministic: bool,
                    skip=frozenset()):
    """Unbatched clips from version-2 shards: each reads its header and its frames only."""
    table = _group_table(files)
    if skip:
        names = [os.path.basename(f) for f in files]
        keep = [(names[int(i)], int(off)) not in skip for i, off, _ in table]
        table = table[np.asarray(keep, bool)]
    if not len(table):
        raise MatEffNetError(f"{files[0]}...: the split's shard indexes list no videos")
    seed = _global_seed(cfg)
    if cfg.training:
        ds = _training_groups(table, seed, epochs)
    else:
        ds = tf.data.Dataset.from_tensor_slices(table).map(
            lambda row: (row, tf.constant(0, tf.int64)))
    names = tf.constant(list(files))

    def to_example(row, epoch):
        group = records.Group.read(tf.gather(names, row[0]), row[1], row[2])
        header = group.header
        key = clip_seed(header[records.VIDEO_ID], header[records.CHUNK_INDEX], epoch, seed)
        clip, label = make_clip_from_group(group, cfg, key)
        return (clip, label, header[records.VIDEO_ID]) if with_ids else (clip, label)

    return ds.map(to_example, num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=deterministic)


def _version1_clips(files, cfg: PipelineConfig, epochs, with_ids: bool, deterministic: bool):
    """Unbatched clips from version-1 shards: whole records, streamed and shuffled."""
    autotune = tf.data.AUTOTUNE
    parse = _parse_for(cfg)
    seed = _global_seed(cfg)
    if cfg.training:
        ds = _training_files(files, seed, epochs)
        ds = ds.interleave(
            lambda name, epoch: tf.data.TFRecordDataset(name).map(lambda s: (s, epoch)),
            cycle_length=min(len(files), 8), num_parallel_calls=autotune,
            deterministic=deterministic)
        # The buffer holds serialized records (undecoded JPEGs), never the whole set.
        ds = ds.shuffle(cfg.shuffle_buffer, seed=seed)
    else:
        ds = tf.data.TFRecordDataset(files).map(lambda s: (s, tf.constant(0, tf.int64)))

    def to_example(serialized, epoch):
        parsed = parse(serialized)
        key = clip_seed(parsed[records.VIDEO_ID], parsed[records.CHUNK_INDEX], epoch, seed)
        clip, label = make_clip(parsed, cfg, key)
        if with_ids:
            return clip, label, parsed[records.VIDEO_ID]
        return clip, label

    return ds.map(to_example, num_parallel_calls=autotune, deterministic=deterministic)
