"""The index beside each version-2 shard: every group's byte offset and header length.

Written by the shard writer (`mat_effnet.records.schema.write_shard`) and read
by every reader that seeks to one group instead of streaming the shard.
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from mat_effnet.common import atomic
from mat_effnet.common.errors import MatEffNetError

INDEX_SUFFIX = ".index.json"


class MetadataError(MatEffNetError):
    """A prepared-data folder is missing, incomplete or of another schema."""


def index_path(shard_path: str) -> str:
    """The version-2 index file of a shard: ``<shard>.index.json``."""
    return shard_path + INDEX_SUFFIX


def write_index(shard_path: str, groups: Sequence[tuple[int, int]]) -> str:
    """Writes a shard's index atomically: each group's (byte offset, header length)."""
    path = index_path(shard_path)
    atomic.write_text(path, json.dumps({"schema_version": 2, "groups": [
        [int(offset), int(header)] for offset, header in groups]}) + "\n")
    return path


def read_index(shard_path: str) -> np.ndarray:
    """A shard's index as an (n, 2) int64 array of (byte offset, header length)."""
    import tensorflow as tf

    path = index_path(shard_path)
    try:
        with tf.io.gfile.GFile(path) as f:
            groups = json.load(f)["groups"]
        out = np.asarray(groups, np.int64).reshape(-1, 2)
    except (tf.errors.NotFoundError, OSError) as e:
        raise MetadataError(f"{path}: the index of a version-2 shard is missing ({e}); "
                            "re-run mat-effnet-prep on its folder to rewrite it") from None
    except (ValueError, KeyError, TypeError) as e:
        raise MetadataError(f"{path}: not a shard index ({e})") from None
    return out
