"""Integrity of a prepared dataset: shard sizes and checksums, the quick check, the full verify.

Prep records, per shard file, its byte size and SHA-256 (hashlib; computed
while the shard is written, so it costs no extra read) and its index's byte
size, under ``shard_files`` in ``mat_effnet_meta.json`` (`record`).

* `check_split`: before the first step, train and eval compare every shard
  of the splits they read against those sizes (``stat``, no read: a few
  milliseconds for hundreds of shards). A missing, truncated or grown shard
  or index stops the run with one line. tf.data service workers run no
  project code, so the trainer checks the files for them: the paths are
  the same on every machine by README's set-up. Folders prepared before
  sizes were recorded are said to be so once, and the check is skipped.
* `locate`: after a read error (TensorFlow names neither file nor video of
  a byte-offset read), an eager scan of the split's shards finds the first
  damaged one and the video in it; `DataFault` carries the line.
* `damaged_groups`: every damaged group (video or chunk) of a version-2
  split, each read on its own by its index, so one bad record does not hide
  the groups after it; `--on_corrupt=skip` (`mat_effnet.training.skip_damaged`)
  leaves them out of training.
* `verify` (``mat-effnet-verify``): reads every record (TFRecord's CRCs),
  checks checksums, indexes and groups, and with ``decode`` decodes every
  JPEG; returns the problems found.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from typing import Iterator

from mat_effnet import records
from mat_effnet.records import schema  # its seeking reader, beside the writer
from mat_effnet.common import faults
from mat_effnet.common.errors import MatEffNetError

log = logging.getLogger("mat_effnet.data")
CHECKSUM = "sha256"


class DataFault(MatEffNetError):
    """A prepared shard is damaged: '<shard>: <video>: what; what to do'."""


class HashingWriter:
    """A binary file object's ``write`` that also hashes and counts what passes."""

    def __init__(self, out):
        self.out, self.hash, self.bytes = out, hashlib.sha256(), 0

    def write(self, data: bytes) -> None:
        self.hash.update(data)
        self.bytes += len(data)
        self.out.write(data)


def file_sha256(path: str) -> str:
    import tensorflow as tf

    h = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def record(num_bytes: int, sha256: str, index_bytes: int | None) -> dict:
    """One shard's entry under the metadata's ``shard_files``."""
    entry = {"bytes": int(num_bytes), CHECKSUM: sha256}
    if index_bytes is not None:
        entry["index_bytes"] = int(index_bytes)
    return entry


def _advice(data_dir: str) -> str:
    return f"run mat-effnet-verify {data_dir}"


_said_old: set = set()


def check_split(data_dir: str, meta: dict, split: str) -> None:
    """Sizes of the split's shards and indexes against the metadata; `DataFault` if off."""
    import tensorflow as tf

    files = meta.get("shard_files")
    if files is None:
        if data_dir not in _said_old:
            _said_old.add(data_dir)
            log.warning("%s: prepared before shard sizes were recorded; the check of its "
                        "files before training is skipped (mat-effnet-verify still reads "
                        "every record)", data_dir)
        return
    for path in records.split_files(data_dir, meta, split):
        expected = files.get(os.path.basename(path))
        if expected is None:
            continue
        pairs = [(path, expected["bytes"], "shard")]
        if "index_bytes" in expected:
            pairs.append((records.index_path(path), expected["index_bytes"], "index"))
        for p, size, what in pairs:
            try:
                got = tf.io.gfile.stat(p).length
            except tf.errors.NotFoundError:
                raise DataFault(f"{p}: this {what} file is missing; re-run mat-effnet-prep "
                                "on its folder, or restore it") from None
            if got != size:
                raise DataFault(f"{p}: {got} bytes where the metadata says {size} "
                                f"({'truncated' if got < size else 'grown or replaced'}); "
                                f"{_advice(data_dir)}")


# ---------------------------------------------------------------------------
# Reading every record

def _scan(path: str, version: int, decode: bool) -> Iterator[str]:
    """Problems of one shard, reading every record; the video each is in."""
    import tensorflow as tf

    last_id = None
    try:
        for video in records.read_shard(path, version):
            last_id = video[records.VIDEO_ID]
            if decode:
                for key in (records.RGB, records.FLOW_X, records.FLOW_Y):
                    for i, jpeg in enumerate(video[key]):
                        try:
                            tf.io.decode_jpeg(jpeg)
                        except tf.errors.InvalidArgumentError:
                            yield f"{last_id}: {key} frame {i} is not a decodable JPEG"
                            break
    except records.MetadataError as e:  # a group shorter than its header says
        yield str(e).split(": ", 1)[1]
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        if faults.machine_errno(e) is not None:
            raise  # an I/O error or a lost mount is the machine's, not this shard's
        offset = re.search(r"corrupted record at (\d+)", str(e))
        where = _video_at(path, int(offset.group(1))) if offset and version != 1 else None
        if where is None:
            where = f"the video after {last_id}" if last_id else "its first video"
        at = f" at byte {offset.group(1)}" if offset else ""
        yield f"{where}: corrupted record{at} ({type(e).__name__})"


def _video_at(path: str, byte: int) -> str | None:
    """The video whose version-2 group holds ``byte``, from the index and its header."""
    import numpy as np
    import tensorflow as tf

    try:
        index = records.read_index(path)
    except records.MetadataError:
        return None
    g = int(np.searchsorted(index[:, 0], byte, side="right")) - 1
    if g < 0:
        return None
    try:
        header = records.Group.read(path, int(index[g, 0]), int(index[g, 1])).header
        return header[records.VIDEO_ID].numpy().decode("utf-8")
    except tf.errors.OpError:
        return f"group {g} (its header is damaged)"


def _index_problems(path: str) -> Iterator[str]:
    import tensorflow as tf

    try:
        offsets = records.read_index(path)[:, 0]
    except records.MetadataError as e:
        yield str(e)
        return
    size = tf.io.gfile.stat(path).length
    if len(offsets) and (offsets[-1] >= size or (offsets[:-1] >= offsets[1:]).any()):
        yield f"{records.index_path(path)}: lists groups past the end of its shard"


def verify(data_dir: str, decode: bool = False, splits=None) -> list[str]:
    """Every problem of the dataset, one line each ('<file>: what'); empty when sound."""
    import tensorflow as tf

    meta = records.read_metadata(data_dir)
    version = int(meta.get("schema_version", 1))
    files = meta.get("shard_files")
    problems = []
    if files is None:
        log.warning("%s: prepared before checksums were recorded: records and indexes "
                    "are checked, not checksums", data_dir)
    for split in splits or meta["shards"]:
        for path in records.split_files(data_dir, meta, split):
            if not tf.io.gfile.exists(path):
                problems.append(f"{path}: missing")
                continue
            if version != 1:
                problems += list(_index_problems(path))
            expected = (files or {}).get(os.path.basename(path))
            if expected is not None:
                size = tf.io.gfile.stat(path).length
                if size != expected["bytes"]:
                    problems.append(f"{path}: {size} bytes where the metadata says "
                                    f"{expected['bytes']}")
                elif file_sha256(path) != expected[CHECKSUM]:
                    problems.append(f"{path}: checksum differs from the metadata's "
                                    f"({CHECKSUM})")
            problems += [f"{path}: {p}" for p in _scan(path, version, decode)]
    return problems


def locate(data_dir: str, meta: dict, splits, error: BaseException) -> DataFault:
    """The `DataFault` naming the first damaged shard and video of ``splits``.

    Called once a read error stopped training or eval. Sizes first (cheap),
    then an eager read of each shard, decoding the JPEGs only when the
    error was a decode error.
    """
    decode = decode_error(error)
    version = int(meta.get("schema_version", 1))
    for split in splits:
        try:
            check_split(data_dir, meta, split)
        except DataFault as e:
            return e
        for path in records.split_files(data_dir, meta, split):
            for problem in (*(_index_problems(path) if version != 1 else ()),
                            *_scan(path, version, decode)):
                head = problem if problem.startswith(path) else f"{path}: {problem}"
                return DataFault(f"{head}; {_advice(data_dir)}")
    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    return DataFault(f"{data_dir}: a read error that a scan of its shards does not find "
                     f"again ({type(error).__name__}: {first}); {_advice(data_dir)}")


@dataclasses.dataclass(frozen=True)
class DamagedGroup:
    """One unreadable version-2 group: shard file name, byte offset, its video, why."""

    shard: str
    offset: int
    video: str
    problem: str

    @property
    def key(self) -> tuple[str, int]:
        return self.shard, self.offset


_read_fn = None


def _read_records(path: str, offset: int, count: int, num_bytes: int) -> list[bytes]:
    """Up to ``count`` records from byte ``offset`` (the seeking reader runs in a graph)."""
    global _read_fn
    import tensorflow as tf

    if _read_fn is None:
        _read_fn = tf.function(lambda p, o, c, n: schema._payloads_at(p, o, c, n).batch(
            c + 1).get_single_element(), reduce_retracing=True)
    return list(_read_fn(tf.constant(path), tf.constant(offset, tf.int64),
                         tf.constant(count, tf.int64), tf.constant(num_bytes, tf.int64)).numpy())


def _group_problem(path: str, offset: int, header_bytes: int, num_bytes: int,
                   decode: bool) -> tuple[str, str | None]:
    """(video id, problem or None) of the group at ``offset``, read eagerly on its own."""
    import tensorflow as tf

    video = f"the group at byte {offset}"
    try:
        (head,) = _read_records(path, offset, 1, header_bytes + records.FRAMING_BYTES) or [b""]
        header = tf.io.parse_single_example(head, records.header_spec())
        video = header[records.VIDEO_ID].numpy().decode("utf-8")
        expected = int(tf.size(header[records.RGB_BYTES]) + tf.size(header[records.FLOW_BYTES]))
        frames = _read_records(path, offset, 1 + expected, num_bytes)[1:]
        if len(frames) < expected:
            return video, (f"its group ends after {len(frames)} of the {expected} frames "
                           "its header lists")
        if decode:
            for jpeg in frames:
                tf.io.decode_jpeg(jpeg)
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        if faults.machine_errno(e) is not None:
            raise
        first = (str(e).strip().splitlines() or [""])[0][:120]
        return video, f"corrupted record ({type(e).__name__}: {first})"
    return video, None


def damaged_groups(data_dir: str, meta: dict, split: str, decode: bool = False,
                   known=frozenset()) -> list[DamagedGroup]:
    """Every damaged group of a version-2 split, each read by its index entry.

    ``known`` (``DamagedGroup.key``s) are not read again. A missing shard or
    index cannot be skipped group by group: that stays a `DataFault`.
    """
    import tensorflow as tf

    out = []
    for path in records.split_files(data_dir, meta, split):
        name = os.path.basename(path)
        try:
            index = records.read_index(path)
            size = tf.io.gfile.stat(path).length
        except (records.MetadataError, tf.errors.NotFoundError) as e:
            raise DataFault(f"{path}: {str(e).split(': ', 1)[-1]}; a missing shard or index "
                            f"cannot be skipped video by video: restore it or re-run "
                            f"mat-effnet-prep") from None
        ends = [*index[1:, 0].tolist(), size]
        for (offset, header_bytes), end in zip(index.tolist(), ends):
            if (name, offset) in known:
                continue
            if offset >= size:
                out.append(DamagedGroup(name, offset, f"the group at byte {offset}",
                                        "its index lists it past the end of the shard"))
                continue
            video, problem = _group_problem(path, offset, header_bytes, end - offset, decode)
            if problem:
                out.append(DamagedGroup(name, offset, video, problem))
    return out


def decode_error(error: BaseException) -> bool:
    """Whether ``error`` came from decoding a JPEG, so a scan must decode to find it.

    TensorFlow raises a decode failure as a plain InvalidArgumentError whose
    text is all that tells it from a parse failure.
    """
    text = str(error).lower()
    return "jpeg" in text or "decode" in text


# InvalidArgumentError's texts for damaged bytes: a record whose CRC does not
# match, a record cut short, a JPEG that does not decode.
_DAMAGE_TEXTS = ("corrupted record", "truncated", "Invalid JPEG data", "jpeg::Uncompress",
                 "Unknown image file format", "DecodeJpeg", "DecodeImage")


def read_error(error: BaseException) -> bool:
    """Whether ``error`` is damaged prepared data: a CRC mismatch, a truncation, a bad JPEG.

    TensorFlow raises those as DataLossError, or as InvalidArgumentError
    with the texts of `_DAMAGE_TEXTS`. Anything else is not the data's -- a
    missing file (NotFoundError), a read past the end (OutOfRangeError), a
    parse error naming a feature or a key (a reader that asks for a key the
    records lack is a bug), a fault of the machine (an I/O error,
    `mat_effnet.common.faults`) -- and keeps its own traceback.
    """
    import tensorflow as tf

    if faults.machine_errno(error) is not None:
        return False
    if isinstance(error, tf.errors.DataLossError):
        return True
    text = str(error)
    return isinstance(error, tf.errors.InvalidArgumentError) and any(
        k in text for k in _DAMAGE_TEXTS)

